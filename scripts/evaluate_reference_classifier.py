from cxrgen.classify.reference import evaluate_folder, load_reference_classifier
from cxrgen.io import write_csv_atomic
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    classifier = load_reference_classifier(snakemake.params.classifier)
    table = evaluate_folder(classifier, snakemake.input.test, n_boot=snakemake.params.n_boot, seed=snakemake.params.seed,
                           min_class_count=snakemake.params.evaluation["min_class_count"])
    write_csv_atomic(table, snakemake.output[0])
    log.info("test metrics:\n%s", table.to_string())
