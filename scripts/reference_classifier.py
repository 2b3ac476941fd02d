from cxrgen.classify.reference import ReferenceClassifierConfig, train_reference_classifier
from cxrgen.engine import RuntimeConfig
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    runtime, training = RuntimeConfig.split(snakemake.params.training, "reference_classifier.training")
    cfg = ReferenceClassifierConfig(**{"seed": snakemake.params.seed, **training})
    summary = train_reference_classifier(snakemake.input.train, snakemake.input.validate, cfg, snakemake.output[0],
                                         runtime=runtime)
    log.info("best epoch %s, validation mean AUC %.3f, %.0f s", summary["best_epoch"], summary["val_mean_auc"], summary["seconds"])
