import math
import os

import numpy as np
import pytest
import torch
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from cxrgen.errors import InputError, WeightsUnavailableError
from cxrgen.metrics.classification import ci_omission_reason
from cxrgen.metrics.fid import _kid_bootstrap
from cxrgen.metrics import (
    batched_fid,
    batched_fid_from_features,
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    cosine_similarity_pairs,
    describe,
    fid,
    format_mean_sd,
    fid_kid_with_ci,
    frechet_distance,
    get_extractor,
    kernel_inception_distance,
    per_label_table,
    psnr,
    reconstruction_metrics,
    rmse,
    ssim,
)

torch.set_num_threads(1)


def _noisy_pair(shape, seed=0, noise=25):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-noise, noise + 1, shape), 0, 255).astype(np.uint8)
    return a, b


# ------------------------------------------------------------------------------------------------ image quality
def test_identity_reconstruction():
    a, _ = _noisy_pair((3, 32, 40))
    df = reconstruction_metrics(a, a, ids=["x", "y", "z"])
    assert list(df.columns) == ["image_id", "rmse", "psnr", "ssim"]
    assert (df["rmse"] == 0).all()
    assert np.allclose(df["ssim"], 1.0)
    assert np.isinf(df["psnr"]).all() and (df["psnr"] > 0).all()  # inf kept in the table
    st = describe(df["psnr"])  # ... and excluded (counted) in summaries
    assert st["n"] == 0 and st["n_nonfinite"] == 3


@pytest.mark.parametrize("shape,channel_axis", [((3, 37, 45), None), ((2, 33, 30, 3), -1)])
def test_ssim_psnr_rmse_match_skimage(shape, channel_axis):
    a, b = _noisy_pair(shape, seed=1)
    ours_ssim, ours_psnr, ours_rmse = ssim(a, b), psnr(a, b), rmse(a, b)
    for i in range(shape[0]):
        ref = sk_ssim(a[i], b[i], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
                      channel_axis=channel_axis)
        assert abs(ours_ssim[i] - ref) < 1e-4
        assert abs(ours_psnr[i] - sk_psnr(a[i], b[i], data_range=255)) < 1e-4
        assert abs(ours_rmse[i] - np.sqrt(np.mean((a[i].astype(float) - b[i]) ** 2))) < 1e-9


def test_shape_mismatch_is_input_error():
    a, b = _noisy_pair((2, 20, 20))
    with pytest.raises(InputError):
        rmse(a, b[:, :10])


