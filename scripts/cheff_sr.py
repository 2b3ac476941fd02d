# SR_base (rule cheff_sr_base: bicubic x_LR, from scratch) or SR_fine (rule cheff_sr_fine: D(E(x_LR)), from SR_base).
from pathlib import Path

from cxrgen.cheff.config import CheffConfig
from cxrgen.studies.cheff import run_sr
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    fine = "sr_base" in snakemake.input.keys()
    run_sr(
        Path(snakemake.input.images).parent,
        CheffConfig.from_dict(snakemake.params.cheff),
        snakemake.output[0],
        snakemake.params.checkpoint,
        seed=snakemake.params.seed,
        ae_dir=snakemake.input.autoencoder if fine else None,
        init_from=snakemake.input.sr_base if fine else None,
    )
