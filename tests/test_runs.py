"""Runs: the papers a config may select (``studies``) and the run name that roots its outputs (``run``)."""

import yaml

from cxrgen import rehearsal, runs

REPO_ROOT = rehearsal.REPO_ROOT


def test_the_schema_rehearsal_and_workflow_name_the_same_papers():
    schema = yaml.safe_load((REPO_ROOT / "schemas" / "config.schema.yaml").read_text())
    studies = schema["properties"]["studies"]
    assert tuple(studies["items"]["enum"]) == runs.PAPERS == tuple(studies["default"])
    assert set(rehearsal.PAPERS) == set(runs.PAPERS)
    for paper in runs.PAPERS:  # each paper config selects its own paper; `snakemake <paper>` is a rule
        assert yaml.safe_load((REPO_ROOT / "configs" / f"{paper}.yaml").read_text())["studies"] == [paper]
        assert f"\nrule {paper}:\n" in (REPO_ROOT / "Snakefile").read_text()
