from pathlib import Path

from cxrgen.cheff.config import CheffConfig
from cxrgen.studies.cheff import run_synthesis
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    out = snakemake.output
    fid_kid = run_synthesis(
        Path(snakemake.input.images).parent,
        snakemake.input.autoencoder,
        snakemake.input.sdm,
        snakemake.input.sdm_report,
        snakemake.input.sr,
        CheffConfig.from_dict(snakemake.params.cheff),
        Path(out.fid_kid).parent,
        Path(out.fid_kid_csv).with_suffix(""),
        Path(out.samples_png).with_suffix(""),
        Path(out.report_samples_png).with_suffix(""),
        snakemake.params.scale,
        classifier=snakemake.params.classifier,
        seed=snakemake.params.seed,
        fid_n_boot=snakemake.params.evaluation["fid_n_boot"],
    )
    log.info("FID/KID of this run:\n%s", fid_kid.to_string(index=False))
