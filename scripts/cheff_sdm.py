from pathlib import Path

from cxrgen.cheff.config import CheffConfig
from cxrgen.studies.cheff import run_sdm
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    run_sdm(
        Path(snakemake.input.images).parent,
        snakemake.input.autoencoder,
        CheffConfig.from_dict(snakemake.params.cheff),
        snakemake.wildcards.variant,
        snakemake.output[0],
        snakemake.params.checkpoint,
        seed=snakemake.params.seed,
    )
