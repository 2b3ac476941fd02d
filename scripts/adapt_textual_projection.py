from cxrgen.adapt.textual_projection import train_from_config
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    summary = train_from_config(snakemake.params.foundation, snakemake.params.settings, snakemake.output[0],
                                seed=snakemake.params.seed)
    log.info("textual projection %s: %s", snakemake.wildcards.adapted, summary)
