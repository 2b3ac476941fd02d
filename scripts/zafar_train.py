from cxrgen.adapt.trainer import train_from_sample
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    summary = train_from_sample(snakemake.params.method, snakemake.params.foundation, snakemake.input.sample,
                                snakemake.params.settings, snakemake.output[0], seed=snakemake.params.seed,
                                class_images_dir=snakemake.params.class_images)
    log.info("%s %s: %s", snakemake.params.method, snakemake.wildcards.name, summary)
