"""data.dvc records exactly what the embedded phantom generator writes for the default config, so a fresh run
leaves `dvc status` clean (and a changed generator or config shows up as a modified dataset)."""

import subprocess
import sys
from pathlib import Path

import yaml

from cxrgen.data.phantom import generate_mimic_cxr

REPO = Path(__file__).resolve().parents[1]


def test_generated_default_phantoms_match_data_dvc(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    p = config["data"]["phantom"]
    root = tmp_path / config["data"]["root"]
    generate_mimic_cxr(root, n_patients=p["n_patients"], studies_per_patient=tuple(p["studies_per_patient"]),
                       image_size=p["image_size"], seed=config["seed"], progress=False)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*dvc, "add", "-q", "data"], cwd=tmp_path, check=True)
    tracked = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    fresh = yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]
    assert (fresh["md5"], fresh["nfiles"], fresh["size"]) == (tracked["md5"], tracked["nfiles"], tracked["size"])
    # one changed byte makes the dataset differ from what DVC tracks
    first = sorted(root.rglob("*.jpg"))[0]
    first.write_bytes(first.read_bytes() + b"\0")
    proc = subprocess.run([*dvc, "status", "data.dvc"], cwd=tmp_path, capture_output=True, text=True)
    assert "modified" in proc.stdout, proc.stdout
