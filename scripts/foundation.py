from cxrgen.engine import RuntimeConfig
from cxrgen.models.foundation import FoundationConfig, build_foundation
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    cfg = FoundationConfig.from_dict(snakemake.params.settings)  # preset + overrides + seed, resolved in the rule
    runtime = RuntimeConfig.from_dict(snakemake.params.runtime, "foundation.runtime")
    summary = build_foundation(cfg, snakemake.output[0], progress=True, runtime=runtime)
    log.info("foundation built: %s", summary)
