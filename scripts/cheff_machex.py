from pathlib import Path

from cxrgen.cheff.config import CheffConfig
from cxrgen.studies.cheff import run_machex
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    cfg = CheffConfig.from_dict(snakemake.params.cheff)
    m = cfg.machex
    table1 = run_machex(
        m.resolve_sources(snakemake.params.data),
        m.frontal_only,
        cfg.sr.hr_size,
        Path(snakemake.output.images).parent,
        Path(snakemake.output.table1_csv).with_suffix(""),
        snakemake.params.scale,
        seed=snakemake.params.seed,
        max_train=m.max_train,
        max_test=m.max_test,
        test_fraction=m.test_fraction,
    )
    log.info("MaCheX of this run:\n%s", table1.to_string(index=False))
