# VAE reconstruction study (Chambon et al. 2.3, 3.2): RMSE/PSNR/SSIM, FID, latent cosine similarity and
# reference-classifier performance on originals vs reconstructions (Tables 1, 6; Fig. 3).

VAE_DIR = f"{RESULTS}/vae_study"
VAE_PAPER_TABLE = "table6" if "chexpert" in DATASET.lower() else "table1"  # Table 6 is the CheXpert version
# run-time patient checks (cxrgen.data.leakage): the scored sample vs a classifier trained here (train, validation)
VAE_LEAKAGE = (
    manifest_checks(
        (
            RC["train_sample"],
            config["vae_study"]["sample"],
            "Chambon Table 1: scored images vs the classifier's training images",
        ),
        (
            RC["val_sample"],
            config["vae_study"]["sample"],
            "Chambon Table 1: scored images vs the images the classifier's thresholds were chosen on",
        ),
    )
    if RC["model"] == "train"
    else []
)


rule vae_study:
    """Encode/decode the configured sample with the foundation's VAE and score the reconstructions."""
    input:
        sample=f"{DATA_DIR}/samples/{config['vae_study']['sample']}",
        foundation=foundation_input,
        classifier=reference_classifier_input,
        leakage=manifest_check_inputs(VAE_LEAKAGE),
    output:
        per_image=f"{VAE_DIR}/per_image.csv",
        summary=f"{VAE_DIR}/summary.csv",
        fid=f"{VAE_DIR}/fid.csv",
        table1=f"{VAE_DIR}/table1.csv",
        examples=f"{VAE_DIR}/examples.npz",
    params:
        study=config["vae_study"],
        leakage=VAE_LEAKAGE,
        foundation=FOUNDATION,
        classifier=REFERENCE_CLASSIFIER,
        seed=config["seed"],
        evaluation=config["evaluation"],
    log:
        f"{LOGS}/vae_study/vae_study.log",
    benchmark:
        f"{BENCHMARKS}/vae_study/vae_study.tsv"
    threads: workflow.cores
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/vae_study.py"


rule render_vae_study:
    """Table 1 (or 6) and the section 3.2 summary side by side with the paper, and Figure 3."""
    input:
        per_image=rules.vae_study.output.per_image,
        summary=rules.vae_study.output.summary,
        fid=rules.vae_study.output.fid,
        table1=rules.vae_study.output.table1,
        examples=rules.vae_study.output.examples,
    output:
        table1_csv=report(
            f"{RESULTS}/tables/chambon2022_table1.csv",
            caption="../report/vae_table1.rst",
            category="VAE reconstruction (Chambon Tables 1, 6; Fig. 3)",
        ),
        table1_md=report(
            f"{RESULTS}/tables/chambon2022_table1.md",
            caption="../report/vae_table1.rst",
            category="VAE reconstruction (Chambon Tables 1, 6; Fig. 3)",
        ),
        table1_tex=report(
            f"{RESULTS}/tables/chambon2022_table1.tex",
            caption="../report/vae_table1.rst",
            category="VAE reconstruction (Chambon Tables 1, 6; Fig. 3)",
        ),
        summary_csv=report(
            f"{RESULTS}/tables/chambon2022_vae_summary.csv",
            caption="../report/vae_summary.rst",
            category="VAE reconstruction (Chambon Tables 1, 6; Fig. 3)",
        ),
        summary_md=report(
            f"{RESULTS}/tables/chambon2022_vae_summary.md",
            caption="../report/vae_summary.rst",
            category="VAE reconstruction (Chambon Tables 1, 6; Fig. 3)",
        ),
        summary_tex=report(
            f"{RESULTS}/tables/chambon2022_vae_summary.tex",
            caption="../report/vae_summary.rst",
            category="VAE reconstruction (Chambon Tables 1, 6; Fig. 3)",
        ),
        fig3_png=report(
            f"{RESULTS}/figures/chambon2022_fig3.png",
            caption="../report/vae_fig3.rst",
            category="VAE reconstruction (Chambon Tables 1, 6; Fig. 3)",
        ),
        fig3_pdf=report(
            f"{RESULTS}/figures/chambon2022_fig3.pdf",
            caption="../report/vae_fig3.rst",
            category="VAE reconstruction (Chambon Tables 1, 6; Fig. 3)",
        ),
    params:
        scale=config["scale"],
        paper_table=VAE_PAPER_TABLE,
    log:
        f"{LOGS}/vae_study/render_vae_study.log",
    localrule: True
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/render_vae_study.py"
