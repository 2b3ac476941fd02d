"""Published numbers as data: tidy CSVs under ``reference/<paper>/`` plus one ``sources.yaml`` per paper.

``load_reference("chambon2022", "table3")`` returns the paper's table as a DataFrame together with its
metadata (citation, table number, caption, section, units, direction, notes, known discrepancies).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import yaml

from cxrgen.errors import InputError

#: ``reference/`` at the repository root (src/cxrgen/render/reference.py -> parents[3]).
DEFAULT_ROOT = Path(__file__).resolve().parents[3] / "reference"


def reference_root(root: str | os.PathLike | None = None) -> Path:
    """The reference folder: ``root`` if given, else ``$CXRGEN_REFERENCE_DIR``, else the repository's."""
    if root is not None:
        return Path(root)
    env = os.environ.get("CXRGEN_REFERENCE_DIR")
    return Path(env) if env else DEFAULT_ROOT


def _sources(paper_dir: Path) -> dict:
    path = paper_dir / "sources.yaml"
    if not path.is_file():
        raise InputError(f"{path}: missing metadata file sources.yaml for paper {paper_dir.name!r}")
    with open(path) as fh:
        meta = yaml.safe_load(fh) or {}
    if not isinstance(meta.get("tables"), dict):
        raise InputError(f"{path}: expected a 'tables' mapping")
    return meta


def known_papers(root: str | os.PathLike | None = None) -> list[str]:
    base = reference_root(root)
    if not base.is_dir():
        return []
    return sorted(p.name for p in base.iterdir() if (p / "sources.yaml").is_file())


def known_tables(paper: str, root: str | os.PathLike | None = None) -> list[str]:
    papers = known_papers(root)
    if paper not in papers:
        raise InputError(f"unknown paper {paper!r}; known papers under {reference_root(root)}: {', '.join(papers) or '(none)'}")
    return list(_sources(reference_root(root) / paper)["tables"])


def load_reference(paper: str, table: str, root: str | os.PathLike | None = None) -> tuple[pd.DataFrame, dict]:
    """Load ``reference/<paper>/<table>.csv`` and its metadata.

    The metadata dict holds the table's entry of ``sources.yaml`` plus ``paper``, ``citation``,
    ``source_text`` and ``csv`` (the file read). Raises :class:`InputError` naming the known
    papers / tables when either is unknown or the CSV is missing.
    """
    tables = known_tables(paper, root)
    if table not in tables:
        raise InputError(f"unknown table {table!r} for paper {paper!r}; known tables: {', '.join(tables)}")
    paper_dir = reference_root(root) / paper
    sources = _sources(paper_dir)
    csv = paper_dir / f"{table}.csv"
    if not csv.is_file():
        raise InputError(f"{csv}: listed in sources.yaml but the CSV is missing")
    frame = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    if not isinstance(frame.index, pd.RangeIndex):
        raise InputError(f"{csv}: some rows have more fields than the header (unquoted comma?)")
    meta = dict(sources["tables"][table] or {})
    meta.update(
        paper=paper,
        table=table,
        citation=str(sources.get("citation", "")).strip(),
        source_text=sources.get("source_text"),
        csv=str(csv),
    )
    for key in ("paper_notes", "page_note"):
        if key in sources:
            meta[key] = sources[key]
    return frame, meta


def paper_table_label(meta: dict) -> str:
    """Human label for captions, e.g. ``'chambon2022, Table 3'`` or ``'weber2023, fid_kid (text)'``."""
    number = meta.get("table_number")
    where = f"Table {number}" if number is not None else f"{meta.get('table')} (reported in the text, {meta.get('section')})"
    return f"{meta.get('paper')}, {where}"
