"""Metric throughput and agreement: ours vs straightforward references, on identical inputs.

* FID on identical features (2 x ``n_fid`` vectors of Inception's 2048 dimensions, a seeded synthetic set with the
  non-negative, low-rank-plus-noise structure of pool features): :func:`cxrgen.metrics.fid.frechet_distance` vs
  torchmetrics' ``FrechetInceptionDistance`` fed those features through an identity feature module (its own running
  sums, covariance and ``eigvals`` trace term), and vs the pytorch-fid formula with ``scipy.linalg.sqrtm``.
* Batched FID (Chambon et al.'s protocol, batches of 32 pairs, 2048-d): :func:`batched_fid_from_features` vs one
  torchmetrics FID per batch (reset / update / compute). Throughput in batches/s, on fewer batches for the reference.
* FID from images with one feature extractor for both: :func:`cxrgen.metrics.fid.fid` with a random-init
  torchxrayvision DenseNet-121 (:class:`XRVExtractor`, ``weights=None``: the paper-scale architecture, offline) vs
  torchmetrics' FID using that same extractor as its ``feature`` module.
* SSIM / PSNR of image pairs (phantom chest X-rays vs noisy copies, uint8): :mod:`cxrgen.metrics.image_quality` vs
  a loop of scikit-image ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=255)`` / ``peak_signal_noise_ratio(data_range=255)``.
* CheXpert@k (k=10, exact 14-label match): :func:`cxrgen.text.chexpert_at_k.chexpert_at_k` vs a plain numpy loop
  (per report: mask itself, stable ``argsort``, compare the k nearest label vectors).

Every pair is checked for agreement; :func:`run` returns the rows and a list of failures (metric, difference,
tolerance), which ``bench/run.py`` turns into a non-zero exit status. Times are the best of ``repeats`` calls.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.common import Row, best_of, chest_images

#: agreement tolerances (stated in the output). FID: relative to :func:`fid_scale` (float32 features from an
#: extractor: 1e-5); SSIM / PSNR: absolute (PSNR in dB: torchmetrics scales by a float32 10/ln 10, ~1e-6 dB);
#: CheXpert@k: absolute on per-report scores (exact counts: 0 expected).
TOLERANCE = {"fid_torchmetrics": 1e-6, "fid_scipy": 1e-6, "fid_images": 1e-5, "ssim": 1e-6, "psnr": 1e-5,
             "chexpert": 0.0}


class _Identity(torch.nn.Module):
    """torchmetrics ``feature`` module that returns its input: FID on given features."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = int(dim)

    def forward(self, x):
        return x


class _ExtractorModule(torch.nn.Module):
    """torchmetrics ``feature`` module around one of our extractors (uint8 (N,C,H,W) -> (N,D))."""

    def __init__(self, extractor):
        super().__init__()
        self.extractor = extractor
        self.num_features = int(extractor.dim)

    def forward(self, x):
        return self.extractor(x.permute(0, 2, 3, 1))


def synthetic_features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Non-negative features with a shared low-rank structure plus noise (like pooled CNN features)."""
    basis = np.random.default_rng(12345).standard_normal((64, dim)) / 8.0
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, 64)) @ basis + 0.3 * rng.standard_normal((n, dim)) + shift
    return np.maximum(z, 0.0)


def fid_scale(a, b) -> float:
    """tr(S_a) + tr(S_b) + ||mu_a - mu_b||^2: the size of the terms whose difference FID is. FID agreement is
    measured relative to it, since in the rank-deficient regime (n < d) a small FID is a difference of large
    traces and the eigvals / sqrtm references lose digits there that the exact float64 method keeps."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a.var(0, ddof=1).sum() + b.var(0, ddof=1).sum() + ((a.mean(0) - b.mean(0)) ** 2).sum())


def torchmetrics_fid(a, b, feature=None) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = torch.as_tensor(a), torch.as_tensor(b)
    m = FrechetInceptionDistance(feature=feature if feature is not None else _Identity(a.shape[1]))
    m.update(a, real=True)
    m.update(b, real=False)
    return float(m.compute())


