# The findings table (issue 17): each directional claim of the four papers (reference/findings.yaml), this run's
# effect with a paired-bootstrap interval from the studies' per-item result files, and a verdict. The claims are read
# from the package's reference/ like every published table (cxrgen.render.reference), not from the run directory.

FINDINGS_CATEGORY = "Findings: the papers' claims on this run"


rule findings:
    """results/<run>/tables/findings.{csv,md,tex}: the papers' claims, this run's effects with intervals, verdicts."""
    input:
        **findings_files(),
    output:
        **{
            ext: report(
                f"{RESULTS}/tables/findings.{ext}", caption="../report/findings.rst", category=FINDINGS_CATEGORY
            )
            for ext in ("csv", "md", "tex")
        },
    params:
        corpora=TEXT_CORPORA,
        findings=config["findings"],
        seed=config["seed"],
        adaptation_methods=config["adaptation"]["methods"],
        zafar_methods=config["zafar"]["methods"],
        dewilde_cases=DW["cases"],
        scale=config["scale"],
        studies=STUDIES,
    log:
        f"{LOGS}/findings.log",
    benchmark:
        f"{BENCHMARKS}/findings.tsv"
    localrule: True
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/findings.py"
