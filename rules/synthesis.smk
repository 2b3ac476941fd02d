# Synthetic images from every adapted model and their evaluation (Chambon et al. 2.8, 3.4, 3.5):
# FID per method and prompt (Table 4), the reference classifier on them (Table 5), sample grids (Figs. 1, 4, 5).

SYNTH_CATEGORY = "Synthesis (Chambon Tables 4, 5; Figs. 1, 4, 5)"
# run-time patient checks (cxrgen.data.leakage): the real set vs every fine-tuning sample it is compared with
SYNTH_LEAKAGE = manifest_checks(
    *[
        (
            adaptation_sample(n),
            config["synthesis"]["real_sample"],
            f"Chambon Table 4 FID: real set vs {n}'s fine-tuning images",
        )
        for n in TRAINED
        if ADAPTED[n]["method"] in FEW_SHOT_METHODS
    ]
)
MEMORIZATION_LEAKAGE = manifest_checks(
    (
        config["adaptation"]["sample"],
        config["synthesis"]["real_sample"],
        "memorization: calibration images vs the fine-tuning images",
    )
)


rule synthesize:
    """n images per prompt from one adapted model; image i of every prompt starts from the noise of seed + i."""
    input:
        adapter=adapter_input,
        foundation=foundation_input,
    output:
        directory(f"{SYNTH_DIR}/{{adapted}}"),
    wildcard_constraints:
        adapted=name_pattern(list(ADAPTED)),
    params:
        synthesis=config["synthesis"],
        foundation=FOUNDATION,
        seed=config["seed"],
    log:
        f"{LOGS}/synthesis/{{adapted}}.log",
    benchmark:
        f"{BENCHMARKS}/synthesis/{{adapted}}.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/synthesize.py"


rule evaluate_synthesis:
    """Table 4 (FID vs real images of the matching class) and Table 5 (classifier on the synthetic images)."""
    input:
        sets=expand(f"{SYNTH_DIR}/{{adapted}}", adapted=list(ADAPTED)),
        real=f"{DATA_DIR}/samples/{config['synthesis']['real_sample']}",
        classifier=reference_classifier_input,
        leakage=manifest_check_inputs(SYNTH_LEAKAGE),
    output:
        table4=f"{SYNTH_DIR}/evaluation/table4.csv",
        table5=f"{SYNTH_DIR}/evaluation/table5.csv",
        scores=f"{SYNTH_DIR}/evaluation/scores.csv",
    params:
        leakage=SYNTH_LEAKAGE,
        methods=list(ADAPTED),
        synthesis=config["synthesis"],
        classifier=REFERENCE_CLASSIFIER,
        seed=config["seed"],
        evaluation=config["evaluation"],
    log:
        f"{LOGS}/synthesis/evaluate_synthesis.log",
    benchmark:
        f"{BENCHMARKS}/synthesis/evaluate_synthesis.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/evaluate_synthesis.py"


rule render_synthesis:
    """Tables 4 and 5 beside the paper's, the prompt-dependence table (effusion minus normal prompt on the same
    noise), the sample grid (Figs. 1, 4) and training vs synthetic images (Fig. 5)."""
    input:
        sets=rules.evaluate_synthesis.input.sets,
        table4=rules.evaluate_synthesis.output.table4,
        table5=rules.evaluate_synthesis.output.table5,
        scores=rules.evaluate_synthesis.output.scores,
        train=f"{DATA_DIR}/samples/{fig5_sample()}",
    output:
        **{
            f"table{n}_{ext}": report(
                f"{RESULTS}/tables/chambon2022_table{n}.{ext}",
                caption=f"../report/synthesis_table{n}.rst",
                category=SYNTH_CATEGORY,
            )
            for n in (4, 5)
            for ext in ("csv", "md", "tex")
        },
        **{
            f"prompt_dependence_{ext}": report(
                f"{RESULTS}/tables/chambon2022_prompt_dependence.{ext}",
                caption="../report/synthesis_prompt_dependence.rst",
                category=SYNTH_CATEGORY,
            )
            for ext in ("csv", "md", "tex")
        },
        **{
            f"{fig}_{ext}": report(
                f"{RESULTS}/figures/chambon2022_{fig}.{ext}",
                caption=f"../report/synthesis_{fig}.rst",
                category=SYNTH_CATEGORY,
            )
            for fig in ("samples", "fig5")
            for ext in ("png", "pdf")
        },
    params:
        methods=list(ADAPTED),
        # each model's method and settings map it onto the paper's rows (cxrgen.adapt.methods)
        models=ADAPTED,
        synthesis=config["synthesis"],
        fig5_method=fig5_method(),
        scale=config["scale"],
        seed=config["seed"],
    log:
        f"{LOGS}/synthesis/render_synthesis.log",
    localrule: True
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/render_synthesis.py"


rule memorization:
    """Privacy: nearest fine-tuning image of every synthetic image (features, SSIM), calibrated on other real patients."""
    input:
        sets=rules.evaluate_synthesis.input.sets,
        train=f"{DATA_DIR}/samples/{config['adaptation']['sample']}",
        real=f"{DATA_DIR}/samples/{config['synthesis']['real_sample']}",
        classifier=reference_classifier_input,
    output:
        summary=f"{SYNTH_DIR}/evaluation/memorization.csv",
        per_image=f"{SYNTH_DIR}/evaluation/memorization_per_image.csv",
    params:
        leakage=MEMORIZATION_LEAKAGE,
        methods=list(ADAPTED),
        classifier=REFERENCE_CLASSIFIER,
        quantile=config["synthesis"]["memorization_quantile"],
    log:
        f"{LOGS}/synthesis/memorization.log",
    benchmark:
        f"{BENCHMARKS}/synthesis/memorization.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/memorization.py"


rule render_memorization:
    """The memorization table and the closest synthetic/training pairs."""
    input:
        sets=rules.evaluate_synthesis.input.sets,
        summary=rules.memorization.output.summary,
        per_image=rules.memorization.output.per_image,
        train=rules.memorization.input.train,
    output:
        **{
            f"table_{ext}": report(
                f"{RESULTS}/tables/privacy_memorization.{ext}",
                caption="../report/memorization.rst",
                category="Privacy (memorization)",
            )
            for ext in ("csv", "md", "tex")
        },
        **{
            f"figure_{ext}": report(
                f"{RESULTS}/figures/privacy_closest_pairs.{ext}",
                caption="../report/memorization_pairs.rst",
                category="Privacy (memorization)",
            )
            for ext in ("png", "pdf")
        },
    params:
        methods=list(ADAPTED),
        scale=config["scale"],
    log:
        f"{LOGS}/synthesis/render_memorization.log",
    localrule: True
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/render_memorization.py"
