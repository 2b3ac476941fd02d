from pathlib import Path

from cxrgen.cheff.config import CheffConfig
from cxrgen.studies.cheff import run_beta_check
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    out = snakemake.output
    df = run_beta_check(
        Path(snakemake.input.images).parent,
        snakemake.input.autoencoder,
        snakemake.input.sdm,
        CheffConfig.from_dict(snakemake.params.cheff),
        out.csv,
        Path(out.fig13_png).with_suffix(""),
        seed=snakemake.params.seed,
        table_stem=Path(out.beta_check_csv).with_suffix(""),
        scale=snakemake.params.scale,
    )
    log.info("forward-process check:\n%s", df.to_string(index=False))
