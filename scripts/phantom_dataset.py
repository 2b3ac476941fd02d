from cxrgen.data.phantom import generate_mimic_cxr
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    p = snakemake.params.phantom
    summary = generate_mimic_cxr(
        snakemake.output[0],
        n_patients=p["n_patients"],
        studies_per_patient=tuple(p["studies_per_patient"]),
        image_size=p["image_size"],
        seed=snakemake.params.seed,
    )
    log.info("wrote %d images to %s", len(summary), snakemake.output[0])
