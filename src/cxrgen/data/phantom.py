"""Deterministic procedural chest X-ray phantoms, written in the real MIMIC-CXR-JPG v2.0.0 layout.

A phantom study (``PhantomStudy``) holds what MIMIC-CXR holds (ids, view, date, CheXpert labels) plus
patient age/sex and the anatomy parameters the renderer draws from.  ``render_phantom`` paints a frontal
radiograph on a coordinate grid with vectorised numpy: soft tissue, dark lung fields, heart and mediastinum
(heart width gives the cardiothoracic ratio ``ctr``: > 0.5 with Cardiomegaly, < 0.5 without), spine, ribs,
clavicles, scapulae (AP), diaphragm domes and a stomach bubble, then the findings of the labels (uncertain
ones fainter), then per-patient exposure, gamma and noise.

Geometry convention: canonical coordinates ``u`` (image x, -1 left .. +1 right) and ``v`` (image y, -1 top
.. +1 bottom); the patient's right is on the image left (radiological convention), so a "right" finding
lies at ``u < 0``.  Finding sites are given relative to a lung: ``ux`` 0 (medial) .. 1 (lateral), ``uy`` 0
(apex) .. 1 (base).

``generate_mimic_cxr`` writes ``files/pXX/pSUBJECT/sSTUDY/DICOM.jpg``, the report ``files/pXX/pSUBJECT/
sSTUDY.txt``, ``mimic-cxr-2.0.0-{metadata,chexpert,split}.csv`` and a MIMIC-IV style ``patients.csv``, all
inside one atomic directory rename.  Every study draws from its own generator seeded by
``(seed, patient index, study index)``, so the output is byte-identical for a seed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrgen.data.reports import format_mimic_report, make_report
from cxrgen.data.schema import CHEXPERT_LABELS, FRONTAL_VIEWS
from cxrgen.errors import InputError
from cxrgen.io import atomic_path, write_csv_atomic
from cxrgen.progress import progress_bar

FINDINGS: tuple[str, ...] = tuple(l for l in CHEXPERT_LABELS if l not in ("No Finding", "Support Devices"))

#: marginal prevalence of each label; "No Finding" is the share of studies drawn without pathology
DEFAULT_PREVALENCES: dict[str, float] = {
    "No Finding": 0.35,
    "Atelectasis": 0.15,
    "Cardiomegaly": 0.20,
    "Consolidation": 0.06,
    "Edema": 0.10,
    "Enlarged Cardiomediastinum": 0.05,
    "Fracture": 0.03,
    "Lung Lesion": 0.04,
    "Lung Opacity": 0.15,
    "Pleural Effusion": 0.25,
    "Pleural Other": 0.02,
    "Pneumonia": 0.08,
    "Pneumothorax": 0.05,
    "Support Devices": 0.20,
}

#: chance that an absent finding is explicitly negated in the report (label 0) instead of left blank
NEGATION_RATE: dict[str, float] = {
    "Atelectasis": 0.05,
    "Cardiomegaly": 0.35,
    "Consolidation": 0.45,
    "Edema": 0.30,
    "Enlarged Cardiomediastinum": 0.15,
    "Fracture": 0.08,
    "Lung Lesion": 0.05,
    "Lung Opacity": 0.10,
    "Pleural Effusion": 0.65,
    "Pleural Other": 0.01,
    "Pneumonia": 0.30,
    "Pneumothorax": 0.65,
    "Support Devices": 0.02,
}

DEVICES: tuple[str, ...] = ("ett", "ngt", "central_line", "pacemaker")

METADATA_COLUMNS: tuple[str, ...] = (
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
)
CHEXPERT_COLUMNS: tuple[str, ...] = ("subject_id", "study_id") + CHEXPERT_LABELS
SPLIT_COLUMNS: tuple[str, ...] = ("dicom_id", "study_id", "subject_id", "split")
PATIENTS_COLUMNS: tuple[str, ...] = ("subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod")

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
CHEXPERT_CSV = "mimic-cxr-2.0.0-chexpert.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
PATIENTS_CSV = "patients.csv"

_PROCEDURE = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)"}
_VIEW_MEANING = {"PA": "postero-anterior", "AP": "antero-posterior"}
_YEAR_GROUPS = ("2008 - 2010", "2011 - 2013", "2014 - 2016", "2017 - 2019", "2020 - 2022")

Site = tuple  # (side "left"/"right", ux, uy, radius)


@dataclass
class PhantomStudy:
    """One frontal study: MIMIC identifiers, demographics, CheXpert labels and the renderer's anatomy."""

    subject_id: int
    study_id: int
    dicom_id: str
    view: str  # "AP" or "PA"
    sex: str  # "M" or "F"
    age: int
    study_date: str  # YYYYMMDD
    labels: dict[str, float]  # all 14 CheXpert labels: 1.0, 0.0, -1.0 or nan (blank)
    study_time: str = "120000.000"
    patient_orientation: str = "Erect"
    # --- anatomy / acquisition (canonical units, see module docstring) ---
    body_scale: float = 0.95  # zoom of the patient on the detector
    body_width: float = 0.9  # half-width of the torso
    lung_width: float = 0.68  # lateral extent of each lung from the midline
    lung_height: float = 1.0  # vertical scale of the lungs
    diaphragm_left: float = 0.3  # dome bottom (v) at the left lung's lateral angle
    diaphragm_right: float = 0.26
    dome_height: float = 0.11
    ctr: float = 0.44  # cardiothoracic ratio (heart width / thoracic width) as projected
    mediastinum_width: float = 0.11  # half-width of the upper mediastinum
    shift_x: float = 0.0
    shift_y: float = 0.0
    rotation_deg: float = 0.0
    exposure: float = 1.25  # display gain
    brightness: float = 0.0  # display offset
    gamma: float = 1.0
    noise_level: float = 0.02
    rib_spacing: float = 0.13
    rib_phase: float = 0.0
    marking_phase: float = 0.0
    marking_count: int = 11
    noise_seed: int = 0
    # --- finding geometry (always drawn, used only when the label is 1 or -1) ---
    effusion_side: str = "right"  # "left", "right" or "bilateral"
    effusion_size: float = 0.2  # height of the fluid column at the costophrenic angle
    pneumothorax_side: str = "right"
    pneumothorax_collapse: float = 0.8  # collapsed lung size relative to the hemithorax
    atelectasis_side: str = "right"
    atelectasis_site: tuple = (0.5, 0.8, 0.1, 0.32)  # (ux, uy, angle rad, length)
    pneumonia_site: Site = ("right", 0.5, 0.75, 0.15)
    consolidation_site: Site = ("right", 0.5, 0.75, 0.13)
    opacity_site: Site = ("left", 0.5, 0.6, 0.16)
    nodule_site: Site = ("right", 0.5, 0.35, 0.05)
    fracture_side: str = "left"
    fracture_site: tuple = (0.75, 0.45)  # (ux, uy)
    pleural_other_side: str = "left"
    ecm_extra: float = 0.08  # mediastinal widening with Enlarged Cardiomediastinum
    devices: tuple = ()

    def severity(self, label: str) -> float:
        """1 for a positive label, 0.5 for an uncertain one (rendered faintly), 0 otherwise."""
        value = self.labels.get(label, math.nan)
        return 1.0 if value == 1.0 else (0.5 if value == -1.0 else 0.0)

    @property
    def positive_findings(self) -> list[str]:
        return [l for l in CHEXPERT_LABELS if l != "No Finding" and self.labels.get(l) == 1.0]


