"""Build and read the unified dataset table (adapter output + label policy + patient-disjoint splits)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.data.adapters import load_dataset
from cxrgen.data.sampling import check_patient_disjoint, patient_split
from cxrgen.data.schema import CHEXPERT_LABELS, apply_label_policy
from cxrgen.errors import InputError

#: the phantom generator writes the real MIMIC-CXR-JPG layout, so the MIMIC adapter reads it
ADAPTER_FOR_SOURCE = {"phantom": "mimic"}


def build_dataset_table(data_cfg: dict, seed: int) -> pd.DataFrame:
    source = data_cfg["source"]
    kwargs = {"root": data_cfg["root"]}
    if data_cfg.get("csv"):
        kwargs["csv"] = data_cfg["csv"]
    table = load_dataset(ADAPTER_FOR_SOURCE.get(source, source), **kwargs)
    policy = data_cfg.get("label_policy", {})
    table = apply_label_policy(table, policy.get("uncertain", "positive"), policy.get("blank", "negative"))
    if "split" in table.columns:
        table = table.rename(columns={"split": "source_split"})
    table["split"] = patient_split(table, data_cfg.get("splits", {"train": 0.7, "validate": 0.15, "test": 0.15}), seed)
    check_patient_disjoint(table)
    return table


def read_dataset_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset table {path} missing; expected the output of the dataset_table rule")
    table = pd.read_csv(path, dtype={"patient_id": str, "study_id": str, "image_id": str}, keep_default_na=False, na_values=[""])
    for col in ("findings", "impression", "view", "sex", "study_date"):
        if col in table:
            table[col] = table[col].fillna("").astype(str)
    missing = [c for c in ("image_id", "image_path", "patient_id", "view", "split", *CHEXPERT_LABELS) if c not in table]
    if missing:
        raise InputError(f"dataset table {path} lacks columns {missing}")
    return table
