from cxrgen.adapt.pipeline import load_adapted_pipeline
from cxrgen.data.sampling import load_images
from cxrgen.studies.zafar import sample_zafar_sets
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    e = snakemake.params.evaluation
    adapter = snakemake.input.adapter[0] if snakemake.input.adapter else None
    pipeline = load_adapted_pipeline(snakemake.params.foundation, adapter)
    _, real_manifest = load_images(snakemake.input.real)
    man = sample_zafar_sets(pipeline, snakemake.output[0], real_manifest, snakemake.wildcards.model,
                            seed=snakemake.params.seed, prompt_level=e["prompt_level"], n_fid=e["n_fid"],
                            n_per_prompt=e["n_per_prompt"], ood_prompts=e["ood_prompts"], n_ood=e["n_ood"],
                            steps=e["steps"], guidance=e["guidance"], batch_size=e["batch_size"], base=e["base"])
    log.info("%d images from %s (%s)", len(man), snakemake.wildcards.model, pipeline.method)
