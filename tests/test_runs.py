"""Runs: the papers a config may select (``studies``) and the run name that roots its outputs (``run``)."""

import subprocess
import sys

import pytest
import yaml

from cxrgen import rehearsal, runs
from cxrgen.errors import InputError

REPO_ROOT = rehearsal.REPO_ROOT


def test_the_schema_rehearsal_and_workflow_name_the_same_papers():
    schema = yaml.safe_load((REPO_ROOT / "schemas" / "config.schema.yaml").read_text())
    studies = schema["properties"]["studies"]
    assert tuple(studies["items"]["enum"]) == runs.PAPERS == tuple(studies["default"])
    assert set(rehearsal.PAPERS) == set(runs.PAPERS)
    for paper in runs.PAPERS:  # each paper config selects its own paper; `snakemake <paper>` is a rule
        assert yaml.safe_load((REPO_ROOT / "configs" / f"{paper}.yaml").read_text())["studies"] == [paper]
        assert f"\nrule {paper}:\n" in (REPO_ROOT / "Snakefile").read_text()


def test_every_shipped_config_has_its_own_run():
    """config.yaml, each configs/*.yaml over it and each rehearsal overlay over its paper: distinct run folders."""
    stacks = [[REPO_ROOT / "config.yaml"]]
    stacks += [[REPO_ROOT / "config.yaml", p] for p in sorted((REPO_ROOT / "configs").glob("*.yaml"))]
    stacks += [rehearsal.config_files(paper) for paper in rehearsal.PAPERS]
    names = [runs.run_name(stack) for stack in stacks]
    assert len(set(names)) == len(names) == 1 + len(list((REPO_ROOT / "configs").glob("*.yaml"))) + 4, names
    assert names[0] == runs.DEFAULT_RUN and "smoke" in names and "rehearsal-zafar2023" in names


def test_run_name_follows_the_merge_order_and_roots_every_output(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("run: first\n")
    second.write_text("seed: 1\n")
    assert runs.run_name([first, second]) == "first" and runs.run_name([second]) == runs.DEFAULT_RUN
    assert runs.run_name([second, first]) == "first"
    assert runs.output_roots("x") == {"results": "results/x", "logs": "logs/x", "benchmarks": "benchmarks/x"}
    with pytest.raises(InputError, match="nope.yaml does not exist"):
        runs.run_name([tmp_path / "nope.yaml"])
    cli = subprocess.run([sys.executable, "-m", "cxrgen.runs", "configs/smoke.yaml"], cwd=REPO_ROOT,
                         capture_output=True, text=True, check=True)
    assert cli.stdout.strip() == "smoke"
