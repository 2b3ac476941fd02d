"""Bad inputs, tried systematically (issue 12): every case ends in one :class:`~cxrgen.errors.InputError` naming the
file/row/column/key and what was expected, or in a documented, counted skip -- never a library's own exception, and
never a half-written output that a rerun would trust. Hypothesis drives the cases where the input space is large
(byte truncations, random bytes, label strings, column drops/renames, weighted-AND prompts, config mutations).

The table of cases, how each is handled and which test covers it is in docs/robustness.md; tests already in
other files are cited there rather than repeated here.
"""

from __future__ import annotations

import copy
import csv
import gzip
import io
import json
import logging
import math
import struct
import tempfile
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from cxrgen.data.adapters import load_chexpert, load_folder, load_mimic, load_nih, load_padchest, parse_report_sections
from cxrgen.data.preprocess import load_grayscale, load_preprocessed, preprocess
from cxrgen.data.sampling import check_patient_disjoint, materialise, patient_split, sample_frontal_with_reports
from cxrgen.data.schema import CHEXPERT_LABELS, COLUMNS, validate_table
from cxrgen.errors import InputError
from cxrgen.io import write_csv_atomic
from cxrgen.sampling.composable import encode_terms, format_prompt, parse_prompt

REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _scratch(tmp_path: Path) -> Path:
    """A fresh folder per hypothesis example (tmp_path is shared by all examples of one test)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def _encoded(arr: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


GRAY = (np.arange(24 * 20).reshape(24, 20) % 251).astype(np.uint8)
VALID = {"JPEG": _encoded(GRAY, "JPEG"), "PNG": _encoded(GRAY, "PNG")}


# ================================================================================================ images
@FAST
@given(fmt=st.sampled_from(["JPEG", "PNG"]), data=st.data())
def test_truncated_image_is_an_input_error_or_decodes_intact(tmp_path, fmt, data):
    full = VALID[fmt]
    cut = data.draw(st.integers(0, len(full) - 1), label="bytes kept")
    path = _scratch(tmp_path) / f"cut.{fmt.lower()}"
    path.write_bytes(full[:cut])
    try:
        arr = load_grayscale(path)
    except InputError as exc:
        assert str(path) in str(exc) and "expected a valid JPEG/PNG" in str(exc)
    else:  # only a PNG cut after its pixel data (in the last CRC / IEND bytes) may still decode, and then intact
        assert fmt == "PNG" and np.array_equal(arr, GRAY)


@FAST
@given(fmt=st.sampled_from(["JPEG", "PNG"]), data=st.data())
def test_corrupted_image_bytes_never_leak_a_decoder_exception(tmp_path, fmt, data):
    raw = bytearray(VALID[fmt])
    for _ in range(data.draw(st.integers(1, 4), label="n flips")):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    path = _scratch(tmp_path) / f"flip.{fmt.lower()}"
    path.write_bytes(bytes(raw))
    try:  # a flipped JPEG entropy (or size) byte decodes to other pixels: undetectable, and allowed
        arr = load_grayscale(path)
    except InputError as exc:
        assert str(path) in str(exc)
    else:
        assert arr.ndim == 2 and arr.dtype == np.uint8


@FAST
@given(blob=st.binary(max_size=300))
@example(blob=b"")
@example(blob=b"\x89PNG\r\n\x1a\n")
@example(blob=b"\xff\xd8\xff\xe0 truncated")
def test_random_bytes_named_as_an_image_are_an_input_error(tmp_path, blob):
    path = _scratch(tmp_path) / "x.png"
    path.write_bytes(blob)
    try:
        arr = load_grayscale(path)
    except InputError as exc:
        assert str(path) in str(exc) and "expected" in str(exc)
    else:  # bytes that happen to form an image in some format Pillow reads (weak-magic TGA, ...)
        assert arr.ndim == 2 and arr.dtype == np.uint8


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def test_decompression_bomb_header_is_an_input_error(tmp_path):
    """Fixed: Pillow's DecompressionBombError leaked (a header claiming 200000 x 200000 pixels)."""
    path = tmp_path / "bomb.png"
    header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0"))
                     + _png_chunk(b"IEND", b""))
    with pytest.raises(InputError, match=r"bomb\.png is too large to decode safely.*expected a chest X-ray of at most"):
        load_grayscale(path)


@FAST
@given(pixels=st.lists(st.integers(0, 65535), min_size=12, max_size=12))
def test_16_bit_png_is_rescaled_monotonically(tmp_path, pixels):
    arr = np.array(pixels, np.uint16).reshape(3, 4)
    path = _scratch(tmp_path) / "deep.png"
    Image.fromarray(arr).save(path)
    out = load_grayscale(path).astype(int)
    flat, src = out.ravel(), arr.ravel().astype(int)
    if src.min() == src.max():
        assert (flat == 0).all()  # a constant image carries no contrast
    else:
        assert flat.min() == 0 and flat.max() == 255
        order = np.argsort(src, kind="stable")
        assert (np.diff(flat[order]) >= 0).all()  # brighter input, never darker output


