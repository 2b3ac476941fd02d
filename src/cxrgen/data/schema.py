"""The one table schema every dataset adapter returns, and the label policies."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxrgen.errors import InputError

#: CheXpert's 14 observations, in the order of the CheXpert / MIMIC-CXR label files.
CHEXPERT_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
)

#: The 12 findings Chambon et al. Table 1 scores with the DenseNet-121 (no "No Finding", no "Support Devices").
CHAMBON_TABLE1_LABELS: tuple[str, ...] = tuple(l for l in CHEXPERT_LABELS if l not in ("No Finding", "Support Devices"))

FRONTAL_VIEWS: tuple[str, ...] = ("AP", "PA")

#: Columns of the unified table (labels follow, one column per CheXpert label: 1.0, 0.0, -1.0 or NaN=blank).
BASE_COLUMNS: tuple[str, ...] = (
    "source",  # dataset name, e.g. "mimic", "chexpert", "padchest", "nih", "openi", "folder"
    "image_id",  # unique per image within the source
    "image_path",  # absolute path (str), or "" when the source has no images (e.g. reports only)
    "patient_id",
    "study_id",
    "view",  # AP, PA, LATERAL, LL, ... (upper case) or "" when unknown
    "sex",  # "M", "F" or ""
    "age",  # years (float) or NaN
    "study_date",  # ISO date string or ""
    "findings",  # report FINDINGS section, "" when absent
    "impression",  # report IMPRESSION section, "" when absent
)
COLUMNS: tuple[str, ...] = BASE_COLUMNS + CHEXPERT_LABELS

VALID_LABEL_VALUES = {1.0, 0.0, -1.0}


def empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="float64" if c in CHEXPERT_LABELS or c == "age" else "object") for c in COLUMNS})


def validate_table(df: pd.DataFrame, origin: str) -> pd.DataFrame:
    """Check that ``df`` follows the schema; ``origin`` names the file the rows came from (for errors)."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{origin}: adapter output lacks columns {missing}; expected all of {list(COLUMNS)}")
    for label in CHEXPERT_LABELS:
        values = df[label].dropna().unique()
        bad = [v for v in values if float(v) not in VALID_LABEL_VALUES]
        if bad:
            raise InputError(
                f"{origin}: column {label!r} holds {bad[:5]}; expected 1 (positive), 0 (negative), -1 (uncertain) or blank"
            )
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise InputError(f"{origin}: duplicate image ids, e.g. {list(dup.iloc[:3])}; expected one row per image")
    return df[list(COLUMNS)].reset_index(drop=True)


def apply_label_policy(df: pd.DataFrame, uncertain: str = "positive", blank: str = "negative") -> pd.DataFrame:
    """Map -1 (uncertain) and blank labels to binary ones.

    Chambon et al. (and torchxrayvision's CheXpert loaders) count uncertain as positive and blank as negative.
    ``uncertain``/``blank`` take "positive", "negative" or "ignore" (kept as NaN, excluded from metrics).
    """
    mapping = {"positive": 1.0, "negative": 0.0, "ignore": math.nan}
    for name, value in (("uncertain", uncertain), ("blank", blank)):
        if value not in mapping:
            raise InputError(f"label policy {name}={value!r}; expected one of {sorted(mapping)}")
    out = df.copy()
    for label in CHEXPERT_LABELS:
        col = out[label].astype("float64")
        col = col.where(col != -1.0, mapping[uncertain])
        col = col.where(~df[label].isna(), mapping[blank])
        out[label] = col
    return out


def label_names_to_columns(names: list[str] | tuple[str, ...]) -> list[str]:
    """Validate user-given label names against CheXpert's, naming the unknown ones."""
    unknown = [n for n in names if n not in CHEXPERT_LABELS]
    if unknown:
        raise InputError(f"unknown label name(s) {unknown}; expected CheXpert labels {list(CHEXPERT_LABELS)}")
    return list(names)


def positive_findings(row: pd.Series) -> list[str]:
    """Labels marked 1 in a row (No Finding excluded)."""
    return [l for l in CHEXPERT_LABELS if l != "No Finding" and row.get(l) == 1.0]


def as_array(df: pd.DataFrame, labels=CHEXPERT_LABELS) -> np.ndarray:
    return df[list(labels)].to_numpy(dtype="float64")
