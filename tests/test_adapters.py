"""Dataset adapters on tiny fixtures built from the real label files torchxrayvision ships (plus a hand-made
MIMIC-CXR-JPG tree in the real layout)."""

import csv
import gzip
import importlib.util
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrgen.data import adapters
from cxrgen.data.adapters import (
    ADAPTERS,
    load_chexpert,
    load_dataset,
    load_folder,
    load_mimic,
    load_nih,
    load_padchest,
    parse_report_sections,
)
from cxrgen.data.schema import CHEXPERT_LABELS, COLUMNS, apply_label_policy
from cxrgen.errors import InputError

NAN = math.nan


def _xrv_data() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")  # locate without importing torch
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _image_bytes(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 128, np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


JPEG, PNG = _image_bytes("JPEG"), _image_bytes("PNG")


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PNG if path.suffix == ".png" else JPEG)


def _head_csv(src: Path, dst: Path, n: int = 20) -> tuple[list[str], list[list[str]]]:
    """Copy the real header row and the first n real rows of a (gzipped) CSV."""
    with gzip.open(src, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [row for _, row in zip(range(n), reader)]
    _write_csv(dst, header, rows)
    return header, rows


def _write_csv(dst: Path, header, rows) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if dst.suffix == ".gz" else open
    with opener(dst, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _row(df: pd.DataFrame, image_id: str) -> pd.Series:
    hits = df[df["image_id"] == image_id]
    assert len(hits) == 1, image_id
    return hits.iloc[0]


def _labels(row: pd.Series) -> dict:
    return {l: row[l] for l in CHEXPERT_LABELS if not (isinstance(row[l], float) and math.isnan(row[l]))}


# ---------------------------------------------------------------------------------------------------- CheXpert


@pytest.fixture
def chexpert_root(tmp_path):
    top = tmp_path / "CheXpert-v1.0-small"
    header, rows = _head_csv(_xrv_data() / "chexpert_train.csv.gz", top / "train.csv")
    valid = [[r[0].replace("/train/patient0000", "/valid/patient6454")] + r[1:] for r in rows[:2]]
    _write_csv(top / "valid.csv", header, valid)
    for r in rows + valid:
        _touch(tmp_path / r[0])
    return top


def test_chexpert_real_rows(chexpert_root):
    df = load_chexpert(chexpert_root)
    assert list(df.columns[: len(COLUMNS)]) == list(COLUMNS) and "split" in df
    assert len(df) == 22 and (df["split"] == "valid").sum() == 2
    r = _row(df, "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    assert (r.patient_id, r.study_id, r.view, r.sex, r.age) == ("patient00001", "patient00001/study1", "AP", "F", 68.0)
    assert _labels(r) == {"No Finding": 1.0, "Pneumothorax": 0.0, "Support Devices": 1.0}
    assert Path(r.image_path).is_absolute() and Path(r.image_path).is_file()
    r = _row(df, "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg")
    assert r.age == 87.0 and r.sex == "F"
    assert _labels(r) == {
        "Cardiomegaly": -1.0, "Lung Opacity": 1.0, "Edema": -1.0, "Consolidation": -1.0, "Atelectasis": -1.0,
        "Pleural Effusion": -1.0, "Fracture": 1.0,
    }
    lat = _row(df, "CheXpert-v1.0-small/train/patient00002/study1/view2_lateral.jpg")
    assert lat.view == "LATERAL"
    assert _row(df, "CheXpert-v1.0-small/train/patient00004/study1/view1_frontal.jpg").view == "PA"
    assert _row(df, "CheXpert-v1.0-small/train/patient00003/study1/view1_frontal.jpg").sex == "M"

    frontal = load_chexpert(chexpert_root, frontal_only=True)
    assert set(frontal["view"]) <= {"AP", "PA"} and len(frontal) == len(df) - 5 == (df["view"] != "LATERAL").sum()
    # root's parent works too, and gives the same paths
    parent = load_chexpert(chexpert_root.parent, include_valid=False)
    assert len(parent) == 20
    assert list(parent["image_path"]) == list(df["image_path"][:20])


def test_chexpert_label_policy(chexpert_root):
    df = apply_label_policy(load_chexpert(chexpert_root), uncertain="positive", blank="negative")
    r = _row(df, "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg")
    assert r["Cardiomegaly"] == 1.0 and r["Pneumothorax"] == 0.0 and r["Fracture"] == 1.0
    assert set(np.unique(df[list(CHEXPERT_LABELS)].to_numpy())) <= {0.0, 1.0}
    ign = apply_label_policy(load_chexpert(chexpert_root), uncertain="ignore", blank="ignore")
    r = _row(ign, "CheXpert-v1.0-small/train/patient00002/study2/view1_frontal.jpg")
    assert math.isnan(r["Cardiomegaly"]) and math.isnan(r["Pneumothorax"]) and r["Lung Opacity"] == 1.0


def test_chexpert_bad_label_value_names_file_column_line(chexpert_root):
    path = chexpert_root / "train.csv"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[4, "Edema"] = "2"
    df.to_csv(path, index=False)
    with pytest.raises(InputError, match=r"train\.csv.*'Edema'.*line 6.*'2'"):
        load_chexpert(chexpert_root)


def test_chexpert_missing_columns(chexpert_root):
    path = chexpert_root / "train.csv"
    pd.read_csv(path).drop(columns=["AP/PA", "Pneumonia"]).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"train\.csv lacks column\(s\) \['AP/PA', 'Pneumonia'\]; expected columns"):
        load_chexpert(chexpert_root)


def test_chexpert_missing_images(chexpert_root):
    victim = chexpert_root / "train/patient00003/study1/view1_frontal.jpg"
    victim.unlink()
    with pytest.raises(InputError, match=r"1 image file\(s\) missing.*patient00003"):
        load_chexpert(chexpert_root)
    assert len(load_chexpert(chexpert_root, check_images=False)) == 22


# ---------------------------------------------------------------------------------------------------- PadChest


@pytest.fixture
def padchest_root(tmp_path):
    root = tmp_path / "padchest"
    header, rows = _head_csv(
        _xrv_data() / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
        root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
    )
    h = {name: i for i, name in enumerate(header)}
    for r in rows:
        _touch(root / r[h["ImageDir"]] / r[h["ImageID"]])
    return root


def test_padchest_real_rows(padchest_root):
    df = load_padchest(padchest_root)
    assert len(df) == 20
    assert {"projection", "modality", "labels_localizations"} <= set(df.columns)
    r = _row(df, "20536686640136348236148679891455886468_k6ga29.png")
    assert (r.sex, r.age, r.view, r.study_date, r.projection, r.modality) == ("F", 84.0, "PA", "2014-09-15", "PA", "CR")
    assert r.patient_id == "839860488694292331637988235681460987"
    assert r.image_path == str(padchest_root / "0" / "20536686640136348236148679891455886468_k6ga29.png")
    assert _labels(r) == {"No Finding": 1.0}
    assert r.labels_localizations == "[['normal'], ['normal']]"
    # fibrosis / chronic changes / kyphosis / pseudonodule: no CheXpert class; ground glass pattern -> Lung Opacity
    r = _row(df, "135803415504923515076821959678074435083_fzis7d.png")
    assert (r.sex, r.age, r.view, r.projection) == ("M", 86.0, "LATERAL", "L")
    assert _labels(r) == {"Lung Opacity": 1.0}
    # laminar atelectasis, pleural effusion, apical pleural thickening, suture material, sternotomy
    r = df.iloc[7]
    assert r.view == "PA"
    assert _labels(r) == {"Atelectasis": 1.0, "Pleural Effusion": 1.0, "Pleural Other": 1.0}
    # alveolar pattern, pleural effusion, endotracheal tube, unchanged, sternotomy, interstitial pattern
    r = df.iloc[9]
    assert (r.view, r.projection) == ("AP", "AP_horizontal")
    assert _labels(r) == {"Lung Opacity": 1.0, "Pleural Effusion": 1.0, "Support Devices": 1.0}
    r = df.iloc[12]  # superior mediastinal enlargement (+ unmapped aortic/bone terms), a DX image
    assert r.modality == "DX" and _labels(r) == {"Enlarged Cardiomediastinum": 1.0}
    assert _labels(df.iloc[3]) == {}  # 'chronic changes' only: every class blank

    frontal = load_padchest(padchest_root, frontal_only=True)
    assert set(frontal["view"]) == {"AP", "PA"} and len(frontal) < len(df)
    # the CSV itself works as root
    same = load_padchest(padchest_root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz")
    pd.testing.assert_frame_equal(same, df)


def test_padchest_duplicate_ids(padchest_root):
    path = padchest_root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df.loc[5, "ImageID"] = df.loc[2, "ImageID"]
    df.to_csv(path, index=False)
    with pytest.raises(InputError, match=r"PADCHEST.*duplicate image id '1358.*fzis7b\.png' \(lines \[4, 7\]"):
        load_padchest(padchest_root, check_images=False)


def test_padchest_label_mapping_is_documented():
    for term, classes in adapters.PADCHEST_TO_CHEXPERT.items():
        assert term == term.lower() and classes and set(classes) <= set(CHEXPERT_LABELS), term
    out = adapters.padchest_labels("['NSG tube', 'pulmonary edema', 'nodule', 'rib fracture', 'COPD signs']")
    assert {k for k, v in out.items() if v == 1.0} == {"Support Devices", "Edema", "Lung Lesion", "Fracture"}
    assert all(math.isnan(v) for v in adapters.padchest_labels(float("nan")).values())


# ---------------------------------------------------------------------------------------------------- NIH


@pytest.fixture
def nih_root(tmp_path):
    root = tmp_path / "nih"
    header, rows = _head_csv(_xrv_data() / "Data_Entry_2017_v2020.csv.gz", root / "Data_Entry_2017_v2020.csv")
    for i, r in enumerate(rows):  # both release layouts: images_001/images/*.png and images/*.png
        _touch(root / ("images_001/images" if i < 10 else "images") / r[0])
    return root


def test_nih_real_rows(nih_root):
    df = load_nih(nih_root)
    assert len(df) == 20
    r = _row(df, "00000001_000.png")
    assert (r.patient_id, r.age, r.sex, r.view) == ("1", 57.0, "M", "PA")
    assert r.image_path == str(nih_root / "images_001/images/00000001_000.png")
    stated = {c: 0.0 for c in adapters.NIH_STATED_CLASSES}
    assert _labels(r) == {**stated, "Cardiomegaly": 1.0}
    assert _labels(_row(df, "00000001_002.png")) == {**stated, "Cardiomegaly": 1.0, "Pleural Effusion": 1.0}
    assert _labels(_row(df, "00000002_000.png")) == {**stated, "No Finding": 1.0}
    assert _labels(_row(df, "00000003_001.png")) == stated  # Hernia: no CheXpert class, not "No Finding"
    r = _row(df, "00000004_000.png")  # Mass|Nodule
    assert (r.view, r.age, r.sex) == ("AP", 82.0, "M") and _labels(r) == {**stated, "Lung Lesion": 1.0}
    r = _row(df, "00000005_006.png")
    assert _labels(r) == {**stated, "Lung Opacity": 1.0}
    assert r.image_path == str(nih_root / "images/00000005_006.png")
    assert df[["Fracture", "Support Devices", "Enlarged Cardiomediastinum"]].isna().all().all()


def test_nih_unknown_label_and_missing_columns(nih_root):
    path = nih_root / "Data_Entry_2017_v2020.csv"
    df = pd.read_csv(path)
    df.loc[3, "Finding Labels"] = "Pneumonitis|Effusion"
    df.to_csv(path, index=False)
    with pytest.raises(InputError, match=r"Data_Entry_2017_v2020\.csv: column 'Finding Labels', line 5: unknown label name 'Pneumonitis'"):
        load_nih(nih_root)
    df.drop(columns=["Patient Gender"]).to_csv(path, index=False)
    with pytest.raises(InputError, match=r"Data_Entry_2017_v2020\.csv lacks column\(s\) \['Patient Gender'\]"):
        load_nih(nih_root)


# ---------------------------------------------------------------------------------------------------- MIMIC

REPORT_1 = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.

 NOTIFICATION:  Findings discussed with Dr. ___ at 10:30.
"""
REPORT_2 = """ WET READ: ___ ___ 4:09 PM
  Moderate right effusion.
 ______________________________________________________________________________
                                 FINAL REPORT
 HISTORY:  Shortness of breath.

 IMPRESSION:  Moderate right pleural effusion,   increased since prior.
 RECOMMENDATION(S):  Follow-up radiograph.
"""


def _mimic_tree(root: Path) -> None:
    meta = pd.DataFrame({
        "dicom_id": ["d1", "d2", "d3", "d4"],
        "subject_id": [10000032, 10000032, 11000011, 11000011],
        "study_id": [50414267, 50414267, 53184214, 53184215],
        "PerformedProcedureStepDescription": ["CHEST (PA AND LAT)"] * 4,
        "ViewPosition": ["PA", "LATERAL", "AP", ""],
        "Rows": [3056] * 4,
        "Columns": [2544] * 4,
        "StudyDate": [21800506, 21800506, 21520101, 21520307],
        "StudyTime": [213014.531, 213014.531, 80000.0, 90000.0],
    })
    root.mkdir(parents=True)
    meta.to_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz", index=False)
    labels = pd.DataFrame({"subject_id": [10000032, 11000011], "study_id": [50414267, 53184214],
                           **{l: [NAN, NAN] for l in CHEXPERT_LABELS}})
    labels.loc[0, "No Finding"] = 1.0
    labels.loc[1, ["Pleural Effusion", "Cardiomegaly", "Edema"]] = [1.0, -1.0, 0.0]
    labels.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)  # study 53184215 unlabelled
    pd.DataFrame({"dicom_id": ["d1", "d2", "d3", "d4"], "study_id": meta["study_id"], "subject_id": meta["subject_id"],
                  "split": ["train", "train", "test", "test"]}).to_csv(root / "mimic-cxr-2.0.0-split.csv", index=False)
    pd.DataFrame({"subject_id": [10000032, 11000011], "gender": ["F", "M"], "anchor_age": [52, 70],
                  "anchor_year": [2180, 2150], "anchor_year_group": ["2014 - 2016"] * 2, "dod": ["", ""]}).to_csv(
        root / "patients.csv", index=False)
    for _, r in meta.iterrows():
        s = str(r.subject_id)
        _touch(root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{r.study_id}" / f"{r.dicom_id}.jpg")
    (root / "files/p10/p10000032/s50414267.txt").write_text(REPORT_1)
    sibling = root.parent / "mimic-cxr-reports/files/p11/p11000011"
    sibling.mkdir(parents=True)
    (sibling / "s53184214.txt").write_text(REPORT_2)


def test_mimic_real_layout(tmp_path):
    root = tmp_path / "mimic-cxr-jpg"
    _mimic_tree(root)
    df = load_dataset("mimic", root=root)
    assert len(df) == 4 and list(df["image_id"]) == ["d1", "d2", "d3", "d4"]
    assert list(df["split"]) == ["train", "train", "test", "test"]
    r = _row(df, "d1")
    assert r.image_path == str(root / "files/p10/p10000032/s50414267/d1.jpg")
    assert (r.patient_id, r.study_id, r.view, r.sex, r.age, r.study_date) == ("10000032", "50414267", "PA", "F", 52.0, "2180-05-06")
    assert r.findings == ("There is no focal consolidation, pleural effusion or pneumothorax. Bilateral nodular opacities "
                          "that most likely represent nipple shadows.")
    assert r.impression == "No acute cardiopulmonary process."
    assert _labels(r) == {"No Finding": 1.0} and _labels(_row(df, "d2")) == {"No Finding": 1.0}
    assert _row(df, "d2").view == "LATERAL"
    r = _row(df, "d3")  # report from the sibling mimic-cxr-reports tree; age = 70 + (2152 - 2150)
    assert (r.sex, r.age, r.view, r.findings) == ("M", 72.0, "AP", "")
    assert r.impression == "Moderate right pleural effusion, increased since prior."
    assert _labels(r) == {"Pleural Effusion": 1.0, "Cardiomegaly": -1.0, "Edema": 0.0}
    r = _row(df, "d4")  # no label row, no report, no view
    assert _labels(r) == {} and (r.view, r.findings, r.impression, r.study_date) == ("", "", "", "2152-03-07")

    assert list(load_mimic(root, frontal_only=True)["image_id"]) == ["d1", "d3"]
    no_reports = load_mimic(root, read_reports=False)
    assert (no_reports["findings"] == "").all()
    pol = apply_label_policy(df)
    assert _row(pol, "d3")["Cardiomegaly"] == 1.0 and _row(pol, "d4")["No Finding"] == 0.0


def test_mimic_errors(tmp_path):
    root = tmp_path / "mimic"
    _mimic_tree(root)
    with pytest.raises(InputError, match="does not exist"):
        load_mimic(tmp_path / "nowhere")
    lab = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    lab.loc[1, "Edema"] = 0.5
    lab.to_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz", index=False)
    with pytest.raises(InputError, match=r"mimic-cxr-2\.0\.0-chexpert\.csv\.gz: column 'Edema', line 3"):
        load_mimic(root)
    (root / "mimic-cxr-2.0.0-chexpert.csv.gz").unlink()
    with pytest.raises(InputError, match=r"mimic-cxr-2\.0\.0-chexpert\.csv\[\.gz\] not found in .*mimic; expected"):
        load_mimic(root)


def test_parse_report_sections():
    assert parse_report_sections(REPORT_1)[1] == "No acute cardiopulmonary process."
    assert parse_report_sections("FINDINGS: Lungs clear.\nCOMPARISON: ___") == ("Lungs clear.", "")
    assert parse_report_sections("Findings:  a\n  b\nIMPRESSIONS: c") == ("a b", "c")
    assert parse_report_sections("FINDINGS AND IMPRESSION: Normal.") == ("Normal.", "Normal.")
    assert parse_report_sections("Normal chest, no headers.") == ("", "")
    assert parse_report_sections(None) == ("", "")


# ---------------------------------------------------------------------------------------------------- folder


def test_folder_adapter(tmp_path):
    root = tmp_path / "imgs"
    for name in ("a.png", "sub/b.png", "c.png"):
        _touch(root / name)
    pd.DataFrame({
        "image": ["a.png", "sub/b.png", "c.png"],
        "patient_id": ["p1", "p1", "p2"],
        "view": ["pa", "lateral", "AP"],
        "sex": ["female", "M", ""],
        "age": [50, "", 61],
        "pleural_effusion": [1, 0, ""],
        "Cardiomegaly": ["-1", "", "1.0"],
        "report": ["FINDINGS: Small effusion.\nIMPRESSION: Effusion.", "", "Clear lungs."],
        "site": ["x", "y", "z"],
    }).to_csv(root / "labels.csv", index=False)
    with pytest.raises(InputError, match=r"labels\.csv: unknown label name\(s\)/column\(s\) \['site'\]"):
        load_folder(root)
    df = load_dataset("folder", root=root, extra_columns=["site"])
    assert list(df["site"]) == ["x", "y", "z"]
    r = _row(df, "a.png")
    assert (r.image_path, r.patient_id, r.view, r.sex, r.age) == (str(root / "a.png"), "p1", "PA", "F", 50.0)
    assert (r.findings, r.impression) == ("Small effusion.", "Effusion.")
    assert _labels(r) == {"Pleural Effusion": 1.0, "Cardiomegaly": -1.0}
    r = _row(df, "c.png")
    assert (r.sex, r.findings, r.impression) == ("", "Clear lungs.", "") and _labels(r) == {"Cardiomegaly": 1.0}
    assert math.isnan(_row(df, "sub/b.png").age)
    assert list(load_folder(root, extra_columns=["site"], frontal_only=True)["image_id"]) == ["a.png", "c.png"]

    pd.DataFrame({"image": ["a.png", "a.png"]}).to_csv(root / "dup.csv", index=False)
    with pytest.raises(InputError, match=r"dup\.csv: duplicate image id 'a\.png'"):
        load_folder(root, "dup.csv")
    pd.DataFrame({"file": ["a.png"]}).to_csv(root / "nocol.csv", index=False)
    with pytest.raises(InputError, match=r"nocol\.csv lacks column\(s\) \['image'\]; expected columns \['image', "):
        load_folder(root, "nocol.csv")
    pd.DataFrame({"image": ["a.png"], "Edema": ["yes"]}).to_csv(root / "bad.csv", index=False)
    with pytest.raises(InputError, match=r"bad\.csv: column 'Edema', line 2: label value 'yes'"):
        load_folder(root, "bad.csv")
    with pytest.raises(InputError, match=r"missing\.csv does not exist"):
        load_folder(root, "missing.csv")


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_and_unknown_names(tmp_path):
    assert set(ADAPTERS) == {"mimic", "chexpert", "padchest", "nih", "folder"}
    with pytest.raises(InputError, match=r"unknown dataset 'mimc'; expected one of \['chexpert', 'folder', 'mimic'"):
        load_dataset("mimc", root=tmp_path)
    with pytest.raises(InputError, match=r"dataset 'mimic' takes no option\(s\) \['csv'\]"):
        load_dataset("mimic", root=tmp_path, csv="x.csv")
    with pytest.raises(InputError, match=r"NIH ChestX-ray14: Data_Entry_2017_v2020\.csv\[\.gz\] or Data_Entry_2017\.csv\[\.gz\] not found"):
        load_dataset("nih", root=tmp_path)
    with pytest.raises(InputError, match=r"CheXpert: no train\.csv"):
        load_dataset("chexpert", root=tmp_path)
