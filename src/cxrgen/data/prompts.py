"""Prompt builders: Chambon's simple prompts, de Wilde's embedding-name prompts, Zafar's structured prompts."""

from __future__ import annotations

import ast
import math
import re

import pandas as pd

from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError

#: Chambon et al. 2022 (3.4, Table 4).
CHAMBON_PROMPTS = {
    "normal": "a photo of a lung xray",
    "effusion": "a photo of a lung xray with a visible pleural effusion",
    "style": "a photo in the style of a lung xray",
}
#: CheXpert labels written into a synthetic set's manifest per prompt name (blank for prompts not listed).
PROMPT_LABELS: dict[str, dict[str, float]] = {
    "normal": {"No Finding": 1.0, "Pleural Effusion": 0.0},
    "effusion": {"No Finding": 0.0, "Pleural Effusion": 1.0},
}

#: Zafar et al. 2023 prompt complexity levels, from the simplest to the full structured prompt.
ZAFAR_LEVELS = ("modality", "sex", "age_sex", "view", "full")
#: Not the paper's: the full prompt's attributes without the field names, age, projection and modality
#: (``chest x-ray, male PA, pleural effusion``), for a text encoder whose context is too short for the full
#: prompt (the miniature foundation's BPE tokenizer spells the field names out letter by letter, so the full
#: prompt exceeds its 32 tokens and the diagnosis, printed last, is cut off).
ZAFAR_COMPACT = "compact"
ZAFAR_STYLES = ZAFAR_LEVELS + (ZAFAR_COMPACT,)
#: PadChest ``ViewPosition_DICOM`` values -> the short codes Zafar et al. print ("view PA").
PADCHEST_VIEW_POSITIONS = {"POSTEROANTERIOR": "PA", "ANTEROPOSTERIOR": "AP", "LATERAL": "LATERAL", "PA": "PA",
                           "AP": "AP", "LL": "LATERAL", "RL": "LATERAL"}


def _finding_list(row: pd.Series) -> list[str]:
    found = [l.lower() for l in CHEXPERT_LABELS if l != "No Finding" and row.get(l) == 1.0]
    return found or ["normal"]


def flatten_localizations(value: str) -> str:
    """PadChest's LabelsLocalizationsBySentence, e.g. ``[['calcified granuloma', 'loc right upper lobe'], ['normal']]``,
    as Zafar et al. print it: ``calcified granuloma, loc right upper lobe, normal`` (order kept, repeats dropped)."""
    try:
        nested = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value.strip()
    stack, flat = [nested], []
    while stack:
        item = stack.pop()
        if isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif str(item).strip() and str(item).strip() not in flat:
            flat.append(str(item).strip())
    return ", ".join(flat)


def zafar_prompt(row: pd.Series, level: str = "full", max_findings: int | None = None) -> str:
    """Zafar et al.'s PadChest-style prompt, e.g.
    ``chest x-ray, age 47 male, view PA, projection PA, modality DX, diagnosis pleural effusion``.

    Missing fields are omitted rather than printed as 'nan'. PadChest rows carry
    ``labels_localizations`` (LabelsLocalizationsBySentence), used for the diagnosis when present, and may carry
    ``view_position`` (ViewPosition_DICOM, see :func:`padchest_prompt_fields`), printed as the view when present.
    ``level="compact"`` (:data:`ZAFAR_COMPACT`, not one of the paper's levels) gives ``chest x-ray, male PA,
    pleural effusion``; ``max_findings`` (compact only) lists at most that many findings, the first ones in the
    builder's order (CheXpert label order, or PadChest's sentence order), so a short text context keeps whole
    findings instead of cutting one mid-word (see :func:`zafar_findings`).
    """
    if level not in ZAFAR_STYLES:
        raise InputError(f"unknown prompt level {level!r}; expected one of {list(ZAFAR_STYLES)}")
    parts = ["chest x-ray"]
    if level == "modality":
        return parts[0]
    sex = {"M": "male", "F": "female"}.get(str(row.get("sex", "")), "")
    age = row.get("age")
    has_age = age is not None and not (isinstance(age, float) and math.isnan(age))
    view = _text(row.get("view_position")) or _text(row.get("view"))
    if level == ZAFAR_COMPACT:
        who = " ".join(x for x in (sex, view) if x)
        findings = zafar_findings(row)
        if max_findings is not None:
            if not (isinstance(max_findings, int) and max_findings >= 1):
                raise InputError(f"max_findings={max_findings!r}; expected None or an integer >= 1")
            findings = findings[:max_findings]
        return ", ".join(parts + ([who] if who else []) + findings)
    if max_findings is not None:
        raise InputError(f"max_findings applies to the {ZAFAR_COMPACT!r} level only, not {level!r}")
    if level == "sex":
        return ", ".join(parts + ([sex] if sex else []))
    who = " ".join(x for x in (f"age {int(age)}" if has_age else "", sex) if x)
    if who:
        parts.append(who)
    if level == "age_sex":
        return ", ".join(parts)
    if view:
        parts.append(f"view {view}")
    if level == "view":
        return ", ".join(parts)
    projection = str(row.get("projection", "") or view)
    if projection and projection != "nan":
        parts.append(f"projection {projection}")
    modality = str(row.get("modality", "") or "DX")
    if modality != "nan":
        parts.append(f"modality {modality}")
    parts.append(f"diagnosis {_diagnosis(row)}")
    return ", ".join(parts)


