"""Reference classifier: training on a tiny materialised folder, save/load round trip, evaluation, xrv loading offline."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from cxrgen.classify import (
    ReferenceClassifierConfig,
    cosine_similarity,
    evaluate_classifier,
    evaluate_folder,
    load_reference_classifier,
    train_reference_classifier,
    xrv_weights_path,
)
from cxrgen.data.sampling import load_images
from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError, WeightsUnavailableError

LABELS = ("Pleural Effusion", "Cardiomegaly")
SIZE = 32


def _write_folder(folder, n, seed):
    """A materialised-format folder: images/*.png + manifest.csv; a bright blob means Pleural Effusion."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        img = rng.normal(60, 12, (SIZE, SIZE))
        effusion = float(i % 2)
        if effusion:
            r, c = rng.integers(18, 26), rng.integers(6, 26)
            img[r - 4 : r + 4, c - 4 : c + 4] += 150
        arr = np.clip(img, 0, 255).astype(np.uint8)
        name = f"images/img{i:03d}.png"
        Image.fromarray(arr).save(folder / name)
        row = {"image_id": f"img{i:03d}", "patient_id": f"p{i}", "file": name, "split": folder.name}
        row.update({l: 0.0 for l in CHEXPERT_LABELS})
        row["Pleural Effusion"] = effusion
        row["Cardiomegaly"] = float(rng.random() < 0.4)
        if i == 3:
            row["Cardiomegaly"] = np.nan  # blank = ignored
        rows.append(row)
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("refclf")
    train = _write_folder(root / "train", 32, 0)
    val = _write_folder(root / "validate", 16, 1)
    test = _write_folder(root / "test", 16, 2)
    cfg = ReferenceClassifierConfig(labels=LABELS, image_size=SIZE, epochs=2, batch_size=16, lr=3e-3, seed=0)
    summary = train_reference_classifier(train, val, cfg, root / "clf", progress=False)
    return root, summary, cfg, test


def test_training_writes_files(trained):
    root, summary, cfg, _ = trained
    out = root / "clf"
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "training_log.csv", "README.md"}
    assert not (root / "clf.partial").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["labels"] == list(LABELS)
    assert config["image_size"] == SIZE
    assert set(config["thresholds"]) == set(LABELS)
    assert all(0.0 <= t <= 1.0 for t in config["thresholds"].values())
    assert config["input_scaling"]["range"] == [-1024.0, 1024.0]
    assert config["architecture"]["name"] == "torchxrayvision.models.DenseNet"
    assert config["best_epoch"] in (1, 2)
    log = pd.read_csv(out / "training_log.csv")
    assert list(log.columns) == ["epoch", "train_loss", "val_mean_auc", "seconds"]
    assert list(log["epoch"]) == [1, 2]
    assert summary["best_epoch"] == config["best_epoch"]
    from cxrgen.models.card import read_model_card

    card = read_model_card(out)  # the model card, with the run's validation metrics
    assert card["cxrgen_artefact"] == "reference_classifier" and card["library_name"] == "pytorch"
    assert card["data"] == {"sample": "train", "n_images": 32, "validation_sample": "validate", "n_validation_images": 16}
    assert card["metrics"]["val_mean_auc"] == pytest.approx(summary["val_mean_auc"])
    assert card["training_config"]["epochs"] == 2


def test_reload_is_exact(trained):
    root, summary, _, test = trained
    images, manifest = load_images(test)
    clf = load_reference_classifier(root / "clf")
    p1 = clf.predict_proba(images)
    p2 = load_reference_classifier(str(root / "clf")).predict_proba(images)
    assert p1.shape == (len(images), len(LABELS))
    assert np.array_equal(p1, p2)
    assert ((p1 >= 0) & (p1 <= 1)).all()
    assert clf.labels == list(LABELS)
    assert clf.thresholds == pytest.approx(summary["thresholds"])
    assert clf.label_index("Cardiomegaly") == 1
    with pytest.raises(InputError, match="Edema"):
        clf.label_index("Edema")
    # batching and resizing do not change results; other sizes are resized
    assert np.allclose(clf.predict_proba(images[:6], batch_size=4), p1[:6], atol=1e-6)
    big = np.kron(images[:2], np.ones((2, 2), np.uint8))
    assert clf.predict_proba(big).shape == (2, len(LABELS))
    f = clf.features(images)
    assert isinstance(f, torch.Tensor) and f.shape == (len(images), 1024)
    assert np.allclose(cosine_similarity(f, f), 1.0)


def test_evaluation_matches_sklearn(trained):
    root, _, _, test = trained
    images, manifest = load_images(test)
    clf = load_reference_classifier(root / "clf")
    table = evaluate_classifier(clf, images, manifest, list(LABELS), n_boot=50, seed=0)
    for col in ("label", "n", "prevalence", "threshold", "auc", "auc_ci_low", "auc_ci_high", "accuracy", "f1",
                "precision", "recall", "f1_ci_low"):
        assert col in table.columns
    assert list(table["label"]) == list(LABELS)
    probs = clf.predict_proba(images)
    for j, label in enumerate(LABELS):
        y = manifest[label].to_numpy(float)
        keep = ~np.isnan(y)
        y, s = y[keep].astype(int), probs[keep, j]
        pred = (s >= clf.thresholds[label]).astype(int)
        row = table.set_index("label").loc[label]
        assert row["n"] == keep.sum()
        assert row["prevalence"] == pytest.approx(y.mean())
        assert row["auc"] == pytest.approx(roc_auc_score(y, s))
        assert row["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert row["f1"] == pytest.approx(f1_score(y, pred, zero_division=0))
        assert row["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
        assert row["recall"] == pytest.approx(recall_score(y, pred, zero_division=0))
        assert row["threshold"] == clf.thresholds[label]
        if not np.isnan(row["auc_ci_low"]):
            assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
    # the folder read from disk batch by batch (evaluate_folder) gives the same table as the stacked images
    pd.testing.assert_frame_equal(evaluate_folder(clf, test, list(LABELS), n_boot=50, seed=0), table)


def test_cli_scores_a_folder_as_drawn_and_in_the_washed_look(trained, tmp_path, capsys):
    """``cxrgen evaluate-classifier --look``: the check that chose the foundation corpus's washed x-rays (its images
    redrawn as the corpus draws them, then scored as evaluate_classifier scores stacked images)."""
    from cxrgen.cli import main
    from cxrgen.models.corpus import in_xray_look

    root, _, _, test = trained
    assert np.allclose(in_xray_look(np.array([0.0, 1.0]), "washed"), [0.35, 0.75])
    out = tmp_path / "looks.csv"
    args = ["-q", "evaluate-classifier", str(root / "clf"), str(test), "--label", "Pleural Effusion", "--n-boot", "50"]
    assert main([*args, "--look", "dataset", "--look", "washed", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table["look"]) == ["dataset", "washed"] and list(table["label"]) == ["Pleural Effusion"] * 2
    images, manifest = load_images(test)
    washed = np.rint(255 * (0.35 + 0.4 * images.astype(np.float32) / 255)).astype(np.uint8)
    clf = load_reference_classifier(root / "clf")
    for look, drawn in (("dataset", images), ("washed", washed)):
        want = evaluate_classifier(clf, drawn, manifest, ["Pleural Effusion"], n_boot=50, seed=0).iloc[0]
        row = table.set_index("look").loc[look]
        cols = ["n", "prevalence", "auc", "auc_ci_low", "auc_ci_high", "f1"]  # a CI is NaN below MIN_CLASS_COUNT
        np.testing.assert_allclose(row[cols].to_numpy(float), want[cols].to_numpy(float))
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and printed[1].startswith("Pleural Effusion [washed]: AUC ") and "n=16" in printed[1]
    assert main([*args[1:], "--label", "Nodule"]) == 2
    assert "label 'Nodule' is not an output of" in capsys.readouterr().err


def test_resume_from_partial_checkpoint(trained, tmp_path, monkeypatch):
    """A run killed after epoch 1 resumes from <out>.partial and ends with the weights of an uninterrupted run."""
    root, _, cfg, test = trained
    from cxrgen import engine as checkpoint  # the engine writes every trainer's checkpoints

    class Killed(Exception):
        pass

    real_save = checkpoint.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Killed()

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_reference_classifier(root / "train", root / "validate", cfg, tmp_path / "clf", progress=False)
    assert (tmp_path / "clf.partial").is_dir() and not (tmp_path / "clf").exists()
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    train_reference_classifier(root / "train", root / "validate", cfg, tmp_path / "clf", progress=False)
    assert not (tmp_path / "clf.partial").exists()
    images, _ = load_images(test)
    a = load_reference_classifier(root / "clf").predict_proba(images)
    b = load_reference_classifier(tmp_path / "clf").predict_proba(images)
    assert np.allclose(a, b, atol=1e-5)
    assert pd.read_csv(tmp_path / "clf" / "training_log.csv")["epoch"].tolist() == [1, 2]
    # a checkpoint from a different configuration is not silently mixed in: refused, naming what differs
    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train_reference_classifier(root / "train", root / "validate", cfg, tmp_path / "other", progress=False)
    monkeypatch.setattr(checkpoint, "save_checkpoint", real_save)
    other = ReferenceClassifierConfig(**{**cfg.to_dict(), "lr": cfg.lr * 2})
    with pytest.raises(InputError, match=r"different settings \(lr: 0.003 -> 0.006\).*other\.partial"):
        train_reference_classifier(root / "train", root / "validate", other, tmp_path / "other", progress=False)


def test_bad_label_values_are_named(tmp_path):
    folder = _write_folder(tmp_path / "train", 4, 0)
    m = pd.read_csv(folder / "manifest.csv")
    m.loc[0, "Cardiomegaly"] = -1.0
    m.to_csv(folder / "manifest.csv", index=False)
    cfg = ReferenceClassifierConfig(labels=LABELS, image_size=SIZE, epochs=1, batch_size=4)
    with pytest.raises(InputError, match="Cardiomegaly"):
        train_reference_classifier(folder, folder, cfg, tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="Not A Label"):
        ReferenceClassifierConfig(labels=("Not A Label",))


def test_xrv_weights_offline_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    import torchxrayvision as xrv

    def no_network(url, filename):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(xrv.utils, "download", no_network)
    expected = tmp_path / ".torchxrayvision" / "models_data"
    assert xrv_weights_path("densenet121-res224-all").parent == expected
    with pytest.raises(WeightsUnavailableError) as info:
        load_reference_classifier("xrv:densenet121-res224-all")
    msg = str(info.value)
    assert str(expected) in msg
    assert "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121" in msg


def test_unknown_names_raise(tmp_path):
    with pytest.raises(InputError):
        load_reference_classifier("xrv:densenet121-res224-nonexistent")
    with pytest.raises(InputError):
        load_reference_classifier("xrv:resnet50-res512-all")
    with pytest.raises(InputError):
        load_reference_classifier(tmp_path / "no_such_model")
    with pytest.raises(InputError):
        load_reference_classifier("some-random-name")