# -------------------------------------------------------------------------------------------------------- FID
def _feats(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + shift


def _scipy_fid(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_fid_self_is_zero():
    a = _feats(50, 16, 0)
    assert abs(frechet_distance(a, a)) < 1e-3
    b = _feats(20, 64, 1)  # n < d: rank-deficient covariances
    assert abs(frechet_distance(b, b)) < 1e-3


class _Identity(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x


@pytest.mark.parametrize("n_a,n_b,d", [(60, 50, 8), (20, 24, 32)])
def test_fid_equals_torchmetrics_and_scipy(n_a, n_b, d):
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = _feats(n_a, d, 2), _feats(n_b, d, 3, shift=0.5)
    m = FrechetInceptionDistance(feature=_Identity(d))
    m.update(torch.from_numpy(a), real=True)
    m.update(torch.from_numpy(b), real=False)
    ours = frechet_distance(a, b)
    assert ours == pytest.approx(float(m.compute()), rel=1e-6, abs=1e-6)
    assert ours == pytest.approx(_scipy_fid(a, b), rel=1e-5, abs=1e-5)


def test_kid_matches_torchmetrics_and_sanity():
    from torchmetrics.image.kid import KernelInceptionDistance

    a, b = _feats(40, 8, 4), _feats(40, 8, 5, shift=1.0)
    m = KernelInceptionDistance(feature=_Identity(8), subsets=1, subset_size=40)
    m.update(torch.from_numpy(a), real=True)
    m.update(torch.from_numpy(b), real=False)
    ours = kernel_inception_distance(a, b, subsets=1, subset_size=40)  # full sets: permutation-invariant
    assert ours["mean"] == pytest.approx(float(m.compute()[0]), rel=1e-6)
    diff = kernel_inception_distance(a, b, subsets=10, subset_size=20, seed=1)
    same = kernel_inception_distance(a, _feats(40, 8, 6), subsets=10, subset_size=20, seed=1)
    assert diff["mean"] > 0 and diff["mean"] > abs(same["mean"])
    assert diff == kernel_inception_distance(a, b, subsets=10, subset_size=20, seed=1)
    with pytest.raises(InputError):
        kernel_inception_distance(a, b, subsets=1, subset_size=41)


def _gaussians(n, d, seed):
    """N(0, I) vs N(mu, 2 I) with |mu|^2 = 1: FID = 1 + d (3 - 2 sqrt 2) exactly."""
    rng = np.random.default_rng(seed)
    mu = np.full(d, 1 / np.sqrt(d))
    return rng.normal(size=(n, d)), mu + np.sqrt(2) * rng.normal(size=(n, d)), 1 + d * (3 - 2 * np.sqrt(2))


def test_fid_bootstrap_ci_covers_truth_and_shrinks_with_n():
    d, cover, widths = 3, 0, {}
    for seed in range(10):
        a, b, truth = _gaussians(400, d, seed)
        r = fid_kid_with_ci(a, b, n_boot=200, seed=seed, kid_subsets=5)
        cover += r["fid_ci_low"] <= truth <= r["fid_ci_high"]
        assert r["fid_ci_low"] < r["fid"] < r["fid_ci_high"]
        assert (r["n_real"], r["n_fake"], r["dim"], r["n_boot"], r["fid_biased"]) == (400, 400, 3, 200, False)
    assert cover >= 8  # nominal 95%: 10 of 10 expected, 8 leaves room for chance, a broken CI covers ~never
    for n in (100, 1600):
        a, b, _ = _gaussians(n, d, 0)
        r = fid_kid_with_ci(a, b, n_boot=200, seed=0, kid_subsets=5)
        widths[n] = r["fid_ci_high"] - r["fid_ci_low"]
        kid_width = r["kid_ci_high"] - r["kid_ci_low"]
        widths[f"kid{n}"] = kid_width
    assert widths[1600] < widths[100] / 2 and widths["kid1600"] < widths["kid100"] / 2  # ~ 1/sqrt(n): 4x narrower


def test_fid_kid_ci_deterministic_and_flags_small_n():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 64)), rng.normal(0.5, size=(24, 64))
    r = fid_kid_with_ci(a, b, n_boot=50, seed=1)
    assert r == fid_kid_with_ci(a, b, n_boot=50, seed=1) and r != fid_kid_with_ci(a, b, n_boot=50, seed=2)
    assert r["fid_biased"] and (r["n_real"], r["n_fake"]) == (20, 24) and r["kid_subset_size"] == 20
    assert r["fid"] == pytest.approx(frechet_distance(a, b))
    # KID's CI separates a real shift from 0; the same distribution gives a CI around 0
    assert 0 < r["kid_ci_low"] < r["kid"] < r["kid_ci_high"]
    same = fid_kid_with_ci(a[:10], a[10:], n_boot=200, seed=0)
    assert same["kid_ci_low"] < 0 < same["kid_ci_high"]
    none = fid_kid_with_ci(a, b, n_boot=0)
    assert np.isnan(none["fid_ci_low"]) and np.isnan(none["kid_ci_high"]) and none["fid"] == r["fid"]
    tiny = fid_kid_with_ci(a[:2], b[:2], n_boot=20)  # resamples repeating one row drop out of KID's CI
    assert np.isfinite(tiny["fid_ci_low"])
    with pytest.raises(InputError, match="n_boot"):
        fid_kid_with_ci(a, b, n_boot=-1)


def test_kid_bootstrap_identity_resample_equals_torchmetrics():
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(30, 8)), rng.normal(0.3, size=(30, 8))
    ident = np.arange(30)[None]
    assert _kid_bootstrap(a, b, ident, ident)[0] == pytest.approx(float(poly_mmd(torch.from_numpy(a), torch.from_numpy(b))))
    # pairs of draws of the same row are left out: a resample's KID stays near the estimate, not k(x, x)-inflated
    idx = rng.integers(0, 30, size=(200, 30))
    boots = _kid_bootstrap(a, b, idx, rng.integers(0, 30, size=(200, 30)))
    assert abs(np.mean(boots) - _kid_bootstrap(a, b, ident, ident)[0]) < np.std(boots)