def scipy_fid(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """pytorch-fid's ``calculate_frechet_distance`` (numpy covariances, ``scipy.linalg.sqrtm``, eps retry)."""
    import scipy.linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + off).dot(s2 + off))
    covmean = covmean.real
    d = mu1 - mu2
    return float(d.dot(d) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def chexpert_loop(similarity: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """CheXpert@k_i the plain way: per report, its k most similar other reports, share of identical label vectors."""
    n = len(labels)
    out = np.empty(n)
    for i in range(n):
        row = similarity[i].astype(np.float64).copy()
        row[i] = -np.inf
        nbrs = np.argsort(-row, kind="stable")[:k]
        out[i] = np.mean([np.array_equal(labels[j], labels[i]) for j in nbrs])
    return out


def run(n_fid: int = 1000, dim: int = 2048, n_batches: int = 8, ref_batches: int = 2, n_pairs: int = 64,
        size: int = 128, n_reports: int = 3000, n_images_fid: int = 48, repeats: int = 2, scipy_check: bool = True,
        seed: int = 0, log=print) -> tuple[list[Row], list[str]]:
    from cxrgen.metrics.features import XRVExtractor
    from cxrgen.metrics.fid import batched_fid_from_features, fid, frechet_distance
    from cxrgen.metrics.image_quality import psnr, ssim
    from cxrgen.text.chexpert_at_k import chexpert_at_k

    rows, failures = [], []

    def agree(what: str, diff: float, relative: bool = False) -> str:
        """Record ``diff`` (relative or absolute, as the tolerance of ``what`` is) against its tolerance."""
        tol = TOLERANCE[what]
        ok = bool(np.isfinite(diff)) and diff <= tol
        kind = "rel" if relative else "abs"
        if not ok:
            failures.append(f"{what}: max {kind} difference {diff:.3g} > tolerance {tol:g}")
        return f"max {kind} diff {diff:.2g} (tol {tol:g}){'' if ok else ' FAIL'}"

    # --- FID on identical features --------------------------------------------------------------------------
    a = synthetic_features(n_fid, dim, seed + 1)
    b = synthetic_features(n_fid, dim, seed + 2, shift=0.05)
    t_ours, v_ours = best_of(lambda: frechet_distance(a, b), repeats)
    t_tm, v_tm = best_of(lambda: torchmetrics_fid(a, b), repeats)
    note = agree("fid_torchmetrics", abs(v_ours - v_tm) / fid_scale(a, b), True)
    rows.append(Row("metrics", f"FID {n_fid} vs {n_fid} feats, d={dim}", "FID/s", 1 / t_ours, 1 / t_tm,
                    "torchmetrics FID", note=f"FID {v_ours:.4f}; {note}", extra={"ours_value": v_ours,
                                                                                   "reference_value": v_tm}))
    if scipy_check:
        t_sp, v_sp = best_of(lambda: scipy_fid(a, b), 1)
        note = agree("fid_scipy", abs(v_ours - v_sp) / fid_scale(a, b), True)
        rows.append(Row("metrics", f"FID {n_fid} vs {n_fid} feats, d={dim}", "FID/s", 1 / t_ours, 1 / t_sp,
                        "pytorch-fid (scipy sqrtm)", note=note, extra={"reference_value": v_sp}))
    log(f"[metrics] FID on features: ours {t_ours:.3f} s, torchmetrics {t_tm:.3f} s"
        + (f", scipy sqrtm {t_sp:.3f} s" if scipy_check else ""))

    # --- batched FID (Chambon: batches of 32 pairs) ----------------------------------------------------------
    bs = 32
    fa = synthetic_features(bs * n_batches, dim, seed + 3)
    fb = synthetic_features(bs * n_batches, dim, seed + 4, shift=0.05)
    t_ours, res = best_of(lambda: batched_fid_from_features(fa, fb, batch_size=bs), repeats)
    nb = min(ref_batches, n_batches)
    t_tm, ref_vals = best_of(lambda: [torchmetrics_fid(fa[i * bs:(i + 1) * bs], fb[i * bs:(i + 1) * bs])
                                      for i in range(nb)], 1)
    diff = max(abs(x - y) / fid_scale(fa[i * bs:(i + 1) * bs], fb[i * bs:(i + 1) * bs])
               for i, (x, y) in enumerate(zip(res["values"][:nb], ref_vals)))
    note = agree("fid_torchmetrics", diff, True)
    rows.append(Row("metrics", f"batched FID, batches of {bs}, d={dim}", "batches/s", n_batches / t_ours,
                    nb / t_tm, "torchmetrics FID per batch", note=f"ours {n_batches} batches, ref {nb}; {note}"))
    log(f"[metrics] batched FID: ours {n_batches / t_ours:.1f} batches/s, torchmetrics {nb / t_tm:.2f} batches/s")

    # --- FID from images, one extractor for both ------------------------------------------------------------
    ext = XRVExtractor(weights=None, size=size)
    real = chest_images(n_images_fid, size, seed + 5)
    fake = chest_images(n_images_fid, size, seed + 6)
    t_ours, v_ours = best_of(lambda: fid(real, fake, extractor=ext)["value"], repeats)
    module = _ExtractorModule(ext)
    to_t = lambda x: torch.from_numpy(x)[:, None].expand(-1, 3, -1, -1)  # noqa: E731
    t_tm, v_tm = best_of(lambda: torchmetrics_fid(to_t(real), to_t(fake), feature=module), repeats)
    feats_real, feats_fake = ext(real), ext(fake)
    note = agree("fid_images", abs(v_ours - v_tm) / fid_scale(feats_real, feats_fake), True)
    rows.append(Row("metrics", f"FID from images ({ext.name}, {size}px)", "img/s", 2 * n_images_fid / t_ours,
                    2 * n_images_fid / t_tm, "torchmetrics FID, same extractor",
                    note=f"{n_images_fid}+{n_images_fid} images; {note}"))

    # --- SSIM / PSNR -----------------------------------------------------------------------------------------
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    x = chest_images(n_pairs, size, seed + 7)
    y = np.clip(x.astype(np.float64) + np.random.default_rng(seed).normal(0, 12, x.shape), 0, 255).astype(np.uint8)
    t_ours, s_ours = best_of(lambda: ssim(x, y), repeats)
    t_sk, s_sk = best_of(lambda: np.array([structural_similarity(p, q, gaussian_weights=True, sigma=1.5,
                                                                 use_sample_covariance=False, data_range=255)
                                           for p, q in zip(x, y)]), repeats)
    rows.append(Row("metrics", f"SSIM ({size}px pairs)", "pairs/s", n_pairs / t_ours, n_pairs / t_sk,
                    "skimage structural_similarity", note=agree("ssim", float(np.abs(s_ours - s_sk).max()))))
    t_ours, p_ours = best_of(lambda: psnr(x, y), repeats)
    t_sk, p_sk = best_of(lambda: np.array([peak_signal_noise_ratio(p, q, data_range=255) for p, q in zip(x, y)]),
                         repeats)
    rows.append(Row("metrics", f"PSNR ({size}px pairs)", "pairs/s", n_pairs / t_ours, n_pairs / t_sk,
                    "skimage peak_signal_noise_ratio", note=agree("psnr", float(np.abs(p_ours - p_sk).max()))))

    # --- CheXpert@k ------------------------------------------------------------------------------------------
    rng = np.random.default_rng(seed + 8)
    patterns = (rng.random((12, 14)) < 0.15).astype(np.float64)
    which = rng.integers(0, len(patterns), n_reports)
    labels = patterns[which]
    emb = rng.standard_normal((n_reports, 64)) + 0.35 * rng.standard_normal((len(patterns), 64))[which]
    sim = emb @ emb.T
    k = 10
    t_ours, res = best_of(lambda: chexpert_at_k(sim, labels, k=k), repeats)
    t_ref, per = best_of(lambda: chexpert_loop(sim, labels, k), 1)
    note = agree("chexpert", float(np.abs(res.per_report - per).max()))
    rows.append(Row("metrics", f"CheXpert@{k} ({n_reports} reports)", "reports/s", n_reports / t_ours,
                    n_reports / t_ref, "numpy loop", note=f"CheXpert@{k} {res.overall:.4f}; {note}"))
    log(f"[metrics] SSIM/PSNR/CheXpert done; {len(failures)} disagreement(s)")
    return rows, failures
