"""CheXpert@k (Chambon et al. 2022, section 2.4) and the bag-of-words baseline of Table 3.

CheXpert@k_i = fraction of the k reports most similar to report i (report i itself never counted, even when
another report ties with it or its self-similarity is not the highest) that share report i's label.
CheXpert@k = mean over reports; per class: mean of CheXpert@k_i over the reports of that class (neighbours are
still searched among all reports); macro = unweighted mean over the classes that have reports.

"Same label" rules (``same_label``):

* ``"exact"``: identical 14-label binary vectors (uncertain/blank must be mapped to 0/1 beforehand, see
  ``schema.apply_label_policy``). A report belongs to *every* class it is positive for when averaging per
  class (so a report with Cardiomegaly and Effusion counts for both classes).
* ``"primary"``: each report is reduced to one primary class, the first positive label in
  ``PRIMARY_PRIORITY`` (rarer / more specific findings first, Support Devices late, No Finding when none),
  and two reports match when their primary classes are equal. A report belongs to its primary class only.

``labels`` may also be a 1-D array of class names/ids (one class per report): then both rules reduce to
equality of that value and membership in it.

Ties in similarity are broken by report index (stable sort), so results are deterministic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError

#: Order used to pick a report's primary class under ``same_label="primary"``.
PRIMARY_PRIORITY: tuple[str, ...] = (
    "Pneumothorax",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Pleural Effusion",
    "Fracture",
    "Lung Lesion",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Atelectasis",
    "Pleural Other",
    "Lung Opacity",
    "Support Devices",
    "No Finding",
)
SAME_LABEL_RULES = ("exact", "primary")


@dataclass
class ChexpertAtK:
    k: int
    same_label: str
    overall: float  # mean of per-report scores (fraction, 0..1)
    per_class: dict[str, float]  # class -> mean over its reports (NaN when a class has no report)
    class_counts: dict[str, int]
    macro: float  # mean over classes with >= 1 report
    per_report: np.ndarray = field(repr=False)  # (N,) CheXpert@k_i
    membership: np.ndarray = field(repr=False)  # (N, C) bool, report i averaged into class c
    classes: tuple[str, ...] = ()


def primary_classes(labels, classes=CHEXPERT_LABELS, priority=PRIMARY_PRIORITY) -> np.ndarray:
    """Primary class name per report from an (N, C) binary label matrix (No Finding when nothing positive)."""
    arr = _label_matrix(labels, classes)
    classes = list(classes)
    order = [c for c in priority if c in classes] + [c for c in classes if c not in priority]
    out = np.full(arr.shape[0], "No Finding", dtype=object)
    assigned = np.zeros(arr.shape[0], dtype=bool)
    for c in order:
        hit = (arr[:, classes.index(c)] == 1) & ~assigned
        out[hit] = c
        assigned |= hit
    return out


def _label_matrix(labels, classes) -> np.ndarray:
    if isinstance(labels, pd.DataFrame):
        missing = [c for c in classes if c not in labels.columns]
        if missing:
            raise InputError(f"labels table lacks columns {missing}")
        labels = labels[list(classes)].to_numpy(dtype="float64")
    arr = np.asarray(labels, dtype="float64")
    if arr.ndim != 2 or arr.shape[1] != len(classes):
        raise InputError(f"labels have shape {arr.shape}; expected (N, {len(classes)}) for classes {list(classes)}")
    if np.isnan(arr).any() or not np.isin(arr, (0.0, 1.0)).all():
        raise InputError("labels hold values other than 0/1 (map uncertain/blank with schema.apply_label_policy first)")
    return arr


def _keys_and_membership(labels, classes, same_label):
    """Return (match keys (N,), membership (N, C) bool, class names)."""
    if same_label not in SAME_LABEL_RULES:
        raise InputError(f"same_label={same_label!r}; expected one of {SAME_LABEL_RULES}")
    if not isinstance(labels, pd.DataFrame) and np.asarray(labels, dtype=object).ndim == 1:
        values = np.asarray(labels, dtype=object)
        names = tuple(classes) if classes is not None else tuple(sorted(set(values.tolist()), key=str))
        keys = pd.factorize(values)[0]
        membership = np.stack([values == c for c in names], axis=1) if names else np.zeros((len(values), 0), bool)
        return keys, membership, names
    classes = tuple(classes) if classes is not None else CHEXPERT_LABELS
    arr = _label_matrix(labels, classes)
    if same_label == "exact":
        keys = np.unique(arr, axis=0, return_inverse=True)[1].reshape(-1)
        return keys, arr == 1, classes
    prim = primary_classes(arr, classes)
    keys = pd.factorize(prim)[0]
    return keys, np.stack([prim == c for c in classes], axis=1), classes


def top_k_neighbours(similarity, k: int, chunk: int = 2048) -> np.ndarray:
    """(N, k) indices of the k most similar *other* rows per row (self excluded, ties by lower index)."""
    sim = np.asarray(similarity)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise InputError(f"similarity has shape {sim.shape}; expected a square (N, N) matrix")
    n = sim.shape[0]
    if not 1 <= k <= n - 1:
        raise InputError(f"k={k}; expected 1 <= k <= N-1 = {n - 1}")
    out = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        block = -np.array(sim[start : start + chunk], dtype="float64")  # copy: we overwrite the diagonal
        rows = np.arange(block.shape[0])
        block[np.isnan(block)] = np.inf  # NaN similarity ranks last
        block[rows, start + rows] = np.inf  # self never retrieved
        idx = np.argsort(block, axis=1, kind="stable")[:, :k]
        out[start : start + chunk] = idx
    return out


def chexpert_at_k(similarity, labels, k: int = 10, classes=None, same_label: str = "exact") -> ChexpertAtK:
    """CheXpert@k of a report-report similarity matrix; see the module docstring for the rules."""
    keys, membership, names = _keys_and_membership(labels, classes, same_label)
    n = len(keys)
    if np.asarray(similarity).shape != (n, n):
        raise InputError(f"similarity has shape {np.asarray(similarity).shape}; expected ({n}, {n}) for {n} reports")
    nbrs = top_k_neighbours(similarity, k)
    per_report = (keys[nbrs] == keys[:, None]).mean(axis=1)
    counts = membership.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_means = (membership * per_report[:, None]).sum(axis=0) / counts
    per_class = {c: float(v) for c, v in zip(names, class_means)}
    present = counts > 0
    macro = float(class_means[present].mean()) if present.any() else float("nan")
    return ChexpertAtK(
        k=k,
        same_label=same_label,
        overall=float(per_report.mean()),
        per_class=per_class,
        class_counts={c: int(v) for c, v in zip(names, counts)},
        macro=macro,
        per_report=per_report,
        membership=membership,
        classes=tuple(names),
    )


def bootstrap_macro_ci(result: ChexpertAtK, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, chunk: int = 200):
    """Percentile CI of the macro score, resampling reports with replacement.

    The neighbour sets (hence per-report scores) stay fixed: this is the uncertainty from the choice of query
    reports for a fixed retrieval pool. Classes absent from a resample are left out of that resample's macro.
    Returns (low, high) as fractions.
    """
    if n_boot <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    scores = result.per_report
    member = result.membership.astype("float64")
    n = len(scores)
    weighted = member * scores[:, None]
    macros = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype("float64")  # (b, N)
        num = counts @ weighted
        den = counts @ member
        with np.errstate(invalid="ignore", divide="ignore"):
            macros.append(np.nanmean(np.where(den > 0, num / den, np.nan), axis=1))
    macros = np.concatenate(macros)
    return float(np.nanquantile(macros, alpha / 2)), float(np.nanquantile(macros, 1 - alpha / 2))


_WORD = re.compile(r"[a-z0-9]+")


def tokenize_words(text: str) -> set[str]:
    """Lower-cased alphanumeric word tokens of a text, as a set."""
    return set(_WORD.findall(str(text).lower()))


def bag_of_words_similarity(texts) -> np.ndarray:
    """(N, N) intersection-over-union of the texts' word sets (two empty texts: 0)."""
    sets = [tokenize_words(t) for t in texts]
    vocab = {w: i for i, w in enumerate(sorted(set().union(*sets)))} if sets else {}
    n = len(sets)
    x = np.zeros((n, max(len(vocab), 1)), dtype="float32")
    for i, s in enumerate(sets):
        x[i, [vocab[w] for w in s]] = 1.0
    inter = x @ x.T
    sizes = x.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou.astype("float64")
