from pathlib import Path

from cxrgen.render.findings import Settings, evaluate_claims, load_claims, write_findings
from cxrgen.workflow import script_context

with script_context(snakemake) as log:
    inp, p = snakemake.input, snakemake.params
    named = dict(inp.items())  # the selected studies' files only (rules/common.smk: findings_files)
    files = {key: named[key] for key in ("vae_per_image", "synthesis_scores", "zafar_ood", "cheff_reconstruction", "cheff_beta") if key in named}
    if "text_per_report" in named:
        files["text_per_report"] = dict(zip(p.corpora, named["text_per_report"]))
    for key in ("dewilde_sweep", "dewilde_classifier"):
        if key in named:
            files[key] = list(named[key])
    settings = Settings(n_boot=p.findings["n_boot"], seed=p.seed, alpha=p.findings["alpha"],
                        min_per_class=p.findings["min_per_class"], adaptation_methods=tuple(p.adaptation_methods),
                        zafar_methods=tuple(p.zafar_methods), dewilde_cases=p.dewilde_cases,
                        studies=tuple(p.studies))
    frame = evaluate_claims(load_claims(), files, settings)
    write_findings(frame, Path(snakemake.output.csv).with_suffix(""), p.scale, settings.n_boot)
    log.info("findings:\n%s", frame[["claim", "scope", "this run", "ci_low", "ci_high", "verdict"]].to_string(index=False))
