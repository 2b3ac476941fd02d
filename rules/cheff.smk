# Cheff (Weber et al. 2023): a cascaded latent diffusion model trained from scratch on a MaCheX-style collection.
# MaCheX (sec. 4, Table 1) -> KL autoencoder (7.3.1) -> semantic diffusion model, unconditional and report-conditioned
# (7.3.2) -> super-resolution on bicubic x_LR (SR_base), fine-tuned on D(z) (SR_fine, 7.3.3) -> reconstruction
# workflows (Table 2, Fig. 3), unconditional synthesis FID/KID (sec. 5) alone and beside the adapted Stable
# Diffusion models of the other studies on one real set, report-to-image samples (Fig. 8),
# in-/outpainting (Figs. 5, 7) and the forward-process check of the max-beta fix (7.6, Fig. 13).

CHEFF = config["cheff"]
CHEFF_DIR = f"{RESULTS}/cheff"
CHEFF_MODELS = f"{MODELS_DIR}/cheff"
CHEFF_MACHEX = f"{CHEFF_DIR}/machex"
CHEFF_CATEGORY = "Cheff (Weber et al.)"
CHEFF_SDM_VARIANTS = ["unconditional", "report"]


# Helpers are lambdas and constants: the linter wants functions in common.smk, and this stage keeps its own here.
# The MaCheX sources: the configured list, or the workflow's dataset (config["data"]) as the only one. A configured
# root must exist (checked when the workflow is parsed); the phantom root is made by rule phantom_dataset.
CHEFF_SOURCES = CHEFF["machex"].get("sources") or []
for _i, _src in enumerate(CHEFF_SOURCES if "weber2023" in STUDIES else []):
    _made_here = config["data"]["source"] == "phantom" and _src["root"] == config["data"]["root"]
    if not _made_here and not Path(_src["root"]).exists():
        raise WorkflowError(
            f"config cheff.machex.sources[{_i}].root={_src['root']!r} does not exist; "
            f"expected the {_src['adapter']} dataset root"
        )
CHEFF_MACHEX_INPUTS = dataset_root_input if not CHEFF_SOURCES else [s["root"] for s in CHEFF_SOURCES]
# FID/KID features: configured, else the preset's (inception at paper scale, the reference classifier otherwise);
# the reference classifier is an input only when its features are used
CHEFF_FID_EXTRACTOR = (CHEFF.get("evaluation") or {}).get(
    "fid_extractor", "inception" if CHEFF.get("preset") == "paper" else "reference"
)
CHEFF_CLASSIFIER_INPUT = reference_classifier_input if CHEFF_FID_EXTRACTOR == "reference" else []
# report(...)-wrapped outputs {<name>_<ext>: <stem>.<ext>} of one table or figure (name = stem without weber2023_)
cheff_report = lambda stem, exts, caption: {
    f"{Path(stem).name.replace('weber2023_', '')}_{ext}": report(
        f"{stem}.{ext}", caption=f"../report/{caption}.rst", category=CHEFF_CATEGORY
    )
    for ext in exts
}


# the comparison's Stable Diffusion sets: those of the selected studies (Chambon's adapted models, Zafar's models)
CHEFF_COMPARED_SD = list(ADAPTED) if "chambon2022" in STUDIES else []
CHEFF_COMPARED_ZAFAR = ZAFAR_SETS if "zafar2023" in STUDIES else []
# run-time patient checks (cxrgen.data.leakage) of the comparison's real set: the cascade's MaCheX training rows of
# the workflow's own dataset, the few-shot fine-tuning samples, Zafar's training samples (of the compared sets)
CHEFF_COMPARISON_LEAKAGE = [
    {**check, "trains_dir": f"{CHEFF_MACHEX}/table.csv", "trains_rows": ["in_machex", "workflow_dataset"]}
    for check in manifest_checks(
        (
            leakage.MACHEX_TRAIN,
            config["synthesis"]["real_sample"],
            "Cheff comparison: real set vs the cascade's training images",
        )
    )
] + manifest_checks(
    *[
        (
            adaptation_sample(n),
            config["synthesis"]["real_sample"],
            f"Cheff comparison: real set vs {n}'s fine-tuning images",
        )
        for n in TRAINED
        if ADAPTED[n]["method"] in FEW_SHOT_METHODS and n in CHEFF_COMPARED_SD
    ],
    *[
        (
            m.get("sample", ZAFAR["train_sample"]),
            config["synthesis"]["real_sample"],
            f"Cheff comparison: real set vs Zafar {n}'s training images",
        )
        for n, m in ZAFAR_METHODS.items()
        if n in CHEFF_COMPARED_ZAFAR
    ],
)
TABLE_EXTS = ("csv", "md", "tex")
FIGURE_EXTS = ("png", "pdf")


