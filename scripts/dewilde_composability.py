from cxrgen.studies.dewilde import run_composability
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    d, p = snakemake.params.dewilde, snakemake.params
    c, inf = d["composability"], d["inference"]
    res = run_composability(p.foundation, snakemake.input.embeddings, p.classifier, snakemake.output[0],
                            c["findings"], c["weights"], c["n_images"], p.seed, inf["steps"], inf["guidance"],
                            multi=c["multi"], scheduler=inf["scheduler"], batch_size=inf["batch_size"],
                            healthy=d["healthy"])
    log.info("curve:\n%s\nmulti:\n%s", res["curve"].to_string(), res["multi"].to_string())
