from cxrgen.studies.dewilde import run_inpainting
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    d, p = snakemake.params.dewilde, snakemake.params
    c, inf = d["inpainting"], d["inference"]
    summary = run_inpainting(p.foundation, snakemake.input.embeddings, p.classifier, snakemake.output[0],
                             c["findings"], c["box"], c["n_images"], p.seed, inf["steps"], inf["guidance"],
                             scheduler=inf["scheduler"], batch_size=inf["batch_size"], healthy=d["healthy"])
    log.info("inpainting summary:\n%s", summary.to_string())
