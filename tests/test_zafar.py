"""Zafar et al. study: structured prompts (real PadChest rows), controllability prompts, classifiers, evaluation,
rendering."""

import csv
import gzip
import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrgen.adapt.dreambooth_lora import DreamBoothLoRAConfig, train_lora
from cxrgen.adapt.full_finetune import FullFinetuneConfig, train_full
from cxrgen.adapt.pipeline import load_adapted_pipeline
from cxrgen.classify.reference import ReferenceClassifier
from cxrgen.data.prompts import ZAFAR_STYLES, padchest_prompt_fields, zafar_prompt
from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError
from cxrgen.models.foundation import FoundationConfig, build_foundation
from cxrgen.classify import head_classifiers as heads
from cxrgen.models.corpus import parse_corpus_prompt
from cxrgen.sampling.synthetic_sets import load_zafar_set
from cxrgen.studies import zafar
from threads import TEST_THREADS

PADCHEST = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


def _padchest_rows(n=20):
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / PADCHEST
    with gzip.open(path, "rt") as f:
        reader = csv.DictReader(f)
        return [row for _, row in zip(range(n), reader)]


def test_prompts_from_real_padchest_rows():
    rows = _padchest_rows()
    first = rows[0]  # 20536686640136348236148679891455886468_k6ga29.png: F, born 1930, study 2014-09-15, PA, CR
    assert first["ImageID"].startswith("20536686640136348236148679891455886468")
    fields = padchest_prompt_fields(first)
    assert fields["age"] == 84.0 and fields["sex"] == "F" and fields["view_position"] == "PA"
    assert zafar_prompt(pd.Series(fields)) == ("chest x-ray, age 84 female, view PA, projection PA, modality CR, "
                                               "diagnosis normal")
    lateral = padchest_prompt_fields(rows[1])  # ViewPosition_DICOM LATERAL, Projection L, localised findings
    text = zafar_prompt(pd.Series(lateral))
    assert text.startswith("chest x-ray, age 86 male, view LATERAL, projection L, modality CR, diagnosis ")
    assert "pulmonary fibrosis, loc basal bilateral" in text and "'" not in text and "[" not in text
    for level in ZAFAR_STYLES:  # every level works on every real row, never prints nan/None
        for r in rows:
            p = zafar_prompt(pd.Series(padchest_prompt_fields(r)), level)
            assert p.startswith("chest x-ray") and "nan" not in p and "None" not in p
    assert zafar_prompt(pd.Series(fields), "modality") == "chest x-ray"
    assert zafar_prompt(pd.Series(fields), "age_sex") == "chest x-ray, age 84 female"
    assert zafar_prompt(pd.Series(fields), "compact") == "chest x-ray, female PA, normal"
    # missing fields: no birth year, sex 'O', no view position, no modality, no localisations -> omitted
    broken = dict(first, PatientBirth="", PatientSex_DICOM="O", ViewPosition_DICOM="", Modality_DICOM="",
                  LabelsLocalizationsBySentence="")
    f2 = padchest_prompt_fields(broken)
    assert np.isnan(f2["age"]) and f2["sex"] is None
    row = pd.Series({**f2, "view": "PA", "No Finding": 1.0})  # the loader's view (from Projection) is the fallback
    assert zafar_prompt(row) == "chest x-ray, view PA, projection PA, diagnosis normal"
    assert np.isnan(padchest_prompt_fields(dict(first, StudyDate_DICOM="garbage"))["age"])


def test_attribute_prompts_differ_in_one_attribute_only():
    p = zafar.attribute_prompts("full")
    assert p["sex_M"]["prompt"] == "chest x-ray, age 60 male, view PA, projection PA, modality DX, diagnosis normal"
    assert p["sex_F"]["prompt"] == p["sex_M"]["prompt"].replace("male", "female")
    assert p["view_AP"]["prompt"] == p["sex_M"]["prompt"].replace("PA", "AP")
    assert p["finding_pleural-effusion"]["prompt"].endswith("diagnosis pleural effusion")
    assert {v["positive"] for v in p.values()} == {0, 1} and len(p) == 6
    c = zafar.attribute_prompts("compact")
    assert c["view_AP"]["prompt"] == "chest x-ray, male AP, normal"
    m = zafar.attribute_prompts("modality")  # "chest x-ray" carries no attribute: the pairs coincide
    assert m["sex_M"]["prompt"] == m["sex_F"]["prompt"] == "chest x-ray"
    assert parse_corpus_prompt("a photo of a small red circle at the top left") == ("red", "circle")
    with pytest.raises(InputError, match="colour and shape"):
        parse_corpus_prompt("a bird sitting on a tree")
    with pytest.raises(InputError, match="prompt level"):
        zafar.attribute_prompts("fancy")


