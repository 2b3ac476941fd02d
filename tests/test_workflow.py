"""Workflow-level tests: lint, config validation errors, dry runs, and a real run of the smoke config."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrgen.adapt.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}


def run_snakemake(*args, cwd=REPO, check=True):
    proc = subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


# What `make smoke` passes on a machine without CUDA (see the Makefile): one thread per job, two jobs at once.
SMOKE = ("--cores", "2", "--max-threads", "1", "--resources", "gpu=2", "--configfile", "configs/smoke.yaml")


def copy_workflow(dst: Path) -> Path:
    """A copy of the workflow (not the package) in ``dst``, so runs never touch the repo's results/."""
    for name in ("Snakefile", "config.yaml", "rules", "scripts", "schemas", "configs", "report", "profiles", "envs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    return dst


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("wf"))


def test_lint_is_clean():
    proc = run_snakemake("--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def failed_dry_run(workdir, name: str, config_yaml: str) -> str:
    """Output of ``snakemake -n`` with ``config_yaml`` merged over the default; the dry run must fail."""
    cfg = workdir / name
    cfg.write_text(config_yaml)
    proc = run_snakemake("-n", "--configfile", str(cfg), cwd=workdir, check=False)
    assert proc.returncode != 0
    return proc.stdout + proc.stderr


def test_bad_config_value_names_the_key(workdir):
    out = failed_dry_run(workdir, "bad.yaml", "data:\n  source: dicomland\n")
    assert "source" in out and "dicomland" in out and "phantom" in out


def test_composed_prompt_with_an_unlearned_token_is_a_config_error(workdir):
    out = failed_dry_run(workdir, "multi.yaml",
                         "dewilde:\n  composability:\n    multi: [{prompt: '<pleural-effusion> AND <pneumonia>'}]\n")
    assert "dewilde.composability.multi" in out and "<pneumonia>" in out and "<cardiomegaly>" in out


def test_missing_dataset_root_is_a_clear_error(workdir):
    out = failed_dry_run(workdir, "mimic.yaml", "data:\n  source: mimic\n  root: /nonexistent/mimic-cxr-jpg\n")
    assert "/nonexistent/mimic-cxr-jpg" in out


def test_unknown_study_is_rejected_naming_the_valid_ones(workdir):
    out = failed_dry_run(workdir, "studies.yaml", "studies: [chambon2022, weber2022]\n")
    assert "weber2022" in out and all(p in out for p in ("chambon2022", "weber2023", "zafar2023", "dewilde2023"))


def planned_rules(proc) -> set[str]:
    """Rule names of a ``snakemake -n --quiet rules`` job table."""
    return set(re.findall(r"^(\w+)\s+\d+$", proc.stdout + proc.stderr, re.M)) - {"total"}


OTHER_PAPERS_RULES = re.compile(r"^(cheff_|zafar_|dewilde_)")


def test_a_paper_config_plans_only_its_papers_studies(workdir):
    # configs/chambon2022.yaml on the rehearsal overlay's phantom data (its MIMIC root is a placeholder)
    proc = run_snakemake("-n", "--quiet", "rules", "--configfile", "configs/chambon2022.yaml",
                         "configs/rehearsal/chambon2022.yaml", cwd=workdir)
    planned = planned_rules(proc)
    assert {"vae_study", "adapt_few_shot", "synthesize", "findings", "results_index"} <= planned, planned
    assert not {r for r in planned if OTHER_PAPERS_RULES.match(r)}, planned


def test_a_paper_target_plans_only_that_paper_and_what_it_needs(workdir):
    planned = planned_rules(run_snakemake("weber2023", "-n", "--quiet", "rules", cwd=workdir))
    assert {"cheff_sr_fine", "cheff_beta_check", "cheff_reconstruction"} <= planned, planned
    # the cascade trains from scratch: no foundation, adaptation, other paper or cross-study table
    assert not planned & {"foundation", "adapt_few_shot", "synthesize", "vae_study", "cheff_synthesis_comparison",
                          "findings", "results_index"}, planned
    assert not {r for r in planned if r.startswith(("zafar_", "dewilde_"))}, planned


def test_bad_adaptation_setting_stops_the_dry_run(workdir):
    """A typo in a method's settings stops the DAG build (not the job, after the foundation trained), naming the key,
    the model, the method and the keys it takes."""
    out = failed_dry_run(workdir, "typo.yaml", "adaptation:\n  methods:\n    - {name: original, method: none}\n"
                                               "    - {name: unet_x, method: unet, settings: {prior_preservaton: true}}\n")
    assert "adaptation.methods[unet_x].settings (method 'unet')" in out and "prior_preservaton" in out
    assert "expected some of" in out and "'prior_preservation'" in out
    out = failed_dry_run(workdir, "typo_zafar.yaml", "zafar:\n  methods:\n    - {name: l, method: lora, settings: {rnk: 4}}\n")
    assert "zafar.methods[l].settings (method 'lora')" in out and "rnk" in out and "'rank'" in out
    out = failed_dry_run(workdir, "typo_dewilde.yaml", "dewilde:\n  textual_inversion: {stpes: 3}\n")
    assert "config dewilde.textual_inversion" in out and "stpes" in out and "'steps'" in out
    out = failed_dry_run(workdir, "typo_foundation.yaml", "foundation:\n  overrides: {unet_stpes: 3}\n")
    assert "config foundation (preset 'default'" in out and "unet_stpes" in out and "'unet_steps'" in out


def planned_paths(proc) -> set[str]:
    """Every output, log and benchmark path of a ``snakemake -n`` plan."""
    lines = re.findall(r"^    (?:output|log|benchmark): (.+)$", proc.stdout + proc.stderr, re.M)
    return {path.strip() for line in lines for path in line.split(",")}


def test_runs_of_different_configs_write_disjoint_paths_under_their_run_folders(workdir):
    default = planned_paths(run_snakemake("-n", cwd=workdir))
    smoke = planned_paths(run_snakemake("-n", "--configfile", "configs/smoke.yaml", cwd=workdir))
    assert len(default) > 100 and len(smoke) > 100
    assert not default & smoke, sorted(default & smoke)[:10]
    # the default's phantom dataset is versioned input data (data.dvc); smoke generates its own inside its run
    assert {p for p in default if not p.startswith(("results/default/", "logs/default/", "benchmarks/default/"))} == {"data/mimic-cxr-jpg"}
    assert all(p.startswith(("results/smoke/", "logs/smoke/", "benchmarks/smoke/")) for p in smoke), smoke


def test_an_unsafe_run_name_is_rejected(workdir):
    for bad in ("../elsewhere", "a/b", ".hidden", ""):
        out = failed_dry_run(workdir, "run.yaml", f"run: '{bad}'\n")
        assert "run" in out and "does not match" in out, out[-2000:]


def test_default_dry_run_plans_every_stage(workdir):
    proc = run_snakemake("-n", cwd=workdir)
    planned = proc.stdout + proc.stderr
    for rule in ("phantom_dataset", "dataset_table", "sample", "data_summary", "foundation", "text_encoder_study",
                 "adapt_textual_projection", "adapt_few_shot", "synthesize", "evaluate_synthesis", "render_synthesis"):
        assert f"rule {rule}:" in planned, f"{rule} missing from the default plan:\n{planned}"
    # every adapted model is trained by the rule its method's registry entry calls for (cxrgen.adapt.methods)
    job = re.compile(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    output: (\S+)", flags=re.M)
    jobs = {output.rstrip(","): rule for rule, output in job.findall(planned)}  # first output -> rule
    config = yaml.safe_load((workdir / "config.yaml").read_text())
    for section, folder, image_rule in (("adaptation", "results/default/models/adapted", "adapt_few_shot"),
                                        ("zafar", "results/default/models/zafar", "zafar_train")):
        for entry in config[section]["methods"]:
            if entry["method"] == "none":
                continue
            spec = METHODS[entry["method"]]
            expected = image_rule if spec.trains_on_images else f"adapt_{entry['method']}"
            assert jobs.get(f"{folder}/{entry['name']}") == expected, (entry, jobs.get(f"{folder}/{entry['name']}"))


def _file_hashes(root: Path) -> dict[str, str]:
    """{path relative to root: sha256} of every file under root (temporaries and hidden files included)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_a_changed_cheff_preset_default_reruns_its_stage(tmp_path):
    """The Cheff jobs carry their stages' resolved settings as params: a preset default changed in the code (the
    config itself unchanged) reruns the stage that uses it, and only that stage."""
    wf = copy_workflow(tmp_path)
    run_snakemake("cheff_machex", *SMOKE, cwd=wf)
    assert "Nothing to be done" in run_snakemake("-n", "cheff_machex", *SMOKE[-2:], cwd=wf).stdout
    # the workflow puts <workflow>/src first on sys.path: a copy of the package whose smoke MaCheX preset differs
    shutil.copytree(REPO / "src", wf / "src")
    config_py = wf / "src" / "cxrgen" / "cheff" / "config.py"
    text = config_py.read_text()
    assert '"smoke": dict(max_train=24, max_test=8)' in text
    config_py.write_text(text.replace('"smoke": dict(max_train=24, max_test=8)', '"smoke": dict(max_train=24, max_test=7)'))
    plan = run_snakemake("-n", "cheff_machex", *SMOKE[-2:], cwd=wf).stdout
    assert re.search(r"^rule cheff_machex:", plan, re.M) and not re.search(r"^rule phantom_dataset:", plan, re.M), plan


@pytest.mark.slow
def test_smoke_run_completes_and_is_deterministic(workdir):
    run_snakemake(*SMOKE, cwd=workdir)
    results = workdir / "results" / "smoke"  # the smoke config's run folder
    data = results / "data" / "smoke"
    assert (data / "table.csv").is_file()
    for sample in ("frontal", "fewshot_chambon", "fewshot_dewilde", "cheff", "train", "validate", "test"):
        assert (data / "samples" / sample / "manifest.csv").is_file()
    assert (data / "summary" / "phantom_grid.png").is_file()
    for table in ("chambon2022_table1", "chambon2022_vae_summary", "chambon2022_table2_smoke", "chambon2022_table3_smoke"):
        md = (results / "tables" / f"{table}.md").read_text()
        assert "(paper)" in md and "(this run)" in md and "miniature" in md
    assert (results / "figures" / "chambon2022_fig3.png").is_file()
    # every configured adapted model gave a synthetic set, scored in Tables 4 and 5 beside the paper
    table4 = (results / "synthesis" / "evaluation" / "table4.csv").read_text()
    for method in ("original", "projection_token", "inversion_object_radiology", "unet_abnormality_prior"):
        assert (results / "synthesis" / method / "manifest.csv").is_file()
        assert method in table4
    for table in ("chambon2022_table4", "chambon2022_table5"):
        md = (results / "tables" / f"{table}.md").read_text()
        assert "(paper)" in md and "(this run)" in md and "miniature" in md
    for fig in ("chambon2022_samples", "chambon2022_fig5"):
        assert (results / "figures" / f"{fig}.png").is_file()
    memorization = (results / "tables" / "privacy_memorization.md").read_text()
    assert "unet_abnormality_prior" in memorization and "ssim_share_above" in memorization
    # Cheff (Weber et al.): MaCheX Table 1, Table 2 and FID/KID beside the paper; the cascade's figures
    for table in ("weber2023_table1", "weber2023_table2", "weber2023_fid_kid"):
        md = (results / "tables" / f"{table}.md").read_text()
        assert "(paper)" in md and "(this run)" in md and "miniature" in md, table
    assert "0.0295" in (results / "tables" / "weber2023_beta_check.md").read_text()
    for fig in ("weber2023_fig3", "weber2023_samples", "weber2023_report_samples", "weber2023_inpainting",
                "weber2023_outpainting", "weber2023_fig13"):
        assert (results / "figures" / f"{fig}.png").is_file(), fig
    for model in ("autoencoder", "sdm_unconditional", "sdm_report", "sr_base", "sr_fine"):
        assert (results / "models" / "cheff" / model / "training_log.csv").is_file(), model
    # Zafar et al.: both methods trained, sampled, scored and rendered (the paper reports only its run design)
    assert (results / "models" / "zafar" / "dreambooth_lora" / "pytorch_lora_weights.safetensors").is_file()
    assert (results / "models" / "zafar" / "full_ft" / "text_encoder" / "config.json").is_file()
    zafar_md = (results / "tables" / "zafar2023_methods.md").read_text()
    assert "(paper)" in zafar_md and "(this run)" in zafar_md and "miniature" in zafar_md
    for model in ("foundation", "full_ft", "dreambooth_lora"):
        assert re.search(rf"^\| {model} +\|", zafar_md, flags=re.M), model
    assert "compact" in (results / "tables" / "zafar2023_prompts.md").read_text()
    for fig in ("zafar2023_step_grid", "zafar2023_samples"):
        assert (results / "figures" / f"{fig}.png").is_file(), fig
    # de Wilde et al.: Tables 1-4 beside the paper, Figs. 2-5 and the measured composability / inpainting curves
    for n in (1, 2, 3, 4):
        md = (results / "tables" / f"dewilde2023_table{n}.md").read_text()
        assert "(paper)" in md and "(this run)" in md and "miniature" in md
    for fig in ("fig2", "fig3", "fig4", "fig5", "composability", "inpainting"):
        assert (results / "figures" / f"dewilde2023_{fig}.png").is_file()
    assert (results / "dewilde" / "embeddings" / "healthy_v2_n2" / "learned_embeds.safetensors").stat().st_size < 1_000_000
    inpainted = (results / "dewilde" / "inpainting" / "summary.csv").read_text().splitlines()
    assert inpainted[0].startswith("finding,n,p_before,p_after") and len(inpainted) == 2
    assert (results / "dewilde" / "classifier" / "seed1.csv").is_file()
    metrics = (results / "reference_classifier" / "test_metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("label,n,n_positive,prevalence") and len(metrics) == 13  # header + 12 Chambon labels
    assert metrics[0].endswith(",ci_note")  # why a label's CIs are empty (fewer than evaluation.min_class_count)
    # every FID/KID table states n and a CI per cell, and the captions say how (issue 17)
    for table in ("chambon2022_table4", "chambon2022_vae_summary", "weber2023_fid_kid", "weber2023_synthesis_comparison",
                  "zafar2023_methods", "dewilde2023_table1", "dewilde2023_table2", "dewilde2023_table3"):
        md = (results / "tables" / f"{table}.md").read_text()
        assert "FID and KID cells: value [95% CI]" in md and re.search(r"\d \[-?\d", md), table
        assert re.search(r"n real|real / generated|real / reconstructed", md), table
    # the findings table: one verdict per claim of reference/findings.yaml, computed by the run (hashed below too)
    findings = pd.read_csv(results / "tables" / "findings.csv")
    assert len(findings) >= 10 and set(findings["verdict"]) <= {"reproduced", "contradicted", "inconclusive at this n", "not run"}
    assert "miniature" in (results / "tables" / "findings.md").read_text()
    index = (results / "README.md").read_text()
    assert "findings.md" in index
    assert "chambon2022_table1.md" in index and "| `foundation` |" in index
    assert "weber2023_table2.md" in index and "| `cheff/sr_base` |" in index
    # nothing left to do after a complete run
    proc = run_snakemake("-n", "--configfile", "configs/smoke.yaml", cwd=workdir)
    assert "Nothing to be done" in proc.stdout + proc.stderr
    # re-rendering after a finished run plans no training, only the renderer whose output went missing
    md_table1 = (results / "tables" / "chambon2022_table1.md").read_text()
    (results / "tables" / "chambon2022_table1.md").unlink()
    plan = run_snakemake("-n", "render", "--configfile", "configs/smoke.yaml", cwd=workdir).stdout
    assert "render_vae_study" in plan
    for training in ("foundation", "reference_classifier", "vae_study", "text_encoder_study", "adapt_few_shot",
                     "adapt_textual_projection", "synthesize"):
        assert f"rule {training}:" not in plan, plan
    # a second run from scratch (same config, seed and threads) of one paper's slice (Chambon: data, foundation,
    # classifier, VAE and text studies, adaptation, synthesis, privacy; 25 of the ~70 jobs), killed with SIGTERM
    # (Ctrl-C, a SLURM preemption) while jobs run and then resumed, gives byte-identical data and tables and nothing
    # else (no temporaries): nothing half-written was trusted
    (results / "tables" / "chambon2022_table1.md").write_text(md_table1)
    first = {tree: _file_hashes(results / tree) for tree in ("data/smoke", "tables")}
    shutil.rmtree(results)
    slice_run = [*SMOKE, "--", "chambon2022"]
    killed = subprocess.Popen([*SNAKEMAKE, *slice_run], cwd=workdir, env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while not (results / "models" / "foundation" / "model_index.json").is_file():
            assert killed.poll() is None, "the run to interrupt ended before its foundation was written"
            time.sleep(0.5)
        time.sleep(3)  # the foundation's dependants are now running
        os.killpg(killed.pid, signal.SIGTERM)
        assert killed.wait(timeout=300) != 0, "the run finished before SIGTERM reached it"
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
    assert not (results / "tables" / "privacy_memorization.md").exists()
    run_snakemake(*slice_run, cwd=workdir)
    again = {tree: _file_hashes(results / tree) for tree in first}
    assert {"chambon2022_table1.md", "chambon2022_table4.md", "chambon2022_table5.md",
            "privacy_memorization.md"} <= set(again["tables"]), sorted(again["tables"])
    for tree, files in again.items():
        assert set(files) <= set(first[tree]), f"results/smoke/{tree}: not written by the first run: {set(files) - set(first[tree])}"
        differ = sorted(f for f in files if files[f] != first[tree][f])
        assert not differ, f"results/smoke/{tree} differs between two runs from scratch: {differ}"
