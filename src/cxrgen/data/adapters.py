"""Dataset adapters: each public chest X-ray dataset's own files -> the one table of ``cxrgen.data.schema``.

Every adapter ``load_<name>(root, ..., frontal_only=False, check_images=True)`` returns
``validate_table``'s output (all ``COLUMNS``; labels 1/0/-1/NaN; ``image_path`` an absolute str) plus a few
documented extra columns (``split`` for MIMIC/CheXpert, ``projection``/``modality``/``labels_localizations``
for PadChest). ``root`` may be the dataset folder or, for the single-CSV datasets, the CSV itself.

* ``frontal_only=True`` keeps AP and PA views only.
* ``check_images=True`` verifies that every image exists (one ``os.scandir`` per image folder) and raises
  ``InputError`` naming the first few missing ones.

Bad input raises ``InputError`` naming the file/column and what was expected: missing root or file, missing
columns, label values outside {1, 0, -1, blank} (with the line number), unknown label names, duplicate image ids,
a CSV that is not UTF-8 (with the line), a row with more fields than the header, blank ids in a folder CSV.
A MIMIC report file that is not UTF-8 is read with the bad bytes replaced, and counted in one logged warning.

Label conventions of the sources (documented per adapter below):

* MIMIC-CXR-JPG / CheXpert: labels as released (CheXpert labeler: 1, 0, -1, blank).
* PadChest: a CheXpert class is 1 when one of the image's PadChest labels maps to it (``PADCHEST_TO_CHEXPERT``),
  blank otherwise (PadChest only lists what the report mentions; it states no negatives).
* NIH ChestX-ray14: the 14 NIH findings are stated for every image, so the CheXpert classes they map to are 1
  when listed and 0 otherwise (``NIH_TO_CHEXPERT``); classes NIH does not annotate (Enlarged Cardiomediastinum,
  Fracture, Support Devices) stay blank.
"""

from __future__ import annotations

import gzip
import inspect
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.data.schema import BASE_COLUMNS, CHEXPERT_LABELS, FRONTAL_VIEWS, validate_table
from cxrgen.errors import InputError

PathLike = str | os.PathLike
log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------------------
# label mappings
# --------------------------------------------------------------------------------------------------------------

#: PadChest label string (as in the ``Labels`` column, lower-cased) -> CheXpert class(es).
#: PadChest terms not listed here (e.g. "COPD signs", "aortic elongation", "scoliosis", "hiatal hernia",
#: "emphysema", "pulmonary fibrosis", "granuloma", "costophrenic angle blunting", "unchanged", "exclude",
#: "suboptimal study", ...) have no CheXpert class and are ignored.
PADCHEST_TO_CHEXPERT: dict[str, tuple[str, ...]] = {
    # No Finding
    "normal": ("No Finding",),
    # Cardiomegaly
    "cardiomegaly": ("Cardiomegaly",),
    # Enlarged Cardiomediastinum
    "mediastinal enlargement": ("Enlarged Cardiomediastinum",),
    "superior mediastinal enlargement": ("Enlarged Cardiomediastinum",),
    # Pleural Effusion
    "pleural effusion": ("Pleural Effusion",),
    "loculated pleural effusion": ("Pleural Effusion",),
    "loculated fissural effusion": ("Pleural Effusion",),
    "empyema": ("Pleural Effusion",),
    "hydropneumothorax": ("Pleural Effusion", "Pneumothorax"),
    # Pneumothorax
    "pneumothorax": ("Pneumothorax",),
    # Pneumonia
    "pneumonia": ("Pneumonia",),
    "atypical pneumonia": ("Pneumonia",),
    # Atelectasis
    "atelectasis": ("Atelectasis",),
    "laminar atelectasis": ("Atelectasis",),
    "lobar atelectasis": ("Atelectasis",),
    "segmental atelectasis": ("Atelectasis",),
    "total atelectasis": ("Atelectasis",),
    "round atelectasis": ("Atelectasis",),
    "atelectasis basal": ("Atelectasis",),
    # Consolidation
    "consolidation": ("Consolidation",),
    # Edema
    "pulmonary edema": ("Edema",),
    "edema": ("Edema",),
    # Lung Lesion
    "nodule": ("Lung Lesion",),
    "multiple nodules": ("Lung Lesion",),
    "mass": ("Lung Lesion",),
    "pulmonary mass": ("Lung Lesion",),
    "lung metastasis": ("Lung Lesion",),
    "cavitation": ("Lung Lesion",),
    "lepidic adenocarcinoma": ("Lung Lesion",),
    # Lung Opacity
    "infiltrates": ("Lung Opacity",),
    "alveolar pattern": ("Lung Opacity",),
    "interstitial pattern": ("Lung Opacity",),
    "reticular interstitial pattern": ("Lung Opacity",),
    "reticulonodular interstitial pattern": ("Lung Opacity",),
    "ground glass pattern": ("Lung Opacity",),
    "increased density": ("Lung Opacity",),
    "miliary opacities": ("Lung Opacity",),
    # Pleural Other
    "pleural thickening": ("Pleural Other",),
    "apical pleural thickening": ("Pleural Other",),
    "calcified pleural thickening": ("Pleural Other",),
    "pleural plaques": ("Pleural Other",),
    "calcified pleural plaques": ("Pleural Other",),
    # Fracture
    "fracture": ("Fracture",),
    "rib fracture": ("Fracture",),
    "callus rib fracture": ("Fracture",),
    "clavicle fracture": ("Fracture",),
    "humeral fracture": ("Fracture",),
    "vertebral fracture": ("Fracture",),
    # Support Devices (tubes, lines, catheters, pacemakers/ICDs, valves, hardware)
    "pacemaker": ("Support Devices",),
    "dual chamber device": ("Support Devices",),
    "single chamber device": ("Support Devices",),
    "dai": ("Support Devices",),  # implantable automatic defibrillator
    "electrical device": ("Support Devices",),
    "nsg tube": ("Support Devices",),
    "endotracheal tube": ("Support Devices",),
    "tracheostomy tube": ("Support Devices",),
    "chest drain tube": ("Support Devices",),
    "ventriculoperitoneal drain tube": ("Support Devices",),
    "gastrostomy tube": ("Support Devices",),
    "catheter": ("Support Devices",),
    "central venous catheter": ("Support Devices",),
    "central venous catheter via jugular vein": ("Support Devices",),
    "central venous catheter via subclavian vein": ("Support Devices",),
    "central venous catheter via umbilical vein": ("Support Devices",),
    "reservoir central venous catheter": ("Support Devices",),
    "artificial heart valve": ("Support Devices",),
    "artificial mitral heart valve": ("Support Devices",),
    "artificial aortic heart valve": ("Support Devices",),
    "aortic endoprosthesis": ("Support Devices",),
    "osteosynthesis material": ("Support Devices",),
}

