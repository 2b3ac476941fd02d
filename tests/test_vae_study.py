"""VAE reconstruction study (Chambon 2.3 / 3.2): identity round trip, a real tiny AutoencoderKL, Table 1 layout."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from cxrgen.classify.reference import ReferenceClassifier
from cxrgen.studies.vae_reconstruction import (
    TABLE1_METRICS,
    reconstruct,
    render_vae_study,
    run_vae_study,
    save_vae_study,
    table1,
)

LABELS = ["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Fracture"]


class _Dist:
    def __init__(self, x):
        self.x = x

    def sample(self, generator=None):
        return self.x

    def mode(self):
        return self.x


class IdentityVAE:
    """encode/decode that return their input: a perfect autoencoder."""

    config = SimpleNamespace(in_channels=3)

    def encode(self, x):
        return SimpleNamespace(latent_dist=_Dist(x))

    def decode(self, z):
        return SimpleNamespace(sample=z)


class _TinyNet(torch.nn.Module):
    def __init__(self, n_labels):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.Conv2d(8, 16, 3, stride=2))
        self.classifier = torch.nn.Linear(16, n_labels)


def tiny_classifier(labels=LABELS):
    thresholds = {l: 0.5 for l in labels}
    return ReferenceClassifier(_TinyNet(len(labels)), labels, thresholds, image_size=32, source="tests/tiny")


def phantom(n=24, size=32, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    imgs = []
    for _ in range(n):
        cx, cy = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / rng.uniform(0.01, 0.05))
        imgs.append(np.clip(40 + 180 * blob + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8))
    manifest = pd.DataFrame({"image_id": [f"img{i:03d}" for i in range(n)]})
    for j, label in enumerate(["Atelectasis", "Cardiomegaly", "Pleural Effusion", "Pneumothorax"]):
        manifest[label] = (rng.random(n) < 0.4).astype(float)
        manifest.loc[j, label] = 1.0
        manifest.loc[j + 1, label] = 0.0
    manifest.loc[3, "Atelectasis"] = np.nan  # blank = ignored
    manifest["Fracture"] = 0.0  # single class
    return np.stack(imgs), manifest


def test_identity_vae_is_perfect():
    images, manifest = phantom()
    res = run_vae_study(images, manifest, IdentityVAE(), tiny_classifier(), resolutions=[32], fid_batch_size=8,
                        n_boot=20, seed=0, progress=False)
    q = res["per_image"]
    assert list(q["image_id"]) == list(manifest["image_id"]) and (q["resolution"] == 32).all()
    assert np.allclose(q["rmse"], 0) and np.allclose(q["ssim"], 1) and np.isinf(q["psnr"]).all()
    assert np.allclose(q["rmse_mode"], 0) and np.allclose(q["ssim_mode"], 1)
    assert np.allclose(q["latent_cosine_similarity"], 1)
    fid = res["fid"]
    assert set(fid["scope"]) == {"all", "batches"}
    assert (fid["extractor"] == "reference:tiny").all()
    assert np.allclose(fid["fid"], 0, atol=1e-6)
    everything = fid.set_index("scope").loc["all"]
    assert (everything["n_real"], everything["n_fake"], everything["n_boot"]) == (24, 24, 200)
    assert everything["fid_ci_low"] <= everything["fid_ci_high"] and np.isfinite(everything["kid_ci_low"])
    assert int(fid.loc[fid["scope"] == "batches", "n_batches"].iloc[0]) == 3
    t = res["table1"]
    for m in TABLE1_METRICS:
        ok = t["note"] == ""
        assert np.allclose(t.loc[ok, f"{m}_orig"], t.loc[ok, f"{m}_recon"])
    s = res["summary"].set_index(["metric", "latent"])
    assert s.loc[("SSIM", "sample"), "text"].startswith("1.00 ± 0.00")
    assert s.loc[("PSNR", "sample"), "n_nonfinite"] == len(images)


def test_table1_layout_and_notes():
    images, manifest = phantom()
    clf = tiny_classifier()
    res = run_vae_study(images, manifest, IdentityVAE(), clf, resolutions=[32], fid_batch_size=8, n_boot=10,
                        progress=False, min_class_count=3, fid_n_boot=5)
    t = res["table1"].set_index("label")
    expected = ["resolution", "finding", "n", "n_positive", "prevalence", "threshold"]
    for m in ("auc", "accuracy", "f1"):
        for k in ("orig", "recon"):
            expected += [f"{m}_{k}", f"{m}_{k}_ci_low", f"{m}_{k}_ci_high"]
    assert list(res["table1"].columns) == expected[:1] + ["finding", "label"] + expected[2:] + ["ci_note", "note"]
    assert len(t) == 12  # the paper's 12 labels, in its order
    assert t.loc["Enlarged Cardiomediastinum", "finding"] == "Enlarged Mediastinum"
    assert "not an output" in t.loc["Pneumothorax", "note"] and np.isnan(t.loc["Pneumothorax", "auc_orig"])
    assert "single class" in t.loc["Fracture", "note"] and np.isnan(t.loc["Fracture", "f1_recon"])
    assert t.loc["Atelectasis", "n"] == len(images) - 1  # the blank target is ignored
    assert t.loc["Atelectasis", "note"] == "" and t.loc["Atelectasis", "auc_orig_ci_low"] <= t.loc["Atelectasis", "auc_orig"]
    assert t.loc["Atelectasis", "ci_note"] == ""
    # with the default minimum of 10 the same labels' CIs are left out, each row saying why
    strict = run_vae_study(images, manifest, IdentityVAE(), clf, resolutions=[32], fid_batch_size=8, n_boot=10,
                           progress=False, fid_n_boot=5)["table1"].set_index("label")
    n_pos = int(strict.loc["Atelectasis", "n_positive"])
    assert n_pos < 10 and strict.loc["Atelectasis", "ci_note"] == f"CI omitted: {n_pos} positives < 10"
    assert np.isnan(strict.loc["Atelectasis", "auc_recon_ci_high"]) and np.isfinite(strict.loc["Atelectasis", "auc_recon"])


def test_per_image_scores_give_table1_auc():
    """The per-image classifier scores (read by the findings table) are the ones behind Table 1."""
    images, manifest = phantom()
    res = run_vae_study(images, manifest, IdentityVAE(), tiny_classifier(), resolutions=[32], fid_batch_size=8,
                        n_boot=0, progress=False)
    q, t = res["per_image"], res["table1"].set_index("label")
    assert "p_orig:Pneumothorax" not in q.columns  # not an output of the classifier
    y = q["target:Cardiomegaly"].to_numpy()
    assert list(y) == list(manifest["Cardiomegaly"])
    for kind in ("orig", "recon"):
        assert roc_auc_score(y, q[f"p_{kind}:Cardiomegaly"]) == pytest.approx(t.loc["Cardiomegaly", f"auc_{kind}"])


def test_table1_metrics_equal_sklearn():
    _, manifest = phantom(n=40, seed=3)
    clf = tiny_classifier()
    clf.thresholds["Cardiomegaly"] = 0.37
    rng = np.random.default_rng(1)
    p_o, p_r = rng.random((40, len(LABELS))), rng.random((40, len(LABELS)))
    t = table1(clf, manifest, p_o, p_r, labels=["Atelectasis", "Cardiomegaly", "Pleural Effusion"], n_boot=0).set_index("label")
    for label in ["Atelectasis", "Cardiomegaly", "Pleural Effusion"]:
        y = manifest[label].to_numpy()
        keep = ~np.isnan(y)
        j = clf.labels.index(label)
        thr = clf.thresholds[label]
        for kind, p in (("orig", p_o), ("recon", p_r)):
            s, yy = p[keep, j], y[keep].astype(int)
            assert t.loc[label, f"auc_{kind}"] == pytest.approx(roc_auc_score(yy, s))
            assert t.loc[label, f"accuracy_{kind}"] == pytest.approx(accuracy_score(yy, s >= thr))
            assert t.loc[label, f"f1_{kind}"] == pytest.approx(f1_score(yy, s >= thr, zero_division=0))
        assert t.loc[label, "prevalence"] == pytest.approx(y[keep].mean())
        assert t.loc[label, "threshold"] == thr


def _tiny_autoencoder():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    ).eval()


def test_real_tiny_autoencoder_round_trip():
    vae = _tiny_autoencoder()
    images, _ = phantom(n=5, size=40)
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a = reconstruct(vae, images, 32, sample_posterior=True, generator=g(), batch_size=2, progress=False)
    b = reconstruct(vae, images, 32, sample_posterior=True, generator=g(), batch_size=2, progress=False)
    m = reconstruct(vae, images, 32, sample_posterior=False, batch_size=3, progress=False)
    assert a.shape == (5, 32, 32) and a.dtype == np.uint8 and m.shape == (5, 32, 32) and m.dtype == np.uint8
    assert np.array_equal(a, b)  # seeded posterior sample is reproducible
    assert not np.array_equal(a, m)  # sampling differs from the mode


def test_study_and_render_with_tiny_autoencoder(tmp_path):
    images, manifest = phantom(n=16, size=40)
    res = run_vae_study(images, manifest, _tiny_autoencoder(), tiny_classifier(), resolutions=[16, 32], fid_batch_size=8,
                        n_boot=10, progress=False)
    assert sorted(res["per_image"]["resolution"].unique()) == [16, 32]
    assert res["examples"]["reconstruction_32"].shape == (4, 32, 32)
    q = res["per_image"]
    assert (q["rmse"] > 0).all() and (q["ssim"] < 1).all()
    paths = save_vae_study(res, tmp_path / "vae_study")
    assert all(p.is_file() for p in paths.values())
    out = render_vae_study(tmp_path / "vae_study", tmp_path / "t1", tmp_path / "summary", tmp_path / "fig3", scale="miniature")
    for p in [*out["table1"].values(), *out["summary"].values(), *out["figure"].values()]:
        assert p.is_file() and p.stat().st_size > 0
    t1 = pd.read_csv(out["table1"]["csv"])
    assert "auc_orig (paper)" in t1.columns and "auc_recon (this run)" in t1.columns
    assert "CI omitted" in t1["note (this run)"].str.cat(sep=" ") and "n positive (this run)" in t1.columns
    summ = pd.read_csv(out["summary"]["csv"]).set_index("metric")
    assert summ.index.str.contains("extractor reference:tiny").any()
    fid_all, kid_all = summ.loc["FID (all images, extractor reference:tiny)"], summ.loc["KID (all images, extractor reference:tiny)"]
    assert "[" in fid_all["mean (this run)"] and "[" in kid_all["mean (this run)"]
    assert fid_all["n (this run)"] == "16 real / 16 reconstructed" and summ.loc["SSIM", "n (this run)"] == "16 images"
    md = out["summary"]["md"].read_text()
    assert "FID and KID cells: value [95% CI]" in md and "FID is biased upward" not in md  # n 16 = the 16 features
    assert "32x32" in out["table1"]["md"].read_text()