# ---------------------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------------------


def _check_prevalences(prevalences: Mapping[str, float] | None) -> dict[str, float]:
    merged = dict(DEFAULT_PREVALENCES)
    for key, value in (prevalences or {}).items():
        if key not in DEFAULT_PREVALENCES:
            raise InputError(f"prevalences key {key!r} unknown; expected CheXpert labels {list(CHEXPERT_LABELS)}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InputError(f"prevalences[{key!r}] = {value!r}; expected a number in [0, 1]") from None
        if not 0.0 <= value <= 1.0:
            raise InputError(f"prevalences[{key!r}] = {value}; expected a number in [0, 1]")
        merged[key] = value
    return merged


def _dicom_id(rng: np.random.Generator) -> str:
    digits = rng.integers(0, 16, size=40)
    hexes = "".join("0123456789abcdef"[d] for d in digits)
    return "-".join(hexes[i : i + 8] for i in range(0, 40, 8))


def _site(rng: np.random.Generator, uy_range=(0.15, 0.9), r_range=(0.1, 0.18)) -> Site:
    return (
        "left" if rng.random() < 0.5 else "right",
        float(rng.uniform(0.3, 0.85)),
        float(rng.uniform(*uy_range)),
        float(rng.uniform(*r_range)),
    )


def sample_patient(rng: np.random.Generator) -> dict:
    """Patient-level traits shared by all of a patient's studies: sex, anchor age/year and body build."""
    sex = "F" if rng.random() < 0.48 else "M"
    age = int(np.clip(round(rng.normal(62, 17)), 18, 91))
    body_width = float(np.clip(rng.normal(0.9 if sex == "M" else 0.87, 0.035), 0.78, 0.99))
    return {
        "sex": sex,
        "anchor_age": age,
        "anchor_year": int(rng.integers(2110, 2190)),
        "anchor_year_group": _YEAR_GROUPS[int(rng.integers(len(_YEAR_GROUPS)))],
        "body_width": body_width,
        "lung_width": float(body_width * rng.uniform(0.72, 0.79)),
        "lung_height": float(rng.uniform(0.93, 1.06)),
    }


def sample_study(
    rng: np.random.Generator,
    prevalences: Mapping[str, float] | None = None,
    *,
    subject_id: int | None = None,
    study_id: int | None = None,
    dicom_id: str | None = None,
    view: str | None = None,
    sex: str | None = None,
    age: int | None = None,
    study_date: str | None = None,
    patient: Mapping | None = None,
    uncertain_rate: float = 0.08,
) -> PhantomStudy:
    """Draw a study: findings from ``prevalences`` (marginal rates, see ``DEFAULT_PREVALENCES``), labels
    as MIMIC's chexpert.csv writes them, and anatomy.  Given ids/demographics are kept as they are.

    Rules: No Finding is 1 exactly when no pathology is positive or uncertain (Support Devices may
    co-occur), blank otherwise; a present finding is uncertain (-1) with chance ``uncertain_rate``; an
    absent finding is 0 (negated in the report) with the chance ``NEGATION_RATE`` gives, else blank;
    Pneumonia, Consolidation, Edema and Atelectasis often bring Lung Opacity along.
    """
    prev = _check_prevalences(prevalences)
    if view is not None and view not in FRONTAL_VIEWS:
        raise InputError(f"view {view!r}; expected one of {FRONTAL_VIEWS}")
    if sex is not None and sex not in ("M", "F"):
        raise InputError(f"sex {sex!r}; expected 'M' or 'F'")
    patient = dict(patient) if patient is not None else sample_patient(rng)

    # --- findings ---
    nf = prev["No Finding"]
    normal = rng.random() < nf
    present = {f: False for f in FINDINGS}
    u = rng.random(len(FINDINGS))
    if not normal:
        for f, x in zip(FINDINGS, u):
            present[f] = x < min(1.0, prev[f] / max(1e-9, 1.0 - nf))
        if not any(present.values()):
            weights = np.array([prev[f] for f in FINDINGS], dtype=float)
            if weights.sum() > 0:
                present[FINDINGS[int(rng.choice(len(FINDINGS), p=weights / weights.sum()))]] = True
            else:
                normal = True
    implied_opacity = rng.random() < 0.6
    if not normal and implied_opacity and any(present[f] for f in ("Pneumonia", "Consolidation", "Edema", "Atelectasis")):
        present["Lung Opacity"] = True
    has_devices = rng.random() < prev["Support Devices"]

    labels: dict[str, float] = {}
    unc = rng.random(len(CHEXPERT_LABELS))
    neg = rng.random(len(CHEXPERT_LABELS))
    for i, label in enumerate(CHEXPERT_LABELS):
        if label == "No Finding":
            continue
        is_present = has_devices if label == "Support Devices" else present[label]
        if is_present:
            labels[label] = -1.0 if unc[i] < (uncertain_rate if label != "Support Devices" else 0.02) else 1.0
        else:
            labels[label] = 0.0 if neg[i] < NEGATION_RATE[label] else math.nan
    labels["No Finding"] = 1.0 if not any(labels[f] in (1.0, -1.0) for f in FINDINGS) else math.nan
    labels = {label: labels[label] for label in CHEXPERT_LABELS}

    # --- acquisition ---
    ap_chance = 0.75 if has_devices else 0.35
    drawn_view = "AP" if rng.random() < ap_chance else "PA"
    view = view or drawn_view
    is_ap = view == "AP"
    orientation_draw = rng.random()
    orientation = "Erect" if (not is_ap or orientation_draw < 0.5) else ("Recumbent" if orientation_draw < 0.8 else "")
    seconds = int(rng.integers(0, 86400))
    millis = int(rng.integers(0, 1000))
    study_time = f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}.{millis:03d}"
    drawn_date = _dt.date(int(patient["anchor_year"]), 1, 1) + _dt.timedelta(days=int(rng.integers(0, 365)))

    # --- anatomy ---
    sev_card = 1.0 if labels["Cardiomegaly"] == 1.0 else (0.5 if labels["Cardiomegaly"] == -1.0 else 0.0)
    if sev_card == 1.0:
        ctr = rng.uniform(0.54, 0.64)
    elif sev_card == 0.5:
        ctr = rng.uniform(0.505, 0.525)
    else:
        ctr = rng.uniform(0.38, 0.46)
    ap_mag = rng.uniform(0.01, 0.03)
    ctr = float(ctr + (ap_mag if is_ap else 0.0))
    diaphragm_left = float(rng.normal(0.3, 0.03) - (0.06 if is_ap else 0.0))
    diaphragm_right = float(diaphragm_left - rng.uniform(0.02, 0.07))
    study = PhantomStudy(
        subject_id=int(subject_id) if subject_id is not None else 10_000_000 + int(rng.integers(0, 10_000_000)),
        study_id=int(study_id) if study_id is not None else 50_000_000 + int(rng.integers(0, 10_000_000)),
        dicom_id=dicom_id if dicom_id is not None else _dicom_id(rng),
        view=view,
        sex=sex or patient["sex"],
        age=int(age) if age is not None else int(patient["anchor_age"]),
        study_date=study_date or drawn_date.strftime("%Y%m%d"),
        labels=labels,
        study_time=study_time,
        patient_orientation=orientation,
        body_scale=float(rng.uniform(0.88, 1.04)),
        body_width=float(patient["body_width"]),
        lung_width=float(patient["lung_width"]),
        lung_height=float(patient["lung_height"] * rng.uniform(0.97, 1.03)),
        diaphragm_left=diaphragm_left,
        diaphragm_right=diaphragm_right,
        dome_height=float(rng.uniform(0.08, 0.14)),
        ctr=ctr,
        mediastinum_width=float(rng.uniform(0.09, 0.12)),
        shift_x=float(np.clip(rng.normal(0, 0.035), -0.1, 0.1)),
        shift_y=float(np.clip(rng.normal(0, 0.035), -0.1, 0.1)),
        rotation_deg=float(np.clip(rng.normal(0, 2.5), -7, 7)),
        exposure=float(rng.uniform(1.1, 1.4)),
        brightness=float(rng.uniform(-0.05, 0.05)),
        gamma=float(rng.uniform(0.85, 1.15)),
        noise_level=float(rng.uniform(0.008, 0.03) + (0.01 if is_ap else 0.0)),
        rib_spacing=float(rng.uniform(0.12, 0.14)),
        rib_phase=float(rng.uniform(0, 1)),
        marking_phase=float(rng.uniform(0, 2 * math.pi)),
        marking_count=int(rng.integers(9, 15)),
        noise_seed=int(rng.integers(0, 2**63 - 1)),
        effusion_side=("left", "right", "bilateral")[int(rng.choice(3, p=[0.3, 0.35, 0.35]))],
        effusion_size=float(rng.uniform(0.12, 0.37)),
        pneumothorax_side="left" if rng.random() < 0.5 else "right",
        pneumothorax_collapse=float(rng.uniform(0.7, 0.88)),
        atelectasis_side="left" if rng.random() < 0.5 else "right",
        atelectasis_site=(
            float(rng.uniform(0.35, 0.7)),
            float(rng.uniform(0.7, 0.85)),
            float(rng.uniform(-0.3, 0.3)),
            float(rng.uniform(0.22, 0.36)),
        ),
        pneumonia_site=_site(rng, (0.3, 0.85), (0.11, 0.18)),
        consolidation_site=_site(rng, (0.3, 0.85), (0.09, 0.15)),
        opacity_site=_site(rng, (0.15, 0.85), (0.12, 0.2)),
        nodule_site=_site(rng, (0.15, 0.75), (0.035, 0.07)),
        fracture_side="left" if rng.random() < 0.5 else "right",
        fracture_site=(float(rng.uniform(0.65, 0.9)), float(rng.uniform(0.25, 0.7))),
        pleural_other_side="left" if rng.random() < 0.5 else "right",
        ecm_extra=float(rng.uniform(0.06, 0.1)),
    )
    n_dev = int(rng.integers(1, 4))
    chosen = rng.permutation(len(DEVICES))[:n_dev]
    if labels["Support Devices"] in (1.0, -1.0):
        study.devices = tuple(DEVICES[i] for i in sorted(chosen))
    # Lung Opacity implied by another finding sits where that finding is
    if present["Lung Opacity"] and implied_opacity:
        for source in ("Pneumonia", "Consolidation"):
            if present[source]:
                study.opacity_site = getattr(study, source.lower() + "_site")
                break
    return study


