"""Reproducible samples of a dataset table: random frontal sets, few-shot sets, patient-disjoint splits,
and their materialisation as preprocessed image folders with a manifest CSV."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrgen.data.leakage import sample_splits
from cxrgen.data.preprocess import check_preprocessing, load_grayscale, load_preprocessed
from cxrgen.data.prompts import chambon_prompt, zafar_prompt
from cxrgen.data.schema import CHEXPERT_LABELS, FRONTAL_VIEWS, label_names_to_columns
from cxrgen.errors import InputError
from cxrgen.io import atomic_path
from cxrgen.progress import progress_bar

log = logging.getLogger(__name__)

PATHOLOGIES = tuple(l for l in CHEXPERT_LABELS if l not in ("No Finding", "Support Devices"))


def frontal(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["view"].isin(FRONTAL_VIEWS)]


def _take(df: pd.DataFrame, n: int, seed: int, what: str, strict: bool = True) -> pd.DataFrame:
    if len(df) < n:
        if strict:
            raise InputError(f"{what}: only {len(df)} eligible images, {n} requested")
        n = len(df)
    return df.sample(n=n, random_state=seed).sort_values("image_id").reset_index(drop=True)


def sample_frontal_with_reports(df: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """Chambon et al. 2.1: N random frontal (AP/PA) images with a report (1000 per dataset in the paper)."""
    front = frontal(df)
    eligible = front[(front["impression"].fillna("") != "") | (front["findings"].fillna("") != "")]
    what = (f"random frontal sample of {n} ({len(df) - len(front)} non-frontal images and {len(front) - len(eligible)} "
            "frontal images without a FINDINGS/IMPRESSION section excluded)")
    log.info("%s: %d eligible", what, len(eligible))
    return _take(eligible, n, seed, what)


def sole_finding(df: pd.DataFrame, label: str) -> pd.Series:
    """Rows whose only positive pathology is ``label`` ("No Finding" means no pathology at all).

    Other pathologies marked uncertain (-1) disqualify a row too: it is not a clear sole finding.
    """
    label_names_to_columns([label])
    positives = df[list(PATHOLOGIES)].isin([1.0, -1.0]).sum(axis=1)
    if label == "No Finding":
        return (df["No Finding"] == 1.0) & (positives == 0)
    return (df[label] == 1.0) & (positives == 1)


def few_shot(df: pd.DataFrame, classes: list[str], n_per_class: int, seed: int, views=FRONTAL_VIEWS) -> pd.DataFrame:
    """Few-shot fine-tuning sets: ``n_per_class`` frontal images per class with that class as sole finding.

    Chambon et al.: 5 No Finding + 5 Pleural Effusion; de Wilde et al.: 100 AP images per single-label class.
    """
    base = df[df["view"].isin(views)]
    parts = []
    for i, label in enumerate(classes):
        part = _take(base[sole_finding(base, label)], n_per_class, seed + i, f"few-shot class {label!r}")
        parts.append(part.assign(class_label=label))
    return pd.concat(parts, ignore_index=True)


def patient_split(df: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.Series:
    """Assign each row a split by hashing its patient id, so no patient lands in two splits.

    Hashing (not shuffling) keeps a patient's split stable when rows are added or removed.
    """
    total = sum(fractions.values())
    if not np.isclose(total, 1.0) or any(v < 0 for v in fractions.values()):
        raise InputError(
            f"split fractions {fractions} (config data.splits); expected non-negative numbers that sum to 1"
        )
    edges = np.cumsum(list(fractions.values()))
    names = list(fractions)

    def bucket(pid: str) -> str:
        h = hashlib.sha256(f"{seed}:{pid}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        return names[int(np.searchsorted(edges, u, side="right").clip(max=len(names) - 1))]

    return df["patient_id"].astype(str).map(bucket).rename("split")


def check_patient_disjoint(df: pd.DataFrame, split_col: str = "split", origin: str = "dataset table") -> None:
    """Raise naming the first patients whose images sit in more than one split (and those splits)."""
    splits = df.groupby(df["patient_id"].astype(str))[split_col].unique()
    leaking = splits[splits.map(len) > 1]
    if len(leaking):
        examples = {pid: sorted(map(str, s)) for pid, s in leaking.iloc[:5].items()}
        raise InputError(
            f"{origin}: {len(leaking)} patient(s) in more than one split (column {split_col!r}), e.g. {examples}; "
            "expected patient-disjoint splits (every image of a patient in one split)"
        )


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _file_names(image_ids: pd.Series) -> list[str]:
    """``images/<id>.png`` per image; characters unsafe in a file name (``/`` in CheXpert ids) become ``_``."""
    names, taken = [], set()
    for image_id in image_ids.astype(str):
        stem = _UNSAFE.sub("_", image_id).strip(".") or "image"
        name, k = stem, 1
        while name in taken:
            k += 1
            name = f"{stem}-{k}"
        taken.add(name)
        names.append(f"images/{name}.png")
    return names


def materialise(
    df: pd.DataFrame,
    out_dir: str | Path,
    preprocessing: str,
    size: int,
    on_bad_image: str = "error",
    progress: bool = True,
) -> pd.DataFrame:
    """Write preprocessed PNGs and ``manifest.csv`` (rows + file, prompts) atomically into ``out_dir``.

    ``on_bad_image="skip"`` drops unreadable images (missing, truncated, corrupt, empty, all black under the
    de Wilde crop) and records each in ``skipped.csv`` with its error; the count is logged and kept in
    ``manifest.attrs["n_skipped"]``. "error" stops at the first one, naming the file; nothing is written then.
    """
    if on_bad_image not in ("error", "skip"):
        raise InputError(f"on_bad_image={on_bad_image!r}; expected 'error' or 'skip'")
    check_preprocessing(preprocessing, size)  # a bad setting must fail, not skip every image
    dup = df["image_id"].astype(str).duplicated()
    if dup.any():
        ids = sorted(set(df["image_id"][dup].astype(str)))[:5]
        raise InputError(f"sample for {out_dir}: duplicate image id(s) {ids}; expected one row per image")
    rows, skipped = [], []
    files = _file_names(df["image_id"])
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        for name, (_, row) in progress_bar(zip(files, df.iterrows()), total=len(df), disable=not progress,
                                   desc=f"write {Path(out_dir).name}"):
            try:
                arr = load_preprocessed(row["image_path"], preprocessing, size)
            except InputError as exc:
                if on_bad_image == "error":
                    raise
                skipped.append({"image_id": row["image_id"], "image_path": row["image_path"], "error": str(exc)})
                continue
            Image.fromarray(arr).save(tmp / name)
            rows.append({**row.to_dict(), "file": name, "prompt": chambon_prompt(row), "structured_prompt": zafar_prompt(row)})
        manifest = pd.DataFrame(rows)
        manifest.to_csv(tmp / "manifest.csv", index=False)
        pd.DataFrame(skipped, columns=["image_id", "image_path", "error"]).to_csv(tmp / "skipped.csv", index=False)
    if skipped:
        log.warning("%s: skipped %d of %d image(s) that could not be read (listed in skipped.csv), e.g. %s",
                    out_dir, len(skipped), len(df), skipped[0]["error"])
    manifest.attrs["n_skipped"] = len(skipped)
    return manifest


def read_manifest(folder: str | Path) -> pd.DataFrame:
    """The manifest of a materialised folder (blank cells = NaN)."""
    manifest_path = Path(folder) / "manifest.csv"
    if not manifest_path.is_file():
        raise InputError(f"{manifest_path} missing; expected a folder written by cxrgen.data.sampling.materialise")
    return pd.read_csv(manifest_path, keep_default_na=False, na_values=[""])


def load_images(folder: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Read a materialised folder back: (N,H,W) uint8 array and its manifest (:class:`FolderImages` reads only
    what it is asked for)."""
    images = FolderImages(folder)
    return np.asarray(images), images.manifest