#: NIH ChestX-ray14 finding -> CheXpert class. Emphysema, Fibrosis and Hernia have no CheXpert class: ignored.
NIH_TO_CHEXPERT: dict[str, str | None] = {
    "Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Consolidation": "Consolidation",
    "Edema": "Edema",
    "Effusion": "Pleural Effusion",
    "Infiltration": "Lung Opacity",
    "Mass": "Lung Lesion",
    "Nodule": "Lung Lesion",
    "Pleural_Thickening": "Pleural Other",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "No Finding": "No Finding",
    "Emphysema": None,
    "Fibrosis": None,
    "Hernia": None,
}
#: CheXpert classes NIH states (0 when not listed); the other CheXpert classes stay blank for NIH images.
NIH_STATED_CLASSES: tuple[str, ...] = tuple(sorted({c for c in NIH_TO_CHEXPERT.values() if c}))

# --------------------------------------------------------------------------------------------------------------
# report sections
# --------------------------------------------------------------------------------------------------------------

_FINDINGS_HEADERS = {"FINDINGS", "FINDING", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION", "FINDINGS / IMPRESSION"}
_IMPRESSION_HEADERS = {"IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS"}
_KNOWN_HEADERS = _FINDINGS_HEADERS | _IMPRESSION_HEADERS | {
    "COMPARISON", "INDICATION", "HISTORY", "CLINICAL HISTORY", "TECHNIQUE", "EXAMINATION", "EXAM", "REASON FOR EXAM",
    "NOTIFICATION", "RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)", "WET READ", "ADDENDUM", "REFERENCE EXAM",
}
# a header: at a line start, 1-60 chars of letters/spaces/()/&-' then a colon (times like "10:30" never match)
_HEADER_RE = re.compile(r"^[ \t]*([A-Za-z][A-Za-z()/&' \-]{0,59}?)[ \t]*:", re.MULTILINE)


def _is_header(name: str) -> bool:
    norm = " ".join(name.split()).upper()
    return norm in _KNOWN_HEADERS or (name.isupper() and len(norm.split()) <= 6)


def parse_report_sections(text: str | None) -> tuple[str, str]:
    """(findings, impression) of a free-text radiology report; "" for a missing section.

    Sections start at an upper-case header ending in ``:`` at a line start (``" FINDINGS:"``,
    ``"IMPRESSION:"``; ``Findings:`` in any case is accepted too) and end at the next such header
    (``COMPARISON:``, ``INDICATION:``, ``NOTIFICATION:``, ``RECOMMENDATION(S):``, ...). Whitespace is collapsed.
    A ``FINDINGS AND IMPRESSION:`` section fills findings, and impression when there is no impression section.
    """
    if not isinstance(text, str) or not text.strip():
        return "", ""
    heads = [m for m in _HEADER_RE.finditer(text) if _is_header(m.group(1))]
    findings: list[str] = []
    impression: list[str] = []
    combined: list[str] = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = " ".join(text[m.end():end].split())
        name = " ".join(m.group(1).split()).upper()
        if name in _FINDINGS_HEADERS:
            findings.append(body)
            if name != "FINDINGS" and name != "FINDING":
                combined.append(body)
        elif name in _IMPRESSION_HEADERS:
            impression.append(body)
    f = " ".join(x for x in findings if x)
    imp = " ".join(x for x in impression if x) or " ".join(x for x in combined if x)
    return f, imp


# --------------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------------


def _require_root(root: PathLike | None, what: str) -> Path:
    if root is None or str(root) == "":
        raise InputError(f"{what}: no dataset root given; expected a folder or CSV path")
    path = Path(root).expanduser()
    if not path.exists():
        raise InputError(f"{what} dataset root {path} does not exist; expected the dataset folder or its CSV")
    return path.resolve()


def _find_file(folder: Path, names: Sequence[str], what: str, required: bool = True) -> Path | None:
    """``folder/name`` or ``folder/name.gz`` for the first name that exists."""
    for name in names:
        for cand in (folder / name, folder / f"{name}.gz"):
            if cand.is_file():
                return cand
    if required:
        wanted = " or ".join(f"{n}[.gz]" for n in names)
        raise InputError(f"{what}: {wanted} not found in {folder}; expected the dataset's CSV there")
    return None


def _first_non_utf8_line(path: Path) -> tuple[int, int, int] | None:
    """(line number, column, byte) of the first byte of ``path`` (gunzipped) that is not UTF-8, or None."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for number, line in enumerate(f, start=1):
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as exc:
                    return number, exc.start + 1, line[exc.start]
    except (OSError, EOFError):  # a corrupt .gz: the caller falls back to pandas' own message
        return None
    return None


def _read_csv(path: Path, required: Iterable[str], expected: Iterable[str] | None = None, **kwargs) -> pd.DataFrame:
    kwargs.setdefault("dtype", str)
    kwargs.setdefault("keep_default_na", False)
    kwargs.setdefault("na_values", [""])
    kwargs.setdefault("index_col", False)  # a row with one field too many must not silently become the index
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(path, low_memory=False, **kwargs)
    except pd.errors.EmptyDataError as exc:
        raise InputError(f"{path} is empty; expected a CSV with a header row") from exc
    except pd.errors.ParserWarning as exc:
        raise InputError(
            f"{path}: a row has more fields than the header ({exc}); expected one value per column"
        ) from exc
    except UnicodeDecodeError as exc:
        where = _first_non_utf8_line(path)
        at = f"line {where[0]}, column {where[1]}: byte 0x{where[2]:02x}" if where else str(exc)
        raise InputError(f"{path} is not UTF-8 text ({at}); expected a UTF-8 CSV (re-save it as UTF-8)") from exc
    except (pd.errors.ParserError, OSError, EOFError) as exc:
        raise InputError(
            f"{path} could not be read as CSV ({exc}); expected comma-separated values with a header row"
        ) from exc
    required = list(required)
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise InputError(f"{path} lacks column(s) {missing}; expected columns {list(expected or required)}")
    return df


def _parse_labels(df: pd.DataFrame, columns: Sequence[str], origin: PathLike, line_offset: int = 2) -> pd.DataFrame:
    """Label columns -> float64 in {1, 0, -1, NaN}; anything else names file, column and line number."""
    out = {}
    for col in columns:
        raw = df[col]
        values = pd.to_numeric(raw, errors="coerce")
        retry = values.isna() & raw.notna()
        if retry.any():  # blanks with spaces, " 1", ...: strip only the cells that did not parse
            text = raw[retry].astype(str).str.strip()
            values[retry] = pd.to_numeric(text.where(text != ""), errors="coerce")
            nonblank = raw.notna() & ~(retry & raw.astype(str).str.strip().eq(""))
        else:
            nonblank = raw.notna()
        bad = nonblank & ~values.isin([1.0, 0.0, -1.0])
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"{origin}: column {col!r}, line {i + line_offset}: label value {raw.iloc[i]!r}; "
                "expected 1 (positive), 0 (negative), -1 (uncertain) or blank"
            )
        out[col] = values.astype("float64").to_numpy()
    return pd.DataFrame(out, index=df.index)


def _check_unique(ids: pd.Series, origin: PathLike, line_offset: int = 2) -> None:
    dup = ids.duplicated(keep=False)
    if dup.any():
        first = ids[dup].iloc[0]
        lines = [int(i) + line_offset for i in np.flatnonzero((ids == first).to_numpy())[:5]]
        raise InputError(
            f"{origin}: duplicate image id {first!r} (lines {lines}; {int(ids.duplicated().sum())} duplicate(s) in all); "
            "expected one row per image"
        )


def _check_images_exist(paths: Iterable[str], origin: str) -> None:
    """Every path exists; one ``os.scandir`` per distinct parent folder."""
    listing: dict[str, set[str]] = {}
    missing: list[str] = []
    n_missing = 0
    for p in paths:
        parent, name = os.path.split(p)
        names = listing.get(parent)
        if names is None:
            try:
                with os.scandir(parent) as it:
                    names = {e.name for e in it}
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                names = set()
            listing[parent] = names
        if name not in names:
            n_missing += 1
            if len(missing) < 5:
                missing.append(p)
    if n_missing:
        raise InputError(
            f"{origin}: {n_missing} image file(s) missing, e.g. {missing}; expected every image the CSV names "
            "(pass check_images=False to skip this check)"
        )


def _norm_sex(values: pd.Series) -> pd.Series:
    table = {"m": "M", "male": "M", "f": "F", "female": "F"}
    return values.fillna("").astype(str).str.strip().str.lower().map(table).fillna("")


def _iso_date(values: pd.Series) -> pd.Series:
    """20150101 (int, float or str) -> "2015-01-01"; anything else -> ""."""
    s = values.fillna("").astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
    ok = s.str.fullmatch(r"\d{8}")
    return s.where(~ok, s.str[:4] + "-" + s.str[4:6] + "-" + s.str[6:8]).where(ok, "")


def _str(values: pd.Series) -> pd.Series:
    return values.fillna("").astype(str)


def _finish(
    df: pd.DataFrame,
    origin: str,
    *,
    frontal_only: bool,
    check_images: bool,
    extras: Sequence[str] = (),
) -> pd.DataFrame:
    """Filter views, check images, validate, and re-attach the adapter's extra columns."""
    for col in BASE_COLUMNS:
        if col == "age":
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
        else:
            df[col] = _str(df[col])
    df["view"] = df["view"].str.upper()
    if frontal_only:
        df = df[df["view"].isin(FRONTAL_VIEWS)]
    df = df.reset_index(drop=True)
    if check_images:
        _check_images_exist((p for p in df["image_path"] if p), origin)
    out = validate_table(df, origin)
    for col in extras:
        if col in df.columns:
            out[col] = df[col].to_numpy()
    return out


def _blank_labels(n: int) -> dict[str, np.ndarray]:
    return {label: np.full(n, np.nan) for label in CHEXPERT_LABELS}


# --------------------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG v2.0.0
# --------------------------------------------------------------------------------------------------------------

MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"
MIMIC_CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
MIMIC_SPLIT = "mimic-cxr-2.0.0-split.csv"


def _report_roots(root: Path, reports_root: PathLike | None) -> list[Path]:
    if reports_root is not None:
        rr = Path(reports_root).expanduser()
        if not rr.is_dir():
            raise InputError(f"MIMIC reports_root {rr} is not a folder; expected the mimic-cxr-reports tree")
        return [rr / "files" if (rr / "files").is_dir() else rr]
    cands = [root / "files", root / "mimic-cxr-reports" / "files", root.parent / "mimic-cxr-reports" / "files"]
    return [c for c in cands if c.is_dir()]


def _read_report(path: Path, not_utf8: list[Path]) -> str:
    """A report's text; bytes that are not UTF-8 become U+FFFD and the file is appended to ``not_utf8``."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        not_utf8.append(path)
        return data.decode("utf-8", errors="replace")


def _read_mimic_reports(keys: pd.DataFrame, roots: list[Path]) -> tuple[list[str], list[str]]:
    """Sections of ``files/pXX/p{subject}/s{study}.txt`` for each (subject, study); one scandir per patient folder.

    A report that is not valid UTF-8 is still read (bad bytes replaced by U+FFFD); such reports are counted and
    logged in one warning naming the first few."""
    listing: dict[Path, set[str]] = {}
    findings, impressions = [], []
    not_utf8: list[Path] = []
    for subject, study in zip(keys["subject_id"], keys["study_id"]):
        name = f"s{study}.txt"
        found = None
        for base in roots:
            folder = base / f"p{subject[:2]}" / f"p{subject}"
            names = listing.get(folder)
            if names is None:
                try:
                    with os.scandir(folder) as it:
                        names = {e.name for e in it if e.name.endswith(".txt")}
                except (FileNotFoundError, NotADirectoryError):
                    names = set()
                listing[folder] = names
            if name in names:
                found = folder / name
                break
        if found is None:
            findings.append("")
            impressions.append("")
            continue
        f, imp = parse_report_sections(_read_report(found, not_utf8))
        findings.append(f)
        impressions.append(imp)
    if not_utf8:
        log.warning("%d of %d MIMIC report(s) are not valid UTF-8 (undecodable bytes replaced by U+FFFD), e.g. %s",
                    len(not_utf8), len(keys), [str(p) for p in not_utf8[:3]])
    return findings, impressions


def load_mimic(
    root: PathLike,
    *,
    reports_root: PathLike | None = None,
    patients_csv: PathLike | None = None,
    read_reports: bool = True,
    frontal_only: bool = False,
    check_images: bool = True,
) -> pd.DataFrame:
    """MIMIC-CXR-JPG v2.0.0 (Johnson et al. 2019) in its PhysioNet layout.

    ``root`` holds ``mimic-cxr-2.0.0-metadata.csv[.gz]``, ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` (study labels),
    optionally ``mimic-cxr-2.0.0-split.csv[.gz]`` (kept as the extra ``split`` column) and
    ``files/p10/p10000032/s50414267/{dicom_id}.jpg``. Reports ``files/pXX/p{subject}/s{study}.txt`` are read from
    ``reports_root``, else ``root/files``, ``root/mimic-cxr-reports/files`` or ``root/../mimic-cxr-reports/files``
    (missing -> ""). Sex and age come from MIMIC-IV ``patients.csv[.gz]`` (``patients_csv``, else ``root`` or
    ``root/hosp``) when present: age = anchor_age + (study year - anchor_year). Studies absent from the CheXpert
    file get blank labels.
    """
    root = _require_root(root, "MIMIC-CXR-JPG")
    if not root.is_dir():
        raise InputError(f"MIMIC-CXR-JPG root {root} is not a folder; expected the folder holding {MIMIC_METADATA}")
    meta_path = _find_file(root, [MIMIC_METADATA], "MIMIC-CXR-JPG")
    label_path = _find_file(root, [MIMIC_CHEXPERT], "MIMIC-CXR-JPG")
    meta = _read_csv(meta_path, ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"])
    for col in ("dicom_id", "subject_id", "study_id"):
        meta[col] = _str(meta[col]).str.replace(r"\.0$", "", regex=True)
    _check_unique(meta["dicom_id"], meta_path)

    labels_raw = _read_csv(label_path, ["subject_id", "study_id", *CHEXPERT_LABELS])
    for col in ("subject_id", "study_id"):
        labels_raw[col] = _str(labels_raw[col]).str.replace(r"\.0$", "", regex=True)
    study_labels = _parse_labels(labels_raw, CHEXPERT_LABELS, label_path)
    study_labels["subject_id"] = labels_raw["subject_id"].to_numpy()
    study_labels["study_id"] = labels_raw["study_id"].to_numpy()
    dup = study_labels["study_id"].duplicated()
    if dup.any():
        raise InputError(
            f"{label_path}: study {study_labels['study_id'][dup].iloc[0]!r} labelled more than once; expected one row per study"
        )
    merged = meta.merge(study_labels, on=["subject_id", "study_id"], how="left", validate="many_to_one")

    extras = []
    split_path = _find_file(root, [MIMIC_SPLIT], "MIMIC-CXR-JPG", required=False)
    if split_path is not None:
        split = _read_csv(split_path, ["dicom_id", "split"])
        split["dicom_id"] = _str(split["dicom_id"])
        _check_unique(split["dicom_id"], split_path)
        merged = merged.merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
        merged["split"] = _str(merged["split"])
        extras.append("split")

    sex = pd.Series("", index=merged.index)
    age = pd.Series(np.nan, index=merged.index)
    if patients_csv is not None:
        pat_path = Path(patients_csv).expanduser()
        if not pat_path.is_file():
            raise InputError(f"MIMIC-IV patients file {pat_path} does not exist; expected patients.csv[.gz]")
    else:
        pat_path = _find_file(root, ["patients.csv"], "MIMIC-IV", required=False) or _find_file(
            root / "hosp", ["patients.csv"], "MIMIC-IV", required=False
        )
    study_date = _iso_date(merged["StudyDate"])
    if pat_path is not None:
        pats = _read_csv(pat_path, ["subject_id", "gender", "anchor_age"])
        pats["subject_id"] = _str(pats["subject_id"]).str.replace(r"\.0$", "", regex=True)
        pats = pats.drop_duplicates("subject_id").set_index("subject_id")
        sex = _norm_sex(merged["subject_id"].map(pats["gender"]))
        anchor_age = pd.to_numeric(merged["subject_id"].map(pats["anchor_age"]), errors="coerce")
        if "anchor_year" in pats.columns:
            anchor_year = pd.to_numeric(merged["subject_id"].map(pats["anchor_year"]), errors="coerce")
            year = pd.to_numeric(study_date.str[:4], errors="coerce")
            age = anchor_age + (year - anchor_year).fillna(0.0)
        else:
            age = anchor_age

    if read_reports:
        roots = _report_roots(root, reports_root)
        studies = merged[["subject_id", "study_id"]].drop_duplicates()
        f, imp = _read_mimic_reports(studies, roots)
        sections = pd.DataFrame({"subject_id": studies["subject_id"], "study_id": studies["study_id"], "findings": f, "impression": imp})
        merged = merged.merge(sections, on=["subject_id", "study_id"], how="left")
    else:
        merged["findings"] = ""
        merged["impression"] = ""

    images = root / "files"
    subj = merged["subject_id"]
    paths = (
        str(images) + os.sep + "p" + subj.str[:2] + os.sep + "p" + subj + os.sep + "s" + merged["study_id"]
        + os.sep + merged["dicom_id"] + ".jpg"
    )
    df = pd.DataFrame({
        "source": "mimic",
        "image_id": merged["dicom_id"],
        "image_path": paths,
        "patient_id": subj,
        "study_id": merged["study_id"],
        "view": merged["ViewPosition"],
        "sex": sex.to_numpy(),
        "age": age.to_numpy(),
        "study_date": study_date.to_numpy(),
        "findings": merged["findings"],
        "impression": merged["impression"],
        **{label: merged[label] for label in CHEXPERT_LABELS},
    })
    if extras:
        df["split"] = merged["split"]
    return _finish(df, str(meta_path), frontal_only=frontal_only, check_images=check_images, extras=extras)


# --------------------------------------------------------------------------------------------------------------
# CheXpert v1.0
# --------------------------------------------------------------------------------------------------------------

CHEXPERT_META = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
_CHEXPERT_PATH_RE = re.compile(r"(patient\d+)/(study\d+)/")


def _chexpert_csvs(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    folders = [root] + sorted(p for p in root.iterdir() if p.is_dir() and p.name.lower().startswith("chexpert"))
    for folder in folders:
        train = _find_file(folder, ["train.csv"], "CheXpert", required=False)
        if train is not None:
            valid = _find_file(folder, ["valid.csv"], "CheXpert", required=False)
            return [train] + ([valid] if valid is not None else [])
    raise InputError(f"CheXpert: no train.csv[.gz] in {root} or its CheXpert-v1.0*/ folder; expected CheXpert v1.0's train.csv")


def _chexpert_image_base(csv_dir: Path, rel_paths: pd.Series) -> tuple[Path, bool]:
    """(base, strip_first): CheXpert paths are relative to the folder *above* the one holding train.csv."""
    first = rel_paths.iloc[0].split("/", 1)[0] if len(rel_paths) else ""
    if first and (csv_dir / first).is_dir() and first not in ("train", "valid", "test"):
        return csv_dir, False  # root is the parent of CheXpert-v1.0-small/
    return csv_dir, True  # root is CheXpert-v1.0-small/ (any name): drop the first component


def load_chexpert(
    root: PathLike,
    *,
    csv: PathLike | None = None,
    include_valid: bool = True,
    frontal_only: bool = False,
    check_images: bool = True,
) -> pd.DataFrame:
    """CheXpert v1.0 (Irvin et al. 2019): ``train.csv`` (+ ``valid.csv`` when present; extra column ``split``).

    ``root`` is ``CheXpert-v1.0[-small]/`` (holding train.csv), its parent, or a CSV. ``Path`` entries like
    ``CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg`` are resolved against the folder holding
    the CSV (root's parent or root: both handled). patient_id = ``patient00001``, study_id =
    ``patient00001/study1``, image_id = ``Path``; view = the ``AP/PA`` column for frontal images, ``LATERAL`` for
    lateral ones.
    """
    root = _require_root(root, "CheXpert")
    if csv is not None:
        csv_path = Path(csv) if Path(csv).is_absolute() else (root if root.is_dir() else root.parent) / csv
        if not csv_path.is_file():
            raise InputError(f"CheXpert CSV {csv_path} does not exist; expected train.csv / valid.csv")
        csvs = [csv_path]
    else:
        csvs = _chexpert_csvs(root)
        if not include_valid:
            csvs = csvs[:1]
    parts = []
    for path in csvs:
        raw = _read_csv(path, [*CHEXPERT_META, *CHEXPERT_LABELS])
        rel = _str(raw["Path"])
        _check_unique(rel, path)
        labels = _parse_labels(raw, CHEXPERT_LABELS, path)
        ids = rel.str.extract(_CHEXPERT_PATH_RE)
        if ids[0].isna().any():
            i = int(np.flatnonzero(ids[0].isna().to_numpy())[0])
            raise InputError(f"{path}: column 'Path', line {i + 2}: {rel.iloc[i]!r}; expected .../patientNNNNN/studyN/viewN_*.jpg")
        base, strip = _chexpert_image_base(path.parent, rel)
        rel_local = rel.str.split("/", n=1).str[1].fillna("") if strip else rel
        frontal = _str(raw["Frontal/Lateral"]).str.lower()
        view = _str(raw["AP/PA"]).str.upper().where(frontal == "frontal", "LATERAL")
        view = view.where(frontal.isin(["frontal", "lateral"]), "")
        split = "valid" if path.name.startswith("valid") else "train" if path.name.startswith("train") else path.stem
        parts.append(pd.DataFrame({
            "source": "chexpert",
            "image_id": rel,
            "image_path": str(base) + os.sep + rel_local.str.replace("/", os.sep),
            "patient_id": ids[0],
            "study_id": ids[0] + "/" + ids[1],
            "view": view,
            "sex": _norm_sex(raw["Sex"]),
            "age": pd.to_numeric(raw["Age"], errors="coerce"),
            "study_date": "",
            "findings": "",
            "impression": "",
            **{label: labels[label] for label in CHEXPERT_LABELS},
            "split": split,
        }))
    df = pd.concat(parts, ignore_index=True)
    _check_unique(df["image_id"], " + ".join(str(p) for p in csvs))
    return _finish(df, str(csvs[0]), frontal_only=frontal_only, check_images=check_images, extras=["split"])


# --------------------------------------------------------------------------------------------------------------
# PadChest
# --------------------------------------------------------------------------------------------------------------

PADCHEST_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PADCHEST_REQUIRED = (
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "Projection", "Labels",
)
#: PadChest ``Projection`` -> schema view (``projection`` keeps the raw value).
PADCHEST_VIEWS = {"PA": "PA", "AP": "AP", "AP_HORIZONTAL": "AP", "L": "LATERAL", "COSTAL": "COSTAL"}
_QUOTED_RE = re.compile(r"'([^']*)'")


def padchest_labels(labels_field: str | float | None) -> dict[str, float]:
    """CheXpert labels of one PadChest ``Labels`` entry like ``"['pleural effusion', 'nodule']"``."""
    out = {label: np.nan for label in CHEXPERT_LABELS}
    if isinstance(labels_field, str):
        for term in _QUOTED_RE.findall(labels_field):
            for cls in PADCHEST_TO_CHEXPERT.get(term.strip().lower(), ()):
                out[cls] = 1.0
    return out


def load_padchest(
    root: PathLike,
    *,
    csv: PathLike | None = None,
    frontal_only: bool = False,
    check_images: bool = True,
) -> pd.DataFrame:
    """PadChest (Bustos et al. 2020): ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv[.gz]``.

    ``root`` is the folder holding the CSV and the image folders (``root/ImageDir/ImageID``), or the CSV itself
    (images then beside it). Age = study year - ``PatientBirth`` (a year); sex "O" -> "". view from
    ``Projection`` (PA; AP and AP_horizontal -> AP; L -> LATERAL; COSTAL; EXCLUDE/UNK -> ""). Labels through
    ``PADCHEST_TO_CHEXPERT``: 1 when mentioned, blank otherwise. Extra columns: ``projection`` (raw),
    ``modality`` (Modality_DICOM), ``labels_localizations`` (raw LabelsLocalizationsBySentence).
    """
    root = _require_root(root, "PadChest")
    if root.is_file():
        csv_path, image_root = root, root.parent
    elif csv is not None:
        csv_path = Path(csv) if Path(csv).is_absolute() else root / csv
        if not csv_path.is_file():
            raise InputError(f"PadChest CSV {csv_path} does not exist; expected {PADCHEST_CSV}[.gz]")
        image_root = root
    else:
        csv_path, image_root = _find_file(root, [PADCHEST_CSV], "PadChest"), root
    wanted = {*PADCHEST_REQUIRED, "Modality_DICOM", "LabelsLocalizationsBySentence"}
    raw = _read_csv(csv_path, PADCHEST_REQUIRED, usecols=lambda c: c in wanted)
    ids = _str(raw["ImageID"])
    _check_unique(ids, csv_path)
    image_dir = _str(raw["ImageDir"]).str.replace(r"\.0$", "", regex=True)
    date = _iso_date(raw["StudyDate_DICOM"])
    birth = pd.to_numeric(raw["PatientBirth"], errors="coerce")
    age = pd.to_numeric(date.str[:4], errors="coerce") - birth
    projection = _str(raw["Projection"])
    col_of = {label: j for j, label in enumerate(CHEXPERT_LABELS)}
    term_cols = {term: [col_of[c] for c in classes] for term, classes in PADCHEST_TO_CHEXPERT.items()}
    matrix = np.full((len(raw), len(CHEXPERT_LABELS)), np.nan)
    for i, field in enumerate(raw["Labels"]):
        if isinstance(field, str):
            for term in _QUOTED_RE.findall(field):
                for j in term_cols.get(term.strip().lower(), ()):
                    matrix[i, j] = 1.0
    labels = pd.DataFrame(matrix, columns=list(CHEXPERT_LABELS))
    df = pd.DataFrame({
        "source": "padchest",
        "image_id": ids,
        "image_path": str(image_root) + os.sep + image_dir + os.sep + ids,
        "patient_id": raw["PatientID"],
        "study_id": raw["StudyID"],
        "view": projection.str.upper().map(PADCHEST_VIEWS).fillna(""),
        "sex": _norm_sex(raw["PatientSex_DICOM"]),
        "age": age,
        "study_date": date,
        "findings": "",
        "impression": "",
        **{label: labels[label].to_numpy() for label in CHEXPERT_LABELS},
        "projection": projection,
        "modality": _str(raw["Modality_DICOM"]) if "Modality_DICOM" in raw else "",
        "labels_localizations": _str(raw["LabelsLocalizationsBySentence"]) if "LabelsLocalizationsBySentence" in raw else "",
    })
    return _finish(
        df, str(csv_path), frontal_only=frontal_only, check_images=check_images,
        extras=["projection", "modality", "labels_localizations"],
    )


# --------------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14
# --------------------------------------------------------------------------------------------------------------

NIH_CSVS = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
NIH_REQUIRED = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position")


def _nih_image_index(root: Path) -> dict[str, str]:
    """file name -> path for ``root/images*/``, ``root/images_001/images/`` and files directly in root."""
    index: dict[str, str] = {}

    def scan(folder: str, depth: int) -> None:
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return
        for e in entries:
            if e.is_file():
                index.setdefault(e.name, e.path)
            elif depth > 0 and e.is_dir() and e.name.lower().startswith("images"):
                scan(e.path, depth - 1)

    scan(str(root), 2)
    return index


def load_nih(
    root: PathLike,
    *,
    csv: PathLike | None = None,
    frontal_only: bool = False,
    check_images: bool = True,
) -> pd.DataFrame:
    """NIH ChestX-ray14 (Wang et al. 2017): ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` (.gz ok).

    ``root`` is the dataset folder (or the CSV; images then searched beside it). Images are found in
    ``root/images*/`` and ``root/images_NNN/images/`` through one index. Labels via ``NIH_TO_CHEXPERT``:
    mapped classes are 1 when listed, else 0; Enlarged Cardiomediastinum, Fracture, Support Devices blank.
    An NIH finding name outside the 15 known ones raises. Ages outside 0-120 (typos in the 2017 file) -> NaN.
    """
    root = _require_root(root, "NIH ChestX-ray14")
    if root.is_file():
        csv_path, image_root = root, root.parent
    elif csv is not None:
        csv_path = Path(csv) if Path(csv).is_absolute() else root / csv
        if not csv_path.is_file():
            raise InputError(f"NIH CSV {csv_path} does not exist; expected one of {list(NIH_CSVS)}")
        image_root = root
    else:
        csv_path, image_root = _find_file(root, NIH_CSVS, "NIH ChestX-ray14"), root
    raw = _read_csv(csv_path, NIH_REQUIRED)
    ids = _str(raw["Image Index"])
    _check_unique(ids, csv_path)

    n = len(raw)
    labels = _blank_labels(n)
    for cls in NIH_STATED_CLASSES:
        labels[cls] = np.zeros(n)
    for i, field in enumerate(_str(raw["Finding Labels"])):
        for term in (t.strip() for t in field.split("|")):
            if not term:
                continue
            if term not in NIH_TO_CHEXPERT:
                raise InputError(
                    f"{csv_path}: column 'Finding Labels', line {i + 2}: unknown label name {term!r}; "
                    f"expected '|'-separated names from {sorted(NIH_TO_CHEXPERT)}"
                )
            cls = NIH_TO_CHEXPERT[term]
            if cls:
                labels[cls][i] = 1.0

    age = pd.to_numeric(_str(raw["Patient Age"]).str.extract(r"^0*(\d+)", expand=False), errors="coerce")
    age = age.where((age >= 0) & (age <= 120))
    index = _nih_image_index(image_root)
    default_dir = str(image_root / "images") + os.sep
    paths = [index.get(name, default_dir + name) for name in ids]
    df = pd.DataFrame({
        "source": "nih",
        "image_id": ids,
        "image_path": paths,
        "patient_id": _str(raw["Patient ID"]).str.replace(r"\.0$", "", regex=True),
        "study_id": ids.str.replace(r"\.[A-Za-z]+$", "", regex=True),
        "view": raw["View Position"],
        "sex": _norm_sex(raw["Patient Gender"]),
        "age": age,
        "study_date": "",
        "findings": "",
        "impression": "",
        **labels,
    })
    return _finish(df, str(csv_path), frontal_only=frontal_only, check_images=check_images)


# --------------------------------------------------------------------------------------------------------------
# generic folder + CSV
# --------------------------------------------------------------------------------------------------------------

FOLDER_CSVS = ("labels.csv", "metadata.csv")
FOLDER_OPTIONAL = ("image_id", "patient_id", "study_id", "view", "sex", "age", "study_date", "findings", "impression", "report", "split")


def _label_column_name(col: str) -> str | None:
    key = " ".join(col.replace("_", " ").split()).lower()
    for label in CHEXPERT_LABELS:
        if label.lower() == key:
            return label
    return None


def load_folder(
    root: PathLike,
    csv: PathLike | None = None,
    *,
    extra_columns: Sequence[str] = (),
    frontal_only: bool = False,
    check_images: bool = True,
) -> pd.DataFrame:
    """Any folder of images plus a CSV (``csv``, relative to ``root`` or absolute; default ``labels.csv`` or
    ``metadata.csv`` in root).

    Required column ``image`` (path relative to root, or absolute). Optional: ``image_id`` (default: ``image``),
    ``patient_id`` (default: image_id), ``study_id``, ``view``, ``sex``, ``age``, ``study_date``, ``findings``,
    ``impression``, ``report`` (parsed with ``parse_report_sections`` when findings/impression columns are
    absent; a report without headers goes whole into findings), ``split`` (kept), and any subset of the 14
    CheXpert label columns (case and ``_``/space insensitive, e.g. ``pleural_effusion``). Other columns raise
    as unknown label names unless listed in ``extra_columns`` (kept as extra columns).
    """
    root = _require_root(root, "folder dataset")
    if not root.is_dir():
        raise InputError(f"folder dataset root {root} is not a folder; expected the image folder")
    if csv is None:
        csv_path = _find_file(root, FOLDER_CSVS, "folder dataset")
    else:
        csv_path = Path(csv).expanduser()
        csv_path = csv_path if csv_path.is_absolute() else root / csv_path
        if not csv_path.is_file():
            raise InputError(f"folder dataset CSV {csv_path} does not exist; expected a CSV with an 'image' column")
    expected = ["image", *FOLDER_OPTIONAL, *CHEXPERT_LABELS]
    raw = _read_csv(csv_path, ["image"], expected=expected)
    label_cols: dict[str, str] = {}
    unknown = []
    for col in raw.columns:
        if col == "image" or col in FOLDER_OPTIONAL or col in extra_columns:
            continue
        label = _label_column_name(col)
        if label is None:
            unknown.append(col)
        elif label in label_cols.values():
            raise InputError(f"{csv_path}: columns {[c for c, l in label_cols.items() if l == label] + [col]} both name label {label!r}")
        else:
            label_cols[col] = label
    if unknown:
        raise InputError(
            f"{csv_path}: unknown label name(s)/column(s) {unknown}; expected CheXpert labels {list(CHEXPERT_LABELS)}, "
            f"metadata columns {['image', *FOLDER_OPTIONAL]}, or pass extra_columns= to keep them"
        )
    parsed = _parse_labels(raw, list(label_cols), csv_path)
    labels = _blank_labels(len(raw))
    for col, label in label_cols.items():
        labels[label] = parsed[col].to_numpy()

    image = _str(raw["image"])
    if (image == "").any():
        i = int(np.flatnonzero((image == "").to_numpy())[0])
        raise InputError(f"{csv_path}: column 'image', line {i + 2} is blank; expected an image path")
    paths = [str(p) if os.path.isabs(p) else str(root / p) for p in image]
    image_id = _str(raw["image_id"]) if "image_id" in raw else image
    _check_unique(image_id, csv_path)
    for name in ("image_id", "patient_id"):  # a blank patient id would put all such images in one "patient"
        if name in raw and (_str(raw[name]).str.strip() == "").any():
            i = int(np.flatnonzero((_str(raw[name]).str.strip() == "").to_numpy())[0])
            raise InputError(f"{csv_path}: column {name!r}, line {i + 2} is blank; expected an id in every row "
                             "(or no such column: the image path stands in)")

    def col(name: str, default="") -> pd.Series | str:
        return raw[name] if name in raw else default

    findings, impression = col("findings"), col("impression")
    if "report" in raw and "findings" not in raw and "impression" not in raw:
        sections = [parse_report_sections(t) for t in raw["report"]]
        reports = _str(raw["report"])
        findings = [f if (f or imp) else " ".join(r.split()) for (f, imp), r in zip(sections, reports)]
        impression = [imp for _, imp in sections]
    df = pd.DataFrame({
        "source": "folder",
        "image_id": image_id,
        "image_path": paths,
        "patient_id": _str(raw["patient_id"]) if "patient_id" in raw else image_id,
        "study_id": col("study_id"),
        "view": col("view"),
        "sex": _norm_sex(raw["sex"]) if "sex" in raw else "",
        "age": pd.to_numeric(raw["age"], errors="coerce") if "age" in raw else np.nan,
        "study_date": col("study_date"),
        "findings": findings,
        "impression": impression,
        **labels,
    })
    extras = [c for c in ("split", *extra_columns) if c in raw.columns]
    for c in extras:
        df[c] = raw[c].to_numpy()
    return _finish(df, str(csv_path), frontal_only=frontal_only, check_images=check_images, extras=extras)


# --------------------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------------------

ADAPTERS: dict[str, Callable[..., pd.DataFrame]] = {
    "mimic": load_mimic,
    "chexpert": load_chexpert,
    "padchest": load_padchest,
    "nih": load_nih,
    "folder": load_folder,
    # "openi": cxrgen.data.openi.load_openi -- written separately (reports only, no root); the lead registers it.
}


def load_dataset(name: str, **kwargs) -> pd.DataFrame:
    """``ADAPTERS[name](**kwargs)``; an unknown name or option raises InputError listing the known ones."""
    if name not in ADAPTERS:
        raise InputError(f"unknown dataset {name!r}; expected one of {sorted(ADAPTERS)}")
    fn = ADAPTERS[name]
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in kwargs if k not in params]
        if unknown:
            raise InputError(f"dataset {name!r} takes no option(s) {unknown}; expected options from {list(params)}")
    return fn(**kwargs)
