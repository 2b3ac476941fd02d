from pathlib import Path

from cxrgen.studies.zafar import render_zafar
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    out = snakemake.output
    stems = {k: Path(getattr(out, f"{k}_{ext}")).with_suffix("")
             for k, ext in (("methods", "csv"), ("prompts", "csv"), ("step_grid", "png"), ("samples", "png"))}
    paths = render_zafar(Path(snakemake.input.evaluation).parent, dict(zip(snakemake.params.models, snakemake.input.sets)),
                         dict(zip(snakemake.params.names, snakemake.input.adapters)), snakemake.input.train, stems,
                         scale=snakemake.params.scale, paper_runs=snakemake.params.paper_runs,
                         foundation=snakemake.params.foundation, n_show=snakemake.params.n_show)
    log.info("wrote %s", paths)
