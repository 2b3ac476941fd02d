# De Wilde et al. 2023, textual inversion on a budget: per-class multi-vector embeddings, FID sweeps of inference
# steps x CFG (Table 1), vectors (Table 2) and training cases (Table 3), composable diffusion (Figs. 3, 4),
# inpainting (Fig. 5) and ResNet-18 with synthetic data (Table 4). Every sweep point and every seed is a job.


include: "dewilde_common.smk"


rule dewilde_embedding:
    """One textual-inversion embedding: class x vectors per token x training cases, the token alone as prompt."""
    input:
        sample=f"{DATA_DIR}/samples/{DW['sample']}",
        foundation=foundation_input,
    output:
        directory(f"{DW_DIR}/embeddings/{{cls}}_v{{vectors}}_n{{cases}}"),
    wildcard_constraints:
        cls=name_pattern(list(DW_SLUGS)),
        vectors=r"\d+",
        cases=r"\d+",
    params:
        label=lambda w: DW_SLUGS[w.cls],
        settings=DW["textual_inversion"],
        foundation=FOUNDATION,
        seed=config["seed"],
    log:
        f"{LOGS}/dewilde/embedding_{{cls}}_v{{vectors}}_n{{cases}}.log",
    benchmark:
        f"{BENCHMARKS}/dewilde/embedding_{{cls}}_v{{vectors}}_n{{cases}}.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["dewilde_embedding"],
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/dewilde_embedding.py"


rule dewilde_sweep_point:
    """One sweep point: images of the token alone at (steps, CFG) from one embedding, FID vs real images."""
    input:
        embedding=f"{DW_DIR}/embeddings/{{cls}}_v{{vectors}}_n{{cases}}",
        real=f"{DATA_DIR}/samples/{DW['sweep']['real_sample']}",
        foundation=foundation_input,
        classifier=reference_classifier_input,
        leakage=manifest_check_inputs(DW_SWEEP_LEAKAGE),
    output:
        images=directory(f"{DW_DIR}/sweep/{{cls}}_v{{vectors}}_n{{cases}}/steps{{steps}}_cfg{{cfg}}/set"),
        fid=f"{DW_DIR}/sweep/{{cls}}_v{{vectors}}_n{{cases}}/steps{{steps}}_cfg{{cfg}}/fid.csv",
        features=f"{DW_DIR}/sweep/{{cls}}_v{{vectors}}_n{{cases}}/steps{{steps}}_cfg{{cfg}}/features.npz",
    wildcard_constraints:
        cls=name_pattern(list(DW_SLUGS)),
        vectors=r"\d+",
        cases=r"\d+",
        steps=r"\d+",
        cfg=r"[0-9.]+",
    params:
        points=lambda w: [
            p
            for p in DW_POINTS
            if dw_point_dir(p) == f"{DW_DIR}/sweep/{w.cls}_v{w.vectors}_n{w.cases}/steps{w.steps}_cfg{w.cfg}"
        ],
        sweep=DW["sweep"],
        leakage=DW_SWEEP_LEAKAGE,
        inference=DW["inference"],
        foundation=FOUNDATION,
        classifier=REFERENCE_CLASSIFIER,
        seed=config["seed"],
        evaluation=config["evaluation"],
    log:
        f"{LOGS}/dewilde/sweep_{{cls}}_v{{vectors}}_n{{cases}}_steps{{steps}}_cfg{{cfg}}.log",
    benchmark:
        f"{BENCHMARKS}/dewilde/sweep_{{cls}}_v{{vectors}}_n{{cases}}_steps{{steps}}_cfg{{cfg}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/dewilde_sweep_point.py"


rule dewilde_composability:
    """Healthy -> finding interpolation and multi-finding prompts by composable diffusion, scored by the classifier."""
    input:
        embeddings=[dw_embedding(c) for c in DW["classes"]],
        foundation=foundation_input,
        classifier=reference_classifier_input,
    output:
        directory(f"{DW_DIR}/composability"),
    params:
        dewilde=DW,
        foundation=FOUNDATION,
        classifier=REFERENCE_CLASSIFIER,
        seed=config["seed"],
    log:
        f"{LOGS}/dewilde/composability.log",
    benchmark:
        f"{BENCHMARKS}/dewilde/composability.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/dewilde_composability.py"


