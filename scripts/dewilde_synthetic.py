from cxrgen.studies.dewilde import generate_class_set
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    p, inf = snakemake.params, snakemake.params.inference
    # seed offset 10_000: the training images never reuse the noise of the sweep / composability images
    manifest = generate_class_set(p.foundation, snakemake.input.embedding, p.label, p.n, p.seed + 10_000,
                                  snakemake.output[0], inf["steps"], inf["guidance"], scheduler=inf["scheduler"],
                                  batch_size=inf["batch_size"])
    log.info("%d synthetic %s images in %s", len(manifest), p.label, snakemake.output[0])
