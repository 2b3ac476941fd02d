# Zafar et al. 2023: full fine-tuning vs DreamBooth + LoRA with structured PadChest-style prompts; FID, attribute
# controllability (sex, view, finding), a forgetting check on the foundation's corpus, parameters and artefact
# sizes, step grids. One rule family per method under results/<run>/models/zafar/<name>.

ZAFAR = config["zafar"]
ZAFAR_METHODS = {m["name"]: m for m in ZAFAR["methods"]}
if len(ZAFAR_METHODS) != len(ZAFAR["methods"]) or "foundation" in ZAFAR_METHODS:
    raise WorkflowError(
        f"config zafar.methods: names must be unique and not 'foundation'; got {[m['name'] for m in ZAFAR['methods']]}"
    )
for _key in ("train_sample", "real_sample", "val_sample"):
    if ZAFAR[_key] not in config["samples"]:
        raise WorkflowError(
            f"config zafar.{_key}={ZAFAR[_key]!r} is not a configured sample; expected one of {SAMPLES}"
        )
for _name, _m in ZAFAR_METHODS.items():
    if _m.get("sample", ZAFAR["train_sample"]) not in config["samples"]:
        raise WorkflowError(
            f"config zafar.methods[{_name}].sample={_m['sample']!r} is not a configured sample; expected one of {SAMPLES}"
        )
ZAFAR_MODELS_DIR = f"{MODELS_DIR}/zafar"
ZAFAR_DIR = f"{RESULTS}/zafar"
ZAFAR_SETS = ["foundation", *ZAFAR_METHODS]
ZAFAR_CATEGORY = "Zafar 2023 (full fine-tuning vs DreamBooth + LoRA)"
# run-time patient check (cxrgen.data.leakage): the FID real set vs every method's training sample
ZAFAR_LEAKAGE = manifest_checks(
    *[
        (m.get("sample", ZAFAR["train_sample"]), ZAFAR["real_sample"], f"Zafar FID: real set vs {n}'s training images")
        for n, m in ZAFAR_METHODS.items()
    ]
)


# the run's Zafar tables and figures for results/<run>/README.md (rules/common.smk: reported_outputs)
zafar_reported_outputs = lambda: [
    (
        f"{RESULTS}/tables/zafar2023_methods.md",
        "zafar_render",
        "full FT vs DreamBooth+LoRA: FID, attribute AUC, retained knowledge, params, artefact size (Zafar)",
    ),
    (
        f"{RESULTS}/tables/zafar2023_prompts.md",
        "zafar_render",
        "structured prompt levels and their token counts (Zafar IV.C)",
    ),
    (
        f"{RESULTS}/figures/zafar2023_step_grid.png",
        "zafar_render",
        "samples at increasing training steps (Zafar Figs. 4-7)",
    ),
    (
        f"{RESULTS}/figures/zafar2023_samples.png",
        "zafar_render",
        "attribute and out-of-domain prompts per model (Zafar Fig. 8)",
    ),
]


rule zafar_train:
    """Full fine-tuning (U-Net + text encoder) or DreamBooth + LoRA on the structured prompts of the training sample."""
    input:
        sample=lambda w: f"{DATA_DIR}/samples/{ZAFAR_METHODS[w.name].get('sample', ZAFAR['train_sample'])}",
        foundation=foundation_input,
    output:
        directory(f"{ZAFAR_MODELS_DIR}/{{name}}"),
    wildcard_constraints:
        name=name_pattern(list(ZAFAR_METHODS)),
    params:
        method=lambda w: ZAFAR_METHODS[w.name]["method"],
        settings=lambda w: ZAFAR_METHODS[w.name].get("settings", {}),
        foundation=FOUNDATION,
        class_images=lambda w: f"{ZAFAR_MODELS_DIR}/class_images/{w.name}",
        seed=config["seed"],
    log:
        f"{LOGS}/zafar/train_{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/zafar/train_{{name}}.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["zafar_train"],
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/adapt_train.py"


rule zafar_attribute_classifier:
    """Small CNN with sex (F) and view (AP) heads on the real training images (scores attribute controllability)."""
    input:
        train=f"{DATA_DIR}/samples/{ZAFAR['train_sample']}",
        val=f"{DATA_DIR}/samples/{ZAFAR['val_sample']}",
    output:
        directory(f"{ZAFAR_MODELS_DIR}/attribute_classifier"),
    params:
        settings=ZAFAR["attribute_classifier"],
        seed=config["seed"],
    log:
        f"{LOGS}/zafar/attribute_classifier.log",
    benchmark:
        f"{BENCHMARKS}/zafar/attribute_classifier.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["zafar_classifier"],
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/zafar_classifier.py"