def test_batched_fid_from_features():
    a, b = _feats(70, 8, 7), _feats(70, 8, 8)
    out = batched_fid_from_features(a, b, batch_size=32)
    assert out["n_batches"] == 2 and out["n"] == 64
    assert out["values"][0] == pytest.approx(frechet_distance(a[:32], b[:32]))
    assert out["mean"] == pytest.approx(np.mean(out["values"]))
    assert batched_fid_from_features(a, b, 32, drop_last=False)["n_batches"] == 3


def test_image_level_fid_reports_extractor():
    ext = get_extractor("xrv", weights=None, size=32)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (6, 40, 40), dtype=np.uint8)
    out = fid(imgs, imgs, ext)
    assert out["extractor"] == "xrv:random-init" and out["n_real"] == 6 and out["dim"] == 1024
    assert abs(out["value"]) < 1e-3
    bf = batched_fid(imgs, imgs, ext, batch_size=3)
    assert bf["extractor"] == "xrv:random-init" and bf["n_batches"] == 2


# ------------------------------------------------------------------------------------------------- extractors
def test_unknown_extractor_lists_names():
    with pytest.raises(InputError, match="inception.*reference.*xrv"):
        get_extractor("nope")


def test_inception_offline_raises_with_path(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=str(tmp_path)) as e:
        get_extractor("inception")
    assert "weights-inception-2015-12-05-6726825d.pth" in str(e.value)
    with pytest.raises(WeightsUnavailableError, match="missing.pth"):
        get_extractor("inception", weights_path=str(tmp_path / "missing.pth"))


def test_xrv_offline_raises_with_path(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=str(tmp_path)):
        get_extractor("xrv", weights="densenet121-res224-all", cache_dir=str(tmp_path))
    from cxrgen.metrics import xrv_weights_path

    default = xrv_weights_path("densenet121-res224-all")
    assert ".torchxrayvision/models_data" in default
    if not os.path.isfile(default):  # skip the default-cache check when the lead has placed the weights
        with pytest.raises(WeightsUnavailableError, match=r"\.torchxrayvision/models_data"):
            get_extractor("xrv")
    with pytest.raises(InputError, match="densenet121-res224-all"):
        get_extractor("xrv", weights="no-such-weights")


def test_xrv_random_init_feature_path():
    import torchxrayvision as xrv
    from cxrgen.metrics.features import to_uint8_nchw, xrv_preprocess

    ext = get_extractor("xrv", weights=None, size=64, batch_size=2)
    assert ext.dim == 1024 and ext.name == "xrv:random-init"
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 70, 90), dtype=np.uint8)
    f = ext(gray)
    assert f.shape == (3, 1024) and f.dtype == torch.float32 and torch.isfinite(f).all()
    # RGB with equal channels gives the same features; preprocessing is xrv's [-1024, 1024] scaling
    assert torch.allclose(ext(np.repeat(gray[..., None], 3, -1)), f, atol=1e-5)
    x = xrv_preprocess(to_uint8_nchw(gray), size=64)
    assert x.shape == (3, 1, 64, 64) and x.min() >= -1024 and x.max() <= 1024
    full = torch.from_numpy(xrv.datasets.normalize(gray[:, None].astype(np.float32), 255))
    assert torch.allclose(xrv_preprocess(to_uint8_nchw(gray), size=None, center_crop=False), full)
    # same network as a "reference" extractor (model with .features2) gives the same features
    ref = get_extractor("reference", model=ext.model, size=64)
    assert ref.dim == 1024 and torch.allclose(ref(gray), f, atol=1e-3)


