"""Publishing results with DVC: `make publish` (dvc add + dvc push of results/*), then in a fresh clone
`dvc pull` + `snakemake --touch` restores the finished state with nothing to rerun.

Runs in a scratch git repo holding a copy of the workflow, with a local directory remote."""

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix) if (Path(sys.prefix) / "bin" / "dvc").exists() else None  # the venv running pytest
WORKFLOW = ("Snakefile", "config.yaml", "rules", "scripts", "schemas", "configs", "report", "profiles", "envs",
            "Makefile", "requirements.lock", "pyproject.toml", ".gitignore", ".dvcignore")
# a cheap but real slice of the smoke run: phantom data, its table, a sample, a summary, a (shortly) trained model
TARGETS = ["results/data/smoke/summary/label_counts.csv", "results/data/smoke/samples/fewshot_chambon",
           "results/models/foundation"]
TINY = "foundation:\n  overrides: {n_images: 16, vae_steps: 2, unet_steps: 2, preview_per_prompt: 0}\n"
SMOKE = ["--configfile", "configs/smoke.yaml", "tiny.yaml", "--"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg",
            "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org",
            "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.org"}


def run(cmd, cwd, timeout=900):
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(), timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def snakemake(cwd, *args):
    return run([sys.executable, "-m", "snakemake", *args], cwd)


def tree_hash(root: Path) -> dict:
    """Content of every file under results/ except the .dvc pointers."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not (p.parent == root and p.suffix == ".dvc")}


@pytest.mark.slow
@pytest.mark.skipif(VENV is None or shutil.which("make") is None, reason="needs the project venv (with dvc) and make")
def test_publish_then_pull_and_touch_restores_without_rerun(tmp_path):
    src = tmp_path / "lab"
    src.mkdir()
    for name in WORKFLOW:
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, src / name)
    (src / ".dvc").mkdir()
    for name in ("config", ".gitignore"):  # the default remote: ../dvc-remote from .dvc/, i.e. lab/dvc-remote
        shutil.copy(REPO / ".dvc" / name, src / ".dvc" / name)
    (src / "tiny.yaml").write_text(TINY)
    (src / ".venv").symlink_to(VENV)  # the Makefile's $(BIN); -o below keeps make from reinstalling it
    run(["git", "init", "-q"], src)
    (src / ".git" / "info" / "exclude").write_text(".venv\n")
    run(["git", "add", "-A"], src)
    run(["git", "commit", "-qm", "workflow"], src)

    snakemake(src, "--cores", "2", *SMOKE, *TARGETS)
    published = tree_hash(src / "results")
    t0 = time.monotonic()
    run(["make", "-o", ".venv/.installed", "publish"], src)
    entries = sorted(p.name for p in (src / "results").iterdir() if not p.name.endswith(".dvc") and p.name != ".gitignore")
    assert {"data", "models", "smoke-data"} <= set(entries)
    for name in entries:  # one pointer per entry of results/, ignored by git, the pointer is not
        assert (src / "results" / f"{name}.dvc").is_file(), name
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], src)
    assert "results/models.dvc" in status  # the pointer is for git (the data stays ignored by /results/*)
    assert "results/models/" not in status and "results/data/" not in status
    assert any((src / "dvc-remote").rglob("*")), "nothing pushed to the default remote"
    run(["git", "add", "results"], src)  # adds only the .dvc pointers
    run(["git", "commit", "-qm", "publish results"], src)

    # a fresh clone: code from git, artefacts from the remote (credentials/overrides go to .dvc/config.local)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(src), str(clone)], tmp_path)
    assert not (clone / "results" / "models").exists()
    run([str(VENV / "bin" / "dvc"), "remote", "modify", "--local", "local", "url", str(src / "dvc-remote")], clone)
    run([str(VENV / "bin" / "dvc"), "pull", "--quiet"], clone)
    assert tree_hash(clone / "results") == published
    snakemake(clone, "--touch", "--cores", "1", *SMOKE, *TARGETS)
    plan = snakemake(clone, "-n", *SMOKE, *TARGETS)
    assert "Nothing to be done" in plan, plan
    assert tree_hash(clone / "results") == published  # --touch changed mtimes only
    print(f"\nDVC publish + clone + pull + touch: {time.monotonic() - t0:.1f} s")
