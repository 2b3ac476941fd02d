"""MaCheX-style unified chest X-ray collection (Weber et al. 2023, sec. 4, Table 1, supplement 7.2).

One table over any subset of the dataset adapters (:func:`cxrgen.data.adapters.load_dataset`: MIMIC-CXR-JPG,
CheXpert, PadChest, NIH ChestX-ray14, a generic folder; the embedded phantom is read by the MIMIC adapter), with the
source's reports and labels carried along.  MaCheX keeps frontal (AP/PA) scans only (``frontal_only``) and combines
the sources' designated *train* subsets; each source's test subset stays apart for evaluation.  Images are resized
so the shortest edge meets the target size, then centre-cropped (``cxrgen.data.preprocess``'s ``cheff`` method), with
no histogram equalisation.

A source is a dict ``{"adapter": "mimic", "root": "...", "name": "MIMIC-CXR", "origin": "Boston, MA, USA",
"options": {...}}`` (``options`` go to the adapter).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from cxrgen.data.adapters import ADAPTERS, load_dataset
from cxrgen.data.leakage import MACHEX_TEST_SPLIT
from cxrgen.data.preprocess import load_grayscale, preprocess
from cxrgen.data.sampling import patient_split
from cxrgen.data.schema import CHEXPERT_LABELS, FRONTAL_VIEWS
from cxrgen.errors import InputError
from cxrgen.progress import progress_bar

#: 7.2: where each source comes from (Table 1's "Origin" column)
ORIGINS = {
    "nih": "Bethesda, MD, USA",
    "chexpert": "Palo Alto, CA, USA",
    "mimic": "Boston, MA, USA",
    "padchest": "Alicante, Spain",
}
TRAIN_SPLITS = ("train",)
TEST_SPLITS = ("test",)
TABLE1_COLUMNS = ["dataset", "n_patients", "n_train", "n_test", "n_in_machex", "pct_of_machex", "origin"]


def check_source(src: dict, i: int) -> dict:
    if not isinstance(src, dict) or "adapter" not in src or "root" not in src:
        raise InputError(f"MaCheX source #{i} = {src!r}; expected a mapping with 'adapter' and 'root'")
    if src["adapter"] not in ADAPTERS:
        raise InputError(f"MaCheX source #{i}: adapter {src['adapter']!r}; expected one of {sorted(ADAPTERS)}")
    return {"name": src.get("name") or src["adapter"], "origin": src.get("origin") or ORIGINS.get(src["adapter"], ""),
            "options": dict(src.get("options") or {}), **src}


def build_machex(sources: Sequence[dict], frontal_only: bool = True, seed: int = 0,
                 test_fraction: float = 0.1) -> pd.DataFrame:
    """The unified table: adapter columns + ``dataset`` (source name), ``origin``, ``source_split`` (the source's own
    split, or a seeded patient split with ``test_fraction`` when it has none; for a source with ``workflow_splits``,
    the workflow's patient split with ``seed``: its test split is MaCheX's test, the others train), ``in_machex`` and
    ``report``."""
    if not sources:
        raise InputError("MaCheX needs at least one source; got none")
    frames = []
    for i, raw in enumerate(sources):
        src = check_source(raw, i)
        df = load_dataset(src["adapter"], root=src["root"], **src["options"])
        df = df.copy()
        df["dataset"], df["origin"] = src["name"], src["origin"]
        split = df["split"].astype(str) if "split" in df.columns else None
        if src.get("workflow_splits"):  # the workflow's own dataset: its patient split, test held out
            own = patient_split(df, src["workflow_splits"], seed)
            split = own.where(own == MACHEX_TEST_SPLIT, TRAIN_SPLITS[0])
        elif split is None or not split.isin(TRAIN_SPLITS).any():
            patients = np.array(sorted(df["patient_id"].astype(str).unique()))
            rng = np.random.default_rng([seed, i])
            test = set(rng.permutation(patients)[: int(round(test_fraction * len(patients)))])
            split = df["patient_id"].astype(str).map(lambda p: "test" if p in test else "train")  # noqa: B023 (run here)
        df["source_split"] = split.to_numpy()
        df["workflow_dataset"] = bool(src.get("workflow_splits"))  # the run's own dataset (patients comparable)
        df["frontal"] = df["view"].astype(str).str.upper().isin(FRONTAL_VIEWS)
        frames.append(df)
    table = pd.concat(frames, ignore_index=True, sort=False)
    keep_view = table["frontal"] if frontal_only else pd.Series(True, index=table.index)
    table["in_machex"] = keep_view & table["source_split"].isin(TRAIN_SPLITS)
    table["in_test"] = keep_view & table["source_split"].isin(TEST_SPLITS)
    # sec. 5: Findings and Impression concatenated are the report conditioning
    table["report"] = [" ".join(p for p in (str(f).strip(), str(m).strip()) if p and p != "nan")
                       for f, m in zip(table["findings"].fillna(""), table["impression"].fillna(""))]
    return table


def table1(table: pd.DataFrame) -> pd.DataFrame:
    """Table 1 layout: patients, train/test images (all views), images in MaCheX and their share (%) per source."""
    need = {"dataset", "patient_id", "source_split", "in_machex", "origin"}
    if not need <= set(table.columns):
        raise InputError(f"MaCheX table lacks columns {sorted(need - set(table.columns))}; expected build_machex output")
    total = int(table["in_machex"].sum())
    rows = []
    for name, g in table.groupby("dataset", sort=False):
        n_in = int(g["in_machex"].sum())
        rows.append({"dataset": name, "n_patients": int(g["patient_id"].nunique()),
                     "n_train": int(g["source_split"].isin(TRAIN_SPLITS).sum()),
                     "n_test": int(g["source_split"].isin(TEST_SPLITS).sum()), "n_in_machex": n_in,
                     "pct_of_machex": round(100.0 * n_in / total, 2) if total else float("nan"),
                     "origin": g["origin"].iloc[0]})
    return pd.DataFrame(rows, columns=TABLE1_COLUMNS)


def load_images(table: pd.DataFrame, size: int, progress: bool = True) -> np.ndarray:
    """uint8 (N, size, size): shortest edge resized to ``size``, centre-cropped (MaCheX preprocessing)."""
    if int(size) < 8:
        raise InputError(f"size={size!r}; expected an image size of at least 8 pixels")
    out = np.empty((len(table), size, size), dtype=np.uint8)
    for i, path in enumerate(progress_bar(table["image_path"], desc=f"MaCheX {size}px", disable=not progress, leave=False)):
        out[i] = preprocess(load_grayscale(path), "cheff", int(size))
    return out


class MaCheXDataset(torch.utils.data.Dataset):
    """PyTorch view of the MaCheX rows (lazy loading, for paper scale): image in [-1, 1] (1, size, size), the
    report text, the 14 CheXpert labels (NaN = not stated) and the source name."""

    def __init__(self, table: pd.DataFrame, size: int, subset: str = "train"):
        if subset not in ("train", "test"):
            raise InputError(f"subset={subset!r}; expected 'train' or 'test'")
        self.rows = table[table["in_machex" if subset == "train" else "in_test"]].reset_index(drop=True)
        self.size = int(size)
        self.labels = [c for c in CHEXPERT_LABELS if c in self.rows.columns]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows.iloc[i]
        img = preprocess(load_grayscale(row["image_path"]), "cheff", self.size)
        return {"image": torch.from_numpy(img).float()[None] / 127.5 - 1.0, "report": row["report"],
                "labels": torch.tensor(row[self.labels].to_numpy(dtype=np.float32)), "dataset": row["dataset"]}