rule cheff_machex:
    """Unify the sources into MaCheX (frontal train images of every source; test subsets apart) and Table 1."""
    input:
        CHEFF_MACHEX_INPUTS,
    output:
        **cheff_report(f"{RESULTS}/tables/weber2023_table1", TABLE_EXTS, "cheff_table1"),
        table=f"{CHEFF_MACHEX}/table.csv",
        train=f"{CHEFF_MACHEX}/train.csv",
        test=f"{CHEFF_MACHEX}/test.csv",
        images=directory(f"{CHEFF_MACHEX}/images"),
    params:
        cheff=CHEFF,
        settings=cheff_settings("machex"),
        data=config["data"],
        scale=config["scale"],
        seed=config["seed"],
    log:
        f"{LOGS}/cheff/machex.log",
    benchmark:
        f"{BENCHMARKS}/cheff/machex.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_machex.py"


rule cheff_autoencoder:
    """The KL autoencoder (f = 4) on x_LR: pixel L1 + perceptual + KL (+ patch adversarial after disc_start)."""
    input:
        images=rules.cheff_machex.output.images,
    output:
        directory(f"{CHEFF_MODELS}/autoencoder"),
    params:
        cheff=CHEFF,
        settings=cheff_settings("autoencoder", "runtime"),
        checkpoint=f"{CHEFF_MODELS}/autoencoder.partial",
        seed=config["seed"],
    log:
        f"{LOGS}/cheff/autoencoder.log",
    benchmark:
        f"{BENCHMARKS}/cheff/autoencoder.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["cheff_autoencoder"],
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_autoencoder.py"


rule cheff_sdm:
    """The semantic diffusion model on the autoencoder's latents: unconditional, or report-conditioned (BERT-style
    encoder trained jointly, cross-attention); linear schedule with max beta 0.0295."""
    input:
        images=rules.cheff_machex.output.images,
        autoencoder=rules.cheff_autoencoder.output[0],
    output:
        directory(f"{CHEFF_MODELS}/sdm_{{variant}}"),
    wildcard_constraints:
        variant=name_pattern(CHEFF_SDM_VARIANTS),
    params:
        cheff=CHEFF,
        settings=cheff_settings("sdm", "runtime"),
        checkpoint=lambda w: f"{CHEFF_MODELS}/sdm_{w.variant}.partial",
        seed=config["seed"],
    log:
        f"{LOGS}/cheff/sdm_{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/cheff/sdm_{{variant}}.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["cheff_sdm"],
        mem_mb=8000,
        runtime=720,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_sdm.py"


rule cheff_sr_base:
    """SR_base: the super-resolution diffusion model conditioned (channel concat) on bicubic downsamples x_LR."""
    input:
        images=rules.cheff_machex.output.images,
    output:
        directory(f"{CHEFF_MODELS}/sr_base"),
    params:
        cheff=CHEFF,
        settings=cheff_settings("sr", "runtime"),
        checkpoint=f"{CHEFF_MODELS}/sr_base.partial",
        seed=config["seed"],
    log:
        f"{LOGS}/cheff/sr_base.log",
    benchmark:
        f"{BENCHMARKS}/cheff/sr_base.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["cheff_sr"],
        mem_mb=16000,
        runtime=1440,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_sr.py"


