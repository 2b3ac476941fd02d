"""Numbers the README and docs/ state in prose are configuration values; each is checked here against config.yaml /
the schema defaults, so a config change that leaves the documentation behind fails (issue 17: measured results are
never typed into it; timings there are labelled measurements with a date and machine). The README stays short
(issue 19: <= 8 KB) and every page it points to exists."""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# the hand-written pages (docs/config.md is generated from the schema: tests/test_config_reference.py)
PAGES = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "config.md")]
DOCS = " ".join(" ".join(p.read_text().split()) for p in PAGES)  # statements may wrap across lines
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
SCHEMA = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())


def nums(text: str) -> list[float]:
    return [float(x) for x in re.split(r"[/, ]+", text.strip()) if x]


def schema_default(section: str, key: str):
    return SCHEMA["properties"][section]["properties"][key]["default"]


DW = CONFIG["dewilde"]
SW, CLS = DW["sweep"], DW["classifier"]

# (pattern with one group per stated value, the config values it must equal)
STATEMENTS = [
    (r"Table 1 steps ([\d/]+) at CFG ([\d.]+) and CFG ([\d/]+) at (\d+) steps",
     [SW["steps"], DW["inference"]["guidance"], SW["guidance"], DW["inference"]["steps"]]),
    (r"Table 2 vectors ([\d/]+)", [SW["vectors"]]),
    (r"Table 3 cases ([\d/]+)", [SW["cases"]]),
    (r"each point (\d+) generated vs (\d+) real images", [SW["n_generated"], SW["n_real"]]),
    (r"\(default (\d+) vectors, (\d+) cases, (\d+) TI steps\)",
     [DW["vectors"], DW["cases"], DW["textual_inversion"]["steps"]]),
    (r"with (\d+) real cases per class", [CLS["real_per_class"]]),
    (r"([\d/]+) synthetic per class, and the (\d+)-case embeddings", [CLS["synthetic_per_class"], CLS["few_cases"]]),
    (r"(\d+) seeds \(paper 10\), (\d+) batches", [len(CLS["seeds"]), CLS["training"]["steps"]]),
    (r"`synthesis.memorization_quantile` \(default ([\d.]+)\)", [schema_default("synthesis", "memorization_quantile")]),
    (r"`evaluation.fid_n_boot` \(default (\d+)\)", [schema_default("evaluation", "fid_n_boot")]),
    (r"`evaluation.min_class_count` \(default (\d+)\)", [schema_default("evaluation", "min_class_count")]),
]


@pytest.mark.parametrize("pattern, expected", STATEMENTS, ids=[p for p, _ in STATEMENTS])
def test_readme_states_the_config_values(pattern, expected):
    found = re.findall(pattern, DOCS)
    assert len(found) == 1, f"README + docs/ should state this once ({pattern!r}); found {len(found)}: update them or this check"
    stated = found[0] if isinstance(found[0], tuple) else (found[0],)
    for text, value in zip(stated, expected):
        want = [float(v) for v in value] if isinstance(value, list) else [float(value)]
        assert nums(text) == want, f"the docs say {text!r} for {pattern!r}; config has {value}"


def test_config_evaluation_matches_schema_defaults():
    # the README quotes the schema defaults; config.yaml must not silently override them
    for key in ("fid_n_boot", "min_class_count"):
        assert CONFIG["evaluation"][key] == schema_default("evaluation", key)


def test_readme_labels_its_timings_as_dated_measurements():
    statements = re.findall(r"Measured .*?\.(?= [A-Z])", DOCS)
    assert statements, "README + docs/ have no labelled measurements"
    for text in statements:  # each names its date and the machine it ran on
        assert re.match(r"Measured on \d{4}-\d{2}-\d{2} ", text) and re.search(r"\d-core", text), text


def test_readme_is_at_most_8_kb():
    size = (ROOT / "README.md").stat().st_size
    assert size <= 8 * 1024, f"README.md is {size} bytes; keep it <= 8192 and move details to docs/"


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


@pytest.mark.parametrize("page", [*PAGES, ROOT / "profiles" / "README.md"], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    targets = [t for t, _ in LINK.findall(page.read_text()) if "://" not in t]
    missing = [t for t in targets if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(ROOT)} links to missing files: {missing}"


def test_every_docs_page_is_reachable_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    linked = {Path(t).name for t, _ in LINK.findall(readme) if t.startswith("docs/")}
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"docs pages the README does not link to: {sorted(pages - linked)}"
