from cxrgen.data.sampling import materialise, select_sample
from cxrgen.data.table import read_dataset_table
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    spec = snakemake.params.spec
    rows = select_sample(read_dataset_table(snakemake.input.table), spec, snakemake.params.seed, snakemake.params.splits)
    manifest = materialise(rows, snakemake.output[0], spec["preprocessing"], spec["size"], snakemake.params.on_bad_image)
    log.info("sample %s: %d images", snakemake.wildcards.sample, len(manifest))
