from pathlib import Path

from cxrgen.studies.text_encoder import render_study
from cxrgen.workflow import script_context

with script_context(snakemake):
    render_study(
        Path(snakemake.input.table2).parent,
        table2_stem=Path(snakemake.output.table2_csv).with_suffix(""),
        table3_stem=Path(snakemake.output.table3_csv).with_suffix(""),
        scale=snakemake.params.scale,
        corpus=snakemake.wildcards.corpus,
    )