def test_32_bit_float_and_int_images_are_rescaled_not_clipped(tmp_path):
    """Fixed: a float TIFF (mode F) was clipped to 0-255 by Pillow's convert('L'), losing everything above 255."""
    ramp = np.linspace(-500.0, 4000.0, 30, dtype=np.float32).reshape(5, 6)
    Image.fromarray(ramp).save(tmp_path / "f.tif")
    out = load_grayscale(tmp_path / "f.tif")
    assert out.min() == 0 and out.max() == 255 and (np.diff(out.ravel().astype(int)) >= 0).all()
    Image.fromarray(np.full((4, 4), np.nan, np.float32)).save(tmp_path / "nan.tif")
    with pytest.raises(InputError, match=r"nan\.tif holds non-finite pixel values"):
        load_grayscale(tmp_path / "nan.tif")


def test_rgba_and_la_alpha_is_composited_onto_black(tmp_path):
    """Fixed: transparent pixels showed their hidden colour (a transparent red pixel came out grey 76)."""
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = load_grayscale(tmp_path / "rgba.png")
    assert (out[:2] == 76).all() and (out[2:] == 0).all()  # ITU-R 601 luma of pure red; black where transparent
    la = np.stack([np.full((4, 4), 200, np.uint8), np.full((4, 4), 128, np.uint8)], axis=-1)
    Image.fromarray(la).save(tmp_path / "la.png")
    assert (np.abs(load_grayscale(tmp_path / "la.png").astype(int) - 100) <= 1).all()  # 200 at half opacity over black
    opaque = rgba.copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque).save(tmp_path / "opaque.png")
    Image.fromarray(np.ascontiguousarray(opaque[..., :3])).save(tmp_path / "rgb.png")
    assert np.array_equal(load_grayscale(tmp_path / "opaque.png"), load_grayscale(tmp_path / "rgb.png"))


def test_empty_images_name_the_file(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"zero\.jpg cannot be decoded"):
        load_grayscale(tmp_path / "zero.jpg")
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(InputError, match=r"folder\.png is a folder, not a file"):
        load_grayscale(tmp_path / "folder.png")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(tmp_path / "black.png")
    # fixed: the de Wilde crop's "all pixels zero" error did not say which image
    with pytest.raises(InputError, match=r"image .*black\.png: image is empty \(all pixels zero\)"):
        load_preprocessed(tmp_path / "black.png", "dewilde", 8)
    assert load_preprocessed(tmp_path / "black.png", "chambon", 8).shape == (8, 8)  # black is still an image
    for method in ("chambon", "dewilde", "cheff"):  # fixed: cheff divided by zero on a 0 x 0 array
        with pytest.raises(InputError, match=r"shape \(0, 0\); expected a non-empty 2-D grayscale array"):
            preprocess(np.zeros((0, 0), np.uint8), method, 8)
        with pytest.raises(InputError, match=r"shape \(4, 4, 3\)"):
            preprocess(np.zeros((4, 4, 3), np.uint8), method, 8)
    with pytest.raises(InputError, match=r"image size=0; expected an integer >= 1"):
        preprocess(GRAY, "chambon", 0)


# ================================================================================================ materialise
def _table(folder: Path, n: int, ids=None) -> pd.DataFrame:
    rows = []
    for i in range(n):
        path = folder / f"img{i}.png"
        Image.fromarray(np.full((12, 10), 40 + 10 * i, np.uint8)).save(path)
        labels = {l: math.nan for l in CHEXPERT_LABELS}
        labels["No Finding"] = 1.0
        rows.append(dict(source="t", image_id=ids[i] if ids else f"i{i}", image_path=str(path), patient_id=f"p{i}",
                         study_id=f"s{i}", view="PA", sex="F", age=50.0, study_date="", findings="f", impression="imp",
                         **labels))
    return pd.DataFrame(rows)