class FolderImages:
    """The uint8 (N, H, W) images of a materialised folder, read from disk when indexed, so a split of any size costs
    only its manifest in memory: ``images[i]`` is one image (H, W); ``images[a:b]``, ``images[index_array]`` and
    ``np.asarray(images)`` stack what they select; ``np.take(images, idx, axis=0)`` (a subset) and
    ``images.map(fn)`` (a per-image function such as a crop, applied as images are read) stay on disk. ``manifest``
    holds the rows in item order."""

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, folder: str | Path, manifest: pd.DataFrame | None = None, transform=None):
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder) if manifest is None else manifest.reset_index(drop=True)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self), *(self[0].shape if len(self) else (0, 0)))

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"image {key} of {len(self)} in {self.folder}")
            image = load_grayscale(self.folder / self.manifest["file"].iat[i])
            if not image.flags.writeable:  # torch.from_numpy warns on read-only arrays
                image = image.copy()
            return image if self.transform is None else self.transform(image)
        return self._stack(np.arange(len(self))[key])

    def _stack(self, indices) -> np.ndarray:
        images = [self[int(i)] for i in indices]
        return np.stack(images) if images else np.zeros((0, 0, 0), np.uint8)

    def take(self, indices, axis=0, out=None, mode="raise") -> FolderImages:
        """The images at ``indices`` (what ``np.take(images, indices, axis=0)`` calls), still on disk."""
        if axis != 0 or out is not None or mode != "raise":
            raise ValueError("FolderImages.take supports axis=0 only, without out or mode")
        rows = np.arange(len(self))[np.asarray(indices, dtype=np.intp)]  # IndexError when out of range
        return FolderImages(self.folder, self.manifest.iloc[rows], self.transform)

    def map(self, fn) -> FolderImages:
        """The same images with ``fn`` applied to each (after any function mapped before)."""
        inner = self.transform
        return FolderImages(self.folder, self.manifest, fn if inner is None else lambda image: fn(inner(image)))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self._stack(range(len(self)))
        return array if dtype is None else array.astype(dtype)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def load_image_folder(folder: str | Path) -> np.ndarray:
    """The images of a folder as uint8 (N, H, W): a materialised folder (its manifest's order) or any folder of
    PNG/JPEG files (sorted by name, sub-folders included). All images must share one size."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"image folder {folder} does not exist; expected a folder of PNG/JPEG images")
    if (folder / "manifest.csv").is_file():
        return load_images(folder)[0]
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise InputError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images; expected a folder of images")
    images = [load_grayscale(f) for f in files]
    sizes = sorted({im.shape for im in images})
    if len(sizes) > 1:
        raise InputError(f"{folder} holds images of {len(sizes)} sizes ({sizes[:3]}...); expected one size")
    return np.stack(images)


class SampleFolderDataset:
    """A materialised folder as a map-style ``torch.utils.data.Dataset`` that reads each image from disk when
    asked (memory does not grow with the folder): item ``i`` is ``transform(uint8 (H, W), i)`` (default: the
    image). ``manifest`` holds the rows in item order."""

    def __init__(self, folder: str | Path, transform=None):
        self.images = FolderImages(folder)
        self.folder, self.manifest = self.images.folder, self.images.manifest
        if len(self.manifest) == 0:
            raise InputError(f"{self.folder / 'manifest.csv'} has no rows; expected a materialised sample with images")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.images[i]
        return image if self.transform is None else self.transform(image, i)


SELECTORS = ("frontal_with_reports", "few_shot", "split")


def select_sample(table: pd.DataFrame, spec: dict, seed: int, all_splits=None) -> pd.DataFrame:
    """Pick the rows of one configured sample (``samples.<name>`` in config.yaml).

    Rows come from the sample's splits only (``split``/``splits``; few-shot samples default to the train split,
    :func:`cxrgen.data.leakage.sample_splits`), so samples on disjoint splits share no patient. ``all_splits`` are
    the configured split names (``data.splits``; default: those in the table).
    """
    kind = spec.get("select")
    if kind not in SELECTORS:
        raise InputError(f"sample selector {kind!r}; expected one of {list(SELECTORS)}")
    splits = sample_splits(spec, all_splits if all_splits is not None else sorted(table["split"].astype(str).unique()))
    table = table[table["split"].astype(str).isin(splits)]
    try:
        return _select(table, spec, kind, seed, splits)
    except InputError as exc:
        raise InputError(f"{exc} (sample drawn from split(s) {list(splits)})") from exc


def _select(table: pd.DataFrame, spec: dict, kind: str, seed: int, splits) -> pd.DataFrame:
    if kind == "frontal_with_reports":
        return sample_frontal_with_reports(table, int(spec["n"]), seed)
    if kind == "few_shot":
        return few_shot(table, list(spec["classes"]), int(spec["n_per_class"]), seed, tuple(spec.get("views", FRONTAL_VIEWS)))
    rows = frontal(table)  # kind == "split"
    if "n" in spec:
        rows = _take(rows, int(spec["n"]), seed, f"split(s) {list(splits)}", strict=False)
    return rows.sort_values("image_id").reset_index(drop=True)