def test_reference_extractor_with_callable():
    feats = lambda x: x.flatten(1)[:, :5]  # noqa: E731
    ext = get_extractor("reference", features=feats, size=8, normalize="unit", name="toy")
    assert ext.name == "toy" and ext.dim == 5
    out = ext(np.full((2, 8, 8), 255, np.uint8))
    assert torch.allclose(out, torch.ones(2, 5))
    with pytest.raises(InputError):
        ext(np.zeros((2, 8, 8), np.float32))


# --------------------------------------------------------------------------------------------- classification
def _cls_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    s = np.clip(0.35 * y + rng.random(n) * 0.7, 0, 1).round(2)  # rounding makes ties
    return y, s


def test_binary_metrics_match_sklearn():
    y, s = _cls_data()
    m = binary_metrics(y, s, threshold=0.5)
    p = (s >= 0.5).astype(int)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, p))
    assert m["precision"] == pytest.approx(precision_score(y, p))
    assert m["recall"] == pytest.approx(recall_score(y, p))
    assert m["prevalence"] == pytest.approx(y.mean()) and m["n"] == 300
    y2 = y.copy()
    y2[:50] = np.nan  # ignored
    assert binary_metrics(y2, s, 0.5)["auc"] == pytest.approx(roc_auc_score(y[50:], s[50:]))
    assert math.isnan(binary_metrics(np.zeros(5), np.arange(5.0))["auc"])


def test_vectorised_metrics_equal_sklearn():
    from cxrgen.metrics.classification import _vectorised_metrics

    y, s = _cls_data(seed=3)
    v = _vectorised_metrics(y[None], s[None], 0.4)
    m = binary_metrics(y, s, 0.4)
    for k in ("auc", "accuracy", "f1", "precision", "recall"):
        assert v[k][0] == pytest.approx(m[k], abs=1e-12)


def test_choose_threshold():
    y, s = _cls_data(seed=1)
    t = choose_threshold(y, s, "youden")
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, s)
    assert t in thr and (tpr - fpr)[list(thr).index(t)] == pytest.approx((tpr - fpr).max())
    tf = choose_threshold(y, s, "f1")
    best = max(f1_score(y, s >= u) for u in np.unique(s))
    assert f1_score(y, s >= tf) == pytest.approx(best)
    with pytest.raises(InputError):
        choose_threshold(y, s, "nope")


def test_bootstrap_ci_brackets_and_is_deterministic():
    y, s = _cls_data(seed=2)
    a = bootstrap_ci(y, s, roc_auc_score, n_boot=100, seed=5)
    assert a["ci_low"] <= a["value"] <= a["ci_high"] and a["ci_low"] < a["ci_high"]
    assert a["value"] == pytest.approx(roc_auc_score(y, s)) and a["n_boot"] == 100

    def mean_gap(yt, ys):
        return ys[yt == 1].mean() - ys[yt == 0].mean()

    b = bootstrap_ci(y, s, mean_gap, n_boot=300, seed=5)
    assert b == bootstrap_ci(y, s, mean_gap, n_boot=300, seed=5)
    assert b != bootstrap_ci(y, s, mean_gap, n_boot=300, seed=6)
    assert b["ci_low"] <= b["value"] <= b["ci_high"]


