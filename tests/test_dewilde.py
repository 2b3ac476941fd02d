"""De Wilde et al. 2023 study helpers at toy size: class tokens, embeddings (< 1 MB, reload into diffusers, nested
training-case subsets), a sweep point's FID, the ResNet-18 study's patient-disjoint splits and configurations, and
Table 4 beside the paper."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrgen.classify.reference import ReferenceClassifier
from cxrgen.classify.resnet_study import (
    ResNetStudyConfig,
    augment,
    build_resnet18,
    check_patient_disjoint,
    study_splits,
    table4_configurations,
    train_and_evaluate,
)
from cxrgen.errors import InputError
from cxrgen.models.foundation import FoundationConfig, build_foundation
from cxrgen.studies.dewilde import (
    interpolation_prompt,
    run_sweep_point,
    summarise_table4,
    table4_beside_paper,
    train_embedding,
)
from cxrgen.adapt.config import class_embedding_settings
from cxrgen.data.prompts import class_slug, class_token
from threads import TEST_THREADS

SIZE = 32


def test_class_tokens_and_interpolation_prompt():
    assert class_token("No Finding") == "<healthy>" and class_token("Pleural Effusion") == "<pleural-effusion>"
    assert class_slug("Cardiomegaly") == "cardiomegaly"
    assert interpolation_prompt("No Finding", "Cardiomegaly", 0.75) == "0.25*<healthy> AND 0.75*<cardiomegaly>"
    with pytest.raises(InputError, match="class label"):
        class_slug("")
    settings = class_embedding_settings({"steps": 5, "token": "<x>"}, "Pleural Effusion", vectors=8, cases=10)
    assert settings == {"steps": 5, "token": "<pleural-effusion>", "num_vectors": 8, "classes": ["Pleural Effusion"],
                        "max_images": 10}


def _sample(root, n_per_class=4, size=SIZE):
    """A few-shot sample folder (class_label) and split-like folders with label columns and patient ids."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    (root / "images").mkdir(parents=True)
    for c, label in enumerate(("No Finding", "Pleural Effusion")):
        for i in range(n_per_class):
            img = (40 + 100 * c + rng.integers(0, 60, (size, size))).astype(np.uint8)
            name = f"images/{label[:2]}{i}.png"
            Image.fromarray(img).save(root / name)
            rows.append({"image_id": f"{label[:2]}{i}", "file": name, "class_label": label,
                         "patient_id": f"p{c}{i}"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    torch.set_num_threads(TEST_THREADS)
    out = tmp_path_factory.mktemp("dewilde") / "foundation"
    cfg = FoundationConfig.preset("smoke", image_size=SIZE, n_images=32, vae_steps=2, unet_steps=2, vae_crop=0,
                                  checkpoint_every=1000, preview_per_prompt=0)
    build_foundation(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def embeddings(foundation, tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    sample = _sample(root / "sample")
    settings = {"steps": 2, "batch_size": 2, "resolution": SIZE, "checkpoint_every": 50, "initializer": "lung"}
    out = {}
    for cases in (2, 3):
        out[cases] = root / f"healthy_v3_n{cases}"
        summary = train_embedding(foundation, sample, "No Finding", 3, cases, settings, out[cases], seed=0,
                                  progress=False)
        assert summary["embedding_bytes"] < 1_000_000
    return sample, out


def test_embedding_reloads_in_diffusers_and_cases_are_nested(foundation, embeddings):
    import json

    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    sample, out = embeddings
    adapter = json.loads((out[3] / "adapter.json").read_text())
    assert adapter["token"] == "<healthy>" and adapter["num_vectors"] == 3 and adapter["n_images"] == 3
    assert json.loads((out[2] / "adapter.json").read_text())["n_images"] == 2
    tc2 = json.loads((out[2] / "train_config.json").read_text())
    assert tc2["max_images"] == 2 and tc2["prompts"] == ["<healthy> <healthy>_1 <healthy>_2"] * 2
    emb = load_file(str(out[3] / "learned_embeds.safetensors"))
    assert emb["<healthy>"].shape == (3, 32)
    pipe = StableDiffusionPipeline.from_pretrained(foundation, local_files_only=True)
    pipe.load_textual_inversion(str(out[3] / "learned_embeds.safetensors"), token="<healthy>")
    assert pipe.maybe_convert_prompt("<healthy>", pipe.tokenizer) == "<healthy> <healthy>_1 <healthy>_2"
    with pytest.raises(InputError, match="max_images=9 but only 4"):
        train_embedding(foundation, sample, "No Finding", 1, 9, {"steps": 1, "resolution": SIZE}, out[3].parent / "x",
                        seed=0, progress=False)


class _TinyNet(torch.nn.Module):
    def __init__(self, n):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.ReLU())
        self.classifier = torch.nn.Linear(8, n)


def test_sweep_point_fid(foundation, embeddings, tmp_path, monkeypatch):
    sample, out = embeddings
    labels = ["No Finding", "Pleural Effusion"]
    clf = ReferenceClassifier(_TinyNet(2), labels, {l: 0.5 for l in labels}, image_size=SIZE, source="tests/tiny")
    monkeypatch.setattr("cxrgen.studies.dewilde.load_reference_classifier", lambda spec: clf)
    point = {"table": "table2", "sweep": "embedding size", "class": "No Finding", "steps": 2, "cfg_scale": 2.0,
             "embedding_size": 3, "training_cases": 3}
    frame = run_sweep_point(foundation, out[3], sample, "unused", tmp_path / "set", tmp_path / "fid.csv", point,
                            n_generated=3, n_real=3, seed=0, batch_size=3, progress=False,
                            features_npz=tmp_path / "features.npz")
    row = frame.iloc[0]
    from cxrgen.metrics.fid import frechet_distance

    with np.load(tmp_path / "features.npz") as z:  # the features behind the FID (paired bootstraps of findings)
        assert z["real"].shape[0] == 3 and z["fake"].shape[0] == 3
        assert frechet_distance(z["real"], z["fake"]) == pytest.approx(row["fid"], rel=1e-4)
    assert row["n_real"] == 3 and row["n_fake"] == 3 and np.isfinite(row["fid"]) and row["fid"] > 0
    assert row["fid_ci_low"] <= row["fid_ci_high"] and np.isfinite(row["kid"]) and row["fid_biased"]  # 3 < 8 features
    assert row["extractor"].startswith("reference") and (tmp_path / "set" / "manifest.csv").is_file()
    assert pd.read_csv(tmp_path / "fid.csv").loc[0, "embedding_size"] == 3


# ------------------------------------------------------------------------------------------------ ResNet-18 study
def _split(prefix, patients, n=6):
    rng = np.random.default_rng(len(prefix))
    lab = np.array([0, 1] * (n // 2))
    man = pd.DataFrame({"patient_id": [f"{prefix}{p}" for p in patients][:n], "class_label":
                        np.where(lab == 1, "Pleural Effusion", "No Finding")})
    images = (rng.integers(0, 50, (n, 16, 16)) + 150 * lab[:, None, None]).astype(np.uint8)
    return images, man


def test_study_splits_are_patient_disjoint():
    train, val, test = _split("a", range(6)), _split("b", range(6)), _split("c", range(6))
    splits = study_splits(train, val, test, "Pleural Effusion")
    check_patient_disjoint({k: splits[k][2] for k in ("train", "val", "test")})
    assert splits["dropped"] == {"val": 0, "test": 0}
    # a test patient also in training is dropped from the test set, never shared
    images, man = _split("c", range(6))
    man.loc[0, "patient_id"] = "a0"
    man.loc[1, "patient_id"] = "a1"
    splits = study_splits(train, val, (images, man), "Pleural Effusion")
    assert splits["dropped"]["test"] == 2 and len(splits["test"][1]) == 4
    assert not set(splits["test"][2]["patient_id"]) & set(splits["train"][2]["patient_id"])
    with pytest.raises(InputError, match="share 1 patient"):
        check_patient_disjoint({"train": train[1], "test": man.iloc[:1]})
    with pytest.raises(InputError, match="expected both"):
        study_splits(train, (val[0][:1], val[1][:1]), test, "Pleural Effusion")


def test_table4_configurations_and_training():
    confs = table4_configurations(25, [25, 100], default_cases=25, few_cases=5)
    assert [(c["real_per_class"], c["synthetic_per_class"], c["embedding_cases"]) for c in confs] == [
        (25, 0, None), (0, 25, 25), (0, 100, 25), (25, 25, 25), (25, 100, 25), (0, 100, 5), (25, 100, 5)]
    x, man = _split("a", range(8), n=8)
    y = (man["class_label"] == "Pleural Effusion").astype(int).to_numpy()
    cfg = ResNetStudyConfig.from_dict({"steps": 2, "batch_size": 4, "eval_every": 1, "image_size": 16})
    res = train_and_evaluate(x, y, x, y, x, y, cfg, seed=0)
    assert 0.0 <= res["test_auc"] <= 1.0 and res["best_step"] in (1, 2) and res["n_train"] == 8
    assert build_resnet18(None).fc.out_features == 1
    with pytest.raises(InputError, match="not in the local torch hub cache|expected one of"):
        build_resnet18("NOT_A_WEIGHTS_NAME")
    with pytest.raises(InputError, match="unknown ResNet-18 study settings"):
        ResNetStudyConfig.from_dict({"epochs": 3})
    xb = torch.rand(4, 3, 16, 16)
    a1 = augment(xb, torch.Generator().manual_seed(0))
    a2 = augment(xb, torch.Generator().manual_seed(0))
    assert torch.equal(a1, a2) and a1.shape == xb.shape and not torch.equal(a1, xb)


def test_table4_summary_beside_paper():
    rows = []
    for seed, auc in ((0, 0.6), (1, 0.8)):
        rows.append(pd.DataFrame([
            {"seed": seed, "real_cases": 50, "synthetic_cases": 0, "synthetic_embedding_cases": None, "test_auc": auc,
             "best_val_auc": auc, "n_test": 30, "n_test_positive": 15},
            {"seed": seed, "real_cases": 0, "synthetic_cases": 200, "synthetic_embedding_cases": 5,
             "test_auc": auc - 0.1, "best_val_auc": auc, "n_test": 30, "n_test_positive": 15}]))
    summary = summarise_table4(rows)
    real = summary[summary.synthetic_cases == 0].iloc[0]
    assert real["auc_mean"] == pytest.approx(0.7) and real["auc_sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    out, meta = table4_beside_paper(summary, default_cases=25)
    assert meta["table_number"] == 4
    row = out.set_index("configuration").loc["real only"]
    assert row["AUC (paper)"] == "0.780 ± 0.017" and row["AUC (this run)"] == "0.700 ± 0.141"
    assert row["test positives / negatives (this run)"] == "15 / 15" and row["note (this run)"] == ""
    strict = table4_beside_paper(summary, default_cases=25, min_class_count=20)[0].set_index("configuration")
    assert strict.loc["real only", "note (this run)"] == "too few test cases for a CI: 15 positives and 15 negatives < 20"
    few = out.set_index("configuration").loc["synthetic (large, few-case embedding)"]
    assert few["synthetic_cases (paper)"] == 2000 and few["synthetic_cases (this run)"] == 200


def test_resnet_study_reads_its_splits_from_disk_with_the_same_result(tmp_path, monkeypatch):
    """A split given as FolderImages is read as the study uses it (subsets stay on disk) and trains exactly as
    the same images given as arrays."""
    from test_sampling import _folder

    from cxrgen.data import sampling
    from cxrgen.studies.dewilde import dewilde_crop_image, real_class_images

    def dewilde_crop(images):
        return np.stack([dewilde_crop_image(im) for im in images])

    arrays = {"train": _split("a", range(8), n=8), "val": _split("b", range(6)), "test": _split("c", range(6))}
    arrays["train"][0][:, :2] = 0  # a border the de Wilde crop removes
    on_disk = {k: (sampling.FolderImages(_folder(tmp_path / k, x, **m.to_dict("list"))).map(dewilde_crop_image), m)
               for k, (x, m) in arrays.items()}
    reads = []
    original = sampling.load_grayscale
    monkeypatch.setattr(sampling, "load_grayscale", lambda path: reads.append(path) or original(path))
    from_disk = study_splits(*on_disk.values(), "Pleural Effusion")
    assert reads == []
    in_memory = study_splits(*((dewilde_crop(x), m) for x, m in arrays.values()), "Pleural Effusion")
    cfg = ResNetStudyConfig.from_dict({"steps": 2, "batch_size": 4, "eval_every": 1, "image_size": 16})
    results = []
    for splits in (from_disk, in_memory):
        (xt, yt, _), (xv, yv, _), (xs, ys, _) = splits["train"], splits["val"], splits["test"]
        results.append(train_and_evaluate(np.asarray(xt), yt, xv, yv, xs, ys, cfg, seed=0))
    assert results[0]["losses"] == results[1]["losses"] and results[0]["test_auc"] == results[1]["test_auc"]
    # the sweep's real images: only the chosen ones are read
    reads.clear()
    chosen = real_class_images(tmp_path / "test", "Pleural Effusion", 2, seed=0)
    assert chosen.shape == (2, 16, 16) and len(reads) == 2
