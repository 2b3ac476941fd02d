"""FID and KID from feature sets, and image-level wrappers that always report which extractor was used.

``frechet_distance`` is the standard FID  ||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^{1/2})  with
unbiased (n-1) covariances, as torchmetrics' ``FrechetInceptionDistance`` and pytorch-fid compute it.  The trace
term is computed exactly in float64 without a general ``sqrtm``:

* n_min <= d (e.g. Chambon's batches of 32 with 2048-d features): with centred features A (n_a x d), B (n_b x d),
  the non-zero eigenvalues of S_a S_b are the squared singular values of A B^T / sqrt((n_a-1)(n_b-1)), so
  tr((S_a S_b)^{1/2}) is that matrix's nuclear norm (no complex parts, no rank-deficiency warnings);
* otherwise: tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}) via symmetric eigendecompositions.

Both equal scipy's ``sqrtm``-based value up to rounding (tests compare with torchmetrics and scipy).

``kernel_inception_distance`` uses torchmetrics' ``poly_mmd`` (cubic polynomial kernel, unbiased MMD^2) on
``subsets`` random subsets of ``subset_size`` drawn with a seeded numpy generator (torchmetrics draws unseeded).

``fid_kid_with_ci`` is the one function every table's FID/KID cell comes from: FID and KID with their set sizes
and 95% percentile-bootstrap CIs (real and synthetic rows resampled with replacement, independently, from one
seeded generator). FID is biased upward at small n (its expectation falls with n, Chong & Forsyth 2020), so a
bootstrap CI at n below the feature dimension describes the spread of that biased estimate; such rows are flagged
(``fid_biased``) and carry KID, whose MMD^2 estimate is unbiased at any n, beside FID.
"""

from __future__ import annotations

import numpy as np
import torch

from cxrgen.errors import InputError
from cxrgen.metrics.features import FeatureExtractor, get_extractor


def _feats64(f, name: str) -> np.ndarray:
    arr = f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name}: features have shape {arr.shape}; expected (N, D)")
    if arr.shape[0] < 2:
        raise InputError(f"{name}: {arr.shape[0]} feature vector(s); FID needs at least 2 per set")
    if not np.isfinite(arr).all():
        raise InputError(f"{name}: features contain NaN/inf")
    return arr


