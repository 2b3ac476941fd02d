from cxrgen.studies.dewilde import train_embedding
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    w = snakemake.wildcards
    summary = train_embedding(snakemake.params.foundation, snakemake.input.sample, snakemake.params.label,
                              int(w.vectors), int(w.cases), snakemake.params.settings, snakemake.output[0],
                              seed=snakemake.params.seed, progress=False)
    log.info("embedding %s (%s, %s vectors, %s cases): %s", snakemake.output[0], snakemake.params.label, w.vectors,
             w.cases, summary)
