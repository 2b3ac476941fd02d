"""Does the prompt change the image? Paired comparisons of two prompts' images drawn from the same starting noise.

A text-to-image model generates image ``i`` of every prompt from the same noise (seed + i), so for each noise index
there is a pair (image of the ``positive`` prompt, image of the ``negative`` prompt). A model that ignores the prompt
draws identical pairs. Two numbers per model say whether it does not:

* the classifier score difference ``score(positive_i) - score(negative_i)`` (e.g. the reference classifier's
  Pleural Effusion probability, effusion prompt minus normal prompt), its mean with a paired percentile bootstrap
  95% interval over noise indices, and the share of pairs where the positive prompt scores higher;
* the mean absolute pixel difference of the pairs (0-255 scale), which is exactly 0 for a model that ignores the
  prompt, and says how much the image changes whatever the classifier sees.

The verdict reads the interval only: the prompt moves the score in the asked direction when the interval lies above
0, against it when below, and "no detectable change" when it holds 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrgen.errors import InputError
from cxrgen.metrics.bootstrap import paired_bootstrap

COLUMNS = ["method", "n_pairs", "mean_score_negative", "mean_score_positive", "score_difference", "ci_low",
           "ci_high", "share_positive_higher", "pixel_difference", "verdict"]
RAISES, LOWERS, NO_CHANGE = "raises the score", "lowers the score", "no detectable change"
SCORE_COLUMNS = ("method", "prompt_name", "index", "score")


def paired_scores(scores: pd.DataFrame, positive: str, negative: str) -> dict[str, pd.DataFrame]:
    """Per method, a frame indexed by noise index with columns ``negative`` and ``positive`` (the two prompts'
    scores); noise indices present for only one of the prompts are dropped."""
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise InputError(f"classifier scores lack columns {missing}; expected {list(SCORE_COLUMNS)} "
                         "(cxrgen.studies.synthesis.classifier_scores)")
    out = {}
    for method, grp in scores.groupby("method", sort=False):
        dup = grp.duplicated(["prompt_name", "index"])
        if dup.any():
            raise InputError(f"classifier scores of {method!r} repeat (prompt, noise index) pairs "
                             f"{grp.loc[dup, ['prompt_name', 'index']].values.tolist()[:3]}; expected one score each")
        wide = grp.pivot(index="index", columns="prompt_name", values="score")
        if positive not in wide.columns or negative not in wide.columns:
            raise InputError(f"classifier scores of {method!r} hold prompts {sorted(wide.columns)}; expected both "
                             f"{positive!r} and {negative!r}")
        out[str(method)] = wide[[negative, positive]].dropna().rename(
            columns={negative: "negative", positive: "positive"})
    return out


def pixel_differences(images: np.ndarray, manifest: pd.DataFrame, positive: str, negative: str) -> pd.Series:
    """Mean absolute pixel difference of each noise index's (positive, negative) pair, indexed by noise index."""
    images = np.asarray(images)
    if len(images) != len(manifest):
        raise InputError(f"{len(images)} images but {len(manifest)} manifest rows; expected one row each")
    man = manifest.reset_index(drop=True)
    pos = pd.Series(np.flatnonzero((man["prompt_name"] == positive).to_numpy()),
                    index=man.loc[man["prompt_name"] == positive, "index"].to_numpy())
    neg = pd.Series(np.flatnonzero((man["prompt_name"] == negative).to_numpy()),
                    index=man.loc[man["prompt_name"] == negative, "index"].to_numpy())
    common = pos.index.intersection(neg.index)
    diffs = [float(np.abs(images[pos[i]].astype(np.float64) - images[neg[i]].astype(np.float64)).mean())
             for i in common]
    return pd.Series(diffs, index=common, dtype=float)


def _verdict(lo: float, hi: float) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return RAISES if lo > 0 else LOWERS if hi < 0 else NO_CHANGE


def prompt_dependence_table(scores: pd.DataFrame, positive: str = "effusion", negative: str = "normal",
                            pixel_diffs: dict[str, pd.Series] | None = None, n_boot: int = 1000, seed: int = 0,
                            alpha: float = 0.05) -> pd.DataFrame:
    """One row per method: paired score difference (positive minus negative prompt) with a percentile bootstrap
    ``1 - alpha`` interval over noise indices (``n_boot`` seeded resamples), the share of pairs where the positive
    prompt scores higher, the mean absolute pixel difference (from ``pixel_diffs[method]`` when given, see
    :func:`pixel_differences`) and the verdict (see the module docstring)."""
    if int(n_boot) < 1:
        raise InputError(f"n_boot={n_boot!r}; expected a positive number of bootstrap resamples")
    rows = []
    for method, pairs in paired_scores(scores, positive, negative).items():
        d = (pairs["positive"] - pairs["negative"]).to_numpy(dtype=float)
        value, lo, hi = (paired_bootstrap(lambda idx, d=d: d[idx[0]].mean(), [np.arange(len(d))],
                                             n_boot=int(n_boot), seed=int(seed), alpha=float(alpha))
                         if len(d) else (np.nan, np.nan, np.nan))
        pix = (pixel_diffs or {}).get(method)
        rows.append({
            "method": method, "n_pairs": len(d), "mean_score_negative": float(pairs["negative"].mean()),
            "mean_score_positive": float(pairs["positive"].mean()), "score_difference": value, "ci_low": lo,
            "ci_high": hi, "share_positive_higher": float((d > 0).mean()) if len(d) else np.nan,
            "pixel_difference": float(pix.reindex(pairs.index).mean()) if pix is not None else np.nan,
            "verdict": _verdict(lo, hi),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


__all__ = ["COLUMNS", "LOWERS", "NO_CHANGE", "RAISES", "paired_scores", "pixel_differences", "prompt_dependence_table"]
