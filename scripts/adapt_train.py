from cxrgen.adapt.methods import train_from_sample
from cxrgen.workflow import script_context

# rules adapt_few_shot (Chambon) and zafar_train (Zafar): any method that trains on a sample's images
with script_context(snakemake) as log:
    summary = train_from_sample(snakemake.params.method, snakemake.params.foundation, snakemake.input.sample,
                                snakemake.params.settings, snakemake.output[0], seed=snakemake.params.seed,
                                class_images_dir=snakemake.params.class_images)
    log.info("%s %s: %s", snakemake.params.method, snakemake.output[0], summary)
