"""Free-text radiology reports for phantom studies, written in the style of MIMIC-CXR reports.

``make_report`` turns a study's CheXpert labels into a FINDINGS and an IMPRESSION section that agree with
them: positive (1) findings are described and named in the impression, uncertain (-1) ones are hedged
("possible ...", "... cannot be excluded"), negative (0) ones are negated ("No pleural effusion or
pneumothorax."), blank (NaN) ones are not mentioned.  A study with No Finding gets a "No acute
cardiopulmonary process." style impression.  ``format_mimic_report`` lays the sections out like the real
``mimic-cxr-reports`` text files (header, indication, comparison, `` FINDINGS:``, `` IMPRESSION:``).

``MENTION_PATTERNS`` holds, per label, a regular expression that every positive or uncertain impression
phrase of that label matches (case-insensitive), so tests and label checks can look for a mention.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping
from typing import Any

import numpy as np

from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError

#: label -> regex that each positive/uncertain impression phrase for the label matches (case-insensitive)
MENTION_PATTERNS: dict[str, str] = {
    "Atelectasis": r"atelecta",
    "Cardiomegaly": r"cardiomegaly",
    "Consolidation": r"consolidation",
    "Edema": r"edema",
    "Enlarged Cardiomediastinum": r"mediastin",
    "Fracture": r"fracture",
    "Lung Lesion": r"nodule|mass|lesion",
    "Lung Opacity": r"opacit",
    "Pleural Effusion": r"effusion",
    "Pleural Other": r"pleural thickening|pleural scarring",
    "Pneumonia": r"pneumonia",
    "Pneumothorax": r"pneumothorax",
    "Support Devices": r"tube|line|pacemaker|catheter",
}

#: regex matched by the impression of a study without any positive or uncertain pathology
NO_ACUTE_PATTERN = r"no acute"

NO_ACUTE = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "No acute intrathoracic process.",
    "No acute cardiopulmonary process is identified.",
)

#: impression order: most urgent first
_IMPRESSION_ORDER = (
    "Pneumothorax",
    "Pneumonia",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
    "Lung Opacity",
    "Atelectasis",
    "Cardiomegaly",
    "Enlarged Cardiomediastinum",
    "Lung Lesion",
    "Fracture",
    "Pleural Other",
)
_LUNG = ("Lung Opacity", "Consolidation", "Pneumonia", "Edema", "Atelectasis", "Lung Lesion")
_PLEURA = ("Pleural Effusion", "Pneumothorax", "Pleural Other")
_HEART = ("Cardiomegaly", "Enlarged Cardiomediastinum")
_BONE = ("Fracture",)

# --- positive phrasings; fields: {side} {Side} {zone} {size} {Size} {mm} {rib} -----------------------------
_POS_FINDINGS = {
    "Atelectasis": (
        "Linear opacity at the {side} lung base is compatible with plate-like atelectasis.",
        "There is {side} basilar atelectasis with slight elevation of the {side} hemidiaphragm.",
        "Band-like opacity in the {side} lower lung reflects subsegmental atelectasis.",
    ),
    "Cardiomegaly": (
        "The heart is enlarged.",
        "The cardiac silhouette is enlarged.",
        "There is {size} enlargement of the cardiac silhouette.",
    ),
    "Consolidation": (
        "There is dense consolidation in the {side} {zone}.",
        "Focal consolidation is seen in the {side} {zone}.",
        "Airspace consolidation involves the {side} {zone}.",
    ),
    "Edema": (
        "There is perihilar haziness with vascular indistinctness, compatible with pulmonary edema.",
        "Pulmonary vascular congestion with {size} interstitial edema.",
        "Bilateral perihilar opacities are consistent with {size} pulmonary edema.",
    ),
    "Enlarged Cardiomediastinum": (
        "The mediastinum is widened.",
        "The cardiomediastinal silhouette is enlarged.",
        "There is widening of the superior mediastinum.",
    ),
    "Fracture": (
        "There is a fracture of the {side} {rib} rib.",
        "A displaced fracture of a {side} lateral rib is seen.",
        "Cortical discontinuity of the {side} {rib} rib is compatible with fracture.",
    ),
    "Lung Lesion": (
        "A {mm} mm nodule is seen in the {side} {zone}.",
        "There is a rounded {mm} mm nodular opacity in the {side} {zone}.",
        "A {side} {zone} pulmonary nodule measures {mm} mm.",
    ),
    "Lung Opacity": (
        "There is a hazy opacity in the {side} {zone}.",
        "Patchy opacity is seen in the {side} {zone}.",
        "Ill-defined opacity projects over the {side} {zone}.",
    ),
    "Pleural Effusion": (
        "There is a {size} {side} pleural effusion with blunting of the costophrenic angle.",
        "{Size} {side} pleural effusion with a meniscus.",
        "Blunting of the {side} costophrenic angle is consistent with a {size} pleural effusion.",
    ),
    "Pleural Other": (
        "There is {side} pleural thickening.",
        "{Side} apical and lateral pleural thickening is noted.",
        "Pleural scarring is seen along the {side} lateral chest wall.",
    ),
    "Pneumonia": (
        "Patchy airspace disease in the {side} {zone} is concerning for pneumonia.",
        "There is airspace disease in the {side} {zone}, compatible with pneumonia.",
        "Focal airspace disease in the {side} {zone} likely reflects pneumonia.",
    ),
    "Pneumothorax": (
        "There is a {size} {side} pneumothorax with a visible pleural line.",
        "A {size} {side} apical pneumothorax is present.",
        "{Size} {side} pneumothorax; lung markings are absent peripheral to the pleural line.",
    ),
}

_POS_IMPRESSION = {
    "Atelectasis": ("{Side} basilar atelectasis.", "Plate-like atelectasis at the {side} base.", "Mild {side} lower lobe atelectasis."),
    "Cardiomegaly": ("Cardiomegaly.", "{Size} cardiomegaly.", "Stable {size} cardiomegaly."),
    "Consolidation": ("{Side} {zone} consolidation.", "Consolidation in the {side} {zone}.", "Focal {side} {zone} consolidation."),
    "Edema": ("{Size} pulmonary edema.", "Pulmonary edema.", "{Size} interstitial edema."),
    "Enlarged Cardiomediastinum": ("Widened mediastinum.", "Enlarged cardiomediastinal silhouette.", "Mediastinal widening."),
    "Fracture": ("{Side} {rib} rib fracture.", "Acute {side} rib fracture.", "Fracture of the {side} {rib} rib."),
    "Lung Lesion": (
        "{mm} mm {side} {zone} nodule; CT is recommended for further evaluation.",
        "{Side} {zone} pulmonary nodule.",
        "{Side} {zone} nodular lesion, further evaluation with chest CT recommended.",
    ),
    "Lung Opacity": ("{Side} {zone} opacity.", "Hazy {side} {zone} opacity.", "Patchy opacity in the {side} {zone}."),
    "Pleural Effusion": ("{Size} {side} pleural effusion.", "{Side} pleural effusion.", "{Size} {side} pleural effusion, new."),
    "Pleural Other": ("{Side} pleural thickening.", "{Side} pleural scarring.", "Chronic {side} pleural thickening."),
    "Pneumonia": ("{Side} {zone} pneumonia.", "Findings concerning for {side} {zone} pneumonia.", "Pneumonia in the {side} {zone}."),
    "Pneumothorax": ("{Size} {side} pneumothorax.", "{Side} pneumothorax.", "New {size} {side} pneumothorax."),
}

#: noun phrases for hedged (uncertain) mentions
_UNCERTAIN_NP = {
    "Atelectasis": ("{side} basilar atelectasis", "atelectasis at the {side} base"),
    "Cardiomegaly": ("mild cardiomegaly", "borderline cardiomegaly"),
    "Consolidation": ("early consolidation in the {side} {zone}", "a {side} {zone} consolidation"),
    "Edema": ("mild pulmonary edema", "early interstitial edema"),
    "Enlarged Cardiomediastinum": ("mediastinal widening", "a widened mediastinum"),
    "Fracture": ("a nondisplaced {side} rib fracture", "a subtle {side} rib fracture"),
    "Lung Lesion": ("a small {side} {zone} nodule", "a {side} {zone} nodular lesion"),
    "Lung Opacity": ("a faint {side} {zone} opacity", "subtle opacity in the {side} {zone}"),
    "Pleural Effusion": ("a small {side} pleural effusion", "trace {side} pleural effusion"),
    "Pleural Other": ("{side} pleural thickening", "minimal {side} pleural scarring"),
    "Pneumonia": ("early pneumonia in the {side} {zone}", "{side} {zone} pneumonia"),
    "Pneumothorax": ("a tiny {side} apical pneumothorax", "a small {side} pneumothorax"),
}
_UNCERTAIN_WRAP = (
    "Possible {np}.",
    "{Np} cannot be excluded.",
    "Cannot exclude {np}.",
    "Findings may represent {np}.",
    "Subtle findings, possibly {np}.",
)

_NEGATIONS = {
    "Atelectasis": ("No atelectasis.", "There is no atelectasis."),
    "Cardiomegaly": ("Heart size is normal.", "The heart is normal in size.", "Normal heart size."),
    "Consolidation": ("No focal consolidation.", "There is no focal consolidation.", "No consolidation is seen."),
    "Edema": ("No pulmonary edema.", "There is no pulmonary vascular congestion or edema.", "No evidence of edema."),
    "Enlarged Cardiomediastinum": ("Mediastinal contours are normal.", "The mediastinum is not widened."),
    "Fracture": ("No acute fracture is seen.", "No displaced rib fracture.", "Osseous structures are intact without fracture."),
    "Lung Lesion": ("No suspicious pulmonary nodules.", "No focal lung lesion is identified."),
    "Lung Opacity": ("The lungs are clear without focal opacity.", "No focal opacity."),
    "Pleural Effusion": ("No pleural effusion.", "There is no pleural effusion.", "No pleural effusion is seen."),
    "Pleural Other": ("No pleural thickening.",),
    "Pneumonia": ("No evidence of pneumonia.", "No findings to suggest pneumonia."),
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen."),
}
_NEG_EFFUSION_PTX = (
    "No pleural effusion or pneumothorax.",
    "There is no pleural effusion or pneumothorax.",
    "No pneumothorax or pleural effusion is seen.",
    "No pleural effusion or pneumothorax is identified.",
)
_NEG_HEART_MEDIASTINUM = (
    "The cardiomediastinal silhouette is within normal limits.",
    "Heart size and mediastinal contours are normal.",
    "The cardiac and mediastinal silhouettes are unremarkable.",
)
_CLEAR_LUNGS = ("The lungs are clear.", "The lungs are well expanded and clear.", "Lungs are clear bilaterally.")

_DEVICES = {
    "ett": (
        "An endotracheal tube terminates {cm} cm above the carina.",
        "Endotracheal tube in standard position, {cm} cm above the carina.",
    ),
    "ngt": (
        "An enteric tube courses below the diaphragm with the tip in the stomach.",
        "Nasogastric tube tip is in the stomach.",
    ),
    "central_line": (
        "A right internal jugular central venous catheter ends in the low SVC.",
        "Right-sided central line with the tip at the cavoatrial junction.",
    ),
    "pacemaker": (
        "A left chest wall pacemaker with leads in the right atrium and right ventricle.",
        "Left-sided pacemaker device with intact leads.",
    ),
}
_DEVICES_GENERIC = (
    "Support lines and tubes are in standard position.",
    "Monitoring and support devices are in unchanged position, including a catheter.",
)

_INDICATIONS = (
    "___ year old {person} with cough and fever.  Evaluate for pneumonia.",
    "___ year old {person} with shortness of breath.",
    "___ year old {person} with chest pain.  Eval for acute process.",
    "___ year old {person} with hypoxia.",
    "___ year old {person} status post fall.",
    "History: ___ {person} with dyspnea.",
    "___ year old {person} with line placement.  Evaluate position.",
    "Preoperative chest radiograph.",
)
_EXAMINATION = {"PA": "CHEST (PA AND LAT)", "AP": "CHEST (PORTABLE AP)"}
_RIBS = ("fourth", "fifth", "sixth", "seventh", "eighth", "ninth")


def _choice(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _label_value(labels: Mapping[str, Any], label: str) -> float:
    value = labels.get(label, math.nan)
    if value is None or value == "":
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"label {label!r} holds {value!r}; expected 1, 0, -1 or blank") from None
    if not math.isnan(value) and value not in (1.0, 0.0, -1.0):
        raise InputError(f"label {label!r} holds {value!r}; expected 1, 0, -1 or blank")
    return value


def _zone_name(side: str, uy: float) -> str:
    if uy < 0.38:
        return "upper lobe"
    if uy < 0.62:
        return "middle lobe" if side == "right" else "lingula"
    return "lower lobe"


def _size_word(fraction: float) -> str:
    return "small" if fraction < 0.4 else ("moderate" if fraction < 0.75 else "large")


def _context(study_or_labels, rng: np.random.Generator) -> tuple[dict[str, float], dict[str, dict[str, str]], tuple[str, ...]]:
    """Labels, per-label template fields (side, zone, size, ...) and device kinds."""
    if hasattr(study_or_labels, "labels") and not isinstance(study_or_labels, Mapping):
        study = study_or_labels
        raw = study.labels
    elif isinstance(study_or_labels, Mapping) or hasattr(study_or_labels, "get"):
        study = None
        raw = study_or_labels
    else:
        raise InputError(f"make_report got {type(study_or_labels).__name__}; expected a PhantomStudy or a label mapping")
    labels = {label: _label_value(raw, label) for label in CHEXPERT_LABELS}

    def side_of(attr: str, allow_bilateral: bool = False) -> str:
        if study is not None:
            return getattr(study, attr)
        sides = ("left", "right", "bilateral") if allow_bilateral else ("left", "right")
        return _choice(rng, sides)

    def site_of(attr: str) -> tuple[str, float]:
        if study is not None:
            site = getattr(study, attr)
            return site[0], float(site[2])
        return _choice(rng, ("left", "right")), float(rng.uniform(0.2, 0.9))

    fields: dict[str, dict[str, str]] = {}
    for label, attr in (("Consolidation", "consolidation_site"), ("Pneumonia", "pneumonia_site"),
                        ("Lung Opacity", "opacity_site"), ("Lung Lesion", "nodule_site")):
        side, uy = site_of(attr)
        fields[label] = {"side": side, "zone": _zone_name(side, uy)}
    if study is not None:
        fields["Lung Lesion"]["mm"] = str(int(round(study.nodule_site[3] * 150)))
        fields["Pleural Effusion"] = {"side": study.effusion_side, "size": _size_word((study.effusion_size - 0.12) / 0.25)}
        fields["Pneumothorax"] = {"side": study.pneumothorax_side, "size": _size_word((0.9 - study.pneumothorax_collapse) / 0.2)}
        fields["Cardiomegaly"] = {"size": "mild" if study.ctr < 0.57 else ("moderate" if study.ctr < 0.62 else "severe")}
        devices = tuple(study.devices)
    else:
        fields["Lung Lesion"]["mm"] = str(int(rng.integers(6, 20)))
        fields["Pleural Effusion"] = {"side": side_of("effusion_side", True), "size": _choice(rng, ("small", "moderate", "large"))}
        fields["Pneumothorax"] = {"side": side_of("pneumothorax_side"), "size": _choice(rng, ("small", "moderate"))}
        fields["Cardiomegaly"] = {"size": _choice(rng, ("mild", "moderate", "severe"))}
        devices = ()
    fields["Atelectasis"] = {"side": side_of("atelectasis_side")}
    fields["Fracture"] = {"side": side_of("fracture_side"), "rib": _choice(rng, _RIBS)}
    fields["Pleural Other"] = {"side": side_of("pleural_other_side")}
    fields["Edema"] = {"size": _choice(rng, ("mild", "moderate"))}
    for label in CHEXPERT_LABELS:
        f = fields.setdefault(label, {})
        f.setdefault("side", "right")
        f.setdefault("zone", "lower lobe")
        f.setdefault("size", "small")
        f.setdefault("mm", "10")
        f.setdefault("rib", "sixth")
    return labels, fields, devices


def _fill(template: str, fields: dict[str, str]) -> str:
    values = dict(fields)
    side = values.get("side", "")
    if side == "bilateral":
        # "bilateral pleural effusions" reads better than "bilateral pleural effusion"
        template = template.replace("pleural effusion", "pleural effusions")
    values["Side"] = side.capitalize()
    values["Size"] = values.get("size", "").capitalize()
    text = template.format(**values)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\b[aA] ((?:\w+ )?)bilateral", r"\1bilateral", text)
    return text[0].upper() + text[1:]


def _device_sentences(devices: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    if not devices:
        return [_choice(rng, _DEVICES_GENERIC)]
    return [_choice(rng, _DEVICES[d]).format(cm=int(rng.integers(3, 6))) for d in devices if d in _DEVICES] or [
        _choice(rng, _DEVICES_GENERIC)
    ]


def make_report(study_or_labels, rng: np.random.Generator) -> tuple[str, str]:
    """(findings, impression) text agreeing with the labels of a ``PhantomStudy`` or a label mapping.

    With a mapping (dict / pandas row of CheXpert labels) sides, zones and devices are drawn from ``rng``;
    with a ``PhantomStudy`` they follow its rendered anatomy (side of the effusion, site of the nodule, ...).
    """
    labels, fields, devices = _context(study_or_labels, rng)
    pos = {l for l in CHEXPERT_LABELS if labels[l] == 1.0}
    unc = {l for l in CHEXPERT_LABELS if labels[l] == -1.0}
    neg = {l for l in CHEXPERT_LABELS if labels[l] == 0.0}
    findings: list[str] = []
    impression: list[str] = []

    hedged: dict[str, str] = {}
    # in label order, not set order: rng draws must not depend on PYTHONHASHSEED
    for label in [l for l in CHEXPERT_LABELS if l in unc and l not in ("No Finding", "Support Devices")]:
        np_text = _fill(_choice(rng, _UNCERTAIN_NP[label]), fields[label])
        np_text = np_text[0].lower() + np_text[1:]
        hedged[label] = _fill(_choice(rng, _UNCERTAIN_WRAP), {"np": np_text, "Np": np_text[0].upper() + np_text[1:]})

    # devices first, as radiologists do
    device_text: list[str] = []
    if "Support Devices" in pos or "Support Devices" in unc:
        device_text = _device_sentences(devices, rng)
        if "Support Devices" in unc:
            device_text = [f"Possible {device_text[0][0].lower()}{device_text[0][1:]}"] + device_text[1:]
        findings.extend(device_text)

    def section(group: tuple[str, ...]) -> None:
        for label in group:
            if label in pos:
                findings.append(_fill(_choice(rng, _POS_FINDINGS[label]), fields[label]))
            elif label in unc:
                findings.append(hedged[label])

    # lungs
    section(_LUNG)
    if not (pos | unc) & set(_LUNG) and ("Lung Opacity" in neg or labels["No Finding"] == 1.0):
        findings.append(_choice(rng, _CLEAR_LUNGS))
    for label in ("Consolidation", "Pneumonia", "Edema", "Atelectasis", "Lung Lesion"):
        if label in neg:
            findings.append(_choice(rng, _NEGATIONS[label]))
    # pleura
    section(_PLEURA)
    if {"Pleural Effusion", "Pneumothorax"} <= neg:
        findings.append(_choice(rng, _NEG_EFFUSION_PTX))
    else:
        for label in ("Pleural Effusion", "Pneumothorax"):
            if label in neg:
                findings.append(_choice(rng, _NEGATIONS[label]))
    if "Pleural Other" in neg:
        findings.append(_choice(rng, _NEGATIONS["Pleural Other"]))
    # heart and mediastinum
    section(_HEART)
    if set(_HEART) <= neg:
        findings.append(_choice(rng, _NEG_HEART_MEDIASTINUM))
    else:
        for label in _HEART:
            if label in neg:
                findings.append(_choice(rng, _NEGATIONS[label]))
    # bones
    section(_BONE)
    if "Fracture" in neg:
        findings.append(_choice(rng, _NEGATIONS["Fracture"]))
    if not findings:
        findings.append(_choice(rng, _CLEAR_LUNGS))

    for label in _IMPRESSION_ORDER:
        if label in pos:
            impression.append(_fill(_choice(rng, _POS_IMPRESSION[label]), fields[label]))
        elif label in unc:
            impression.append(hedged[label])
    if not impression:
        impression.append(_choice(rng, NO_ACUTE))
        if device_text:
            impression.insert(0, device_text[0])
    elif device_text:
        impression.append(device_text[0])
    if len(impression) >= 2 and rng.random() < 0.3:
        impression_text = "\n".join(f"{i}. {s}" for i, s in enumerate(impression, 1))
    else:
        impression_text = " ".join(impression)
    return " ".join(findings), impression_text


def _wrap(text: str, width: int = 78) -> str:
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines.extend(textwrap.wrap(paragraph, width=width) or [""])
    return "\n".join(" " + line for line in lines)


def format_mimic_report(
    findings: str,
    impression: str,
    rng: np.random.Generator,
    *,
    view: str = "PA",
    sex: str | None = None,
) -> str:
    """A report text laid out like MIMIC-CXR's (sections `` FINDINGS:`` and `` IMPRESSION:``, lines wrapped at 78)."""
    person = {"M": "man", "F": "woman"}.get(sex or "", _choice(rng, ("man", "woman", "patient")))
    indication = _choice(rng, _INDICATIONS).format(person=person)
    comparison = _choice(rng, ("None.", "None.", "___.", "Chest radiograph from ___."))
    examination = _EXAMINATION.get(str(view).upper(), "CHEST (PA AND LAT)")
    parts = [
        " " * 33 + "FINAL REPORT",
        f" EXAMINATION:  {examination}",
        " ",
        f" INDICATION:  {indication}",
        " ",
        f" COMPARISON:  {comparison}",
        " ",
        " FINDINGS: ",
        " ",
        _wrap(findings),
        " ",
        " IMPRESSION: ",
        " ",
        _wrap(impression),
    ]
    return "\n".join(parts) + "\n"