rule zafar_corpus_classifier:
    """Small CNN with colour and shape heads on fresh images of the foundation's pretraining corpus (forgetting check)."""
    output:
        directory(f"{ZAFAR_MODELS_DIR}/corpus_classifier"),
    params:
        settings=ZAFAR["corpus_classifier"],
        seed=config["seed"],
    log:
        f"{LOGS}/zafar/corpus_classifier.log",
    benchmark:
        f"{BENCHMARKS}/zafar/corpus_classifier.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["zafar_classifier"],
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/zafar_classifier.py"


rule zafar_sample:
    """Per model: one image per real test row (its own prompt), the attribute prompt pairs, the out-of-domain prompts."""
    input:
        adapter=lambda w: [] if w.model == "foundation" else [f"{ZAFAR_MODELS_DIR}/{w.model}"],
        foundation=foundation_input,
        real=f"{DATA_DIR}/samples/{ZAFAR['real_sample']}",
    output:
        directory(f"{ZAFAR_DIR}/samples/{{model}}"),
    wildcard_constraints:
        model=name_pattern(ZAFAR_SETS),
    params:
        evaluation=ZAFAR["evaluation"],
        foundation=FOUNDATION,
        seed=config["seed"],
    log:
        f"{LOGS}/zafar/sample_{{model}}.log",
    benchmark:
        f"{BENCHMARKS}/zafar/sample_{{model}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/zafar_sample.py"


rule zafar_evaluate:
    """FID, attribute AUCs (sex, view: attribute classifier; finding: reference classifier), OOD recognition."""
    input:
        sets=expand(f"{ZAFAR_DIR}/samples/{{model}}", model=ZAFAR_SETS),
        adapters=expand(f"{ZAFAR_MODELS_DIR}/{{name}}", name=list(ZAFAR_METHODS)),
        real=f"{DATA_DIR}/samples/{ZAFAR['real_sample']}",
        reference=reference_classifier_input,
        attribute=rules.zafar_attribute_classifier.output[0],
        corpus=rules.zafar_corpus_classifier.output[0],
        leakage=manifest_check_inputs(ZAFAR_LEAKAGE),
    output:
        methods=f"{ZAFAR_DIR}/evaluation/methods.csv",
        controllability=f"{ZAFAR_DIR}/evaluation/controllability.csv",
        forgetting=f"{ZAFAR_DIR}/evaluation/forgetting.csv",
        ood_scores=f"{ZAFAR_DIR}/evaluation/ood_scores.csv",
    params:
        models=ZAFAR_SETS,
        names=list(ZAFAR_METHODS),
        reference=REFERENCE_CLASSIFIER,
        leakage=ZAFAR_LEAKAGE,
        n_boot=ZAFAR["evaluation"]["n_boot"],
        seed=config["seed"],
        evaluation=config["evaluation"],
    log:
        f"{LOGS}/zafar/evaluate.log",
    benchmark:
        f"{BENCHMARKS}/zafar/evaluate.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/zafar_evaluate.py"


rule zafar_render:
    """The method table, the prompt-level table, the step grid and the sample grid."""
    input:
        evaluation=rules.zafar_evaluate.output.methods,
        sets=rules.zafar_evaluate.input.sets,
        adapters=rules.zafar_evaluate.input.adapters,
        train=f"{DATA_DIR}/samples/{ZAFAR['train_sample']}",
        foundation=foundation_input,
    output:
        **{
            f"{t}_{ext}": report(
                f"{RESULTS}/tables/zafar2023_{t}.{ext}", caption=f"../report/zafar_{t}.rst", category=ZAFAR_CATEGORY
            )
            for t in ("methods", "prompts")
            for ext in ("csv", "md", "tex")
        },
        **{
            f"{fig}_{ext}": report(
                f"{RESULTS}/figures/zafar2023_{fig}.{ext}",
                caption=f"../report/zafar_{fig}.rst",
                category=ZAFAR_CATEGORY,
            )
            for fig in ("step_grid", "samples")
            for ext in ("png", "pdf")
        },
    params:
        models=ZAFAR_SETS,
        names=list(ZAFAR_METHODS),
        paper_runs={n: m.get("paper_run") for n, m in ZAFAR_METHODS.items()},
        foundation=FOUNDATION,
        n_show=ZAFAR["n_show"],
        scale=config["scale"],
    log:
        f"{LOGS}/zafar/render.log",
    localrule: True
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/zafar_render.py"