rule cheff_sr_fine:
    """SR_fine: SR_base fine-tuned on decoded latents D(E(x_LR)), the inputs the cascade gives it (sec. 5)."""
    input:
        images=rules.cheff_machex.output.images,
        autoencoder=rules.cheff_autoencoder.output[0],
        sr_base=rules.cheff_sr_base.output[0],
    output:
        directory(f"{CHEFF_MODELS}/sr_fine"),
    params:
        cheff=CHEFF,
        settings=cheff_settings("sr", "runtime"),
        checkpoint=f"{CHEFF_MODELS}/sr_fine.partial",
        seed=config["seed"],
    log:
        f"{LOGS}/cheff/sr_fine.log",
    benchmark:
        f"{BENCHMARKS}/cheff/sr_fine.tsv"
    threads: workflow.cores
    resources:
        gpu=config["gpus"]["cheff_sr"],
        mem_mb=16000,
        runtime=1440,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_sr.py"


rule cheff_cascade:
    """The cascade SDM -> D -> SR_fine as one diffusers pipeline folder (cxrgen.cheff.cascade.CheffPipeline:
    save_pretrained / from_pretrained) with its model card, loadable without the stage folders."""
    input:
        autoencoder=rules.cheff_autoencoder.output[0],
        sdm=f"{CHEFF_MODELS}/sdm_{{variant}}",
        sr=rules.cheff_sr_fine.output[0],
    output:
        directory(f"{CHEFF_MODELS}/cascade_{{variant}}"),
    wildcard_constraints:
        variant=name_pattern(CHEFF_SDM_VARIANTS),
    log:
        f"{LOGS}/cheff/cascade_{{variant}}.log",
    benchmark:
        f"{BENCHMARKS}/cheff/cascade_{{variant}}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_cascade.py"


rule cheff_reconstruction:
    """Table 2: MSE/PSNR/SSIM of the three reconstruction workflows with SR_base and SR_fine; Fig. 3 examples."""
    input:
        images=rules.cheff_machex.output.images,
        autoencoder=rules.cheff_autoencoder.output[0],
        sr_base=rules.cheff_sr_base.output[0],
        sr_fine=rules.cheff_sr_fine.output[0],
    output:
        **cheff_report(f"{RESULTS}/tables/weber2023_table2", TABLE_EXTS, "cheff_table2"),
        **cheff_report(f"{RESULTS}/figures/weber2023_fig3", FIGURE_EXTS, "cheff_fig3"),
        per_image=f"{CHEFF_DIR}/reconstruction/per_image.csv",
        table2=f"{CHEFF_DIR}/reconstruction/table2.csv",
    params:
        cheff=CHEFF,
        settings=cheff_settings("sr", "evaluation", "runtime"),
        scale=config["scale"],
        seed=config["seed"],
    log:
        f"{LOGS}/cheff/reconstruction.log",
    benchmark:
        f"{BENCHMARKS}/cheff/reconstruction.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_reconstruction.py"


rule cheff_synthesis:
    """Cascade samples z ~ SDM -> D(z) -> SR_fine: FID/KID against held-out real x_HR (sec. 5), the sample grid
    (Fig. 4e) and report-conditioned samples per prompt (Fig. 8)."""
    input:
        images=rules.cheff_machex.output.images,
        autoencoder=rules.cheff_autoencoder.output[0],
        sdm=f"{CHEFF_MODELS}/sdm_unconditional",
        sdm_report=f"{CHEFF_MODELS}/sdm_report",
        sr=rules.cheff_sr_fine.output[0],
        classifier=CHEFF_CLASSIFIER_INPUT,
    output:
        **cheff_report(f"{RESULTS}/tables/weber2023_fid_kid", TABLE_EXTS, "cheff_fid_kid"),
        **cheff_report(f"{RESULTS}/figures/weber2023_samples", FIGURE_EXTS, "cheff_samples"),
        **cheff_report(f"{RESULTS}/figures/weber2023_report_samples", FIGURE_EXTS, "cheff_report_samples"),
        fid_kid=f"{CHEFF_DIR}/synthesis/fid_kid.csv",
        samples=f"{CHEFF_DIR}/synthesis/samples.npz",
    params:
        cheff=CHEFF,
        settings=cheff_settings("sdm", "sr", "evaluation", "runtime"),
        classifier=REFERENCE_CLASSIFIER,
        scale=config["scale"],
        seed=config["seed"],
        evaluation=config["evaluation"],
    log:
        f"{LOGS}/cheff/synthesis.log",
    benchmark:
        f"{BENCHMARKS}/cheff/synthesis.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_synthesis.py"


