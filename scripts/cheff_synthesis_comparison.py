from pathlib import Path

from cxrgen.cheff.config import CheffConfig
from cxrgen.studies.cheff import run_synthesis_comparison
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    out = snakemake.output
    p = snakemake.params
    df = run_synthesis_comparison(
        snakemake.input.cheff,
        dict(zip(p.sd_names, snakemake.input.sd_sets)),
        dict(zip(p.zafar_names, snakemake.input.zafar_sets)),
        snakemake.input.real,
        CheffConfig.from_dict(p.cheff),
        out.csv,
        Path(out.synthesis_comparison_csv).with_suffix(""),
        p.scale,
        classifier=p.classifier,
        seed=p.seed,
        fid_n_boot=p.evaluation["fid_n_boot"],
    )
    log.info("FID/KID on one real set:\n%s", df.to_string(index=False))
