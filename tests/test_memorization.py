"""Memorization check: copies of training images are flagged, genuinely new images are not."""

import numpy as np
import pytest

from cxrgen.errors import InputError
from cxrgen.metrics.memorization import memorization_table, nearest_by_features


def _images(rng, n, size=32):
    # smooth random blobs: SSIM between different images stays well below 1
    base = rng.random((n, size // 4, size // 4))
    return (np.kron(base, np.ones((4, 4))) * 255).astype(np.uint8)


def test_copies_are_flagged_and_new_images_are_not():
    rng = np.random.default_rng(0)
    train = _images(rng, 10)
    train_f = rng.normal(size=(10, 16))
    real = _images(rng, 40)
    real_f = rng.normal(size=(40, 16))
    fresh = _images(rng, 20)
    fresh_f = rng.normal(size=(20, 16))
    copies = train[[0, 3, 3, 7]]
    copies_f = train_f[[0, 3, 3, 7]] * 2.0  # cosine similarity ignores scale
    summary, per_image = memorization_table(
        {"copier": (copies, copies_f), "fresh": (fresh, fresh_f)}, (train, train_f), (real, real_f), quantile=0.95)
    s = summary.set_index("method")
    assert s.loc["copier", "feature_share_above"] == 1.0 and s.loc["copier", "ssim_share_above"] == 1.0
    assert s.loc["copier", "ssim_nn_max"] == pytest.approx(1.0) and s.loc["copier", "feature_nn_max"] == pytest.approx(1.0)
    assert s.loc["fresh", "feature_share_above"] <= 0.2 and s.loc["fresh", "ssim_share_above"] <= 0.2
    # the copies point back at the images they copy
    cp = per_image[per_image.method == "copier"]
    assert cp["ssim_nn_index"].tolist() == [0, 3, 3, 7] and cp["feature_nn_index"].tolist() == [0, 3, 3, 7]
    # by construction about 1 - quantile of the calibration images lie above their own threshold
    assert s.loc["fresh", "real_feature_share_above"] <= 0.05 + 1e-9


def test_nearest_by_features_matches_brute_force():
    rng = np.random.default_rng(1)
    q, t = rng.normal(size=(7, 5)), rng.normal(size=(9, 5))
    sims, idx = nearest_by_features(q, t, k=3)
    cos = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (t / np.linalg.norm(t, axis=1, keepdims=True)).T
    assert np.array_equal(idx, np.argsort(-cos, axis=1)[:, :3])
    assert np.allclose(sims, np.sort(cos, axis=1)[:, ::-1][:, :3])


def test_bad_inputs_are_named():
    rng = np.random.default_rng(2)
    imgs, f = _images(rng, 4), rng.normal(size=(4, 8))
    with pytest.raises(InputError, match="quantile"):
        memorization_table({"m": (imgs, f)}, (imgs, f), (imgs, f), quantile=1.5)
    with pytest.raises(InputError, match="dims"):
        nearest_by_features(f, rng.normal(size=(4, 9)))
    with pytest.raises(InputError, match="one size"):
        memorization_table({"m": (_images(rng, 4, 16), f)}, (imgs, f), (imgs, f))
