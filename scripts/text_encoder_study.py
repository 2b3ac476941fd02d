from cxrgen.data.openi import load_openi
from cxrgen.data.table import read_dataset_table
from cxrgen.studies.text_encoder import run_text_encoder_study, save_study
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    study = snakemake.params.study
    corpus = snakemake.wildcards.corpus
    reports = load_openi() if corpus == "openi" else read_dataset_table(snakemake.input.reports)
    # "foundation-clip" reads the text encoder of the foundation pipeline this workflow uses
    encoders = [
        {**spec, "path": snakemake.input.foundation} if spec["name"] == "foundation-clip" else dict(spec)
        for spec in study["encoders"]
    ]
    result = run_text_encoder_study(
        reports,
        encoders,
        k=study["k"],
        same_label=study["same_label"],
        cache_dir=study["cache_dir"],
        n_boot=study["n_boot"],
        seed=snakemake.params.seed,
        similarity=study["similarity"],
        tsne_dir=snakemake.output.tsne,
        progress=True,
    )
    save_study(result, snakemake.output.table2.rsplit("/", 1)[0])
    log.info("%d reports (%d without impression, %d unlabelled dropped)", result.n_reports, result.n_dropped_empty, result.n_dropped_unlabelled)
