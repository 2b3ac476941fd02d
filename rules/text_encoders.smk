# Text-encoder study (Chambon et al. 2.4, 3.3): CheXpert@k over encoders x extraction methods.


wildcard_constraints:
    corpus="|".join(TEXT_CORPORA),


rule text_encoder_study:
    """Tables 2 and 3 and t-SNE figures for one report corpus (OpenI reports or the dataset's own)."""
    input:
        reports=text_corpus_input,
        foundation=foundation_input,
    output:
        table2=f"{TEXT_DIR}/{{corpus}}/table2.csv",
        table3=f"{TEXT_DIR}/{{corpus}}/table3.csv",
        info=f"{TEXT_DIR}/{{corpus}}/study_info.json",
        per_report=f"{TEXT_DIR}/{{corpus}}/per_report.csv",
        tsne=report(
            directory(f"{TEXT_DIR}/{{corpus}}/tsne"),
            patterns=["{name}.png"],
            caption="../report/text_encoders_tsne.rst",
            category="Text encoders (Chambon Tables 2, 3)",
            subcategory="{corpus}",
        ),
    params:
        # embeddings cached in this run's folder unless the config names a shared one
        study={**config["text_encoders"], "cache_dir": config["text_encoders"]["cache_dir"] or f"{TEXT_DIR}/cache"},
        seed=config["seed"],
    log:
        f"{LOGS}/text_encoders/{{corpus}}.log",
    benchmark:
        f"{BENCHMARKS}/text_encoders/{{corpus}}.tsv"
    threads: workflow.cores
    resources:
        mem_mb=6000,
        runtime=60,
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/text_encoder_study.py"


rule render_text_encoder_study:
    """Tables 2 and 3 of this run beside the paper's, for one corpus."""
    input:
        table2=rules.text_encoder_study.output.table2,
        table3=rules.text_encoder_study.output.table3,
        info=rules.text_encoder_study.output.info,
    output:
        **{
            f"table{n}_{ext}": report(
                f"{RESULTS}/tables/chambon2022_table{n}_{{corpus}}.{ext}",
                caption=f"../report/text_encoders_table{n}.rst",
                category="Text encoders (Chambon Tables 2, 3)",
                subcategory="{corpus}",
            )
            for n in (2, 3)
            for ext in ("csv", "md", "tex")
        },
    params:
        scale=config["scale"],
    log:
        f"{LOGS}/text_encoders/render_{{corpus}}.log",
    localrule: True
    conda:
        "../envs/cxrgen.yaml"
    script:
        "../scripts/render_text_encoder_study.py"
