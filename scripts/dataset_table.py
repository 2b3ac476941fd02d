from cxrgen.data.table import build_dataset_table
from cxrgen.io import write_csv_atomic
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    table = build_dataset_table(snakemake.params.data, seed=snakemake.params.seed)
    write_csv_atomic(table, snakemake.output.table)
    log.info("%d images, %d patients", len(table), table["patient_id"].nunique())
