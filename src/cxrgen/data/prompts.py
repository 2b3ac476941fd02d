"""Prompt builders: Chambon's simple prompts, de Wilde's embedding-name prompts, Zafar's structured prompts."""

from __future__ import annotations

import ast
import math

import pandas as pd

from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError

#: Chambon et al. 2022 (3.4, Table 4).
CHAMBON_PROMPTS = {
    "normal": "a photo of a lung xray",
    "effusion": "a photo of a lung xray with a visible pleural effusion",
    "style": "a photo in the style of a lung xray",
}

#: Zafar et al. 2023 prompt complexity levels, from the simplest to the full structured prompt.
ZAFAR_LEVELS = ("modality", "sex", "age_sex", "view", "full")


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


def zafar_prompt(row: pd.Series, level: str = "full") -> str:
    """Zafar et al.'s PadChest-style prompt, e.g.
    ``chest x-ray, age 47 male, view PA, projection PA, modality DX, diagnosis pleural effusion``.

    Missing fields are omitted rather than printed as 'nan'. PadChest rows carry
    ``labels_localizations`` (LabelsLocalizationsBySentence), used for the diagnosis when present.
    """
    if level not in ZAFAR_LEVELS:
        raise InputError(f"unknown prompt level {level!r}; expected one of {list(ZAFAR_LEVELS)}")
    parts = ["chest x-ray"]
    if level == "modality":
        return parts[0]
    sex = {"M": "male", "F": "female"}.get(str(row.get("sex", "")), "")
    age = row.get("age")
    has_age = age is not None and not (isinstance(age, float) and math.isnan(age))
    if level == "sex":
        return ", ".join(parts + ([sex] if sex else []))
    who = " ".join(x for x in (f"age {int(age)}" if has_age else "", sex) if x)
    if who:
        parts.append(who)
    if level == "age_sex":
        return ", ".join(parts)
    view = str(row.get("view", "") or "")
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
    diagnosis = row.get("labels_localizations")
    diagnosis = flatten_localizations(diagnosis) if isinstance(diagnosis, str) else ""
    if not diagnosis:
        diagnosis = ", ".join(_finding_list(row))
    parts.append(f"diagnosis {diagnosis}")
    return ", ".join(parts)


def chambon_prompt(row: pd.Series) -> str:
    if row.get("Pleural Effusion") == 1.0:
        return CHAMBON_PROMPTS["effusion"]
    return CHAMBON_PROMPTS["normal"]


def dewilde_token(label: str) -> str:
    """The textual-inversion placeholder for a class, e.g. ``<pleural-effusion>``."""
    if label not in CHEXPERT_LABELS:
        raise InputError(f"unknown label name {label!r}; expected one of {list(CHEXPERT_LABELS)}")
    return "<" + label.lower().replace(" ", "-") + ">"
