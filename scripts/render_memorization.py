from pathlib import Path

from cxrgen.studies.memorization import render_memorization
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    out = snakemake.output
    paths = render_memorization(Path(snakemake.input.summary).parent, dict(zip(snakemake.params.methods, snakemake.input.sets)),
                                snakemake.input.train, Path(out.table_csv).with_suffix(""),
                                Path(out.figure_png).with_suffix(""), scale=snakemake.params.scale)
    log.info("rendered %s", paths)