rule cheff_synthesis_comparison:
    """FID/KID of the cascade's samples and of every adapted Stable Diffusion set of the selected studies (Chambon's
    methods, Zafar's models) against one real set, with one extractor, one resizing and equal synthetic counts."""
    input:
        cheff=rules.cheff_synthesis.output.samples,
        sd_sets=expand(f"{SYNTH_DIR}/{{adapted}}", adapted=CHEFF_COMPARED_SD),
        zafar_sets=expand(f"{ZAFAR_DIR}/samples/{{model}}", model=CHEFF_COMPARED_ZAFAR),
        real=f"{DATA_DIR}/samples/{config['synthesis']['real_sample']}",
        classifier=CHEFF_CLASSIFIER_INPUT,
        machex=rules.cheff_machex.output.table,
        leakage=manifest_check_inputs(CHEFF_COMPARISON_LEAKAGE),
    output:
        **cheff_report(f"{RESULTS}/tables/weber2023_synthesis_comparison", TABLE_EXTS, "cheff_synthesis_comparison"),
        csv=f"{CHEFF_DIR}/synthesis/comparison.csv",
    params:
        cheff=CHEFF,
        settings=cheff_settings("evaluation", "runtime"),
        sd_names=CHEFF_COMPARED_SD,
        zafar_names=CHEFF_COMPARED_ZAFAR,
        leakage=CHEFF_COMPARISON_LEAKAGE,
        classifier=REFERENCE_CLASSIFIER,
        scale=config["scale"],
        seed=config["seed"],
        evaluation=config["evaluation"],
    log:
        f"{LOGS}/cheff/synthesis_comparison.log",
    benchmark:
        f"{BENCHMARKS}/cheff/synthesis_comparison.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_synthesis_comparison.py"


rule cheff_inpainting:
    """Inpainting (a region removed and refilled, Fig. 5) and outpainting (completions around a provided area,
    Fig. 7) with the unconditional SDM; how well the known region is preserved."""
    input:
        images=rules.cheff_machex.output.images,
        autoencoder=rules.cheff_autoencoder.output[0],
        sdm=f"{CHEFF_MODELS}/sdm_unconditional",
    output:
        **cheff_report(f"{RESULTS}/figures/weber2023_inpainting", FIGURE_EXTS, "cheff_inpainting"),
        **cheff_report(f"{RESULTS}/figures/weber2023_outpainting", FIGURE_EXTS, "cheff_outpainting"),
        preservation=f"{CHEFF_DIR}/inpainting/preservation.csv",
    params:
        cheff=CHEFF,
        settings=cheff_settings("sdm", "evaluation", "runtime"),
        seed=config["seed"],
    log:
        f"{LOGS}/cheff/inpainting.log",
    benchmark:
        f"{BENCHMARKS}/cheff/inpainting.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_inpainting.py"


