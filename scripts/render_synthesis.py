from pathlib import Path

from cxrgen.studies.synthesis import render_synthesis
from cxrgen.workflow import script_context


def stem(path):
    return Path(path).with_suffix("")


with script_context(snakemake) as log:
    out = snakemake.output
    paths = render_synthesis(
        Path(snakemake.input.table4).parent, dict(zip(snakemake.params.methods, snakemake.input.sets)),
        stem(out.table4_csv), stem(out.table5_csv), stem(out.samples_png), fig5_stem=stem(out.fig5_png),
        train_dir=snakemake.input.train, fig5_method=snakemake.params.fig5_method, scale=snakemake.params.scale,
        paper_names=snakemake.params.synthesis["paper_names"], n_show=snakemake.params.synthesis["n_show"],
        models=snakemake.params.models,
        prompt_dependence_stem=stem(out.prompt_dependence_csv), n_boot=snakemake.params.synthesis["n_boot"],
        seed=snakemake.params.seed,
    )
    log.info("rendered %s", paths)
