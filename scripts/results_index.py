import torch

from cxrgen.render.index import write_index
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    accounting = dict(snakemake.params.accounting)
    charge_gpu = accounting.pop("charge_gpu", "auto")
    on_gpu = torch.cuda.is_available() if charge_gpu == "auto" else bool(charge_gpu)
    costs = write_index(
        snakemake.output[0],
        snakemake.params.outputs,
        snakemake.params.benchmarks,
        snakemake.params.scale,
        snakemake.params.config_files,
        gpu_jobs=set(snakemake.params.gpu_rules) if on_gpu else set(),
        accounting=accounting,
    )
    log.info("indexed %d outputs, %d benchmarked jobs (GPU charged: %s)", len(snakemake.params.outputs), len(costs), on_gpu)
