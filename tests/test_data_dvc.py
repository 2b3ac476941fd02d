"""data.dvc records exactly what the embedded phantom generator writes for the default config, so a fresh run
leaves `dvc status` clean (and a changed generator or config shows up as a modified dataset). It records the hash
only (`cache: false`): a fresh clone regenerates data/ with the workflow, so `dvc status` does not ask for a cache
copy ("not in cache") and `dvc pull` does not look for it on a remote."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cxrgen.data.phantom import generate_mimic_cxr

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_generated_default_phantoms_match_data_dvc(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    p = config["data"]["phantom"]
    root = tmp_path / config["data"]["root"]
    generate_mimic_cxr(root, n_patients=p["n_patients"], studies_per_patient=tuple(p["studies_per_patient"]),
                       image_size=p["image_size"], seed=config["seed"], progress=False)
    (root / ".snakemake_timestamp").touch()  # as the workflow's phantom_dataset rule leaves it (directory() output)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(REPO / ".dvcignore", tmp_path / ".dvcignore")
    subprocess.run([*dvc, "add", "-q", "data"], cwd=tmp_path, check=True)
    tracked = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    fresh = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    assert (fresh["md5"], fresh["nfiles"], fresh["size"]) == (tracked["md5"], tracked["nfiles"], tracked["size"])
    # as in a fresh clone after `make reproduce`: the repository's pointer and remote config, no DVC cache
    shutil.rmtree(tmp_path / ".dvc" / "cache")
    shutil.copy(REPO / "data.dvc", tmp_path / "data.dvc")
    shutil.copy(REPO / ".dvc" / "config", tmp_path / ".dvc" / "config")
    status = subprocess.run([*dvc, "status"], cwd=tmp_path, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    pull = subprocess.run([*dvc, "pull"], cwd=tmp_path, capture_output=True, text=True)
    assert pull.returncode == 0, pull.stdout + pull.stderr
    # one changed byte makes the dataset differ from what DVC tracks
    first = sorted(root.rglob("*.jpg"))[0]
    first.write_bytes(first.read_bytes() + b"\0")
    proc = subprocess.run([*dvc, "status", "data.dvc"], cwd=tmp_path, capture_output=True, text=True)
    assert "modified" in proc.stdout, proc.stdout
