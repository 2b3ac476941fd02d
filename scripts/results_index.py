from cxrgen.render.index import write_index
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    costs = write_index(
        snakemake.output[0],
        snakemake.params.outputs,
        "benchmarks",
        snakemake.params.scale,
        snakemake.params.config_files,
        gpu_jobs=set(snakemake.params.gpu_rules),
        accounting=snakemake.params.accounting,
    )
    log.info("indexed %d outputs, %d benchmarked jobs", len(snakemake.params.outputs), len(costs))
