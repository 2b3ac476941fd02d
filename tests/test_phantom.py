"""Phantom MIMIC-CXR generator: layout, CSV headers, label/report consistency, findings visibility, determinism."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrgen.data import phantom
from cxrgen.data.phantom import (
    PhantomStudy,
    generate_generic_chest_images,
    generate_mimic_cxr,
    render_phantom,
    sample_study,
    with_labels,
)
from cxrgen.data.reports import MENTION_PATTERNS, NO_ACUTE_PATTERN, format_mimic_report, make_report
from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError

SIZE = 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("phantom") / "mimic"
    summary = generate_mimic_cxr(root, n_patients=10, studies_per_patient=(1, 3), image_size=SIZE, seed=3, progress=False)
    return root, summary


def _read(root: Path, name: str) -> tuple[list[str], pd.DataFrame]:
    header = (root / name).read_text().splitlines()[0].split(",")
    return header, pd.read_csv(root / name)


def test_layout_and_csv_headers(dataset):
    root, summary = dataset
    header, meta = _read(root, "mimic-cxr-2.0.0-metadata.csv")
    assert header == list(phantom.METADATA_COLUMNS)
    header, chex = _read(root, "mimic-cxr-2.0.0-chexpert.csv")
    assert header == ["subject_id", "study_id", *CHEXPERT_LABELS]
    header, split = _read(root, "mimic-cxr-2.0.0-split.csv")
    assert header == ["dicom_id", "study_id", "subject_id", "split"]
    header, patients = _read(root, "patients.csv")
    assert header == ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"]
    assert len(patients) == 10 and set(patients["gender"]) <= {"M", "F"}
    assert len(meta) == len(summary) == len(chex) == len(split)
    assert set(meta["ViewPosition"]) <= {"AP", "PA"}
    assert (meta["Rows"] == SIZE).all() and (meta["Columns"] == SIZE).all()
    assert meta["StudyDate"].astype(str).str.fullmatch(r"2\d{7}").all()
    for row in meta.itertuples():
        sub, stu = str(row.subject_id), str(row.study_id)
        assert re.fullmatch(r"1\d{7}", sub) and re.fullmatch(r"5\d{7}", stu)
        assert re.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}", row.dicom_id) and len(row.dicom_id) == 44
        image = root / "files" / f"p{sub[:2]}" / f"p{sub}" / f"s{stu}" / f"{row.dicom_id}.jpg"
        assert image.is_file()
        with Image.open(image) as im:
            assert im.format == "JPEG" and im.mode == "L" and im.size == (SIZE, SIZE)
        report = root / "files" / f"p{sub[:2]}" / f"p{sub}" / f"s{stu}.txt"
        text = report.read_text()
        assert text.startswith(" " * 33 + "FINAL REPORT\n EXAMINATION:  CHEST")
        assert "\n FINDINGS: \n" in text and "\n IMPRESSION: \n" in text
    # labels: only 1, 0, -1 or blank; blanks written as empty fields
    values = chex[list(CHEXPERT_LABELS)].to_numpy(dtype=float)
    assert set(np.unique(values[~np.isnan(values)])) <= {1.0, 0.0, -1.0}
    assert ",," in (root / "mimic-cxr-2.0.0-chexpert.csv").read_text()
    # nothing else at the top level (temp dirs cleaned up)
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["files", "mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-chexpert.csv", "mimic-cxr-2.0.0-split.csv", "patients.csv"]
    )
    assert not [p for p in root.parent.iterdir() if p.name.endswith(".tmp")]


def test_split_patient_disjoint(dataset):
    root, _ = dataset
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv")
    assert set(split["split"]) == {"train", "validate", "test"}
    assert (split.groupby("subject_id")["split"].nunique() == 1).all()


def _section(text: str, name: str) -> str:
    m = re.search(rf" {name}: \n(.*?)(?:\n [A-Z ]+: \n|\Z)", text, re.S)
    assert m, name
    return " ".join(m.group(1).split())


def test_labels_match_reports(dataset):
    root, summary = dataset
    chex = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv")
    for row in chex.itertuples(index=False):
        row = dict(zip(chex.columns, row))
        sub, stu = str(row["subject_id"]), str(row["study_id"])
        text = (root / "files" / f"p{sub[:2]}" / f"p{sub}" / f"s{stu}.txt").read_text()
        impression = _section(text, "IMPRESSION").lower()
        pathologies = [l for l in CHEXPERT_LABELS if l not in ("No Finding", "Support Devices") and row[l] in (1.0, -1.0)]
        assert (row["No Finding"] == 1.0) == (not pathologies)
        for label in CHEXPERT_LABELS:
            if label != "No Finding" and row[label] in (1.0, -1.0):
                assert re.search(MENTION_PATTERNS[label], impression), (label, impression)
        if row["No Finding"] == 1.0:
            assert re.search(NO_ACUTE_PATTERN, impression)
    # the summary's sections are the written ones, up to line wrapping
    row = summary.iloc[0]
    sub, stu = str(row["subject_id"]), str(row["study_id"])
    text = (root / row["report_path"]).read_text()
    assert row["report_path"] == f"files/p{sub[:2]}/p{sub}/s{stu}.txt"
    assert _section(text, "FINDINGS") == " ".join(row["findings"].split())
    assert _section(text, "IMPRESSION") == " ".join(row["impression"].split())


def test_make_report_wording():
    rng = np.random.default_rng(0)
    labels = {l: math.nan for l in CHEXPERT_LABELS}
    labels.update({"Pleural Effusion": 0.0, "Pneumothorax": 0.0, "No Finding": 1.0})
    findings, impression = make_report(labels, rng)
    assert re.search(r"no (pleural effusion or pneumothorax|pneumothorax or pleural effusion)", findings.lower())
    assert "no acute" in impression.lower()
    labels.update({"Pneumonia": -1.0, "No Finding": math.nan})
    texts = [make_report(labels, np.random.default_rng(i))[1].lower() for i in range(20)]
    assert all("pneumonia" in t for t in texts)
    assert all(re.search(r"possibl|cannot|may represent", t) for t in texts)
    assert len(set(texts)) > 2  # varied wording
    text = format_mimic_report("A.", "B.", np.random.default_rng(0), view="AP", sex="F")
    assert " EXAMINATION:  CHEST (PORTABLE AP)\n \n INDICATION:  " in text
    assert text.endswith("\n \n IMPRESSION: \n \n B.\n")
    with pytest.raises(InputError):
        make_report({"Cardiomegaly": 2.0}, rng)


def _normal(seed: int) -> PhantomStudy:
    study = sample_study(np.random.default_rng(seed), {"No Finding": 1.0})
    study.noise_level = 0.0
    return study


def test_sampling_rules_and_ctr():
    studies = [sample_study(np.random.default_rng(i)) for i in range(300)]
    nf = np.mean([s.labels["No Finding"] == 1.0 for s in studies])
    assert 0.25 < nf < 0.45
    for s in studies:
        assert list(s.labels) == list(CHEXPERT_LABELS)
        patho = [l for l in CHEXPERT_LABELS if l not in ("No Finding", "Support Devices") and s.labels[l] in (1.0, -1.0)]
        assert (s.labels["No Finding"] == 1.0) == (not patho)
        assert (s.ctr > 0.5) == (s.labels["Cardiomegaly"] in (1.0, -1.0))
    assert any(s.labels["No Finding"] == 1.0 and s.labels["Support Devices"] == 1.0 for s in studies)
    assert any(-1.0 in s.labels.values() for s in studies)


def _heart_width(img: np.ndarray, row: int) -> int:
    line = img[row].astype(float)
    return int((line > 0.5 * (line.max() + np.median(img[row - 3 : row + 3]))).sum())


def test_cardiomegaly_widens_heart():
    diffs = []
    for seed in range(5):
        base = _normal(seed)
        small = render_phantom(PhantomStudy(**{**base.__dict__, "ctr": 0.42}), 128).astype(float)
        big = render_phantom(PhantomStudy(**{**base.__dict__, "ctr": 0.6}), 128).astype(float)
        # heart lies in the lower middle of the lungs: the bright central band there is wider
        band = slice(70, 90)
        thr = np.percentile(small[band], 60)
        diffs.append((big[band] > thr).sum(axis=1).mean() - (small[band] > thr).sum(axis=1).mean())
    assert np.mean(diffs) > 4, diffs


def test_effusion_brightens_lung_bases():
    for seed in range(4):
        base = _normal(seed)
        for side in ("left", "right", "bilateral"):
            base.effusion_side = side
            sick = with_labels(base, Pleural_Effusion=1.0, No_Finding=math.nan)
            a = render_phantom(base, 64).astype(float)
            b = render_phantom(sick, 64).astype(float)
            diff = b - a
            assert diff.min() >= -1 and diff.max() > 40
            # the change sits in the lower half, on the given side(s) (patient right = image left)
            lower, upper = diff[32:].sum(), diff[:24].sum()
            assert lower > 5 * max(upper, 1)
            left_img, right_img = diff[32:, :32].sum(), diff[32:, 32:].sum()
            if side == "right":
                assert left_img > 3 * right_img
            elif side == "left":
                assert right_img > 3 * left_img
            else:
                assert min(left_img, right_img) > 0.3 * max(left_img, right_img)


@pytest.mark.parametrize("label", [l for l in CHEXPERT_LABELS if l not in ("No Finding", "Cardiomegaly")])
def test_each_finding_changes_image_and_uncertain_is_fainter(label):
    base = _normal(1)
    base.devices = ("ett", "pacemaker")
    key = label.replace(" ", "_")
    a = render_phantom(base, 64).astype(float)
    full = np.abs(render_phantom(with_labels(base, **{key: 1.0}), 64).astype(float) - a).sum()
    faint = np.abs(render_phantom(with_labels(base, **{key: -1.0}), 64).astype(float) - a).sum()
    assert full > 0 and faint < full


def test_render_variation_and_views():
    imgs = generate_generic_chest_images(6, SIZE, seed=0)
    assert imgs.shape == (6, SIZE, SIZE) and imgs.dtype == np.uint8
    assert len({im.tobytes() for im in imgs}) == 6
    assert np.array_equal(imgs, generate_generic_chest_images(6, SIZE, seed=0))
    study = _normal(2)
    pa = render_phantom(study, 64)
    other = "AP" if study.view == "PA" else "PA"
    ap = render_phantom(PhantomStudy(**{**study.__dict__, "view": other}), 64)
    assert not np.array_equal(pa, ap)
    with pytest.raises(InputError):
        render_phantom(study, 8)


def _hash_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic(tmp_path):
    kw = dict(n_patients=4, studies_per_patient=(1, 2), image_size=SIZE, progress=False)
    generate_mimic_cxr(tmp_path / "a", seed=5, **kw)
    generate_mimic_cxr(tmp_path / "b", seed=5, **kw)
    generate_mimic_cxr(tmp_path / "c", seed=6, **kw)
    a, b, c = (_hash_tree(tmp_path / n) for n in "abc")
    assert a == b and len(a) > 5
    assert a != c
    # regenerating over an earlier phantom replaces it
    generate_mimic_cxr(tmp_path / "a", seed=6, **kw)
    assert _hash_tree(tmp_path / "a") == c


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = phantom.render_phantom

    def flaky(study, size):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("killed")
        return real(study, size)

    monkeypatch.setattr(phantom, "render_phantom", flaky)
    with pytest.raises(RuntimeError):
        generate_mimic_cxr(tmp_path / "mimic", n_patients=4, image_size=SIZE, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="non-empty"):
        generate_mimic_cxr(tmp_path / "other", n_patients=2, image_size=SIZE, progress=False)
    with pytest.raises(InputError):
        generate_mimic_cxr(tmp_path / "x", n_patients=0, progress=False)
    with pytest.raises(InputError):
        generate_mimic_cxr(tmp_path / "x", n_patients=2, studies_per_patient=(3, 1), progress=False)
    with pytest.raises(InputError, match="prevalences"):
        sample_study(np.random.default_rng(0), {"Flu": 0.5})
