"""Data summary: image counts per label x split, and an example grid per finding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.data.preprocess import load_grayscale, resize_square
from cxrgen.data.sampling import sole_finding
from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.io import write_csv_atomic
from cxrgen.plotting import image_grid

GRID_FINDINGS = ("No Finding", "Pleural Effusion", "Cardiomegaly", "Pneumonia", "Pneumothorax", "Atelectasis", "Edema", "Support Devices")


def label_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Positives per label and split (after the label policy), plus image and patient totals."""
    rows = []
    for split, part in [("all", table), *table.groupby("split", sort=True)]:
        row = {"split": split, "images": len(part), "patients": part["patient_id"].nunique()}
        row.update({label: int((part[label] == 1.0).sum()) for label in CHEXPERT_LABELS})
        rows.append(row)
    return pd.DataFrame(rows)


def write_data_summary(table: pd.DataFrame, counts_csv, grid_png, scale: str, seed: int, per_finding: int = 4, size: int = 96) -> None:
    write_csv_atomic(label_counts(table), counts_csv)
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for finding in GRID_FINDINGS:
        mask = sole_finding(table, finding) if finding != "Support Devices" else table[finding] == 1.0
        candidates = table[mask & (table["image_path"] != "")]
        if candidates.empty:
            continue
        picks = candidates.iloc[rng.choice(len(candidates), size=min(per_finding, len(candidates)), replace=False)]
        images = [resize_square(load_grayscale(p), size) for p in picks["image_path"]]
        images += [np.zeros((size, size), np.uint8)] * (per_finding - len(images))
        rows.append(images)
        labels.append(finding)
    image_grid(
        rows,
        row_labels=labels,
        col_labels=[f"example {i + 1}" for i in range(per_finding)],
        out_stem=str(Path(grid_png).with_suffix("")),
        title=f"Images per finding ({scale} scale)",
    )
