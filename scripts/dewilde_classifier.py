from cxrgen.studies.dewilde import run_classifier_seed
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    d = snakemake.params.dewilde
    c = d["classifier"]
    frame = run_classifier_seed(snakemake.input.train, snakemake.input.val, snakemake.input.test,
                                snakemake.params.synthetic, c["finding"], c["training"], c["real_per_class"],
                                c["synthetic_per_class"], d["cases"], c["few_cases"], int(snakemake.wildcards.seed),
                                snakemake.output[0], negative=d["healthy"])
    log.info("seed %s:\n%s", snakemake.wildcards.seed, frame.to_string())
