from cxrgen.adapt.pipeline import load_adapted_pipeline
from cxrgen.sampling.synthetic_sets import generate_set
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    s = snakemake.params.synthesis
    adapter = snakemake.input.adapter[0] if snakemake.input.adapter else None
    pipeline = load_adapted_pipeline(snakemake.params.foundation, adapter, scheduler=s["scheduler"])
    manifest = generate_set(pipeline, s["prompts"], s["n_per_prompt"], snakemake.params.seed, snakemake.output[0],
                            steps=s["steps"], guidance=s["guidance"], batch_size=s["batch_size"],
                            method=snakemake.wildcards.adapted)
    log.info("%d images from %s (%s) with %s", len(manifest), snakemake.wildcards.adapted, pipeline.method,
             pipeline.scheduler_name)
