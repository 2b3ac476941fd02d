from pathlib import Path

from cxrgen.studies.dewilde import render_dewilde
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    out = snakemake.output
    stems = {k[: -len("_png")]: Path(v).with_suffix("") for k, v in out.items() if k.endswith("_png")}
    stems.update({k[: -len("_csv")]: Path(v).with_suffix("") for k, v in out.items() if k.endswith("_csv")})
    d = snakemake.params.dewilde
    paths = render_dewilde(snakemake.input.fids, snakemake.input.sets, snakemake.input.composability,
                           snakemake.input.inpainting, snakemake.input.classifier, stems, default_cases=d["cases"],
                           scale=snakemake.params.scale, n_show=d["n_show"],
                           min_class_count=snakemake.params.evaluation["min_class_count"])
    log.info("rendered %s", paths)
