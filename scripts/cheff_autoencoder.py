from pathlib import Path

from cxrgen.cheff.config import CheffConfig
from cxrgen.studies.cheff import run_autoencoder
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    run_autoencoder(
        Path(snakemake.input.images).parent,
        CheffConfig.from_dict(snakemake.params.cheff),
        snakemake.output[0],
        snakemake.params.checkpoint,
        seed=snakemake.params.seed,
    )
