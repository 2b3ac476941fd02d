"""Paired percentile bootstrap: intervals for statistics of paired comparisons (same items on both sides)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def paired_bootstrap(statistic: Callable[[Sequence[np.ndarray]], float], strata: Sequence[np.ndarray],
                     n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> tuple[float, float, float]:
    """(value, low, high): ``statistic(indices)`` on the data and its ``1 - alpha`` percentile interval over
    ``n_boot`` resamples drawn by a generator seeded ``seed``.

    ``strata`` are arrays of item indices; each resample draws every stratum with replacement (keeping its size)
    and passes the drawn arrays, in order, to ``statistic``; the caller applies the same indices to both sides of a
    paired comparison. Resamples where the statistic is undefined (NaN) are skipped.
    """
    value = float(statistic([np.asarray(s) for s in strata]))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(int(n_boot)):
        v = statistic([s[rng.integers(0, len(s), len(s))] if len(s) else s for s in map(np.asarray, strata)])
        if np.isfinite(v):
            draws.append(v)
    if not draws or not np.isfinite(value):
        return value, np.nan, np.nan
    lo, hi = np.quantile(draws, [alpha / 2, 1 - alpha / 2])
    return value, float(lo), float(hi)
