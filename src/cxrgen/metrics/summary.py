"""Summary statistics in the paper's style and latent-feature cosine similarity (Chambon et al. sec. 3.2)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.errors import InputError


def describe(values, ddof: int = 1) -> dict:
    """dict(mean, sd, median, min, max, n, n_nonfinite) over the finite values.

    Non-finite values (e.g. PSNR = inf for a perfect reconstruction, NaN) are left out and counted in
    ``n_nonfinite``; ``sd`` is the sample standard deviation (``ddof=1``; NaN for fewer than 2 values).
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    out = {"n": int(finite.size), "n_nonfinite": int(v.size - finite.size)}
    if finite.size == 0:
        return {"mean": np.nan, "sd": np.nan, "median": np.nan, "min": np.nan, "max": np.nan, **out}
    return {
        "mean": float(finite.mean()),
        "sd": float(finite.std(ddof=ddof)) if finite.size > ddof else np.nan,
        "median": float(np.median(finite)),
        "min": float(finite.min()),
        "max": float(finite.max()),
        **out,
    }


def format_mean_sd(values_or_stats, digits: int = 1) -> str:
    """'31.8 ± 6.5; median, 30.2; range, 21.4 - 70.1' from values or a :func:`describe` dict.

    When non-finite values were excluded, '(k non-finite excluded)' is appended.
    """
    st = values_or_stats if isinstance(values_or_stats, dict) else describe(values_or_stats)
    missing = {"mean", "sd", "median", "min", "max"} - set(st)
    if missing:
        raise InputError(f"stats dict lacks {sorted(missing)}; expected the keys describe() returns")
    f = f"{{:.{digits}f}}"
    text = (
        f"{f.format(st['mean'])} ± {f.format(st['sd'])}; median, {f.format(st['median'])}; "
        f"range, {f.format(st['min'])} - {f.format(st['max'])}"
    )
    if st.get("n_nonfinite"):
        text += f" ({st['n_nonfinite']} non-finite excluded)"
    return text


def cosine_similarity_pairs(feats_a, feats_b, eps: float = 1e-8) -> np.ndarray:
    """Cosine similarity of row i of ``feats_a`` with row i of ``feats_b``, shape (N,)."""
    a = torch.as_tensor(np.asarray(feats_a) if not isinstance(feats_a, torch.Tensor) else feats_a).double()
    b = torch.as_tensor(np.asarray(feats_b) if not isinstance(feats_b, torch.Tensor) else feats_b).double()
    if a.ndim != 2 or a.shape != b.shape:
        raise InputError(f"feature shapes {tuple(a.shape)} and {tuple(b.shape)}; expected two equal (N, D) arrays")
    return F.cosine_similarity(a, b, dim=1, eps=eps).numpy()
