from cxrgen.studies.zafar import evaluate_zafar
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    sets = dict(zip(snakemake.params.models, snakemake.input.sets))
    adapters = {"foundation": None, **dict(zip(snakemake.params.names, snakemake.input.adapters))}
    frames = evaluate_zafar(sets, adapters, snakemake.input.real, snakemake.params.reference,
                            snakemake.input.attribute, snakemake.input.corpus,
                            out_dir=snakemake.output.methods.rsplit("/", 1)[0], n_boot=snakemake.params.n_boot,
                            seed=snakemake.params.seed, fid_n_boot=snakemake.params.evaluation["fid_n_boot"],
                            min_class_count=snakemake.params.evaluation["min_class_count"])
    log.info("methods:\n%s", frames["methods"].to_string())
