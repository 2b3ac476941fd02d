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
    default_target: True
    input:
        all_targets(),



# profiles/slurm-gpu-only: rules without a GPU run on the submit host, only GPU-tagged ones go to the cluster
if config.get("cpu_rules_local", False):
    workflow.localrules(*cpu_rules())