class _CharTokenizer:
    """One token per character plus start/end (a stand-in with a known count)."""
    model_max_length = 45

    def __call__(self, text):
        return type("Enc", (), {"input_ids": [0] * (len(text) + 2)})()


def test_compact_prompt_fits_the_context():
    from cxrgen.adapt.dreambooth_lora import fit_zafar_prompts, prompt_token_stats

    many = {label: np.nan for label in CHEXPERT_LABELS}
    many.update({"sex": "M", "view": "PA", "Atelectasis": 1.0, "Edema": 1.0, "Pleural Effusion": 1.0})
    one = {**{label: np.nan for label in CHEXPERT_LABELS}, "sex": "F", "view": "AP", "Edema": 1.0}
    rows = pd.DataFrame([many, one])
    assert zafar_prompt(rows.iloc[0], "compact") == "chest x-ray, male PA, atelectasis, edema, pleural effusion"
    assert zafar_prompt(rows.iloc[0], "compact", max_findings=2) == "chest x-ray, male PA, atelectasis, edema"
    with pytest.raises(InputError, match="compact"):
        zafar_prompt(rows.iloc[0], "full", max_findings=1)
    tok = _CharTokenizer()
    prompts, dropped = fit_zafar_prompts(rows, "compact", tok)
    # 60 tokens > 45: pleural effusion goes (42 tokens left); the one-finding prompt (31) stays whole
    assert prompts == ["chest x-ray, male PA, atelectasis, edema", "chest x-ray, female AP, edema"] and dropped == [1, 0]
    assert all(len(tok(p).input_ids) <= tok.model_max_length for p in prompts)
    stats = prompt_token_stats(tok, prompts, dropped)
    assert stats["truncated_share"] == 0 and stats["findings_dropped_share"] == 0.5 and stats["max_tokens"] == 42
    full, full_dropped = fit_zafar_prompts(rows, "full", tok)  # the paper's levels are never shortened
    assert full[0].endswith("diagnosis atelectasis, edema, pleural effusion") and full_dropped == [0, 0]
    tok.model_max_length = 30  # not even one finding fits: kept (35 and 31 tokens), and counted as truncated
    prompts, dropped = fit_zafar_prompts(rows, "compact", tok)
    assert prompts[0] == "chest x-ray, male PA, atelectasis" and dropped == [2, 0]
    assert prompt_token_stats(tok, prompts)["truncated_share"] == 1.0


def test_degrade_like_generator_blurs_and_shifts_the_shape_colour():
    from cxrgen.models.corpus import COLOURS

    img = np.full((4, 64, 64, 3), 245, np.uint8)  # white background, a blue square
    img[:, 20:44, 20:44] = COLOURS["blue"]
    a, b = heads.degrade_like_generator(img, seed=3), heads.degrade_like_generator(img, seed=3)
    assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, heads.degrade_like_generator(img, seed=4))
    def edge(x):  # the square's edge step
        return np.abs(np.diff(x.astype(float), axis=2)).max(axis=(1, 2, 3))

    assert (edge(a) < edge(img)).all()
    inside = a[:, 28:36, 28:36].reshape(4, -1, 3).mean(1)
    assert (inside[:, 2] > inside[:, 0] + 40).all()  # still blue, but not the palette's exact value
    assert np.abs(inside - np.array(COLOURS["blue"])).max() > 5
    assert np.abs(a[:, :8, :8].astype(float) - 245).mean() < 40  # background only tinted
    with pytest.raises(InputError, match="N, H, W, 3"):
        heads.degrade_like_generator(img[..., 0])


