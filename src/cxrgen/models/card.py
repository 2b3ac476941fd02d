"""The model card (``README.md`` with YAML front matter, the Hugging Face hub's format) of every trained folder.

One function, :func:`write_model_card`, called by each trainer's save path: foundation, adapters, textual
projection, Cheff stages and cascade, classifiers. The front matter holds the base model, the library, the
training configuration, the data (sample name, number of images), the metrics the trainer measured, and the
terms (research use, not for clinical use); the body says what the folder is and how to load it
(:mod:`cxrgen.models.artefacts`). Written atomically, and last, so that it describes what is in the folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from cxrgen.errors import InputError
from cxrgen.io import write_text_atomic

CARD_FILE = "README.md"
LICENSE_NAME = "research-only"
TERMS = ("Research use only, not for clinical use: this model was trained to reproduce research on generating "
         "chest X-rays; its images are not diagnostic and must not inform the care of any patient. Its weights "
         "carry the terms of its base model and of the data it was trained on (e.g. the PhysioNet credentialed "
         "licence of MIMIC-CXR).")


def _plain(value):
    """JSON-able plain values (tuples -> lists, numpy scalars and paths -> numbers / strings)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def loss_metrics(losses) -> dict:
    """First and final training loss (the mean of the last tenth of the steps), as every trainer's card reports."""
    import numpy as np

    losses = [float(v) for v in losses]
    tail = losses[-max(1, len(losses) // 10):] if losses else [float("nan")]
    return {"first_loss": losses[0] if losses else float("nan"), "final_loss": float(np.mean(tail))}


def write_model_card(folder, *, base_model=None, training_config: dict | None = None, data: dict | None = None,
                     metrics: dict | None = None, title: str | None = None) -> Path:
    """Write ``<folder>/README.md``; the folder's kind (and so the library and the loading code) is recognised
    from its files, so call this once they are written. ``base_model``: what it was trained from (a hub id or
    folder; None for a model trained from scratch). ``data``: e.g. ``{"sample": name, "n_images": n}``."""
    from cxrgen.models.artefacts import describe

    folder = Path(folder)
    art = describe(folder)
    meta = {
        "library_name": art.library,
        **({"base_model": str(base_model)} if base_model else {}),
        "license": "other",
        "license_name": LICENSE_NAME,
        "tags": ["cxrgen", "chest-x-ray", "medical-imaging", "research-only", art.kind]
                + ([f"method-{art.method}"] if art.method else []),
        "cxrgen_artefact": art.kind,
        **({"method": art.method} if art.method else {}),
        "training_config": _plain(training_config or {}),
        "data": _plain(data or {}),
        "metrics": _plain(metrics or {}),
        "intended_use": "research use, not for clinical use",
    }
    front = yaml.safe_dump(meta, sort_keys=False, default_flow_style=False, allow_unicode=True)
    here = dataclasses.replace(art, folder=Path(folder.name))  # the loading code names the folder, not a temp path
    body = [
        f"# {title or folder.name}",
        "",
        f"{art.description[0].upper()}{art.description[1:]}, trained by cxrgen (a reproduction of four papers on "
        "adapting diffusion models to chest X-rays).",
        "",
        f"**{TERMS}**",
        "",
        "## How to load",
        "",
        "From the folder that holds this one:",
        "",
        "```python",
        here.load,
        "```",
        "",
        "## Training",
        "",
        f"Base model: {base_model or 'none (trained from scratch)'}. "
        f"Data: {', '.join(f'{k} {v}' for k, v in (data or {}).items()) or 'see the training configuration'}. "
        "The training configuration is in the front matter above.",
    ]
    if metrics:
        body += ["", "## Metrics (this run)", "", "| metric | value |", "|---|---|"]
        body += [f"| {k} | {v} |" for k, v in _plain(metrics).items()]
    write_text_atomic(folder / CARD_FILE, f"---\n{front}---\n\n" + "\n".join(body).rstrip() + "\n")
    return folder / CARD_FILE


def update_model_card(folder, data: dict | None = None, metrics: dict | None = None) -> Path:
    """Rewrite the card of ``folder`` with more data / metrics entries (e.g. the sample's name, known to the caller
    of a trainer only), keeping what it held."""
    meta = read_model_card(folder)
    title = Path(folder).name
    return write_model_card(folder, base_model=meta.get("base_model"), training_config=meta.get("training_config"),
                            data={**(meta.get("data") or {}), **(data or {})},
                            metrics={**(meta.get("metrics") or {}), **(metrics or {})}, title=title)


def read_model_card(folder) -> dict:
    """The front matter of ``<folder>/README.md``; InputError when it is missing or has none."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        raise InputError(f"{path} missing; expected a model card written by cxrgen.models.card.write_model_card")
    text = path.read_text()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        raise InputError(f"{path} has no YAML front matter; expected it between '---' lines at the top")
    return yaml.safe_load(text[4:text.index("\n---\n", 4)]) or {}


__all__ = ["CARD_FILE", "loss_metrics", "read_model_card", "update_model_card", "write_model_card"]
