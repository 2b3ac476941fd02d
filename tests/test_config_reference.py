"""docs/config.md is generated from schemas/config.schema.yaml (cxrgen.render.config_reference) and kept in step."""

from pathlib import Path

import pytest
import yaml

from cxrgen.errors import InputError
from cxrgen.render import config_reference

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())


def test_committed_config_reference_is_the_generated_one():
    committed = (ROOT / "docs" / "config.md").read_text()
    assert committed == config_reference.render(SCHEMA), (
        "docs/config.md is out of date with schemas/config.schema.yaml; regenerate it: "
        "python -m cxrgen.render.config_reference > docs/config.md")


def _key_paths(node, path):
    yield path
    for key, child in node.get("properties", {}).items():
        yield from _key_paths(child, f"{path}.{key}" if path else key)
    for name, suffix in (("additionalProperties", ".<name>"), ("items", "[]")):
        child = node.get(name)
        if isinstance(child, dict) and "properties" in child:
            yield from _key_paths(child, path + suffix)


def test_every_schema_key_has_a_row_with_its_default_and_description():
    page = config_reference.render(SCHEMA)
    rows = {line.split(" | ")[0].strip("| `"): line for line in page.splitlines() if line.startswith("| `")}
    paths = [p for p in _key_paths(SCHEMA, "") if p]
    assert len(paths) > 100 and set(paths) <= set(rows), sorted(set(paths) - set(rows))
    seed = SCHEMA["properties"]["seed"]
    assert f"`{seed['default']}`" in rows["seed"] and seed["description"] in rows["seed"]
    assert "one of `phantom`, `mimic`" in rows["data.source"]
    assert "when `select` = `few_shot`: requires `classes`, `n_per_class`" in rows["samples.<name>"]


def test_a_description_with_a_pipe_stays_in_its_cell():
    page = config_reference.render({"properties": {"x": {"type": "string", "description": "a | b", "default": "c"}}})
    row = next(line for line in page.splitlines() if line.startswith("| `x`"))
    assert row == '| `x` | string | `"c"` | a \\| b |'


def test_missing_or_empty_schema_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        config_reference.load_schema(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="properties"):
        config_reference.render({"type": "object"})


def test_cli_writes_the_page(tmp_path):
    out = tmp_path / "config.md"
    config_reference.main(["--schema", str(ROOT / "schemas" / "config.schema.yaml"), "--output", str(out)])
    assert out.read_text() == config_reference.render(SCHEMA)
