from pathlib import Path

from cxrgen.render.findings import Settings, evaluate_claims, load_claims, write_findings
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    inp, p = snakemake.input, snakemake.params
    files = {key: inp[key] for key in ("vae_per_image", "synthesis_scores", "zafar_ood", "cheff_reconstruction", "cheff_beta")}
    files["text_per_report"] = dict(zip(p.corpora, inp.text_per_report))
    files["dewilde_sweep"] = list(inp.dewilde_sweep)
    files["dewilde_classifier"] = list(inp.dewilde_classifier)
    settings = Settings(n_boot=p.findings["n_boot"], seed=p.seed, alpha=p.findings["alpha"],
                        min_per_class=p.findings["min_per_class"], adaptation_methods=tuple(p.adaptation_methods),
                        zafar_methods=tuple(p.zafar_methods), dewilde_cases=p.dewilde_cases)
    frame = evaluate_claims(load_claims(), files, settings)
    write_findings(frame, Path(snakemake.output.csv).with_suffix(""), p.scale, settings.n_boot)
    log.info("findings:\n%s", frame[["claim", "scope", "this run", "ci_low", "ci_high", "verdict"]].to_string(index=False))
