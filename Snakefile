# cxrgen: adapting text-to-image latent diffusion models to chest X-rays, end to end.
# This file is a table of contents; the rules live in rules/, the logic in src/cxrgen/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/foundation.smk"
include: "rules/text_encoders.smk"
include: "rules/reference_classifier.smk"
include: "rules/vae.smk"
include: "rules/adapt.smk"
include: "rules/synthesis.smk"
include: "rules/dewilde.smk"
include: "rules/zafar.smk"
include: "rules/cheff.smk"
include: "rules/findings.smk"
include: "rules/report.smk"


rule all:
    """Target: the studies of the papers config["studies"] selects, the findings table and the results index."""
    default_target: True
    input:
        all_targets(),


# one paper's tables and figures (and only what they need): snakemake <paper> [--configfile ...]
rule chambon2022:
    input:
        paper_targets("chambon2022"),
    localrule: True


rule weber2023:
    input:
        paper_targets("weber2023"),
    localrule: True


rule zafar2023:
    input:
        paper_targets("zafar2023"),
    localrule: True


rule dewilde2023:
    input:
        paper_targets("dewilde2023"),
    localrule: True


# profiles/slurm-gpu-only: rules without a GPU run on the submit host, only GPU-tagged ones go to the cluster
if config.get("cpu_rules_local", False):
    workflow.localrules(*cpu_rules())
