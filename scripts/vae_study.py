from pathlib import Path

from cxrgen.studies.vae_reconstruction import run_vae_study_from_paths
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    run_vae_study_from_paths(
        snakemake.input.sample,
        snakemake.params.foundation,
        snakemake.params.classifier,
        snakemake.params.study,
        seed=snakemake.params.seed,
        out_dir=Path(snakemake.output.per_image).parent,
        evaluation=snakemake.params.evaluation,
    )