BAD_IMAGE = {
    "truncated jpeg": lambda p: p.write_bytes(VALID["JPEG"][: len(VALID["JPEG"]) // 2]),
    "truncated png": lambda p: p.write_bytes(VALID["PNG"][:40]),
    "empty file": lambda p: p.write_bytes(b""),
    "missing file": lambda p: p.unlink(),
    "all black (dewilde crop)": lambda p: Image.fromarray(np.zeros((5, 5), np.uint8)).save(p, format="PNG"),
}


@FEW
@given(kind=st.sampled_from(sorted(BAD_IMAGE)), data=st.data())
def test_materialise_bad_image_errors_leaving_nothing_or_is_a_counted_skip(tmp_path, caplog, kind, data):
    work = _scratch(tmp_path)
    table = _table(work, 4)
    k = data.draw(st.integers(0, 3), label="bad row")
    BAD_IMAGE[kind](Path(table.loc[k, "image_path"]))
    out = work / "sample"
    with pytest.raises(InputError, match=rf"img{k}\.png"):
        materialise(table, out, "dewilde", 8, progress=False)
    assert not out.exists() and not list(work.glob(".sample.*")), "a failed write must leave nothing a rerun trusts"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxrgen.data.sampling"):
        manifest = materialise(table, out, "dewilde", 8, on_bad_image="skip", progress=False)
    assert len(manifest) == 3 and manifest.attrs["n_skipped"] == 1
    skipped = pd.read_csv(out / "skipped.csv")
    assert skipped["image_id"].tolist() == [f"i{k}"] and f"img{k}.png" in skipped["error"].iloc[0]
    assert "skipped 1 of 4 image(s)" in caplog.text


def test_failed_rerun_keeps_the_previous_complete_sample(tmp_path):
    table = _table(tmp_path, 3)
    out = tmp_path / "sample"
    materialise(table, out, "chambon", 8, progress=False)
    before = (out / "manifest.csv").read_text()
    BAD_IMAGE["truncated png"](Path(table.loc[2, "image_path"]))
    with pytest.raises(InputError, match=r"img2\.png cannot be decoded"):
        materialise(table, out, "chambon", 8, progress=False)
    assert (out / "manifest.csv").read_text() == before and len(list((out / "images").iterdir())) == 3
    assert not list(tmp_path.glob(".sample.*"))


def test_materialise_refuses_bad_settings_before_skipping_every_image(tmp_path):
    """Fixed: with on_bad_image='skip' an unknown preprocessing made every image a 'bad image' -> an empty sample."""
    table = _table(tmp_path, 2)
    with pytest.raises(InputError, match=r"unknown preprocessing 'dewild'; expected one of \['chambon', 'dewilde', "):
        materialise(table, tmp_path / "s", "dewild", 8, on_bad_image="skip", progress=False)
    with pytest.raises(InputError, match=r"size='64'; expected an integer"):
        materialise(table, tmp_path / "s", "chambon", "64", on_bad_image="skip", progress=False)
    with pytest.raises(InputError, match=r"on_bad_image='ignore'; expected 'error' or 'skip'"):
        materialise(table, tmp_path / "s", "chambon", 8, on_bad_image="ignore", progress=False)
    assert not (tmp_path / "s").exists()


def test_materialise_path_like_and_duplicate_image_ids(tmp_path):
    """Fixed: CheXpert image ids are paths ('CheXpert-v1.0-small/train/...'): writing images/<id>.png failed with
    FileNotFoundError deep in Pillow. Duplicate ids silently overwrote each other's image."""
    ids = ["CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg", "a b/c", "a_b_c"]
    manifest = materialise(_table(tmp_path, 3, ids), tmp_path / "s", "chambon", 8, progress=False)
    assert manifest["file"].tolist() == ["images/CheXpert-v1.0-small_train_patient00001_study1_view1_frontal.jpg.png",
                                         "images/a_b_c.png", "images/a_b_c-2.png"]
    assert all((tmp_path / "s" / f).is_file() for f in manifest["file"])
    with pytest.raises(InputError, match=r"duplicate image id\(s\) \['x'\]; expected one row per image"):
        materialise(_table(tmp_path, 2, ["x", "x"]), tmp_path / "d", "chambon", 8, progress=False)
    assert not (tmp_path / "d").exists()


def test_csv_writer_failing_midway_leaves_the_old_file(tmp_path):
    class Boom:
        def __str__(self):
            raise RuntimeError("disk full")

    path = tmp_path / "table.csv"
    write_csv_atomic(pd.DataFrame({"a": [1, 2]}), path)
    with pytest.raises(RuntimeError, match="disk full"):
        write_csv_atomic(pd.DataFrame({"a": ["ok", "ok", Boom()]}), path)
    assert path.read_text() == "a\n1\n2\n" and not list(tmp_path.glob(".table.csv.*"))
    with pytest.raises(RuntimeError):
        write_csv_atomic(pd.DataFrame({"a": [Boom()]}), tmp_path / "new.csv")
    assert not (tmp_path / "new.csv").exists() and not list(tmp_path.glob(".new.csv.*"))


# ================================================================================================ CSVs
CHEXPERT_PATH = "CheXpert-v1.0-small/train/patient{:05d}/study1/view1_frontal.jpg"


def _dataset(kind: str, root: Path, n: int = 4) -> tuple[Path, list[str], list[list[str]], callable, tuple[str, ...]]:
    """A minimal CSV in each adapter's real layout: (csv path, header, rows, loader, required columns)."""
    labels = list(CHEXPERT_LABELS)
    if kind == "chexpert":
        path = root / "CheXpert-v1.0-small" / "train.csv"
        header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *labels]
        rows = [[CHEXPERT_PATH.format(i + 1), "Female", "60", "Frontal", "AP", *(["1.0"] + [""] * 13)] for i in range(n)]
        loader = lambda: load_chexpert(root / "CheXpert-v1.0-small", check_images=False)  # noqa: E731
        required = tuple(header)
    elif kind == "nih":
        path = root / "Data_Entry_2017_v2020.csv"
        header = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
                  "View Position"]
        rows = [[f"0000000{i}_000.png", "Effusion|Mass", "0", str(i), "58", "M", "PA"] for i in range(n)]
        loader = lambda: load_nih(root, check_images=False)  # noqa: E731
        required = tuple(h for h in header if h != "Follow-up #")
    elif kind == "padchest":
        path = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
        header = ["ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
                  "Projection", "Labels"]
        rows = [[f"img{i}.png", "0", "20140915", f"s{i}", f"p{i}", "1930.0", "F", "PA", "['pleural effusion']"]
                for i in range(n)]
        loader = lambda: load_padchest(root, check_images=False)  # noqa: E731
        required = tuple(header)
    elif kind == "mimic":
        path = root / "mimic-cxr-2.0.0-metadata.csv"
        header = ["dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate"]
        rows = [[f"d{i}", f"1000003{i}", f"5000000{i}", "PA", "21800506"] for i in range(n)]
        _write(root / "mimic-cxr-2.0.0-chexpert.csv", ["subject_id", "study_id", *labels],
               [[f"1000003{i}", f"5000000{i}", *(["1.0"] + [""] * 13)] for i in range(n)])
        loader = lambda: load_mimic(root, read_reports=False, check_images=False)  # noqa: E731
        required = tuple(header)
    else:  # folder
        path = root / "labels.csv"
        header = ["image", "patient_id", "Edema", "report"]
        rows = [[f"img{i}.png", f"p{i}", "1", "FINDINGS: ok.\nIMPRESSION: ok."] for i in range(n)]
        loader = lambda: load_folder(root, check_images=False)  # noqa: E731
        required = ("image",)
    _write(path, header, rows)
    return path, header, rows, loader, required