# ---------------------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0).astype(np.float32)
    x, y = np.meshgrid(c, c)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@lru_cache(maxsize=16)
def _textures(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Two periodic smooth noise fields (coarse blobs, fine parenchyma), unit variance, fixed seed."""
    rng = np.random.default_rng(20240521)
    f = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None, :] ** 2
    out = []
    for sigma in (0.06, 0.2):
        spec = np.fft.fft2(rng.standard_normal((size, size))) * np.exp(-f / (2 * sigma**2))
        t = np.real(np.fft.ifft2(spec))
        t = ((t - t.mean()) / (t.std() + 1e-9)).astype(np.float32)
        t.setflags(write=False)
        out.append(t)
    return out[0], out[1]


def _ramp(d: np.ndarray, width: float) -> np.ndarray:
    """Soft inside-mask of a signed distance-like ``d`` (negative inside), ``width`` wide edge."""
    return np.clip(0.5 - d * (1.0 / width), 0.0, 1.0)


def _seg_d2(u, v, p0, p1) -> np.ndarray:
    """Squared distance to segment p0-p1."""
    ax, ay = p0
    bx, by = p1
    dx, dy = bx - ax, by - ay
    t = np.clip(((u - ax) * dx + (v - ay) * dy) * (1.0 / (dx * dx + dy * dy + 1e-12)), 0.0, 1.0)
    ex = u - (ax + t * dx)
    ey = v - (ay + t * dy)
    return ex * ex + ey * ey


def _polyline(u, v, points, half_width) -> np.ndarray:
    d2 = None
    for p0, p1 in zip(points[:-1], points[1:]):
        s = _seg_d2(u, v, p0, p1)
        d2 = s if d2 is None else np.minimum(d2, s)
    return np.clip(1.5 - d2 * (1.0 / (half_width * half_width)), 0.0, 1.0)


def _side_sign(side: str) -> float:
    """Patient's right lies on the image left (u < 0)."""
    return -1.0 if side == "right" else 1.0


class _Lungs:
    """Lung geometry of one study (both sides at once, vectorised over the grid)."""

    medial = 0.06

    def __init__(self, p: PhantomStudy, atel_lift: tuple[float, float]):
        self.lw = p.lung_width
        self.top = -0.8 * p.lung_height
        # bottoms: index 0 = image left (patient right), 1 = image right (patient left)
        self.bot = (p.diaphragm_right * p.lung_height - atel_lift[0], p.diaphragm_left * p.lung_height - atel_lift[1])
        self.cx = (self.lw + self.medial) / 2
        self.a = (self.lw - self.medial) / 2
        self.dome = p.dome_height

    def field(self, u, v):
        """(f, du, bot): f < 1 inside the lung's outer contour; du -1 medial .. +1 lateral."""
        bot = np.where(u < 0, np.float32(self.bot[0]), np.float32(self.bot[1]))
        au = np.abs(u)
        du = (au - self.cx) * (1.0 / self.a)
        cy = (self.top + bot) * 0.5
        b = (bot - self.top) * 0.5
        dv = (v - cy) / b
        q = du * du
        r = dv * dv
        f = np.where(dv < 0, q + r, q * q + r * r)
        return f, du, bot


def render_phantom(study: PhantomStudy, size: int = 128) -> np.ndarray:
    """Frontal chest radiograph of ``study`` as a (size, size) uint8 array (deterministic per study)."""
    size = int(size)
    if size < 16:
        raise InputError(f"image size {size}; expected at least 16 pixels")
    p = study
    x, y = _grid(size)
    rng = np.random.default_rng(p.noise_seed)
    tex_coarse, tex_fine = _textures(size)
    k = int(rng.integers(8))
    sh = (int(rng.integers(size)), int(rng.integers(size)))
    if k & 1:
        tex_coarse, tex_fine = tex_coarse.T, tex_fine.T
    if k & 2:
        tex_coarse, tex_fine = tex_coarse[::-1], tex_fine[::-1]
    tex_coarse = np.roll(tex_coarse, sh, axis=(0, 1))
    tex_fine = np.roll(tex_fine, (sh[1], sh[0]), axis=(0, 1))

    zoom = float(p.body_scale)
    th = math.radians(p.rotation_deg)
    c, s = math.cos(th), math.sin(th)
    gx = x - np.float32(p.shift_x)
    gy = y - np.float32(p.shift_y)
    u = (c * gx + s * gy) * (1.0 / zoom)
    v = (-s * gx + c * gy) * (1.0 / zoom)
    pix = 2.0 / size / zoom
    w = max(1.2 * pix, 0.02)  # edge width of anatomical boundaries
    lw_line = max(0.8 * pix, 0.012)  # half width of thin lines
    au = np.abs(u)
    is_ap = p.view == "AP"
    sev = p.severity

    atel = sev("Atelectasis")
    lift = 0.07 * atel
    atel_lift = (lift, 0.0) if p.atelectasis_side == "right" else (0.0, lift)
    lungs = _Lungs(p, atel_lift)
    f, du, bot = lungs.field(u, v)
    lung_outer = _ramp((f - 1.0) * (lungs.a * 0.5), w)
    dome_v = bot - lungs.dome * np.clip(1.0 - du * du, 0.0, 1.0) * 1.0
    below = v - dome_v  # > 0 below the diaphragm
    lung = lung_outer * _ramp(below, w)

    # --- body and soft tissue ---
    neck = 0.26 + 0.04 * (p.body_width - 0.9)
    t_sh = np.clip((v + 1.02) * (1.0 / 0.3), 0.0, 1.0)
    half_w = neck + (p.body_width - neck) * np.sqrt(t_sh)
    body = _ramp(au - half_w, 2 * w)
    A = 0.02 + 0.50 * body
    A += 0.05 * body * np.clip(below * 8.0, 0.0, 1.0) * (v > -0.2)  # upper abdomen / liver
    if p.sex == "F":
        A += 0.07 * body * np.exp(-((au - 0.45 * p.body_width) ** 2 * 8.0 + (v - 0.38) ** 2 * 10.0))

    # --- mediastinum and heart ---
    mw = p.mediastinum_width + p.ecm_extra * sev("Enlarged Cardiomediastinum")
    if atel:
        med_shift = 0.02 * atel * _side_sign(p.atelectasis_side)
    else:
        med_shift = 0.0
    thor_half = lungs.lw
    ha = p.ctr * thor_half
    hb = 0.27 + 0.3 * (ha - 0.3)
    hcx = 0.28 * ha + med_shift
    hcy = lungs.bot[1] - 0.1
    hu = (u - hcx) * (1.0 / ha)
    hv = (v - hcy) * (1.0 / hb)
    heart = _ramp((hu * hu + hv * hv - 1.0) * (ha * 0.5), w)
    med = _ramp(np.abs(u - med_shift - 0.01) - mw, w) * _ramp(v - hcy, 0.05)
    knob = _ramp(np.sqrt((u - (mw + 0.03)) ** 2 + (v + 0.3) ** 2) - 0.07, w)
    solid = np.maximum(np.maximum(heart, med), knob)
    A += 0.07 * heart + 0.04 * med
    trachea = _ramp(np.abs(u - med_shift * 0.5) - 0.035, w) * _ramp(v + 0.3, 0.06)
    A -= 0.08 * trachea

    # --- lungs: air, vessels, parenchyma ---
    air = lung * (1.0 - solid)
    edema = sev("Edema")
    hil_x = 0.22
    hdx = au - hil_x
    hdy = v + 0.04
    r = np.sqrt(hdx * hdx + hdy * hdy)
    theta = np.arctan2(hdy, hdx)
    markings = np.clip(np.cos(theta * p.marking_count + p.marking_phase + 9.0 * r + 0.5 * tex_fine), 0.0, 1.0)
    markings = markings * markings * np.exp(-r * 2.6)
    texture = 0.022 * tex_fine + 0.012 * tex_coarse
    vessel_amp = 0.09 * (1.0 + 1.2 * edema)
    lung_detail = vessel_amp * markings + texture

    # pneumothorax: no markings, darker, visible pleural line
    ptx = sev("Pneumothorax")
    ptx_line = None
    if ptx:
        sgn = _side_sign(p.pneumothorax_side)
        cfrac = 1.0 - (1.0 - p.pneumothorax_collapse) * (0.5 if ptx < 1 else 1.0)
        hx, hy = sgn * (lungs.cx - 0.05), -0.02
        uc = hx + (u - hx) * (1.0 / cfrac)
        vc = hy + (v - hy) * (1.0 / cfrac)
        fc, _, _ = lungs.field(uc, vc)
        side_mask = (u * sgn > 0).astype(np.float32)
        inner = _ramp((fc - 1.0) * (lungs.a * cfrac * 0.5), pix)
        region = lung * side_mask * (1.0 - inner)
        lung_detail = lung_detail * (1.0 - region)
        A -= 0.05 * ptx * region
        ptx_line = np.clip(1.0 - np.abs(fc - 1.0) * (lungs.a * cfrac * 0.5 / lw_line), 0.0, 1.0) * lung * side_mask
    A -= 0.36 * air
    A += lung_detail * air
    if ptx_line is not None:
        A += 0.14 * ptx * ptx_line

    # --- bones: spine, ribs, clavicles, scapulae ---
    thorax = _ramp(((au / (lungs.lw + 0.08)) ** 2 + ((v - 0.5 * (lungs.top + lungs.bot[1])) / (0.52 * (lungs.bot[1] - lungs.top))) ** 2 - 1.0) * 0.3, w)
    thorax = thorax * (0.3 + 0.7 * lung_outer) * np.clip(1.0 - below * 4.0, 0.2, 1.0)
    spine = _ramp(au - 0.075, w)
    A += spine * (0.05 + 0.03 * solid + 0.02 * np.cos(v * (2 * math.pi / 0.11)))
    t_post = v + 0.2 * au - 0.85 * u * u
    fr = sev("Fracture")
    if fr:
        sgn = _side_sign(p.fracture_side)
        fu = sgn * (lungs.medial + p.fracture_site[0] * (lungs.lw - lungs.medial))
        fv = lungs.top + p.fracture_site[1] * (lungs.bot[0] - lungs.top)
        window = ((u - fu) * sgn > 0) * (np.abs(u - fu) < 0.18) * (np.abs(v - fv) < 0.14)
        t_post = t_post + (0.4 * p.rib_spacing * fr) * window
    ribs_post = np.cos((t_post * (1.0 / p.rib_spacing) + p.rib_phase) * (2 * math.pi))
    ribs_post = np.clip((ribs_post - 0.35) * 1.8, 0.0, 1.0)
    if fr:
        gap = _ramp(np.abs(u - fu) - max(0.015, 0.6 * pix), pix) * (np.abs(v - fv) < 0.14)
        ribs_post = ribs_post * (1.0 - gap * fr)
    t_ant = v + 0.42 * au
    ribs_ant = np.clip((np.cos((t_ant * (1.0 / (p.rib_spacing * 1.15)) + 0.3) * (2 * math.pi)) - 0.6) * 2.5, 0.0, 1.0)
    lat = (au > 0.1).astype(np.float32)
    A += thorax * lat * (1.0 - 0.7 * solid) * (0.13 * ribs_post + 0.045 * ribs_ant * (au > 0.2))
    cl_v0 = lungs.top + (0.16 if not is_ap else 0.08)
    cl_centre = cl_v0 - (0.18 if not is_ap else 0.08) * (au - 0.08) + 0.3 * (au - 0.3) ** 2
    clav = _ramp(np.abs(v - cl_centre) - 0.022, w) * _ramp(np.abs(au - 0.36) - 0.28, w)
    A += 0.12 * clav
    sc_x = 0.64 if is_ap else 0.84
    sc = _ramp((((au - sc_x * p.body_width) / 0.2) ** 2 + ((v + 0.45) / 0.34) ** 2 - 1.0) * 0.1, w)
    A += (0.07 if is_ap else 0.05) * sc * body

    # stomach bubble under the left dome
    A -= 0.1 * np.exp(-(((u - 0.4) / 0.1) ** 2 + ((v - (lungs.bot[1] + 0.13)) / 0.06) ** 2)) * body

    # --- findings ---
    opaque = lung * (1.0 - 0.6 * solid)
    eff = sev("Pleural Effusion")
    if eff:
        size_e = p.effusion_size * (0.55 if eff < 1 else 1.0)
        side_ok = np.ones_like(u) if p.effusion_side == "bilateral" else (u * _side_sign(p.effusion_side) > 0)
        top = bot - size_e - 0.16 * np.clip(du, 0.0, 1.0) ** 2 + 0.06 * np.clip(-du, 0.0, 1.0)
        depth = v - top
        fluid = np.clip(depth * (1.0 / 0.05) + 0.5, 0.0, 1.0) * (0.75 + 0.25 * np.clip(depth * 5.0, 0.0, 1.0))
        A += (0.36 * min(1.0, eff + 0.25)) * fluid * air * side_ok
    for label, site, amp, sharp in (
        ("Lung Opacity", p.opacity_site, 0.17, 0.0),
        ("Pneumonia", p.pneumonia_site, 0.22, 0.5),
        ("Consolidation", p.consolidation_site, 0.28, 1.0),
    ):
        sv = sev(label)
        if not sv:
            continue
        side, ux, uy, rad = site
        sx = _side_sign(side) * (lungs.medial + ux * (lungs.lw - lungs.medial))
        sy = lungs.top + uy * (lungs.bot[0 if side == "right" else 1] - lungs.top)
        blob = np.exp(-((u - sx) ** 2 + ((v - sy) * 1.2) ** 2) * (1.0 / (2 * rad * rad)))
        patchy = np.clip(0.65 + 0.45 * tex_coarse + 0.2 * tex_fine, 0.0, 1.4)
        if sharp:
            blob = np.clip(blob * (1.0 + sharp) - 0.25 * sharp, 0.0, 1.0)
        A += amp * sv * blob * patchy * opaque
    if edema:
        haze = np.exp(-((hdx / 0.2) ** 2 + (hdy / 0.3) ** 2) * 0.5)
        A += (0.16 * edema) * haze * opaque + 0.03 * edema * air
    if atel:
        sgn = _side_sign(p.atelectasis_side)
        ux, uy, ang, length = p.atelectasis_site
        ax = sgn * (lungs.medial + ux * (lungs.lw - lungs.medial))
        ay = lungs.top + uy * (lungs.bot[0 if p.atelectasis_side == "right" else 1] - lungs.top)
        ca, sa = math.cos(ang), math.sin(ang)
        along = (u - ax) * ca + (v - ay) * sa
        across = -(u - ax) * sa + (v - ay) * ca
        band = _ramp(np.abs(across) - max(0.03, pix), w) * _ramp(np.abs(along) - length / 2, 0.06)
        A += 0.3 * atel * band * opaque
    les = sev("Lung Lesion")
    if les:
        side, ux, uy, rad = p.nodule_site
        nx = _side_sign(side) * (lungs.medial + ux * (lungs.lw - lungs.medial))
        ny = lungs.top + uy * (lungs.bot[0 if side == "right" else 1] - lungs.top)
        rad = max(rad, 1.5 * pix)
        A += 0.26 * les * _ramp(np.sqrt((u - nx) ** 2 + (v - ny) ** 2) - rad, w) * lung
    po = sev("Pleural Other")
    if po:
        sgn = _side_sign(p.pleural_other_side)
        rim = np.clip((f - 0.82) * (1.0 / 0.08), 0.0, 1.0) * lung * (u * sgn > 0) * ((du > 0.1) | (v < lungs.top + 0.25))
        A += 0.2 * po * rim * (v < (lungs.bot[0] + lungs.top) * 0.5 + 0.15)
    dev = sev("Support Devices")
    if dev and p.devices:
        lines = np.zeros_like(u)
        if "ett" in p.devices:
            lines = np.maximum(lines, 0.8 * _polyline(u, v, ((0.0, -1.1), (0.0, -0.42)), max(0.018, pix)))
        if "ngt" in p.devices:
            pts = ((0.02, -1.1), (0.0, -0.3), (0.05, lungs.bot[1] - 0.02), (0.32, lungs.bot[1] + 0.16))
            lines = np.maximum(lines, _polyline(u, v, pts, lw_line))
        if "central_line" in p.devices:
            pts = ((-0.24, -1.1), (-0.13, -0.62), (-0.05, -0.35), (-0.04, -0.16))
            lines = np.maximum(lines, _polyline(u, v, pts, lw_line))
        if "pacemaker" in p.devices:
            bx, by = 0.52 * p.body_width, -0.6
            box = _ramp(((((u - bx) / 0.1) ** 4 + ((v - by) / 0.07) ** 4) - 1.0) * 0.05, pix)
            lines = np.maximum(lines, 1.6 * box)
            pts = ((bx - 0.05, by + 0.02), (0.15, -0.5), (0.0, -0.25), (-0.06, hcy - 0.1), (hcx + 0.3 * ha, hcy + 0.1))
            lines = np.maximum(lines, _polyline(u, v, pts, lw_line))
        A += 0.32 * dev * lines

    # --- acquisition: exposure, heel effect, gamma, noise ---
    img = A * p.exposure + p.brightness
    img *= 1.0 + 0.04 * y
    img = np.clip(img, 0.0, 1.0) ** p.gamma
    img += p.noise_level * rng.standard_normal((size, size), dtype=np.float32)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# dataset writers
# ---------------------------------------------------------------------------------------------------------


def generic_chest_studies(n: int, seed: int, prevalences: Mapping[str, float] | None = None) -> list[PhantomStudy]:
    """``n`` studies with natural variation and random findings (study i drawn from its own seed)."""
    n = int(n)
    if n < 0:
        raise InputError(f"n = {n}; expected a non-negative number of images")
    return [sample_study(np.random.default_rng([int(seed), 7, i]), prevalences) for i in range(n)]


def generate_generic_chest_images(n: int, size: int, seed: int, prevalences: Mapping[str, float] | None = None) -> np.ndarray:
    """``n`` phantom chest radiographs with natural variation and random findings, shape (n, size, size) uint8."""
    studies = generic_chest_studies(n, seed, prevalences)
    out = np.empty((len(studies), int(size), int(size)), dtype=np.uint8)
    for i, study in enumerate(studies):
        out[i] = render_phantom(study, size)
    return out


def study_dir(subject_id: int, study_id: int) -> Path:
    """``files/p10/p10000032/s50414267`` (relative), as in MIMIC-CXR-JPG."""
    sub = str(int(subject_id))
    return Path("files") / f"p{sub[:2]}" / f"p{sub}" / f"s{int(study_id)}"


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise InputError(f"phantom root {root} is a file; expected a directory path")
    if root.is_dir() and any(root.iterdir()) and not (root / METADATA_CSV).is_file():
        raise InputError(
            f"phantom root {root} is a non-empty directory without {METADATA_CSV}; refusing to replace it — "
            "expected an empty/missing directory or an earlier phantom dataset"
        )


def generate_mimic_cxr(
    root: str | os.PathLike,
    n_patients: int,
    studies_per_patient: tuple[int, int] = (1, 3),
    image_size: int = 128,
    seed: int = 0,
    prevalences: Mapping[str, float] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Write a phantom MIMIC-CXR-JPG v2.0.0 dataset under ``root`` (replacing an earlier phantom there).

    Returns one row per image: ids, view, sex, age, study_date, split, ctr, relative ``image_path`` and
    ``report_path``, findings, impression and the 14 labels.
    """
    root = Path(root)
    try:
        n_patients = int(n_patients)
        lo, hi = (int(x) for x in studies_per_patient)
        image_size = int(image_size)
        seed = int(seed)
    except (TypeError, ValueError):
        raise InputError(
            f"generate_mimic_cxr got n_patients={n_patients!r}, studies_per_patient={studies_per_patient!r}, "
            f"image_size={image_size!r}, seed={seed!r}; expected integers and a (min, max) pair"
        ) from None
    if n_patients < 1:
        raise InputError(f"n_patients = {n_patients}; expected at least 1")
    if not 1 <= lo <= hi:
        raise InputError(f"studies_per_patient = {studies_per_patient}; expected (min, max) with 1 <= min <= max")
    if image_size < 16:
        raise InputError(f"image_size = {image_size}; expected at least 16 pixels")
    prev = _check_prevalences(prevalences)
    _check_root(root)

    ids_rng = np.random.default_rng([seed, 1])
    n_studies = ids_rng.integers(lo, hi + 1, size=n_patients)
    subject_ids = 10_000_000 + np.sort(ids_rng.choice(10_000_000, size=n_patients, replace=False))
    study_ids = 50_000_000 + ids_rng.choice(10_000_000, size=int(n_studies.sum()), replace=False)
    # patient-level split, ~80/10/10, at least one validate and one test patient when there are >= 3
    order = np.random.default_rng([seed, 2]).permutation(n_patients)
    n_val = n_test = max(1, int(round(0.1 * n_patients))) if n_patients >= 3 else 0
    split_of = np.array(["train"] * n_patients, dtype=object)
    split_of[order[:n_test]] = "test"
    split_of[order[n_test : n_test + n_val]] = "validate"

    rows: list[dict] = []
    patients: list[dict] = []
    with atomic_path(root) as tmp:
        tmp.mkdir(parents=True)
        bar = progress_bar(total=int(n_studies.sum()), desc="phantom MIMIC-CXR", unit="img", disable=not progress)
        k = 0
        for i in range(n_patients):
            prng = np.random.default_rng([seed, 3, i])
            patient = sample_patient(prng)
            subject_id = int(subject_ids[i])
            patients.append(
                {
                    "subject_id": subject_id,
                    "gender": patient["sex"],
                    "anchor_age": patient["anchor_age"],
                    "anchor_year": patient["anchor_year"],
                    "anchor_year_group": patient["anchor_year_group"],
                    "dod": "",
                }
            )
            day = _dt.date(patient["anchor_year"], 1, 1) + _dt.timedelta(days=int(prng.integers(0, 365)))
            for j in range(int(n_studies[i])):
                if j:
                    day = day + _dt.timedelta(days=int(prng.integers(1, 700)))
                srng = np.random.default_rng([seed, 4, i, j])
                study = sample_study(
                    srng,
                    prev,
                    subject_id=subject_id,
                    study_id=int(study_ids[k]),
                    study_date=day.strftime("%Y%m%d"),
                    age=min(91, patient["anchor_age"] + day.year - patient["anchor_year"]),
                    patient=patient,
                )
                k += 1
                image = render_phantom(study, image_size)
                rel_dir = study_dir(subject_id, study.study_id)
                (tmp / rel_dir).mkdir(parents=True, exist_ok=True)
                rel_img = rel_dir / f"{study.dicom_id}.jpg"
                Image.fromarray(image).save(tmp / rel_img, format="JPEG", quality=95)
                findings, impression = make_report(study, srng)
                rel_report = rel_dir.with_suffix(".txt")
                (tmp / rel_report).write_text(format_mimic_report(findings, impression, srng, view=study.view, sex=study.sex))
                rows.append(
                    {
                        "dicom_id": study.dicom_id,
                        "subject_id": subject_id,
                        "study_id": study.study_id,
                        "view": study.view,
                        "sex": study.sex,
                        "age": study.age,
                        "study_date": study.study_date,
                        "study_time": study.study_time,
                        "orientation": study.patient_orientation,
                        "split": split_of[i],
                        "ctr": study.ctr,
                        "image_path": rel_img.as_posix(),
                        "report_path": rel_report.as_posix(),
                        "findings": findings,
                        "impression": impression,
                        **study.labels,
                    }
                )
                bar.update(1)
        bar.close()

        summary = pd.DataFrame(rows)
        metadata = pd.DataFrame(
            {
                "dicom_id": summary["dicom_id"],
                "subject_id": summary["subject_id"],
                "study_id": summary["study_id"],
                "PerformedProcedureStepDescription": summary["view"].map(_PROCEDURE),
                "ViewPosition": summary["view"],
                "Rows": image_size,
                "Columns": image_size,
                "StudyDate": summary["study_date"].astype(int),
                "StudyTime": summary["study_time"],
                "ProcedureCodeSequence_CodeMeaning": summary["view"].map(_PROCEDURE),
                "ViewCodeSequence_CodeMeaning": summary["view"].map(_VIEW_MEANING),
                "PatientOrientationCodeSequence_CodeMeaning": summary["orientation"],
            },
            columns=list(METADATA_COLUMNS),
        )
        write_csv_atomic(metadata, tmp / METADATA_CSV)
        chexpert = summary[list(CHEXPERT_COLUMNS)].sort_values(["subject_id", "study_id"], kind="stable")
        write_csv_atomic(chexpert, tmp / CHEXPERT_CSV)
        write_csv_atomic(summary[list(SPLIT_COLUMNS)], tmp / SPLIT_CSV)
        write_csv_atomic(pd.DataFrame(patients, columns=list(PATIENTS_COLUMNS)), tmp / PATIENTS_CSV)
    return summary.drop(columns=["study_time", "orientation"])


def with_labels(study: PhantomStudy, **changes: float) -> PhantomStudy:
    """Copy of ``study`` with some labels changed (keyword names use underscores for spaces)."""
    labels = dict(study.labels)
    for key, value in changes.items():
        label = key.replace("_", " ")
        if label not in labels:
            raise InputError(f"unknown label {label!r}; expected one of {list(CHEXPERT_LABELS)}")
        labels[label] = float(value)
    return dataclasses.replace(study, labels=labels)
