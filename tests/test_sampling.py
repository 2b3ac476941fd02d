import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrgen.data import sampling
from cxrgen.data.preprocess import crop_nonzero_pad, load_grayscale, preprocess, resize_shortest_center_crop
from cxrgen.data.prompts import zafar_prompt
from cxrgen.data.schema import CHEXPERT_LABELS, COLUMNS, apply_label_policy, validate_table
from cxrgen.errors import InputError


def make_table(tmp_path, n=60, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = (rng.random((40, 50)) * 255).astype(np.uint8)
        path = tmp_path / f"img{i}.png"
        Image.fromarray(img).save(path)
        labels = {l: math.nan for l in CHEXPERT_LABELS}
        kind = i % 3
        if kind == 0:
            labels["No Finding"] = 1.0
        elif kind == 1:
            labels["Pleural Effusion"] = 1.0
        else:
            labels["Pleural Effusion"] = 1.0
            labels["Cardiomegaly"] = -1.0
        rows.append(
            dict(source="t", image_id=f"i{i}", image_path=str(path), patient_id=f"p{i // 3}", study_id=f"s{i}",
                 view="AP" if i % 2 else "PA", sex="F" if i % 2 else "M", age=40.0 + i, study_date="2015-01-01",
                 findings="f", impression="imp", **labels)
        )
    return validate_table(pd.DataFrame(rows), "fixture")


def test_label_policy_maps_uncertain_and_blank():
    df = pd.DataFrame({c: [""] * 3 for c in COLUMNS})
    for l in CHEXPERT_LABELS:
        df[l] = [1.0, -1.0, math.nan]
    pos = apply_label_policy(df, "positive", "negative")
    assert pos["Edema"].tolist() == [1.0, 1.0, 0.0]
    neg = apply_label_policy(df, "negative", "ignore")
    assert neg["Edema"].tolist()[:2] == [1.0, 0.0] and math.isnan(neg["Edema"].iloc[2])
    with pytest.raises(InputError, match="uncertain"):
        apply_label_policy(df, "maybe")


def test_validate_table_names_bad_label_column():
    df = pd.DataFrame({c: ["x"] for c in COLUMNS})
    for l in CHEXPERT_LABELS:
        df[l] = [0.0]
    df["Edema"] = [2.0]
    with pytest.raises(InputError, match="'Edema'.*expected 1"):
        validate_table(df, "labels.csv")


def test_patient_split_is_disjoint_and_deterministic(tmp_path):
    table = make_table(tmp_path)
    a = sampling.patient_split(table, {"train": 0.6, "validate": 0.2, "test": 0.2}, seed=1)
    b = sampling.patient_split(table, {"train": 0.6, "validate": 0.2, "test": 0.2}, seed=1)
    assert a.equals(b)
    sampling.check_patient_disjoint(table.assign(split=a))
    assert set(a) <= {"train", "validate", "test"} and a.nunique() >= 2
    leaked = table.assign(split=["train"] * 59 + ["test"])
    with pytest.raises(InputError, match="more than one split"):
        sampling.check_patient_disjoint(leaked)
    with pytest.raises(InputError, match="sum to 1"):
        sampling.patient_split(table, {"train": 0.9, "test": 0.2}, seed=0)


def test_few_shot_takes_sole_findings_and_is_reproducible(tmp_path):
    table = make_table(tmp_path)
    shot = sampling.few_shot(table, ["No Finding", "Pleural Effusion"], 4, seed=3)
    assert (shot["class_label"] == "No Finding").sum() == 4
    effusion = shot[shot["class_label"] == "Pleural Effusion"]
    # rows with an additional (uncertain) Cardiomegaly are not "sole finding" before the policy either
    assert (effusion["Cardiomegaly"].isna()).all()
    assert shot.equals(sampling.few_shot(table, ["No Finding", "Pleural Effusion"], 4, seed=3))
    with pytest.raises(InputError, match="only .* eligible"):
        sampling.few_shot(table, ["No Finding"], 1000, seed=0)
    with pytest.raises(InputError, match="unknown label"):
        sampling.few_shot(table, ["Broken Heart"], 1, seed=0)


def test_materialise_writes_manifest_and_handles_bad_images(tmp_path):
    table = make_table(tmp_path, n=6)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    table.loc[2, "image_path"] = str(bad)
    out = tmp_path / "sample"
    with pytest.raises(InputError, match="bad.jpg"):
        sampling.materialise(table, out, "chambon", 16, progress=False)
    assert not out.exists(), "a failed materialisation must leave nothing behind"
    manifest = sampling.materialise(table, out, "chambon", 16, on_bad_image="skip", progress=False)
    assert len(manifest) == 5
    assert pd.read_csv(out / "skipped.csv")["image_id"].tolist() == ["i2"]
    images, back = sampling.load_images(out)
    assert images.shape == (5, 16, 16) and back["prompt"].iloc[0].startswith("a photo of a lung xray")


def test_preprocessing_variants(tmp_path):
    arr = np.zeros((60, 40), np.uint8)
    arr[10:50, 5:25] = 200
    out = crop_nonzero_pad(arr, 32)
    assert out.shape == (32, 32)
    # crop to 40x20 content, longest edge -> 32, width 16 centred, zero padding either side
    assert out[:, :8].max() == 0 and out[:, 24:].max() == 0 and out[:, 8:24].min() > 150
    crop = resize_shortest_center_crop(np.tile(np.arange(80, dtype=np.uint8), (40, 1)), 20)
    assert crop.shape == (20, 20) and 15 <= crop[0, 0] <= 25 and 55 <= crop[0, -1] <= 65  # 20 px cut from each side
    with pytest.raises(InputError, match="unknown preprocessing"):
        preprocess(arr, "fancy", 32)
    with pytest.raises(InputError, match="all pixels zero"):
        crop_nonzero_pad(np.zeros((8, 8), np.uint8), 4)
    png16 = tmp_path / "x16.png"
    Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(png16)
    loaded = load_grayscale(png16)
    assert loaded.dtype == np.uint8 and loaded.min() == 0 and loaded.max() == 255
    with pytest.raises(InputError, match="does not exist"):
        load_grayscale(tmp_path / "missing.png")


def test_zafar_prompt_levels_and_missing_fields():
    row = pd.Series({"sex": "M", "age": 47.0, "view": "PA", "projection": "PA", "modality": "DX",
                     "labels_localizations": "", "Pleural Effusion": 1.0})
    assert zafar_prompt(row) == "chest x-ray, age 47 male, view PA, projection PA, modality DX, diagnosis pleural effusion"
    assert zafar_prompt(row, "modality") == "chest x-ray"
    assert zafar_prompt(row, "age_sex") == "chest x-ray, age 47 male"
    sparse = pd.Series({"sex": "", "age": math.nan, "view": "AP"})
    assert zafar_prompt(sparse) == "chest x-ray, view AP, projection AP, modality DX, diagnosis normal"
    padchest = row.copy()
    padchest["labels_localizations"] = "[['calcified granuloma', 'loc right upper lobe'], ['normal'], ['normal']]"
    assert zafar_prompt(padchest).endswith("diagnosis calcified granuloma, loc right upper lobe, normal")
    with pytest.raises(InputError, match="prompt level"):
        zafar_prompt(row, "expert")


def test_data_summary_counts_and_grid(tmp_path):
    from cxrgen.data.summary import label_counts, write_data_summary

    table = apply_label_policy(make_table(tmp_path), "positive", "negative")
    table["split"] = ["train" if i % 4 else "test" for i in range(len(table))]
    counts = label_counts(table).set_index("split")
    assert counts.loc["all", "images"] == 60 and counts.loc["all", "patients"] == 20
    assert counts.loc["all", "Pleural Effusion"] == 40 and counts.loc["all", "Cardiomegaly"] == 20
    assert counts.loc["test", "images"] + counts.loc["train", "images"] == 60
    write_data_summary(table, tmp_path / "counts.csv", tmp_path / "grid.png", "miniature", seed=0, per_finding=3, size=32)
    assert pd.read_csv(tmp_path / "counts.csv").shape[0] == 3
    # rows: No Finding and Pleural Effusion as sole finding (the third kind has Cardiomegaly too)
    assert Image.open(tmp_path / "grid.png").size[0] > 100 and (tmp_path / "grid.pdf").is_file()


def _folder(tmp_path, images, **columns):
    """A materialised folder (PNG files + manifest.csv) holding ``images``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    files = [f"{i}.png" for i in range(len(images))]
    for f, im in zip(files, images):
        Image.fromarray(im).save(tmp_path / f)
    pd.DataFrame({"file": files, **columns}).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path


def test_folder_images_read_only_what_is_used(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    folder = _folder(tmp_path / "s", arr, image_id=[f"i{i}" for i in range(6)])
    reads = []
    original = sampling.load_grayscale
    monkeypatch.setattr(sampling, "load_grayscale", lambda path: reads.append(path.name) or original(path))
    images = sampling.FolderImages(folder)
    assert len(images) == 6 and reads == []
    assert images.shape == (6, 8, 8) and images.dtype == np.uint8 and images.ndim == 3
    assert np.array_equal(images[-1], arr[5]) and np.array_equal(images[1:3], arr[1:3])
    assert np.array_equal(images[np.array([True, False] * 3)], arr[::2])
    reads.clear()
    subset = np.take(images, [4, 1], axis=0)  # a view: nothing read yet
    assert reads == [] and list(subset.manifest["image_id"]) == ["i4", "i1"]
    flipped = subset.map(lambda im: im[:, ::-1])
    assert np.array_equal(np.asarray(flipped), arr[[4, 1]][:, :, ::-1]) and sorted(reads) == ["1.png", "4.png"]
    assert np.array_equal(np.asarray(images), sampling.load_images(folder)[0])
    with pytest.raises(IndexError):
        images[6]
    with pytest.raises(IndexError):
        np.take(images, [7], axis=0)