def _trace_sqrt_product(a_c: np.ndarray, b_c: np.ndarray) -> float:
    """tr((S_a S_b)^{1/2}) for centred feature matrices (rows = samples)."""
    na, nb = a_c.shape[0], b_c.shape[0]
    d = a_c.shape[1]
    if min(na, nb) <= d:
        m = (a_c @ b_c.T) / np.sqrt((na - 1) * (nb - 1))
        return float(np.linalg.svd(m, compute_uv=False).sum())
    sa = a_c.T @ a_c / (na - 1)
    sb = b_c.T @ b_c / (nb - 1)
    w, v = np.linalg.eigh(sa)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root_a @ sb @ root_a
    ev = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N_a, D), (N_b, D)."""
    a = _feats64(feats_a, "feats_a")
    b = _feats64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}; expected features from one extractor")
    mu_a, mu_b = a.mean(0), b.mean(0)
    a_c, b_c = a - mu_a, b - mu_b
    tr_a = float((a_c**2).sum() / (a.shape[0] - 1))
    tr_b = float((b_c**2).sum() / (b.shape[0] - 1))
    value = float(((mu_a - mu_b) ** 2).sum()) + tr_a + tr_b - 2.0 * _trace_sqrt_product(a_c, b_c)
    return max(value, 0.0) if value > -1e-9 * max(1.0, tr_a + tr_b) else value


def kernel_inception_distance(
    feats_a,
    feats_b,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    seed: int = 0,
) -> dict:
    """KID (unbiased MMD^2 with a polynomial kernel) averaged over random subsets: dict(mean, std, subsets, subset_size).

    ``std`` is the population standard deviation over subsets, as torchmetrics reports it.
    """
    from torchmetrics.image.kid import poly_mmd  # a slow import that FID-only callers skip

    a = torch.from_numpy(_feats64(feats_a, "feats_a"))
    b = torch.from_numpy(_feats64(feats_b, "feats_b"))
    if a.shape[1] != b.shape[1]:
        raise InputError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}; expected features from one extractor")
    n = min(a.shape[0], b.shape[0])
    if subset_size > n:
        raise InputError(f"subset_size={subset_size} exceeds the smaller set ({n} samples); expected subset_size <= {n}")
    if subset_size < 2 or subsets < 1:
        raise InputError(f"subset_size={subset_size}, subsets={subsets}; expected subset_size >= 2 and subsets >= 1")
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(subsets):
        ia = torch.from_numpy(rng.permutation(a.shape[0])[:subset_size])
        ib = torch.from_numpy(rng.permutation(b.shape[0])[:subset_size])
        scores.append(float(poly_mmd(a[ia], b[ib], degree, gamma, coef)))
    s = np.asarray(scores)
    return {"mean": float(s.mean()), "std": float(s.std(ddof=0)), "subsets": subsets, "subset_size": subset_size}


def _kid_bootstrap(a: np.ndarray, b: np.ndarray, idx_a: np.ndarray, idx_b: np.ndarray, degree: int = 3,
                   coef: float = 1.0, block: int = 2048) -> np.ndarray:
    """Unbiased MMD^2 (KID's polynomial kernel, gamma = 1/d) of every bootstrap resample of the full sets.

    A resample is a multiplicity vector w (how often each row was drawn). Pairs of draws of the same row are left
    out of the within-set means, (w^T K w - sum_i w_i^2 K_ii) / (m^2 - sum_i w_i^2): counted in, k(x, x) would
    inflate every resample's KID far above the estimate (k(x, x) >> k(x, y) in high dimension). The kernel
    matrices are formed once, block by block, and never per resample.
    """
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    w_a = np.stack([np.bincount(r, minlength=na) for r in idx_a]).astype(np.float64).T  # (na, B)
    w_b = np.stack([np.bincount(r, minlength=nb) for r in idx_b]).astype(np.float64).T

    def kernel(x, y):
        return (x @ y.T / d + coef) ** degree

    def quad(x, wx, y, wy):  # diag(wx^T K(x, y) wy) per resample, K built in row blocks
        out = np.zeros(wx.shape[1])
        for s in range(0, x.shape[0], block):
            out += np.einsum("ib,ib->b", wx[s:s + block], kernel(x[s:s + block], y) @ wy)
        return out

    diag_a = ((a * a).sum(1) / d + coef) ** degree
    diag_b = ((b * b).sum(1) / d + coef) ** degree
    pairs_a, pairs_b = na**2 - (w_a**2).sum(0), nb**2 - (w_b**2).sum(0)  # 0 when a resample repeats one row
    with np.errstate(invalid="ignore", divide="ignore"):
        aa = np.where(pairs_a > 0, (quad(a, w_a, a, w_a) - diag_a @ w_a**2) / pairs_a, np.nan)
        bb = np.where(pairs_b > 0, (quad(b, w_b, b, w_b) - diag_b @ w_b**2) / pairs_b, np.nan)
    ab = quad(a, w_a, b, w_b) / (na * nb)
    return aa + bb - 2.0 * ab


def fid_kid_with_ci(
    feats_real,
    feats_fake,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    kid_subsets: int = 50,
    kid_subset_size: int = 1000,
) -> dict:
    """FID and KID of two feature sets with sizes and percentile-bootstrap CIs, for one table cell.

    Returns dict(fid, fid_ci_low, fid_ci_high, kid, kid_std, kid_ci_low, kid_ci_high, kid_subset_size, n_real,
    n_fake, dim, n_boot, fid_biased). FID CI: percentile bootstrap shifted by the bootstrap bias estimate (see
    below). ``kid`` / ``kid_std`` are the mean / sd over ``kid_subsets`` subsets of ``kid_subset_size`` (capped at
    the smaller set) as torchmetrics reports them; the KID CI is the percentile bootstrap of the full-set unbiased
    MMD^2 with the same kernel. ``n_boot=0`` leaves the CIs NaN. ``fid_biased`` is True when
    min(n_real, n_fake) is below the feature dimension. Deterministic for a fixed ``seed``.
    """
    a = _feats64(feats_real, "feats_real")
    b = _feats64(feats_fake, "feats_fake")
    if a.shape[1] != b.shape[1]:
        raise InputError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}; expected features from one extractor")
    if n_boot < 0 or not 0 < alpha < 1:
        raise InputError(f"n_boot={n_boot}, alpha={alpha}; expected n_boot >= 0 and 0 < alpha < 1")
    na, nb, d = a.shape[0], b.shape[0], a.shape[1]
    k = kernel_inception_distance(a, b, subsets=kid_subsets, subset_size=min(int(kid_subset_size), na, nb), seed=seed)
    out = {"fid": frechet_distance(a, b), "fid_ci_low": np.nan, "fid_ci_high": np.nan, "kid": k["mean"],
           "kid_std": k["std"], "kid_ci_low": np.nan, "kid_ci_high": np.nan, "kid_subset_size": k["subset_size"],
           "n_real": na, "n_fake": nb, "dim": d, "n_boot": int(n_boot), "fid_biased": bool(min(na, nb) < d)}
    if n_boot == 0:
        return out
    rng = np.random.default_rng(seed)
    idx_a = rng.integers(0, na, size=(n_boot, na))
    idx_b = rng.integers(0, nb, size=(n_boot, nb))
    fids = np.array([frechet_distance(a[ia], b[ib]) for ia, ib in zip(idx_a, idx_b)])
    # A resample repeats rows, which lowers its effective n and so raises FID's small-sample bias: shift the
    # replicates by the bootstrap bias estimate (mean replicate - estimate) so the interval is about the FID at
    # this n (negligible shift once n >> dim).
    fids = fids - (fids.mean() - out["fid"])
    kids = _kid_bootstrap(a, b, idx_a, idx_b)
    kids = kids[np.isfinite(kids)]  # resamples that drew a single row n times (possible at n = 2 or 3)
    q = [alpha / 2, 1 - alpha / 2]
    out["fid_ci_low"], out["fid_ci_high"] = (float(v) for v in np.quantile(fids, q))
    if kids.size:
        out["kid_ci_low"], out["kid_ci_high"] = (float(v) for v in np.quantile(kids, q))
    return out


#: Columns a FID/KID row carries (in this order) in every study's CSV.
FID_KID_COLUMNS: tuple[str, ...] = ("fid", "fid_ci_low", "fid_ci_high", "kid", "kid_std", "kid_ci_low", "kid_ci_high",
                                    "kid_subset_size", "n_real", "n_fake", "dim", "n_boot", "fid_biased")


def _extract(extractor, images) -> tuple[FeatureExtractor, torch.Tensor]:
    ext = get_extractor(extractor) if isinstance(extractor, str) else extractor
    return ext, ext(images)


def fid(real_images, fake_images, extractor="inception") -> dict:
    """FID between two image sets: dict(value, extractor=<name>, dim, n_real, n_fake).

    ``extractor`` is a registry name or a :class:`FeatureExtractor` (build it with ``get_extractor(name, **kw)``).
    """
    ext, fr = _extract(extractor, real_images)
    ff = ext(fake_images)
    return {
        "value": frechet_distance(fr, ff),
        "extractor": ext.name,
        "dim": int(fr.shape[1]),
        "n_real": int(fr.shape[0]),
        "n_fake": int(ff.shape[0]),
    }


def kid(real_images, fake_images, extractor="inception", subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> dict:
    """KID between two image sets; ``subset_size`` is capped at the smaller set. Adds extractor name and counts."""
    ext, fr = _extract(extractor, real_images)
    ff = ext(fake_images)
    out = kernel_inception_distance(fr, ff, subsets, min(subset_size, fr.shape[0], ff.shape[0]), seed=seed)
    out.update(extractor=ext.name, dim=int(fr.shape[1]), n_real=int(fr.shape[0]), n_fake=int(ff.shape[0]))
    return out


def batched_fid_from_features(feats_a, feats_b, batch_size: int = 32, drop_last: bool = True) -> dict:
    """FID of paired consecutive batches (rows i*bs..(i+1)*bs of a vs of b): dict(mean, sd, median, values, ...)."""
    a = _feats64(feats_a, "feats_a")
    b = _feats64(feats_b, "feats_b")
    if a.shape[0] != b.shape[0]:
        raise InputError(f"batched FID pairs batches: got {a.shape[0]} vs {b.shape[0]} samples; expected equal counts")
    if batch_size < 2:
        raise InputError(f"batch_size={batch_size}; expected >= 2")
    n = a.shape[0]
    starts = list(range(0, n, batch_size))
    bounds = [(s, min(s + batch_size, n)) for s in starts]
    bounds = [(s, e) for s, e in bounds if (e - s == batch_size) or (not drop_last and e - s >= 2)]
    if not bounds:
        raise InputError(f"{n} samples give no full batch of {batch_size}; expected at least {batch_size} (or drop_last=False)")
    values = np.array([frechet_distance(a[s:e], b[s:e]) for s, e in bounds])
    return {
        "mean": float(values.mean()),
        "sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
        "median": float(np.median(values)),
        "values": values.tolist(),
        "n_batches": len(values),
        "batch_size": batch_size,
        "n": int(sum(e - s for s, e in bounds)),
    }


def batched_fid(a_images, b_images, extractor="inception", batch_size: int = 32, drop_last: bool = True) -> dict:
    """Chambon et al.'s protocol: FID per batch of ``batch_size`` paired images (e.g. originals vs reconstructions),
    reported as mean ± sd over batches.  A trailing partial batch is dropped unless ``drop_last=False`` (FID is
    biased by sample size, so unequal batches are not comparable).  Returns the extractor name with the numbers."""
    ext, fa = _extract(extractor, a_images)
    fb = ext(b_images)
    out = batched_fid_from_features(fa, fb, batch_size, drop_last)
    out.update(extractor=ext.name, dim=int(fa.shape[1]))
    return out
