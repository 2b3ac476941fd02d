"""The adaptation-method registry (cxrgen.adapt.methods) is the one list the schema, the workflow, the pipeline loader
and the synthesis report follow; it and the settings classes import without torch, so the workflow can check every
method's settings when it builds its jobs."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrgen.adapt.methods import METHODS, SECTIONS, image_trained_methods, section_methods
from cxrgen.studies.synthesis import paper_rows

REPO = Path(__file__).resolve().parents[1]


def test_registry_and_settings_check_import_without_torch():
    code = ("import sys, yaml\n"
            "from cxrgen.adapt.methods import check_settings\n"
            "config = yaml.safe_load(open('configs/chambon2022.yaml'))\n"
            "check_settings(config['adaptation']['methods'], 'adaptation')\n"
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_schema_method_enums_follow_the_registry():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())["properties"]
    for section in SECTIONS:
        enum = schema[section]["properties"]["methods"]["items"]["properties"]["method"]["enum"]
        assert sorted(enum) == sorted(section_methods(section)), section
    # every method is listable somewhere
    assert {m for s in SECTIONS for m in section_methods(s)} == set(METHODS)


def test_every_entry_resolves_and_trainers_share_one_signature():
    for name, spec in METHODS.items():
        assert set(spec.sections) <= set(SECTIONS) and spec.sections, name
        if spec.trains_on_images:
            params = list(inspect.signature(spec.train_function()).parameters)
            assert params == ["foundation", "sample_dir", "cfg", "out_dir", "class_images_dir", "progress"], name
        for hook in (spec.apply_function(), spec.prompt_encoder_function()):
            assert hook is None or callable(hook)
        if name != "none":
            assert spec.trainer and (spec.apply or spec.prompt_encoder) and spec.artefacts, name
    assert set(image_trained_methods()) == {"textual_inversion", "unet", "lora", "full"}


def _table_rows(config_file):
    config = yaml.safe_load((REPO / config_file).read_text())
    models = {m["name"]: m for m in config["adaptation"]["methods"]}
    rows = paper_rows(list(models), models=models)
    return {r["table4"] for r in rows.values()} - {None}, {r["table5"] for r in rows.values()} - {None}


def test_showcase_covers_exactly_the_papers_table_rows_and_the_default_a_subset():
    """The rows the registry gives the showcase's models are the rows of Chambon's Tables 4 and 5; the default
    (a 20-minute budget) runs a subset of them with every Table 5 method kind."""
    t4 = pd.read_csv(REPO / "reference" / "chambon2022" / "table4.csv")
    t5 = pd.read_csv(REPO / "reference" / "chambon2022" / "table5.csv")
    paper4, paper5 = set(zip(t4.strategy_group, t4.method)), set(t5.method)
    assert _table_rows("configs/showcase.yaml") == (paper4, paper5)
    default4, default5 = _table_rows("config.yaml")
    assert default4 < paper4 and default5 <= paper5
    assert paper5 - default5 == {"Textual Projection (Doc.)"}


@pytest.mark.parametrize("literal", ["adapter.json", "learned_embeds.safetensors", "pytorch_lora_weights.safetensors",
                                     "projection.safetensors", "projection_config.json", "train_config.json"])
def test_artefact_names_are_defined_once(literal):
    quoted = re.compile(rf"[\"']{re.escape(literal)}[\"']")
    hits = [p.relative_to(REPO) for p in (REPO / "src").rglob("*.py") if quoted.search(p.read_text())]
    assert hits == [Path("src/cxrgen/adapt/methods.py")]
