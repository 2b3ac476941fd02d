# The results index: every table and figure of this run, the rule behind it, and what the run cost.


rule results_index:
    """results/<run>/README.md: outputs, per-job wall time, CPU/GPU hours, energy and CO2eq (Zafar et al. V.C)."""
    input:
        final_outputs(),
    output:
        f"{RESULTS}/README.md",
    params:
        outputs=reported_outputs(),
        benchmarks=BENCHMARKS,
        gpu_rules=gpu_rules(),
        scale=config["scale"],
        config_files=[str(f) for f in workflow.configfiles],
        accounting=config["accounting"],
    log:
        f"{LOGS}/results_index.log",
    localrule: True
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/results_index.py"


rule render:
    """Target: (re)render every table and figure and the index; training reruns only if something upstream changed."""
    input:
        [item["path"] for item in reported_outputs() if item["rule"] != "foundation"],
        f"{RESULTS}/README.md",
    localrule: True