def test_ood_recognition_and_retained_knowledge():
    classes = {"colour": ["red", "blue", "green"], "shape": ["circle", "square"]}
    ood = pd.DataFrame({"prompt": ["a photo of a red circle"] * 3 + ["a photo of a blue square"] * 3,
                        "colour": ["red"] * 3 + ["blue"] * 3, "shape": ["circle"] * 3 + ["square"] * 3})
    def onehot(idx, n):
        return np.eye(n)[idx] * 0.8 + 0.2 / n

    perfect = {"colour": onehot([0, 0, 0, 1, 1, 1], 3), "shape": onehot([0, 0, 0, 1, 1, 1], 2)}
    rows, s = zafar.ood_recognition(perfect, ood, classes)
    assert s["colour_share"] == s["recognised_share"] == 1.0 and s["colour_auc"] == 1.0 and len(rows) == 2
    # the same red picture for every prompt: half the colour "recognised" by chance, but AUC at chance
    same = {"colour": onehot([0] * 6, 3), "shape": onehot([0] * 6, 2)}
    rows, s = zafar.ood_recognition(same, ood, classes)
    assert s["colour_share"] == 0.5 and s["colour_auc"] == 0.5 and rows[0]["colour_share"] == 1.0
    _, s = zafar.ood_recognition({k: v[:3] for k, v in perfect.items()}, ood.iloc[:3], classes)  # one colour: no AUC
    assert np.isnan(s["colour_auc"]) and s["colour_share"] == 1.0
    m = pd.DataFrame({"model": ["foundation", "a", "b"], "colour_auc": [0.9, 0.7, 0.5]})
    assert list(zafar.retained_vs(m, "foundation").round(6)) == [1.0, 0.5, 0.0]
    m.loc[0, "colour_auc"] = 0.5
    assert zafar.retained_vs(m, "foundation").isna().all()


def test_corpus_classifier_learns_colours(tmp_path):
    meta = heads.train_corpus_classifier(tmp_path / "corpus", n_images=300, epochs=5, batch_size=32, image_size=32,
                                         augment_copies=1)
    assert meta["val_accuracy"]["colour"] > 0.4  # 9 colours: chance ~0.11
    assert meta["val_accuracy_degraded"]["colour"] > 0.3 and meta["n_train"] == 2 * meta["n_train_distinct"]
    with pytest.raises(InputError, match="augment_copies"):
        heads.train_corpus_classifier(tmp_path / "x", n_images=40, augment_copies=-1)
    clf = heads.load_head_classifier(tmp_path / "corpus")
    from cxrgen.models.card import read_model_card

    card = read_model_card(tmp_path / "corpus")
    assert card["cxrgen_artefact"] == "head_classifier" and card["data"]["n_images"] == meta["n_train"]
    assert card["metrics"]["val_accuracy"] == meta["val_accuracy"] and card["training_config"]["epochs"] == 5
    p = clf.predict([np.zeros((32, 32, 3), np.uint8)])
    assert p["colour"].shape == (1, 9) and np.allclose(p["colour"].sum(1), 1)
    with pytest.raises(InputError, match="classifier.json"):
        heads.load_head_classifier(tmp_path)


# ------------------------------------------------------------------------------------------------ end to end
SIZE = 32


