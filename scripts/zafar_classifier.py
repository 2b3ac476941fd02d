from cxrgen.engine import RuntimeConfig
from cxrgen.classify.head_classifiers import train_attribute_classifier, train_corpus_classifier
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    runtime, s = RuntimeConfig.split(snakemake.params.settings, f"zafar.{snakemake.rule.removeprefix('zafar_')}")
    if snakemake.rule == "zafar_attribute_classifier":
        meta = train_attribute_classifier(snakemake.input.train, snakemake.input.val, snakemake.output[0],
                                          seed=snakemake.params.seed, runtime=runtime, **s)
        log.info("attribute classifier: validation AUC %s on %d images", meta["val_auc"], meta["n_val"])
    else:
        meta = train_corpus_classifier(snakemake.output[0], seed=snakemake.params.seed, runtime=runtime, **s)
        log.info("corpus classifier: validation accuracy %s on %d images", meta["val_accuracy"], meta["n_val"])
