from pathlib import Path

from cxrgen.studies.memorization import run_memorization
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    run_memorization(dict(zip(snakemake.params.methods, snakemake.input.sets)), snakemake.input.train,
                     snakemake.input.real, snakemake.params.classifier, Path(snakemake.output.summary).parent,
                     quantile=snakemake.params.quantile)
