from pathlib import Path

from cxrgen.cheff.config import CheffConfig
from cxrgen.studies.cheff import run_inpainting
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    out = snakemake.output
    df = run_inpainting(
        Path(snakemake.input.images).parent,
        snakemake.input.autoencoder,
        snakemake.input.sdm,
        CheffConfig.from_dict(snakemake.params.cheff),
        Path(out.preservation).parent,
        Path(out.inpainting_png).with_suffix(""),
        Path(out.outpainting_png).with_suffix(""),
        seed=snakemake.params.seed,
    )
    log.info("known-region preservation:\n%s", df.groupby("task").mean(numeric_only=True).to_string())
