# The trained Cheff stages as one diffusers pipeline folder with its model card (rule cheff_cascade).
from cxrgen.cheff.cascade import save_cascade
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    save_cascade(snakemake.input.autoencoder, snakemake.input.sdm, snakemake.input.sr, snakemake.output[0])