def test_per_label_table():
    y1, s1 = _cls_data(seed=0)
    y2, s2 = _cls_data(seed=1)
    y2[:30] = np.nan
    Y, S = np.stack([y1, y2], 1), np.stack([s1, s2], 1)
    t = per_label_table(Y, S, ["A", "B"], thresholds={"A": 0.4}, n_boot=100, seed=3)
    assert list(t["label"]) == ["A", "B"] and list(t["n"]) == [300, 270]
    assert list(t["threshold"]) == [0.4, 0.5]
    assert t.loc[1, "auc"] == pytest.approx(roc_auc_score(y2[30:], s2[30:]))
    for m in ("auc", "accuracy", "f1", "precision", "recall"):
        assert (t[f"{m}_ci_low"] <= t[m] + 1e-12).all() and (t[m] <= t[f"{m}_ci_high"] + 1e-12).all()
    # the vectorised bootstrap equals bootstrap_ci with sklearn's AUC on the same resamples
    ref = bootstrap_ci(y2, s2, roc_auc_score, n_boot=100, seed=3)
    assert t.loc[1, "auc_ci_low"] == pytest.approx(ref["ci_low"]) and t.loc[1, "auc_ci_high"] == pytest.approx(ref["ci_high"])
    t2 = per_label_table(Y, S, ["A", "B"], thresholds="youden", n_boot=0)
    assert t2["auc_ci_low"].isna().all() and t2.loc[0, "threshold"] == choose_threshold(y1, s1)
    with pytest.raises(InputError):
        per_label_table(Y, S, ["A"])


def test_ci_needs_min_class_count():
    assert ci_omission_reason([1, 0, 0] + [0] * 20, 10) == "CI omitted: 1 positive < 10"
    assert ci_omission_reason([1] * 3 + [0] * 4, 5) == "CI omitted: 3 positives and 4 negatives < 5"
    assert ci_omission_reason([1] * 10 + [0] * 10 + [np.nan], 10) == ""
    with pytest.raises(InputError, match="min_class_count"):
        ci_omission_reason([1, 0], 0)
    rng = np.random.default_rng(0)
    y = np.r_[1.0, np.zeros(99)]  # one positive case, as on a real NIH test split for pneumothorax
    s = rng.random(100)
    s[0] = 0.95
    t = per_label_table(y[:, None], s[:, None], ["Pneumothorax"], n_boot=100, seed=0, min_class_count=10)
    row = t.iloc[0]
    assert row["n_positive"] == 1 and np.isfinite(row["auc"]) and row["ci_note"] == "CI omitted: 1 positive < 10"
    assert all(np.isnan(row[f"{m}_ci_{k}"]) for m in ("auc", "accuracy", "f1") for k in ("low", "high"))
    b = bootstrap_ci(y, s, roc_auc_score, n_boot=100, min_class_count=10)
    assert np.isnan(b["ci_low"]) and b["ci_note"] == "CI omitted: 1 positive < 10" and b["value"] == row["auc"]
    y2 = (rng.random(100) < 0.3).astype(float)  # >= 10 of each class: CI present, no note
    t2 = per_label_table(y2[:, None], s[:, None], ["A"], n_boot=100, seed=0, min_class_count=10)
    assert t2.loc[0, "ci_note"] == "" and t2.loc[0, "auc_ci_low"] <= t2.loc[0, "auc"] <= t2.loc[0, "auc_ci_high"]
    # the same one-positive data with the minimum lowered to 1 gives the narrow, misleading CI the rule prevents
    t3 = per_label_table(y[:, None], s[:, None], ["Pneumothorax"], n_boot=100, seed=0, min_class_count=1)
    assert np.isfinite(t3.loc[0, "auc_ci_low"])


# ------------------------------------------------------------------------------------------------------ summary
def test_describe_and_format():
    v = [21.4, 30.2, 70.1, 30.0, 28.0]
    st = describe(v)
    assert st["median"] == 30.0 and st["min"] == 21.4 and st["max"] == 70.1
    assert st["sd"] == pytest.approx(np.std(v, ddof=1))
    s = format_mean_sd({"mean": 31.84, "sd": 6.5, "median": 30.2, "min": 21.4, "max": 70.1})
    assert s == "31.8 ± 6.5; median, 30.2; range, 21.4 - 70.1"
    assert format_mean_sd([0.93, 0.95, 0.91], digits=2).startswith("0.93 ± 0.02; median, 0.93; range, 0.91 - 0.95")


def test_cosine_similarity_pairs():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0]])
    assert np.allclose(cosine_similarity_pairs(a, b), [1.0, -1.0, 0.0])
