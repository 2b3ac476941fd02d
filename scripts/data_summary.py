from cxrgen.data.summary import write_data_summary
from cxrgen.data.table import read_dataset_table
from cxrgen.workflow import script_context

with script_context(snakemake):
    write_data_summary(
        read_dataset_table(snakemake.input.table),
        snakemake.output.counts,
        snakemake.output.grid,
        scale=snakemake.params.scale,
        seed=snakemake.params.seed,
    )