def _text(value) -> str:
    """A field as text; missing (None, NaN, blank, 'nan') -> ''."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value).strip()
    return "" if text.lower() in ("nan", "none") else text


def _diagnosis(row: pd.Series) -> str:
    return ", ".join(zafar_findings(row))


def zafar_findings(row: pd.Series) -> list[str]:
    """The diagnosis items a Zafar prompt prints, in order: PadChest's flattened ``labels_localizations`` when
    present, else the positive CheXpert findings (label order), else ``["normal"]``."""
    diagnosis = row.get("labels_localizations")
    diagnosis = flatten_localizations(diagnosis) if isinstance(diagnosis, str) and diagnosis.strip() else ""
    return [d.strip() for d in diagnosis.split(",") if d.strip()] if diagnosis else _finding_list(row)


def padchest_prompt_fields(raw: pd.Series | dict) -> dict:
    """The prompt fields of one *raw* PadChest CSV row, named as :func:`zafar_prompt` reads them.

    Zafar et al. IV.C: age = StudyDate_DICOM - PatientBirth (``StudyDate_DICOM`` is ``YYYYMMDD``, ``PatientBirth``
    a year such as ``1930.0``: the study year minus the birth year), sex = PatientSex_DICOM (M/F; anything else is
    missing), view = ViewPosition_DICOM (``POSTEROANTERIOR`` -> ``PA``, see :data:`PADCHEST_VIEW_POSITIONS`; other
    values kept), projection = Projection, modality = Modality_DICOM, diagnosis = LabelsLocalizationsBySentence.
    Missing or unparsable fields come back as ``None`` / NaN, so the prompt omits them.
    """
    raw = dict(raw)
    study, birth = _text(raw.get("StudyDate_DICOM")), _text(raw.get("PatientBirth"))
    try:
        age = float(int(study[:4]) - float(birth)) if len(study) >= 4 and birth else math.nan
    except ValueError:
        age = math.nan
    if not (0 <= age <= 120):
        age = math.nan
    sex = _text(raw.get("PatientSex_DICOM")).upper()
    position = _text(raw.get("ViewPosition_DICOM")).upper()
    return {
        "age": age,
        "sex": sex if sex in ("M", "F") else None,
        "view_position": PADCHEST_VIEW_POSITIONS.get(position, position) or None,
        "projection": _text(raw.get("Projection")) or None,
        "modality": _text(raw.get("Modality_DICOM")) or math.nan,
        "labels_localizations": _text(raw.get("LabelsLocalizationsBySentence")) or None,
    }


def chambon_prompt(row: pd.Series) -> str:
    if row.get("Pleural Effusion") == 1.0:
        return CHAMBON_PROMPTS["effusion"]
    return CHAMBON_PROMPTS["normal"]


#: de Wilde et al.'s name for the No Finding class (its token is ``<healthy>``)
HEALTHY = "No Finding"


def class_slug(label: str) -> str:
    """``No Finding`` -> ``healthy`` (de Wilde's name), others lower-case with dashes (``pleural-effusion``)."""
    if not isinstance(label, str) or not label.strip():
        raise InputError(f"class label {label!r}; expected a CheXpert label such as 'Cardiomegaly'")
    return "healthy" if label == HEALTHY else re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def class_token(label: str) -> str:
    """The textual-inversion placeholder of a class: ``<healthy>``, ``<cardiomegaly>``, ``<pleural-effusion>``, ..."""
    return f"<{class_slug(label)}>"