def _write_sample(folder, n, seed):
    """Images whose brightness carries sex (F brighter) and a bar carries view (AP), with the manifest columns."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        sex, view = ("F" if i % 2 else "M"), ("AP" if (i // 2) % 2 else "PA")
        img = rng.integers(0, 60, (SIZE, SIZE)) + (120 if sex == "F" else 40)
        if view == "AP":
            img[:, :6] = 250
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / "images" / f"{i}.png")
        rows.append({"image_id": f"img{i:03d}", "file": f"images/{i}.png", "sex": sex, "view": view, "age": 40 + i,
                     **{label: np.nan for label in CHEXPERT_LABELS},
                     "No Finding": 1.0 if i % 3 else np.nan, "Pleural Effusion": np.nan if i % 3 else 1.0})
    pd.DataFrame(rows).to_csv(folder / "manifest.csv", index=False)
    return folder


class _TinyNet(torch.nn.Module):
    def __init__(self, n_labels):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 16, 3, stride=2))
        self.classifier = torch.nn.Linear(16, n_labels)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(TEST_THREADS)
    root = tmp_path_factory.mktemp("zafar")
    foundation = root / "foundation"
    build_foundation(FoundationConfig.preset("smoke", n_images=48, vae_steps=4, unet_steps=4, preview_per_prompt=0),
                     foundation, progress=False)
    train = _write_sample(root / "train", 24, 0)
    test = _write_sample(root / "test", 8, 1)
    from cxrgen.data.sampling import load_images

    images, manifest = load_images(train)
    tiny = dict(resolution=SIZE, batch_size=2, num_threads=TEST_THREADS, sample_inference_steps=2, sample_steps=(0, 2),
                sample_n=1, prompt_level="compact", sample_prompts=("chest x-ray, male PA, normal",
                                                                    "a photo of a red circle"))
    prompts = [zafar_prompt(r, "compact") for _, r in manifest.iterrows()]
    adapters = {"full_ft": root / "full_ft", "lora": root / "lora"}
    train_full(foundation, images, prompts, FullFinetuneConfig(steps=2, lr=1e-2, **tiny), adapters["full_ft"],
               progress=False)
    train_lora(foundation, images, prompts, DreamBoothLoRAConfig(steps=2, lr=5e-2, prior_preservation=False, **tiny),
               adapters["lora"], progress=False)
    sets = {}
    real_manifest = load_images(test)[1]
    for name, folder in (("foundation", None), *adapters.items()):
        pipe = load_adapted_pipeline(foundation, folder, device="cpu")
        zafar.sample_zafar_sets(pipe, root / "sets" / name, real_manifest, name, seed=5, prompt_level="compact",
                                n_fid=4, n_per_prompt=3, n_ood=2, steps=2, batch_size=16,
                                ood_prompts=("a photo of a red circle", "a photo of a blue square"))
        sets[name] = root / "sets" / name
    heads.train_attribute_classifier(train, test, root / "attr", epochs=4, batch_size=8, image_size=SIZE)
    heads.train_corpus_classifier(root / "corpus", n_images=120, epochs=1, batch_size=32, image_size=SIZE,
                                  augment_copies=1)
    return dict(root=root, foundation=foundation, train=train, test=test, adapters=adapters, sets=sets)


def test_sample_sets_are_paired_and_complete(world):
    imgs, man = load_zafar_set(world["sets"]["lora"])
    assert list(man["part"].value_counts().sort_index()) == [3 * 6, 4, 2 * 2]  # attribute, fid, ood
    assert imgs[man.index[man["part"] == "ood"][0]].ndim == 3  # out-of-domain images keep colour
    att = man[man["part"] == "attribute"]
    assert (att.groupby("prompt_name")["seed"].apply(list).apply(lambda s: s == [5, 6, 7])).all()
    fid = man[man["part"] == "fid"]
    assert list(fid["real_image_id"]) == ["img000", "img001", "img002", "img003"]
    assert fid["prompt"].iloc[0] == "chest x-ray, male PA, pleural effusion"


def test_attribute_classifier_learns_the_cues(world):
    meta = json.loads((world["root"] / "attr" / "classifier.json").read_text())
    assert meta["val_auc"]["sex"] > 0.8 and meta["val_auc"]["view"] > 0.8


def test_evaluation_and_rendering(world, tmp_path, monkeypatch):
    labels = ["No Finding", "Pleural Effusion"]
    clf = ReferenceClassifier(_TinyNet(2), labels, {l: 0.5 for l in labels}, image_size=SIZE, source="tests/tiny")
    monkeypatch.setattr(zafar, "load_reference_classifier", lambda spec: clf)
    adapters = {"foundation": None, **world["adapters"]}
    frames = zafar.evaluate_zafar(world["sets"], adapters, world["test"], "tiny", world["root"] / "attr",
                                  world["root"] / "corpus", tmp_path / "eval", n_boot=10, fid_n_boot=20,
                                  min_class_count=4)
    m = frames["methods"].set_index("model")
    assert m.loc["foundation", "trainable_params"] == 0 and m["colour_auc"].between(0, 1).all()
    base = m.loc["foundation", "colour_auc"]
    assert m.loc["foundation", "retained_vs_foundation"] == 1.0 if base > 0.5 else m["retained_vs_foundation"].isna().all()
    if base > 0.5:
        assert np.allclose(m["retained_vs_foundation"], (m["colour_auc"] - 0.5) / (base - 0.5))
    assert m.loc["full_ft", "artefact_bytes"] > 5 * m.loc["lora", "artefact_bytes"] > 0
    assert m.loc["full_ft", "trainable_params"] > 5 * m.loc["lora", "trainable_params"]
    from cxrgen.data.sampling import load_images

    assert np.isfinite(m["fid"]).all() and (m["n_fake"] == 4).all() and (m["n_real"] == len(load_images(world["test"])[1])).all()
    assert (m["fid_ci_low"] <= m["fid_ci_high"]).all() and m["kid_ci_low"].notna().all() and (m["n_boot"] == 20).all()
    c = frames["controllability"]
    assert set(c["attribute"]) == {"sex", "view", "finding"} and len(c) == 9 and c["prompts_differ"].all()
    assert c["auc"].between(0, 1).all()
    # 3 images per prompt < min_class_count 4: no CI, and the reason
    assert c["auc_ci_low"].isna().all() and (c["ci_note"] == "CI omitted: 3 positives and 3 negatives < 4").all()
    f = frames["forgetting"]
    assert set(f["model"]) == set(world["sets"]) and f["both_share"].between(0, 1).all() and len(f) == 3 * 2
    assert f["colour_auc"].between(0, 1).all() and (f.groupby("model")["colour_auc"].mean().round(9)
                                                    == m["colour_auc"].round(9).reindex(f["model"].unique())).all()
    from sklearn.metrics import roc_auc_score

    ood = frames["ood_scores"]  # per image (read by the findings table): gives the colour AUC of the methods frame
    assert (tmp_path / "eval" / "ood_scores.csv").is_file() and len(ood) == len(world["sets"]) * 2 * 2
    for model, grp in ood.groupby("model"):
        aucs = [roc_auc_score(grp["colour"] == c, grp[f"p_colour:{c}"]) for c in grp["colour"].unique()]
        assert np.mean(aucs) == pytest.approx(m.loc[model, "colour_auc"])
    stems = {k: tmp_path / f"zafar2023_{k}" for k in ("methods", "prompts", "step_grid", "samples")}
    paths = zafar.render_zafar(tmp_path / "eval", world["sets"], world["adapters"], world["train"], stems,
                               paper_runs={"full_ft": "full_ft_325", "lora": "dreambooth_lora_960"},
                               foundation=world["foundation"])
    table = pd.read_csv(paths["methods"]["csv"])
    assert list(table["model"]) == ["foundation", "full_ft", "lora"]
    row = table.set_index("model").loc["lora"]
    assert row["train images (paper)"] == 960 and row["sex AUC (this run)"].endswith("(CI omitted: 3 positives and 3 negatives < 4)")
    assert "[" in row["FID (this run)"] and "[" in row["KID (this run)"] and row["n real / generated (this run)"].endswith(" / 4")
    assert {"OOD colour recognised (this run)", "OOD shape recognised (this run)", "OOD colour AUC (this run)",
            "retained vs foundation (this run)", "prompts with findings dropped (this run)"} <= set(table.columns)
    assert "Retained vs foundation uses colour" in paths["methods"]["md"].read_text()
    assert "Paper numbers are from zafar2023" in paths["methods"]["md"].read_text()
    prompts = pd.read_csv(paths["prompts"]["csv"])
    assert set(prompts["level"]) == set(ZAFAR_STYLES) and (prompts["tokens"] > 0).all()
    compact = prompts[prompts["level"] == "compact"]
    assert (compact["tokens"] <= compact["context"]).all() and "findings_dropped" in prompts.columns
    for key in ("step_grid", "samples"):
        assert paths[key]["png"].is_file() and paths[key]["pdf"].is_file()
    with pytest.raises(InputError, match="paper_run"):
        zafar.methods_table(tmp_path / "eval", {"lora": "no_such_run"})