rule dewilde_inpainting:
    """Repaint a box of generated healthy images under each finding's embedding; classifier before / after."""
    input:
        embeddings=[dw_embedding(c) for c in DW["classes"]],
        foundation=foundation_input,
        classifier=reference_classifier_input,
    output:
        directory(f"{DW_DIR}/inpainting"),
    params:
        dewilde=DW,
        foundation=FOUNDATION,
        classifier=REFERENCE_CLASSIFIER,
        seed=config["seed"],
    log:
        f"{LOGS}/dewilde/inpainting.log",
    benchmark:
        f"{BENCHMARKS}/dewilde/inpainting.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/dewilde_inpainting.py"


rule dewilde_synthetic:
    """Synthetic training images of one class for Table 4 from its embedding (default or few-case)."""
    input:
        embedding=f"{DW_DIR}/embeddings/{{cls}}_v{{vectors}}_n{{cases}}",
        foundation=foundation_input,
    output:
        directory(f"{DW_DIR}/synthetic/{{cls}}_v{{vectors}}_n{{cases}}"),
    wildcard_constraints:
        cls=name_pattern(list(DW_SLUGS)),
        vectors=r"\d+",
        cases=r"\d+",
    params:
        label=lambda w: DW_SLUGS[w.cls],
        n=max(DW["classifier"]["synthetic_per_class"]),
        inference=DW["inference"],
        foundation=FOUNDATION,
        seed=config["seed"],
    log:
        f"{LOGS}/dewilde/synthetic_{{cls}}_v{{vectors}}_n{{cases}}.log",
    benchmark:
        f"{BENCHMARKS}/dewilde/synthetic_{{cls}}_v{{vectors}}_n{{cases}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/dewilde_synthetic.py"


rule dewilde_classifier:
    """Table 4 for one seed: ResNet-18 per configuration (real / synthetic / both), best-validation test AUC."""
    input:
        train=f"{DATA_DIR}/samples/{DW['sample']}",
        val=f"{DATA_DIR}/samples/{DW['classifier']['val_sample']}",
        test=f"{DATA_DIR}/samples/{DW['classifier']['test_sample']}",
        synthetic=[f"{DW_DIR}/synthetic/{class_slug(c)}_v{DW['vectors']}_n{n}" for n in DW_SYN_CASES for c in DW_PAIR],
    output:
        f"{DW_DIR}/classifier/seed{{seed}}.csv",
    wildcard_constraints:
        seed=r"\d+",
    params:
        dewilde=DW,
        leakage=DW_CLASSIFIER_LEAKAGE,
        synthetic={
            n: {c: f"{DW_DIR}/synthetic/{class_slug(c)}_v{DW['vectors']}_n{n}" for c in DW_PAIR} for n in DW_SYN_CASES
        },
    log:
        f"{LOGS}/dewilde/classifier_seed{{seed}}.log",
    benchmark:
        f"{BENCHMARKS}/dewilde/classifier_seed{{seed}}.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["dewilde_classifier"],
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/dewilde_classifier.py"


DW_FIGURES = ("fig2", "fig3", "fig4", "fig5", "composability", "inpainting")


rule render_dewilde:
    """Tables 1-4 beside the paper's, Figs. 2-5 style images, the composability curve and the inpainting change."""
    input:
        fids=[f"{dw_point_dir(p)}/fid.csv" for p in DW_POINTS],
        sets=[f"{dw_point_dir(p)}/set" for p in DW_POINTS],
        composability=rules.dewilde_composability.output[0],
        inpainting=rules.dewilde_inpainting.output[0],
        classifier=expand(f"{DW_DIR}/classifier/seed{{seed}}.csv", seed=DW["classifier"]["seeds"]),
    output:
        **dw_table_outputs(),
        **{
            f"{fig}_{ext}": report(
                f"{RESULTS}/figures/dewilde2023_{fig}.{ext}",
                caption=f"../report/dewilde_{fig}.rst",
                category=DW_CATEGORY,
            )
            for fig in DW_FIGURES
            for ext in ("png", "pdf")
        },
    params:
        points=DW_POINTS,
        dewilde=DW,
        scale=config["scale"],
        evaluation=config["evaluation"],
    log:
        f"{LOGS}/dewilde/render_dewilde.log",
    localrule: True
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/render_dewilde.py"
