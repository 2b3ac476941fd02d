"""OpenI / Indiana University chest X-ray reports (Demner-Fushman et al. 2016) as a reports-only table.

Source: the 3,955 report XMLs of ``NLMCXR_reports.tgz`` (torchxrayvision ships a copy, the default).
One row per report (``image_id`` = the report's uId, e.g. ``CXR1``; ``image_path`` = ""), FINDINGS and
IMPRESSION from ``<AbstractText Label=...>``.

Labels come from the report's *major* MeSH terms (``<MeSH><major>``; these were assigned by human indexers,
``<automatic>`` terms are MTI output and are ignored) through the reviewed table
``openi_mesh_to_chexpert.csv`` (``mesh_term_pattern``: case-insensitive regex that must match the whole
term, qualifiers included, e.g. ``Cardiomegaly/mild``; ``chexpert_label``; ``note``).
Rules:

* a label matched by any term is 1, every other label 0 (OpenI has no uncertain labels);
* ``No Finding`` follows the CheXpert labeler convention: 1 iff none of the 12 pathology labels is positive
  (Support Devices allowed); MeSH ``normal`` maps to it directly;
* a report whose only major terms are "No Indexing" (not indexed) gets blank (NaN) labels.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.data.schema import CHAMBON_TABLE1_LABELS, CHEXPERT_LABELS, COLUMNS, validate_table
from cxrgen.errors import InputError

MAPPING_CSV = Path(__file__).with_name("openi_mesh_to_chexpert.csv")
NOT_INDEXED = "no indexing"


def default_tgz_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("torchxrayvision")  # locate without importing torch
    if spec is None or not spec.submodule_search_locations:
        raise InputError("torchxrayvision is not installed; pass tgz_path= to an NLMCXR_reports.tgz")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "NLMCXR_reports.tgz"


@dataclass(frozen=True)
class MeshMapping:
    rules: tuple[tuple[re.Pattern, str], ...]

    def labels_for(self, terms: list[str]) -> dict[str, float]:
        """CheXpert labels (1/0, or NaN for unindexed reports) for a list of major MeSH terms."""
        clean = [t.strip() for t in terms if t and t.strip()]
        if not clean or all(t.lower() == NOT_INDEXED for t in clean):
            return {label: np.nan for label in CHEXPERT_LABELS}
        out = {label: 0.0 for label in CHEXPERT_LABELS}
        for term in clean:
            for pattern, label in self.rules:
                if pattern.fullmatch(term):
                    out[label] = 1.0
        out["No Finding"] = 0.0 if any(out[l] == 1.0 for l in CHAMBON_TABLE1_LABELS) else 1.0
        return out

    def unmapped(self, terms: list[str]) -> list[str]:
        return [t for t in terms if not any(p.fullmatch(t.strip()) for p, _ in self.rules)]


def load_mesh_mapping(path: str | Path = MAPPING_CSV) -> MeshMapping:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: MeSH->CheXpert mapping CSV not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in ("mesh_term_pattern", "chexpert_label"):
        if col not in table.columns:
            raise InputError(f"{path}: lacks column {col!r}; expected mesh_term_pattern, chexpert_label, note")
    rules = []
    for i, row in table.iterrows():
        label = row["chexpert_label"].strip()
        if label not in CHEXPERT_LABELS:
            raise InputError(f"{path}: row {i + 2} chexpert_label {label!r}; expected one of {list(CHEXPERT_LABELS)}")
        try:
            pattern = re.compile(row["mesh_term_pattern"].strip(), re.IGNORECASE)
        except re.error as exc:
            raise InputError(f"{path}: row {i + 2} mesh_term_pattern {row['mesh_term_pattern']!r} is not a regex: {exc}") from exc
        rules.append((pattern, label))
    return MeshMapping(tuple(rules))


def _text(elem) -> str:
    return " ".join("".join(elem.itertext()).split()) if elem is not None else ""


def parse_report_xml(data: bytes | str, origin: str = "<xml>") -> dict:
    """Parse one OpenI report XML into {uid, findings, impression, mesh_major, mesh_automatic}."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise InputError(f"{origin}: not a valid OpenI report XML ({exc})") from exc
    uid_elem = root.find("uId")
    uid = uid_elem.get("id", "") if uid_elem is not None else ""
    if not uid:
        raise InputError(f"{origin}: report XML lacks <uId id=...>")
    sections = {}
    for at in root.iter("AbstractText"):
        sections[(at.get("Label") or "").upper()] = _text(at)
    mesh = root.find("MeSH")
    major = [_text(m) for m in mesh.findall("major")] if mesh is not None else []
    automatic = [_text(m) for m in mesh.findall("automatic")] if mesh is not None else []
    return {
        "uid": uid,
        "findings": sections.get("FINDINGS", ""),
        "impression": sections.get("IMPRESSION", ""),
        "mesh_major": major,
        "mesh_automatic": automatic,
    }


def iter_report_xmls(tgz_path: str | Path):
    """Yield (member name, parsed report) for every ``*.xml`` in the archive, sorted by name."""
    tgz_path = Path(tgz_path)
    if not tgz_path.is_file():
        raise InputError(f"{tgz_path}: OpenI reports archive not found; expected NLMCXR_reports.tgz")
    try:
        with tarfile.open(tgz_path, "r:*") as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")), key=lambda m: m.name)
            if not members:
                raise InputError(f"{tgz_path}: holds no report .xml files")
            for m in members:
                yield m.name, parse_report_xml(tar.extractfile(m).read(), f"{tgz_path}:{m.name}")
    except tarfile.TarError as exc:
        raise InputError(f"{tgz_path}: not a readable tar archive ({exc})") from exc


def load_openi(tgz_path: str | Path | None = None, mapping_csv: str | Path = MAPPING_CSV, keep_mesh: bool = False) -> pd.DataFrame:
    """OpenI reports in the unified schema (one row per report, source "openi", no images).

    ``keep_mesh=True`` adds a ``mesh_major`` column ("; "-joined terms) after the schema columns.
    """
    tgz_path = Path(tgz_path) if tgz_path is not None else default_tgz_path()
    mapping = load_mesh_mapping(mapping_csv)
    rows, mesh = [], []
    for _, rep in iter_report_xmls(tgz_path):
        row = {
            "source": "openi",
            "image_id": rep["uid"],
            "image_path": "",
            "patient_id": "",
            "study_id": rep["uid"],
            "view": "",
            "sex": "",
            "age": np.nan,
            "study_date": "",
            "findings": rep["findings"],
            "impression": rep["impression"],
        }
        row.update(mapping.labels_for(rep["mesh_major"]))
        rows.append(row)
        mesh.append("; ".join(rep["mesh_major"]))
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for label in CHEXPERT_LABELS:
        df[label] = df[label].astype("float64")
    # natural order CXR1, CXR2, ... rather than the archive's lexical one
    order = np.argsort([int(re.sub(r"\D", "", u) or 0) for u in df["image_id"]], kind="stable")
    df = df.iloc[order]
    out = validate_table(df, str(tgz_path))
    if keep_mesh:
        out["mesh_major"] = np.asarray(mesh, dtype=object)[order]
    return out
