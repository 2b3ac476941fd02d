"""Binary classification metrics per label with stratified percentile-bootstrap CIs (Chambon et al. sec. 2.3).

Conventions: a prediction is positive when ``score >= threshold``; precision/recall/F1 are 0 when undefined
(sklearn's ``zero_division=0``); AUC is NaN when only one class is present.  NaN targets (labels set to "ignore")
are dropped per label.  Point metrics use scikit-learn; the bootstrap uses an equivalent vectorised numpy version
(AUC by Mann-Whitney ranks with ties averaged, which is exactly ``roc_auc_score``) so that 1000 resamples x 12
labels stay fast; tests check both against scikit-learn.

CIs are reported only when each class has at least ``min_class_count`` cases (config ``evaluation.min_class_count``):
with fewer, a stratified bootstrap resamples the same few cases and gives a narrow, meaningless interval (e.g. an
AUC of 0.93 [0.89, 0.97] from one positive). The point value stays; the CI cells are NaN and ``ci_note`` says why.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from cxrgen.errors import InputError

METRICS: tuple[str, ...] = ("auc", "accuracy", "f1", "precision", "recall")
#: Fewest positives and fewest negatives a CI needs (the schema's default of ``evaluation.min_class_count``).
MIN_CLASS_COUNT = 10


def ci_omission_reason(y_true, min_class_count: int = MIN_CLASS_COUNT) -> str:
    """``""`` when both classes of ``y_true`` (0/1, NaN ignored) have >= ``min_class_count`` cases, else why the CI
    is left out, e.g. ``"CI omitted: 1 positive < 10"``."""
    if min_class_count < 1:
        raise InputError(f"min_class_count={min_class_count}; expected an integer >= 1")
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y = y[~np.isnan(y)]
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    short = [f"{k} {word}{'' if k == 1 else 's'}" for k, word in ((n_pos, "positive"), (n_neg, "negative"))
             if k < min_class_count]
    return f"CI omitted: {' and '.join(short)} < {min_class_count}" if short else ""


def _clean(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).reshape(-1)
    s = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y.shape != s.shape:
        raise InputError(f"y_true has {y.size} values but y_score {s.size}; expected one score per target")
    keep = ~np.isnan(y)
    y, s = y[keep], s[keep]
    if np.isnan(s).any():
        raise InputError("y_score contains NaN where the target is set; expected finite scores")
    bad = set(np.unique(y)) - {0.0, 1.0}
    if bad:
        raise InputError(f"y_true holds {sorted(bad)[:5]}; expected 0, 1 or NaN (ignored); map -1 with a label policy first")
    return y.astype(np.int64), s


def binary_metrics(y_true, y_score, threshold: float = 0.5) -> dict:
    """dict(n, prevalence, auc, accuracy, f1, precision, recall, threshold); NaN targets are ignored."""
    y, s = _clean(y_true, y_score)
    n = int(y.size)
    if n == 0:
        return {"n": 0, "prevalence": np.nan, "threshold": float(threshold), **{m: np.nan for m in METRICS}}
    pred = (s >= threshold).astype(np.int64)
    return {
        "n": n,
        "prevalence": float(y.mean()),
        "threshold": float(threshold),
        "auc": float(roc_auc_score(y, s)) if 0 < y.sum() < n else np.nan,
        "accuracy": float(accuracy_score(y, pred)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
    }


def choose_threshold(y_true, y_score, method: str = "youden") -> float:
    """Operating point from (validation) data: ``youden`` maximises TPR - FPR, ``f1`` maximises F1.

    Returns a score threshold t for the rule ``score >= t``.  Needs both classes.
    """
    y, s = _clean(y_true, y_score)
    if not 0 < y.sum() < y.size:
        raise InputError(f"choose_threshold needs positives and negatives; got {int(y.sum())} of {y.size} positive")
    if method == "youden":
        fpr, tpr, thr = roc_curve(y, s)
        j = tpr - fpr
        i = int(np.argmax(j[1:])) + 1  # thr[0] is +inf (predict nothing positive)
        return float(thr[i])
    if method == "f1":
        prec, rec, thr = precision_recall_curve(y, s)
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)[:-1]
        return float(thr[int(np.argmax(f1))])
    raise InputError(f"threshold method {method!r}; expected 'youden' or 'f1'")


BOOT_CHUNK = 200


def _stratified_index_chunks(y: np.ndarray, n_boot: int, seed: int, chunk: int = BOOT_CHUNK):
    """Yield (b, n) resample-index blocks (b <= chunk, n_boot rows in all) keeping the class counts fixed.

    The draw sequence depends only on (y's class layout, n_boot, seed), so bootstrap_ci and per_label_table
    resample identically for the same seed.
    """
    rng = np.random.default_rng(seed)
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        parts = []
        if pos.size:
            parts.append(pos[rng.integers(0, pos.size, size=(b, pos.size))])
        if neg.size:
            parts.append(neg[rng.integers(0, neg.size, size=(b, neg.size))])
        yield np.concatenate(parts, axis=1)


def bootstrap_ci(
    y_true,
    y_score,
    metric_fn: Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    min_class_count: int = MIN_CLASS_COUNT,
) -> dict:
    """Percentile bootstrap CI of ``metric_fn(y_true, y_score)``: dict(value, ci_low, ci_high, n_boot, ci_note).

    With fewer than ``min_class_count`` positives or negatives the CI is NaN and ``ci_note`` says why
    (:func:`ci_omission_reason`).

    Resampling is stratified by class (the class counts of the data are kept), NaN targets are dropped first,
    resamples with one class only (possible only if the data have one class) and NaN metric values are skipped;
    ``n_boot`` in the result counts the resamples used.  Deterministic for a fixed ``seed``.
    """
    y, s = _clean(y_true, y_score)
    if not 0 < alpha < 1:
        raise InputError(f"alpha={alpha}; expected 0 < alpha < 1")
    value = float(metric_fn(y, s)) if y.size else np.nan
    note = ci_omission_reason(y, min_class_count)
    if y.size == 0 or n_boot < 1 or note:
        return {"value": value, "ci_low": np.nan, "ci_high": np.nan, "n_boot": 0, "ci_note": note}
    vals = []
    for block in _stratified_index_chunks(y, n_boot, seed):
        for row in block:
            yb = y[row]
            if yb.min() == yb.max():
                continue
            v = float(metric_fn(yb, s[row]))
            if np.isfinite(v):
                vals.append(v)
    if not vals:
        return {"value": value, "ci_low": np.nan, "ci_high": np.nan, "n_boot": 0, "ci_note": ""}
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return {"value": value, "ci_low": float(lo), "ci_high": float(hi), "n_boot": len(vals), "ci_note": ""}


def auc_rows(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """ROC AUC of each row of (B, n) boolean targets / scores (Mann-Whitney with tied ranks averaged, as sklearn's);
    NaN for a row with one class only."""
    y = np.asarray(y, dtype=bool)
    n_pos = y.sum(1)
    n_neg = y.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = ((rankdata(s, axis=1) * y).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _vectorised_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Metrics for each row of (B, n) target/score matrices; equal to the sklearn ones of binary_metrics."""
    y = y.astype(bool)
    n = y.shape[1]
    pred = s >= threshold
    tp = (pred & y).sum(1)
    fp = (pred & ~y).sum(1)
    fn = (~pred & y).sum(1)
    tn = n - tp - fp - fn
    auc = auc_rows(y, s)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return {"auc": auc, "accuracy": (tp + tn) / n, "f1": f1, "precision": precision, "recall": recall}


def per_label_table(
    Y_true,
    Y_score,
    labels,
    thresholds=0.5,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    min_class_count: int = MIN_CLASS_COUNT,
) -> pd.DataFrame:
    """One row per label: n, n_positive, prevalence, threshold, auc/accuracy/f1/precision/recall, ``<metric>_ci_low``
    / ``<metric>_ci_high`` (stratified percentile bootstrap, ``n_boot`` resamples; 0 skips the CIs) and ``ci_note``
    (why the CIs are empty when a class has fewer than ``min_class_count`` cases; see :func:`ci_omission_reason`).

    ``thresholds``: a float for all labels, a sequence (one per label), a dict label -> float (missing: 0.5), or
    "youden"/"f1" to choose on these same data (optimistic; prefer thresholds from validation data).
    NaN entries of ``Y_true`` are ignored per label.
    """
    Yt = np.asarray(Y_true, dtype=np.float64)
    Ys = np.asarray(Y_score, dtype=np.float64)
    labels = list(labels)
    if Yt.ndim != 2 or Yt.shape != Ys.shape or Yt.shape[1] != len(labels):
        raise InputError(
            f"Y_true {Yt.shape}, Y_score {Ys.shape}, {len(labels)} labels; expected two (N, L) arrays and L label names"
        )
    if isinstance(thresholds, str):
        thr = [thresholds] * len(labels)
    elif isinstance(thresholds, dict):
        unknown = set(thresholds) - set(labels)
        if unknown:
            raise InputError(f"thresholds for unknown labels {sorted(unknown)}; expected some of {labels}")
        thr = [float(thresholds.get(l, 0.5)) for l in labels]
    elif np.ndim(thresholds) == 0:
        thr = [float(thresholds)] * len(labels)
    else:
        thr = [float(t) for t in thresholds]
        if len(thr) != len(labels):
            raise InputError(f"{len(thr)} thresholds for {len(labels)} labels; expected one per label")
    rows = []
    for j, label in enumerate(labels):
        y, s = _clean(Yt[:, j], Ys[:, j])
        t = thr[j]
        if isinstance(t, str):
            t = choose_threshold(y, s, t) if 0 < y.sum() < y.size else 0.5
        row = {"label": label, "n_positive": int(y.sum()), **binary_metrics(y, s, t)}
        cis = {f"{m}_{k}": np.nan for m in METRICS for k in ("ci_low", "ci_high")}
        row["ci_note"] = ci_omission_reason(y, min_class_count) if n_boot > 0 else ""
        if n_boot > 0 and not row["ci_note"]:
            boot = {m: [] for m in METRICS}
            for r in _stratified_index_chunks(y, n_boot, seed):
                for m, v in _vectorised_metrics(y[r], s[r], t).items():
                    boot[m].append(v)
            for m in METRICS:
                v = np.concatenate(boot[m])
                v = v[np.isfinite(v)]
                if v.size:
                    cis[f"{m}_ci_low"], cis[f"{m}_ci_high"] = np.quantile(v, [alpha / 2, 1 - alpha / 2])
        row.update(cis)
        rows.append(row)
    cols = ["label", "n", "n_positive", "prevalence", "threshold"]
    for m in METRICS:
        cols += [m, f"{m}_ci_low", f"{m}_ci_high"]
    return pd.DataFrame(rows)[cols + ["ci_note"]]
