"""De Wilde et al. 2023's class names, placeholder tokens and per-embedding trainer settings, without torch: the
study (:mod:`cxrgen.studies.dewilde`) and the workflow's DAG-time checks (``rules/dewilde_common.smk``) share them."""

from __future__ import annotations

import re
from collections.abc import Mapping

from cxrgen.errors import InputError

HEALTHY = "No Finding"


def class_slug(label: str) -> str:
    """``No Finding`` -> ``healthy`` (the paper's name), others lower-case with dashes (``pleural-effusion``)."""
    if not isinstance(label, str) or not label.strip():
        raise InputError(f"class label {label!r}; expected a CheXpert label such as 'Cardiomegaly'")
    return "healthy" if label == HEALTHY else re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")


def class_token(label: str) -> str:
    """The placeholder token of a class: ``<healthy>``, ``<cardiomegaly>``, ``<pleural-effusion>``, ..."""
    return f"<{class_slug(label)}>"


def embedding_settings(settings: Mapping, label: str, vectors: int, cases: int) -> dict:
    """Textual-inversion trainer settings of one embedding (the token alone as the training prompt)."""
    out = dict(settings)
    out.update(token=class_token(label), num_vectors=int(vectors), classes=[label], max_images=int(cases))
    return out