def _write(path: Path, header, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


ADAPTER_KINDS = ["chexpert", "nih", "padchest", "mimic", "folder"]


@pytest.mark.parametrize("kind", ADAPTER_KINDS)
def test_minimal_fixtures_load(tmp_path, kind):
    *_, loader, _ = _dataset(kind, tmp_path)
    assert len(loader()) == 4


@FAST
@given(kind=st.sampled_from(ADAPTER_KINDS), how=st.sampled_from(["drop", "rename"]), data=st.data())
def test_missing_or_renamed_required_columns_are_named(tmp_path, kind, how, data):
    root = _scratch(tmp_path)
    path, header, rows, loader, required = _dataset(kind, root)
    gone = data.draw(st.sets(st.sampled_from(required), min_size=1), label="columns")
    keep = [j for j, h in enumerate(header) if h not in gone]
    assume(keep)  # dropping every column leaves an empty file: its own error, tested below
    if how == "drop":
        _write(path, [header[j] for j in keep], [[r[j] for j in keep] for r in rows])
    else:  # a typo or a tool's rewrite of the name: case, spaces -> underscores, a suffix
        rename = data.draw(st.sampled_from([str.lower, lambda h: h.replace(" ", "_") + "_", lambda h: h + " (v2)"]))
        new = [rename(h) if h in gone else h for h in header]
        assume(all(n not in required for n, h in zip(new, header) if h in gone))
        _write(path, new, rows)
    with pytest.raises(InputError) as info:
        loader()
    msg = str(info.value)
    assert str(path.name) in msg and "lacks column(s)" in msg and "expected columns" in msg
    listed = msg.split("lacks column(s) ")[1].split("; expected")[0]
    assert sorted(eval(listed)) == sorted(gone)  # exactly the lost ones, in the file's own spelling


@FAST
@given(kind=st.sampled_from(ADAPTER_KINDS), bad=st.sampled_from([b"\xff", b"\xe9", b"\x80", b"\xc3("]),
       gzipped=st.booleans(), data=st.data())
def test_non_utf8_csv_names_the_line(tmp_path, kind, bad, gzipped, data):
    """Fixed: the error quoted pandas' "'utf-8' codec can't decode byte 0xe9 in position 3" (an offset into a
    buffer, not the file)."""
    root = _scratch(tmp_path)
    path, header, rows, loader, _ = _dataset(kind, root)
    record = data.draw(st.integers(1, len(rows)), label="data row")
    raw = path.read_bytes()
    starts = [0]
    for _ in range(record):  # csv.writer ends records with \r\n; a quoted cell may hold a bare \n
        starts.append(raw.index(b"\r\n", starts[-1]) + 2)
    at = raw.index(b",", starts[-1]) + 1  # a latin-1 'e acute' or a stray byte opening the row's second cell
    raw = raw[:at] + bad + raw[at:]
    line = raw[:at].count(b"\n") + 1  # the line an editor shows
    if gzipped and kind in ("mimic", "nih"):
        path.unlink()
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    with pytest.raises(InputError, match=rf"{path.name} is not UTF-8 text \(line {line}, column \d+: byte 0x{bad[0]:02x}\); "
                                         "expected a UTF-8 CSV"):
        loader()


@pytest.mark.parametrize("content, message", [
    (b"", r"is empty; expected a CSV with a header row"),
    (b"image,Edema\na.png,1,3\n", r"a row has more fields than the header .*expected one value per column"),
    (b"image,Edema\na.png,1\nb.png,1,0\n", r"could not be read as CSV .*Expected 2 fields in line 3"),
    (gzip.compress(b"image\na.png\n", mtime=0), r"is not UTF-8 text \(line 1"),
    (b"image;Edema\na.png;1\n", r"lacks column\(s\) \['image'\]"),
])
def test_malformed_csv_files(tmp_path, content, message):
    """Fixed: a row with one field too many became pandas' implicit index, shifting every value one column left
    (the error then blamed the wrong column)."""
    (tmp_path / "labels.csv").write_bytes(content)
    with pytest.raises(InputError, match=r"labels\.csv.*" + message):
        load_folder(tmp_path, check_images=False)


def test_truncated_gzip_csv_is_an_input_error(tmp_path):
    path, *_ = _dataset("nih", tmp_path)
    data = gzip.compress(path.read_bytes())
    path.unlink()
    (tmp_path / "Data_Entry_2017_v2020.csv.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"Data_Entry_2017_v2020\.csv\.gz could not be read as CSV"):
        load_nih(tmp_path, check_images=False)


def _is_valid_label(text: str) -> bool:
    s = text.strip()
    if s == "":
        return True
    try:
        return float(s) in (1.0, 0.0, -1.0)
    except ValueError:
        return False


LABEL_TEXT = st.one_of(
    st.sampled_from(["1", "0", "-1", "1.0", "-1.0", " 1", "0 ", "", "  ", "2", "0.5", "yes", "TRUE", "nan", "NaN", "inf",
                     "-0", "+1", "1e0", "u", "-", "1,0"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=6),
)


@FAST
@given(kind=st.sampled_from(["chexpert", "mimic", "folder"]), value=LABEL_TEXT, data=st.data())
def test_label_values_outside_the_four_are_named_with_line(tmp_path, kind, value, data):
    root = _scratch(tmp_path)
    label_csv = {"chexpert": None, "mimic": "mimic-cxr-2.0.0-chexpert.csv", "folder": None}[kind]
    path, header, rows, loader, _ = _dataset(kind, root)
    if label_csv:
        path = root / label_csv
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        header, rows = list(frame.columns), frame.values.tolist()
    i = data.draw(st.integers(0, len(rows) - 1), label="row")
    rows[i][header.index("Edema")] = value
    _write(path, header, rows)
    if _is_valid_label(value):
        table = loader()
        assert set(table["Edema"].dropna()) <= {1.0, 0.0, -1.0}
    else:
        with pytest.raises(InputError) as info:
            loader()
        assert f"{path.name}: column 'Edema', line {i + 2}: label value {value!r}" in str(info.value)
        assert "expected 1 (positive), 0 (negative), -1 (uncertain) or blank" in str(info.value)


@FAST
@given(kind=st.sampled_from(["chexpert", "nih", "padchest", "mimic", "folder", "mimic-split", "mimic-labels"]),
       data=st.data())
def test_duplicate_ids_name_the_id_and_lines(tmp_path, kind, data):
    root = _scratch(tmp_path)
    path, header, rows, loader, _ = _dataset(kind.split("-")[0], root)
    if kind == "mimic-split":
        path, header = root / "mimic-cxr-2.0.0-split.csv", ["dicom_id", "subject_id", "study_id", "split"]
        rows = [[r[0], r[1], r[2], "train"] for r in rows]
    elif kind == "mimic-labels":
        path = root / "mimic-cxr-2.0.0-chexpert.csv"
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        header, rows = list(frame.columns), frame.values.tolist()
    src, dst = data.draw(st.lists(st.integers(0, len(rows) - 1), min_size=2, max_size=2, unique=True), label="rows")
    rows = [list(r) for r in rows]
    rows[dst] = list(rows[src])
    _write(path, header, rows)
    with pytest.raises(InputError) as info:
        loader()
    msg = str(info.value)
    if kind == "mimic-labels":  # one row per study
        assert f"{path.name}: study '{rows[src][1]}' labelled more than once; expected one row per study" in msg
    else:
        assert f"{path.name}: duplicate image id {rows[src][0]!r} (lines {sorted([src + 2, dst + 2])};" in msg
        assert "expected one row per image" in msg


def test_duplicate_ids_in_an_adapter_output_table():
    df = pd.DataFrame({c: ["x", "x"] for c in COLUMNS})
    for label in CHEXPERT_LABELS:
        df[label] = [1.0, 0.0]
    with pytest.raises(InputError, match=r"my\.csv: duplicate image ids, e\.g\. \['x'\]; expected one row per image"):
        validate_table(df, "my.csv")


def test_blank_patient_id_in_a_folder_csv_is_named(tmp_path):
    """Fixed: blank patient ids were accepted, so every such image hashed into one "patient" and one split."""
    _write(tmp_path / "labels.csv", ["image", "patient_id"], [["a.png", "p1"], ["b.png", " "]])
    with pytest.raises(InputError, match=r"labels\.csv: column 'patient_id', line 3 is blank; expected an id"):
        load_folder(tmp_path, check_images=False)


# ================================================================================================ splits
@FAST
@given(assignment=st.lists(st.tuples(st.sampled_from(["p1", "p2", "p3", "p4"]),
                                     st.sampled_from(["train", "validate", "test"])), min_size=1, max_size=12))
def test_patient_in_two_splits_is_named_with_its_splits(assignment):
    df = pd.DataFrame(assignment, columns=["patient_id", "split"])
    leaking = {p: sorted(g) for p, g in df.groupby("patient_id")["split"].unique().items() if len(g) > 1}
    if not leaking:
        check_patient_disjoint(df)
        return
    with pytest.raises(InputError) as info:
        check_patient_disjoint(df, origin="table.csv")
    msg = str(info.value)
    first = sorted(leaking)[0]
    assert msg.startswith(f"table.csv: {len(leaking)} patient(s) in more than one split")
    assert f"{first!r}: {leaking[first]}" in msg and "expected patient-disjoint splits" in msg


@pytest.mark.parametrize("fractions", [{"train": 0.9, "test": 0.2}, {"train": 1.2, "test": -0.2}, {"train": 0.5}])
def test_split_fractions_name_the_config_key(fractions):
    with pytest.raises(InputError, match=r"\(config data\.splits\); expected non-negative numbers that sum to 1"):
        patient_split(pd.DataFrame({"patient_id": ["a"]}), fractions, seed=0)


# ================================================================================================ reports
@FAST
@given(text=st.text(max_size=200))
@example(text="FINDINGS:")
@example(text="IMPRESSION:\n\nFINDINGS:")
def test_any_report_text_parses_to_two_strings(text):
    findings, impression = parse_report_sections(text)
    assert isinstance(findings, str) and isinstance(impression, str)
    if ":" not in text:
        assert (findings, impression) == ("", "")


def test_reports_without_sections_are_documented_and_counted(tmp_path, caplog):
    from cxrgen.studies.text_encoder import prepare_reports

    _write(tmp_path / "labels.csv", ["image", "view", "Edema", "report"],
           [["a.png", "PA", "1", "FINDINGS: Small effusion.\nIMPRESSION: Effusion."],
            ["b.png", "PA", "1", "Clear lungs, no headers at all."],  # documented: whole text goes into findings
            ["c.png", "PA", "0", ""], ["d.png", "LATERAL", "1", "IMPRESSION: ok."]])
    table = load_folder(tmp_path, check_images=False)
    assert table.set_index("image_id").loc["b.png", ["findings", "impression"]].tolist() == [
        "Clear lungs, no headers at all.", ""]
    with caplog.at_level(logging.INFO, logger="cxrgen.data.sampling"):
        with pytest.raises(InputError, match=r"only 2 eligible images, 3 requested") as info:
            sample_frontal_with_reports(table, 3, seed=0)
    assert "1 non-frontal images and 1 frontal images without a FINDINGS/IMPRESSION section excluded" in str(info.value)
    assert "2 eligible" in caplog.text
    texts, _, n_empty, n_unlabelled = prepare_reports(table)  # the text study counts what it drops
    assert (len(texts), n_empty, n_unlabelled) == (2, 2, 0)


# ================================================================================================ non-UTF-8 text
def test_non_utf8_mimic_report_is_read_and_counted(tmp_path, caplog):
    """Fixed: a latin-1 report was decoded with U+FFFD silently; now the replacement is counted and logged."""
    root = tmp_path / "mimic"
    _dataset("mimic", root)
    for i, body in ((0, "IMPRESSION: Effusion, caf\xe9.".encode("latin-1")), (1, b"IMPRESSION: Clear.")):
        folder = root / "files" / "p10" / f"p1000003{i}"
        folder.mkdir(parents=True)
        (folder / f"s5000000{i}.txt").write_bytes(body)
    with caplog.at_level(logging.WARNING, logger="cxrgen.data.adapters"):
        table = load_mimic(root, check_images=False)
    assert table["impression"].tolist()[:2] == ["Effusion, caf\ufffd.", "Clear."]
    assert "1 of 4 MIMIC report(s) are not valid UTF-8" in caplog.text and "s50000000.txt" in caplog.text


@FAST
@given(blob=st.binary(min_size=1, max_size=40))
def test_text_decoded_with_surrogateescape_is_refused_before_the_tokenizer(blob):
    """Fixed: an unpaired surrogate made the tokenizers library raise TypeError('TextEncodeInput must be ...')."""
    from cxrgen.models.tokenizer import require_unicode

    text = blob.decode("utf-8", errors="surrogateescape")
    try:
        blob.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    if valid:
        require_unicode([text])
        try:
            parse_prompt("x " + text)
        except InputError as exc:
            assert "surrogate" not in str(exc)
    else:
        for call in (lambda: parse_prompt("x " + text), lambda: require_unicode(["ok", text], "report")):
            with pytest.raises(InputError, match=r"unpaired surrogate U\+DC[89A-F][0-9A-F] at position \d+.*expected valid"):
                call()


# ================================================================================================ prompts
PROMPT_PIECES = st.sampled_from(["AND", "*", "0.5", ".5", "-1", "2e-1", "1e999", "nan", "<a>", "<b>", "x", "lung xray",
                                 " ", "  ", "\t", "\\", "\\AND", "\\*", "\\\\", "and", "ANDx", "\ue000", "\n"])


@settings(max_examples=50, deadline=None)
@given(pieces=st.lists(PROMPT_PIECES, max_size=8), sep=st.sampled_from(["", " "]))
@example(pieces=["<a>", "AND"], sep=" ")
@example(pieces=["0.5", "*", "AND", "<b>"], sep="")
def test_malformed_weighted_and_prompts_raise_input_errors_naming_the_prompt(pieces, sep):
    prompt = sep.join(pieces)
    try:
        terms = parse_prompt(prompt)
    except InputError as exc:
        assert repr(prompt) in str(exc) or ("empty" in str(exc) and not prompt.strip())
        return
    assert terms and all(t.text.strip() and math.isfinite(t.weight) for t in terms)
    assert parse_prompt(format_prompt(terms)) == terms  # what parses, round-trips


@settings(max_examples=50, deadline=None)
@given(prompt=st.text(max_size=40))
def test_any_text_prompt_parses_or_raises_an_input_error(prompt):
    try:
        parse_prompt(prompt)
    except InputError:
        pass


@pytest.fixture(scope="module")
def tiny_tokenizer():
    from cxrgen.models.tokenizer import train_clip_tokenizer

    return train_clip_tokenizer(["a photo of a lung xray with pleural effusion"] * 8, vocab_size=600, model_max_length=8)


def test_prompt_longer_than_the_tokenizer_is_truncated_and_counted(tiny_tokenizer, caplog):
    from cxrgen.models.tokenizer import count_truncated

    long = "a photo of a lung xray with a small left pleural effusion and cardiomegaly"
    assert count_truncated(tiny_tokenizer, ["<a>", long, "x"]) == 1
    assert count_truncated(tiny_tokenizer, [long], max_length=10_000) == 0
    import torch

    seen = []
    pipe = SimpleNamespace(tokenizer=tiny_tokenizer, unet=SimpleNamespace(device="cpu"),
                           encode_prompt=lambda texts, *a: (seen.append(texts) or torch.zeros(len(texts), 8, 4),
                                                            torch.zeros(len(texts), 8, 4)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cxrgen.models.tokenizer"):
        cond, uncond = encode_terms(pipe, [t.text for t in parse_prompt(f"0.5*<a> AND 0.5*{long}")])
    assert cond.shape == (2, 8, 4) and seen == [["<a>", long]]  # still encoded (truncated by the pipeline)
    assert "1 of 2 prompt term(s) exceed the tokenizer limit of 8 tokens and are truncated" in caplog.text


def test_report_longer_than_the_text_encoder_is_truncated_and_counted(tiny_tokenizer, caplog):
    import torch
    from transformers import BertConfig, BertModel

    from cxrgen.text.encoders import TextEncoder, embed

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=8, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=16, max_position_embeddings=16)).eval()
    enc = TextEncoder("tiny", "memory", model, tiny_tokenizer, 8, has_pooler=False)
    long = "lungs " * 30
    with caplog.at_level(logging.WARNING, logger="cxrgen.text.encoders"):
        emb = embed(["clear", long, long], enc, "mean", progress=False)
    assert emb.shape == (3, 8) and np.allclose(emb[1], emb[2])
    assert "1 of 2 distinct tiny input text(s) exceed the tokenizer limit of 8 tokens" in caplog.text


# ================================================================================================ names
def _unknown_name_calls(tmp_path: Path):
    """what -> (call(name), the known names) for every user-facing registry lookup."""
    from cxrgen.adapt import pipeline
    from cxrgen.data import adapters, sampling
    from cxrgen.data.preprocess import PREPROCESSING
    from cxrgen.data.schema import apply_label_policy, label_names_to_columns
    from cxrgen.metrics.features import available_extractors, get_extractor
    from cxrgen.models.registry import MODEL_REGISTRY, resolve_model
    from cxrgen.text import encoders

    def adapter(name):
        folder = Path(tempfile.mkdtemp(dir=tmp_path))
        (folder / "adapter.json").write_text(json.dumps({"method": name}))
        return pipeline.read_adapter(folder)

    empty = pd.DataFrame({c: [] for c in COLUMNS})
    return {
        "dataset": (lambda n: adapters.load_dataset(n, root=tmp_path), sorted(adapters.ADAPTERS)),
        "text encoder": (encoders.load_encoder, sorted(encoders.TEXT_ENCODER_REGISTRY)),
        "extraction method": (lambda n: encoders.method_available(SimpleNamespace(), n), list(encoders.METHODS)),
        "feature extractor": (get_extractor, available_extractors()),
        "preprocessing": (lambda n: preprocess(GRAY, n, 8), list(PREPROCESSING)),
        "sample selector": (lambda n: sampling.select_sample(empty, {"select": n}, 0), list(sampling.SELECTORS)),
        "scheduler": (lambda n: pipeline.set_scheduler(None, n), sorted(pipeline.SCHEDULERS)),
        "adapter method": (adapter, list(pipeline.METHODS)),
        "model": (resolve_model, sorted(MODEL_REGISTRY)),
        "label policy": (lambda n: apply_label_policy(empty, uncertain=n), ["negative", "ignore", "positive"]),
        "label name": (lambda n: label_names_to_columns([n]), list(CHEXPERT_LABELS)),
    }


NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-+0123456789", min_size=1, max_size=12)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=NAME, data=st.data())
@example(name="mimc", data=None)
def test_unknown_names_are_named_with_the_known_ones(tmp_path, name, data):
    calls = _unknown_name_calls(tmp_path)
    for what in [data.draw(st.sampled_from(sorted(calls)), label="registry")] if data is not None else sorted(calls):
        call, known = calls[what]
        assume(name not in known and name.lower() not in known and not Path(name).exists())
        with pytest.raises(InputError) as info:
            call(name)
        assert repr(name) in str(info.value) and all(k in str(info.value) for k in known), (what, str(info.value))


# ================================================================================================ config
SCHEMA_PATH = REPO / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_PATH.read_text())
DEFAULT_CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def _typed_leaves(node, schema, path=()):
    """(key path, schema) of every value config.yaml sets whose schema states a type, a range or a choice."""
    if isinstance(node, dict) and "properties" in schema:
        for key, value in node.items():
            if key in schema["properties"]:
                yield from _typed_leaves(value, schema["properties"][key], (*path, key))
    elif any(k in schema for k in ("type", "enum", "minimum", "maximum")):
        yield path, schema


LEAVES = sorted(_typed_leaves(DEFAULT_CONFIG, SCHEMA), key=lambda leaf: leaf[0])
WRONG_TYPE = {"string": 12345, "integer": "twelve", "number": "a lot", "boolean": "yes", "array": 3, "object": "x"}


def _validate(config):
    from snakemake.utils import validate

    validate(config, schema=str(SCHEMA_PATH))


def _set(config, path, value):
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _bad_values(schema) -> list:
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    out = []
    if "enum" in schema:
        out.append("no-such-choice")
    if "minimum" in schema:
        out.append(schema["minimum"] - 1)
    if "maximum" in schema:
        out.append(schema["maximum"] + 1)
    python_type = {"string": str, "integer": int, "number": (int, float)}
    for t in types:
        wrong = WRONG_TYPE.get(t)
        if wrong is not None and not any(isinstance(wrong, python_type.get(u, ())) for u in types):
            out.append(wrong)
    if not out and "string" not in types:
        out.append("twelve")
    return out


def test_config_leaves_found():
    assert len(LEAVES) > 50 and all(_bad_values(s) for _, s in LEAVES)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
@pytest.mark.slow
def test_config_value_of_wrong_type_or_range_names_the_key(data):
    path, schema = data.draw(st.sampled_from(LEAVES), label="key")
    value = data.draw(st.sampled_from(_bad_values(schema)), label="value")
    config = copy.deepcopy(DEFAULT_CONFIG)
    _set(config, path, value)
    with pytest.raises(Exception) as info:  # snakemake's WorkflowError: Snakemake prints its message, no traceback
        _validate(config)
    msg = str(info.value)
    assert type(info.value).__name__ == "WorkflowError"
    assert "On instance" + "".join(f"[{k!r}]" for k in path) in msg, msg
    assert repr(value) in msg or str(value) in msg


@pytest.mark.parametrize("section, key", [("data", "sourec"), ("synthesis", "n_imgs"), ("text_encoders", "kk")])
def test_unknown_config_key_is_named(section, key):
    config = copy.deepcopy(DEFAULT_CONFIG)
    config[section][key] = 1
    with pytest.raises(Exception, match=rf"'{key}' was unexpected[\s\S]*On instance\['{section}'\]"):
        _validate(config)


@pytest.mark.parametrize("cls_path", ["cxrgen.adapt.unet_finetune:UNetFinetuneConfig",
                                      "cxrgen.adapt.textual_inversion:TextualInversionConfig"])
@pytest.mark.parametrize("value", ["many", -3, 2.5, None])
def test_trainer_setting_of_wrong_type_is_named(cls_path, value):
    import importlib

    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    with pytest.raises(InputError, match=rf"{name}\.steps={value!r}; expected an integer >= 1"):
        cls.from_dict({"steps": value}).validate()
