# Data: the embedded phantom dataset, the unified table, the papers' samples, a data summary.


wildcard_constraints:
    sample="|".join(SAMPLES),


if config["data"]["source"] == "phantom":

    rule phantom_dataset:
        """Generate the embedded chest-X-ray phantoms in the real MIMIC-CXR-JPG v2 layout (DVC-tracked)."""
        output:
            directory(config["data"]["root"]),
        params:
            phantom=config["data"]["phantom"],
            seed=config["seed"],
        log:
            f"{LOGS}/data/phantom_dataset.log",
        benchmark:
            f"{BENCHMARKS}/data/phantom_dataset.tsv"
        threads: 1
        resources:
            mem_mb=2000,
            runtime=30,
        conda:
            "../envs/cxrgen.yaml"
        script:
            "../scripts/phantom_dataset.py"


rule dataset_table:
    """Read the dataset through its adapter into the unified table, apply the label policy, add patient splits."""
    input:
        dataset_root_input,
    output:
        table=f"{DATA_DIR}/table.csv",
    params:
        data=config["data"],
        seed=config["seed"],
    log:
        f"{LOGS}/data/{DATASET}/dataset_table.log",
    benchmark:
        f"{BENCHMARKS}/data/{DATASET}/dataset_table.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/dataset_table.py"


rule sample:
    """Materialise one configured sample (selection + preprocessing) as PNGs with a manifest."""
    input:
        table=rules.dataset_table.output.table,
    output:
        directory(f"{DATA_DIR}/samples/{{sample}}"),
    params:
        spec=lambda wc: config["samples"][wc.sample],
        splits=list(config["data"]["splits"]),
        seed=config["seed"],
        on_bad_image=config["data"]["on_bad_image"],
    log:
        f"{LOGS}/data/{DATASET}/sample_{{sample}}.log",
    benchmark:
        f"{BENCHMARKS}/data/{DATASET}/sample_{{sample}}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/sample.py"


rule data_summary:
    """Counts per label and split, and a grid of phantoms per finding."""
    input:
        table=rules.dataset_table.output.table,
    output:
        counts=report(
            f"{DATA_DIR}/summary/label_counts.csv",
            caption="../report/data_summary.rst",
            category="Data",
        ),
        grid=report(
            f"{DATA_DIR}/summary/phantom_grid.png",
            caption="../report/data_grid.rst",
            category="Data",
        ),
    params:
        scale=config["scale"],
        seed=config["seed"],
    log:
        f"{LOGS}/data/{DATASET}/data_summary.log",
    localrule: True
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/data_summary.py"


rule data:
    """Target: the dataset table, every configured sample and the data summary (no model is trained)."""
    input:
        [f"{DATA_DIR}/samples/{s}" for s in SAMPLES],
        rules.data_summary.output,
    localrule: True