rule cheff_beta_check:
    """The max-beta fix (7.6, Fig. 13): decoded z_T and corr(z_T, z_0) for max beta 0.0195 (LDM) vs 0.0295 (Cheff)."""
    input:
        images=rules.cheff_machex.output.images,
        autoencoder=rules.cheff_autoencoder.output[0],
        sdm=f"{CHEFF_MODELS}/sdm_unconditional",
    output:
        **cheff_report(f"{RESULTS}/tables/weber2023_beta_check", TABLE_EXTS, "cheff_beta_check"),
        **cheff_report(f"{RESULTS}/figures/weber2023_fig13", FIGURE_EXTS, "cheff_fig13"),
        csv=f"{CHEFF_DIR}/beta_check/beta_check.csv",
        per_image=f"{CHEFF_DIR}/beta_check/per_image.csv",
    params:
        cheff=CHEFF,
        settings=cheff_settings("sdm", "evaluation", "runtime"),
        scale=config["scale"],
        seed=config["seed"],
    log:
        f"{LOGS}/cheff/beta_check.log",
    benchmark:
        f"{BENCHMARKS}/cheff/beta_check.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/cheff_beta_check.py"


# (path, rule, description) of the Cheff tables and figures: rules/common.smk's reported_outputs() adds them, so
# rule all and the results index pick them up
CHEFF_REPORTED = [
    (
        f"{RESULTS}/tables/weber2023_table1.md",
        "cheff_machex",
        "MaCheX components: patients, train/test, frontal images in MaCheX (Weber Table 1)",
    ),
    (
        f"{RESULTS}/tables/weber2023_table2.md",
        "cheff_reconstruction",
        "Cheff reconstruction workflows: MSE, PSNR, SSIM (Weber Table 2)",
    ),
    (
        f"{RESULTS}/figures/weber2023_fig3.png",
        "cheff_reconstruction",
        "originals vs reconstructions through AE and SR (Weber Fig. 3)",
    ),
    (
        f"{RESULTS}/tables/weber2023_fid_kid.md",
        "cheff_synthesis",
        "FID/KID of unconditional cascade samples (Weber sec. 5)",
    ),
    (
        f"{RESULTS}/figures/weber2023_samples.png",
        "cheff_synthesis",
        "unconditional cascade samples: D(z) and SR(D(z)) (Weber Fig. 4e)",
    ),
    (
        f"{RESULTS}/figures/weber2023_report_samples.png",
        "cheff_synthesis",
        "report-conditioned cascade samples (Weber Fig. 8)",
    ),
    (
        f"{RESULTS}/figures/weber2023_inpainting.png",
        "cheff_inpainting",
        "inpainting with the unconditional SDM (Weber Fig. 5)",
    ),
    (
        f"{RESULTS}/figures/weber2023_outpainting.png",
        "cheff_inpainting",
        "outpainting completions of one provided area (Weber Fig. 7)",
    ),
    (
        f"{RESULTS}/tables/weber2023_beta_check.md",
        "cheff_beta_check",
        "terminal signal and corr(z_T, z_0) for max beta 0.0195 vs 0.0295 (Weber 7.6)",
    ),
    (f"{RESULTS}/figures/weber2023_fig13.png", "cheff_beta_check", "decoded z_T for both max betas (Weber Fig. 13)"),
    *[
        (
            f"{CHEFF_MODELS}/cascade_{v}",
            "cheff_cascade",
            f"the {v} Cheff cascade as one diffusers pipeline folder "
            "(CheffPipeline.from_pretrained; `cxrgen info` says how to load it)",
        )
        for v in CHEFF_SDM_VARIANTS
    ],
]
cheff_reported_outputs = lambda: list(CHEFF_REPORTED)
# the cross-study comparison: in rule all when Weber and a study with Stable Diffusion sets are selected (not part of
# `snakemake weber2023`, which makes the paper's own tables and figures)
cheff_comparison_reported_outputs = lambda: (
    [
        (
            f"{RESULTS}/tables/weber2023_synthesis_comparison.md",
            "cheff_synthesis_comparison",
            "FID/KID of Cheff and every adapted Stable Diffusion model of the selected studies on one real set (Weber sec. 5, miniature)",
        ),
    ]
    if "weber2023" in STUDIES and (CHEFF_COMPARED_SD or CHEFF_COMPARED_ZAFAR)
    else []
)
