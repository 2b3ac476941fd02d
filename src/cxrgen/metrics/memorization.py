"""Does a generator copy its training patients? Nearest-training-image similarity of synthetic images.

For every synthetic image the nearest training image is found twice: by cosine similarity of classifier features
(the reference classifier's penultimate layer) and by pixel SSIM. A raw similarity means little on its own (chest
radiographs all look alike), so each is *calibrated* on real data: the same nearest-training similarity is measured
for real held-out images (other patients, never trained on), and the ``quantile`` (default 0.99) of that
distribution is the threshold. A synthetic image above it is closer to some training image than ~all genuinely
distinct real patients are; the share of such images per generator is the memorization score (a well-generalising
model scores about ``1 - quantile``, a copying one near 1).

Pixel SSIM against every training image costs O(n_synthetic x n_train) full-image SSIMs; it is computed against the
``ssim_candidates`` nearest training images by feature similarity (all of them when the training set is that small,
as the few-shot sets are).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from cxrgen.errors import InputError
from cxrgen.metrics.image_quality import ssim

COLUMNS = ["method", "n", "n_train", "n_real_calibration", "quantile",
           "feature_nn_median", "feature_nn_max", "feature_threshold", "feature_share_above",
           "ssim_nn_median", "ssim_nn_max", "ssim_threshold", "ssim_share_above",
           "real_feature_share_above", "real_ssim_share_above"]


def _unit(feats) -> torch.Tensor:
    f = torch.as_tensor(np.asarray(feats), dtype=torch.float64)
    if f.ndim != 2 or f.shape[0] == 0:
        raise InputError(f"features of shape {tuple(f.shape)}; expected a non-empty (n, d) matrix")
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def nearest_by_features(query_feats, train_feats, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity to, and index of, the ``k`` nearest training rows of each query row: (n, k) each."""
    q, t = _unit(query_feats), _unit(train_feats)
    if q.shape[1] != t.shape[1]:
        raise InputError(f"query features have {q.shape[1]} dims, training features {t.shape[1]}; expected equal")
    sims = q @ t.T
    k = min(int(k), t.shape[0])
    top = sims.topk(k, dim=1)
    return top.values.numpy(), top.indices.numpy()


def nearest_by_ssim(query_images, train_images, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Highest pixel SSIM of each query image over its candidate training images (rows of ``candidates``)."""
    q, t = np.asarray(query_images), np.asarray(train_images)
    if q.shape[1:] != t.shape[1:]:
        raise InputError(f"synthetic images are {q.shape[1:]}, training images {t.shape[1:]}; expected one size "
                         "(resize the sample to the generator's resolution)")
    cand = np.asarray(candidates)
    pairs_q = np.repeat(np.arange(len(q)), cand.shape[1])
    pairs_t = cand.reshape(-1)
    scores = np.asarray(ssim(q[pairs_q], t[pairs_t])).reshape(cand.shape)
    best = scores.argmax(axis=1)
    return scores[np.arange(len(q)), best], cand[np.arange(len(q)), best]


def nearest_training(images, feats, train_images, train_feats, ssim_candidates: int = 16) -> pd.DataFrame:
    """Per image: nearest training image by features and by SSIM (similarities and indices)."""
    f_sim, f_idx = nearest_by_features(feats, train_feats, k=ssim_candidates)
    s_sim, s_idx = nearest_by_ssim(images, train_images, f_idx)
    return pd.DataFrame({"feature_nn": f_sim[:, 0], "feature_nn_index": f_idx[:, 0],
                         "ssim_nn": s_sim, "ssim_nn_index": s_idx})


def memorization_table(
    sets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    train: tuple[np.ndarray, np.ndarray],
    real: tuple[np.ndarray, np.ndarray],
    quantile: float = 0.99,
    ssim_candidates: int = 16,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Memorization summary per method and the per-image nearest neighbours.

    ``sets``: method -> (images uint8 (n,H,W), features (n,d)); ``train`` and ``real`` likewise for the training
    images and the real held-out calibration images (disjoint patients). Returns ``(summary, per_image)``.
    """
    if not 0.0 < float(quantile) < 1.0:
        raise InputError(f"quantile={quantile!r}; expected a number in (0, 1)")
    if not sets:
        raise InputError("no synthetic sets given; expected method -> (images, features)")
    train_images, train_feats = train
    real_nn = nearest_training(real[0], real[1], train_images, train_feats, ssim_candidates)
    f_thr = float(np.quantile(real_nn["feature_nn"], quantile))
    s_thr = float(np.quantile(real_nn["ssim_nn"], quantile))
    rows, per_image = [], []
    for method, (images, feats) in sets.items():
        nn = nearest_training(images, feats, train_images, train_feats, ssim_candidates)
        nn.insert(0, "method", method)
        nn.insert(1, "index", np.arange(len(nn)))
        per_image.append(nn)
        rows.append({
            "method": method, "n": len(nn), "n_train": len(train_images), "n_real_calibration": len(real_nn),
            "quantile": float(quantile),
            "feature_nn_median": float(nn["feature_nn"].median()), "feature_nn_max": float(nn["feature_nn"].max()),
            "feature_threshold": f_thr, "feature_share_above": float((nn["feature_nn"] > f_thr).mean()),
            "ssim_nn_median": float(nn["ssim_nn"].median()), "ssim_nn_max": float(nn["ssim_nn"].max()),
            "ssim_threshold": s_thr, "ssim_share_above": float((nn["ssim_nn"] > s_thr).mean()),
            "real_feature_share_above": float((real_nn["feature_nn"] > f_thr).mean()),
            "real_ssim_share_above": float((real_nn["ssim_nn"] > s_thr).mean()),
        })
    return pd.DataFrame(rows, columns=COLUMNS), pd.concat(per_image, ignore_index=True)


__all__ = ["COLUMNS", "memorization_table", "nearest_by_features", "nearest_by_ssim", "nearest_training"]
