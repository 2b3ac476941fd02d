# The reference CXR classifier (Chambon et al. 2.3) that scores real, reconstructed and generated images:
# trained here on the train/validate samples (miniature), or torchxrayvision's DenseNet-121 ("xrv:<weights>").

# run-time patient checks (cxrgen.data.leakage) of a classifier trained here: train and validation vs test
RC = config["reference_classifier"]
RC_LEAKAGE = (
    manifest_checks(
        (RC["train_sample"], RC["test_sample"], "reference classifier: test metrics vs its training images"),
        (
            RC["val_sample"],
            RC["test_sample"],
            "reference classifier: test metrics vs the images its thresholds were chosen on",
        ),
    )
    if RC["model"] == "train"
    else []
)


if config["reference_classifier"]["model"] == "train":

    rule reference_classifier:
        """Train the DenseNet-121 on the train sample; best epoch and thresholds on the validate sample."""
        input:
            train=f"{DATA_DIR}/samples/{config['reference_classifier']['train_sample']}",
            validate=f"{DATA_DIR}/samples/{config['reference_classifier']['val_sample']}",
        output:
            directory(REFERENCE_CLASSIFIER),
        params:
            training=config["reference_classifier"]["training"],
            seed=config["seed"],
        log:
            f"{LOGS}/reference_classifier/train.log",
        benchmark:
            f"{BENCHMARKS}/reference_classifier/train.tsv"
        threads: workflow.cores
        resources:
            gpu=config["gpus"]["reference_classifier"],
            mem_mb=4000,
            runtime=60,
        conda:
            "../envs/cxrgen.yaml"
        script:
            "../scripts/reference_classifier.py"


rule evaluate_reference_classifier:
    """Per-label AUC/accuracy/F1 with bootstrap CIs of the reference classifier on the held-out test sample."""
    input:
        test=f"{DATA_DIR}/samples/{config['reference_classifier']['test_sample']}",
        classifier=reference_classifier_input,
        leakage=manifest_check_inputs(RC_LEAKAGE),
    output:
        report(
            f"{CLASSIFIER_DIR}/test_metrics.csv",
            caption="../report/reference_classifier.rst",
            category="Reference classifier",
        ),
    params:
        classifier=REFERENCE_CLASSIFIER,
        leakage=RC_LEAKAGE,
        n_boot=config["reference_classifier"]["n_boot"],
        seed=config["seed"],
        evaluation=config["evaluation"],
    log:
        f"{LOGS}/reference_classifier/evaluate.log",
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/evaluate_reference_classifier.py"
