from pathlib import Path

from cxrgen.cheff.config import CheffConfig
from cxrgen.studies.cheff import run_reconstruction
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    out = snakemake.output
    table2 = run_reconstruction(
        Path(snakemake.input.images).parent,
        snakemake.input.autoencoder,
        snakemake.input.sr_base,
        snakemake.input.sr_fine,
        CheffConfig.from_dict(snakemake.params.cheff),
        Path(out.table2).parent,
        Path(out.table2_csv).with_suffix(""),
        Path(out.fig3_png).with_suffix(""),
        snakemake.params.scale,
        seed=snakemake.params.seed,
    )
    log.info("Table 2 of this run:\n%s", table2.to_string(index=False))
