from pathlib import Path

from cxrgen.studies.vae_reconstruction import render_vae_study
from cxrgen.workflow import script_context


def stem(path):
    p = Path(path)
    return p.with_name(p.name.rsplit(".", 1)[0])


with script_context(snakemake):
    render_vae_study(
        Path(snakemake.input.per_image).parent,
        table1_stem=stem(snakemake.output.table1_csv),
        summary_stem=stem(snakemake.output.summary_csv),
        figure_stem=stem(snakemake.output.fig3_png),
        scale=snakemake.params.scale,
        paper_table=snakemake.params.paper_table,
    )
