# Adaptation of the foundation to chest X-rays (Chambon et al. 2.5-2.7), one rule family per method:
# textual projection (in-domain encoder + projection MLP), textual inversion (a new token's embedding),
# U-Net fine-tuning (with or without prior preservation). Each writes an adapted-model folder with adapter.json.


rule adapt_textual_projection:
    """Train the projection from the frozen in-domain encoder (MiniLM here, CXR-BERT at paper scale) into CLIP space."""
    input:
        foundation=foundation_input,
    output:
        directory(f"{ADAPT_DIR}/{{adapted}}"),
    wildcard_constraints:
        adapted=name_pattern([n for n in TRAINED if ADAPTED[n]["method"] == "textual_projection"]),
    params:
        settings=lambda w: ADAPTED[w.adapted].get("settings", {}),
        foundation=FOUNDATION,
        seed=config["seed"],
    log:
        f"{LOGS}/adapt/{{adapted}}.log",
    benchmark:
        f"{BENCHMARKS}/adapt/{{adapted}}.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["adapt_textual_projection"],
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/adapt_textual_projection.py"


rule adapt_few_shot:
    """Textual inversion or U-Net fine-tuning (optionally with prior preservation) on the few-shot sample."""
    input:
        sample=adaptation_inputs,
        foundation=foundation_input,
    output:
        directory(f"{ADAPT_DIR}/{{adapted}}"),
    wildcard_constraints:
        adapted=name_pattern([n for n in TRAINED if ADAPTED[n]["method"] in FEW_SHOT_METHODS]),
    params:
        method=lambda w: ADAPTED[w.adapted]["method"],
        settings=lambda w: ADAPTED[w.adapted].get("settings", {}),
        foundation=FOUNDATION,
        # class images for prior preservation are generated once by the foundation and cached here
        class_images=lambda w: f"{MODELS_DIR}/class_images/{w.adapted}",
        seed=config["seed"],
    log:
        f"{LOGS}/adapt/{{adapted}}.log",
    benchmark:
        f"{BENCHMARKS}/adapt/{{adapted}}.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["adapt_few_shot"],
        mem_mb=4000,
        runtime=120,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/adapt_train.py"
