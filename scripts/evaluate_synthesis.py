from pathlib import Path

from cxrgen.studies.synthesis import run_synthesis_evaluation
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    s = snakemake.params.synthesis
    run_synthesis_evaluation(dict(zip(snakemake.params.methods, snakemake.input.sets)), snakemake.input.real,
                             snakemake.params.classifier, Path(snakemake.output.table4).parent,
                             extractor=s["fid_extractor"], n_boot=s["n_boot"], seed=snakemake.params.seed,
                             label=s["label"], fid_n_boot=snakemake.params.evaluation["fid_n_boot"],
                             min_class_count=snakemake.params.evaluation["min_class_count"])
