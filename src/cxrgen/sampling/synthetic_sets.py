"""Synthetic image sets on disk: a folder of ``images/*.png`` and ``manifest.csv`` per model, written by
:func:`generate_set` (one image per prompt and seed, the layout of a materialised sample, so
:func:`cxrgen.data.sampling.load_images` reads it back) and read by :func:`load_set`; :func:`load_zafar_set` reads
the Zafar study's sets (grayscale and RGB parts in one folder). The studies that score, compare and render these
sets all read them through here."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from cxrgen.data.prompts import PROMPT_LABELS
from cxrgen.data.sampling import load_images
from cxrgen.errors import InputError
from cxrgen.io import atomic_path
from cxrgen.progress import progress_bar

MANIFEST = "manifest.csv"
#: The columns of a set written by :func:`generate_set`, before the label columns.
MANIFEST_COLUMNS = ["image_id", "file", "prompt_name", "prompt", "prompt_used", "index", "seed", "method",
                    "adaptation", "steps", "guidance", "guidance_rescale", "scheduler", "height", "width",
                    "foundation", "adapter"]


def _check_name(name: str, what: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name):
        raise InputError(f"{what} {name!r}; expected a non-empty name of letters, digits, '_', '-', '.', '+' "
                         "(it becomes part of file names)")
    return name


def generate_set(
    pipeline,
    prompts: Mapping[str, str],
    n_per_prompt: int,
    seed: int,
    out_dir,
    steps: int = 20,
    guidance: float = 4.0,
    batch_size: int = 8,
    height: int | None = None,
    guidance_rescale: float = 0.0,
    method: str | None = None,
    prompt_labels: Mapping[str, Mapping[str, float]] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Generate ``n_per_prompt`` images per prompt with an :class:`~cxrgen.adapt.pipeline.AdaptedPipeline` and write
    them with ``manifest.csv`` into ``out_dir`` atomically. Returns the manifest.

    ``prompts`` maps a short name (file-name safe, e.g. ``normal``) to the prompt text (e.g.
    :data:`cxrgen.data.prompts.CHAMBON_PROMPTS`). ``method`` is this run's name for the model (default: the
    adapter's method). ``prompt_labels`` (default :data:`PROMPT_LABELS`) adds label columns per prompt name.
    """
    if not isinstance(prompts, Mapping) or not prompts:
        raise InputError(f"prompts={prompts!r}; expected a non-empty mapping name -> prompt text")
    for name, text in prompts.items():
        _check_name(name, "prompt name")
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"prompt {name!r} has text {text!r}; expected a non-empty string")
    if int(n_per_prompt) < 1:
        raise InputError(f"n_per_prompt={n_per_prompt!r}; expected a positive integer")
    method = _check_name(method or pipeline.method, "method name")
    labels = PROMPT_LABELS if prompt_labels is None else prompt_labels
    label_cols = list(dict.fromkeys(c for name in prompts for c in labels.get(name, {})))
    rows = []
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        for name, text in progress_bar(prompts.items(), desc=f"synthesise {method}", disable=not progress):
            images = pipeline.generate(text, int(n_per_prompt), int(seed), steps=steps, guidance=guidance,
                                       batch_size=batch_size, height=height, progress=progress,
                                       guidance_rescale=guidance_rescale)
            for i, img in enumerate(images):
                image_id = f"{name}_{i:04d}"
                file = f"images/{image_id}.png"
                Image.fromarray(img).save(tmp / file)
                row = {
                    "image_id": image_id, "file": file, "prompt_name": name, "prompt": text,
                    "prompt_used": pipeline.prompt_text(text), "index": i, "seed": int(seed) + i, "method": method,
                    "adaptation": pipeline.method, "steps": int(steps), "guidance": float(guidance),
                    "guidance_rescale": float(guidance_rescale), "scheduler": pipeline.scheduler_name,
                    "height": img.shape[0], "width": img.shape[1], "foundation": pipeline.foundation,
                    "adapter": pipeline.adapter_dir or "",
                }
                row.update({c: labels.get(name, {}).get(c, np.nan) for c in label_cols})
                rows.append(row)
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS + label_cols)
        manifest.to_csv(tmp / MANIFEST, index=False)
    return manifest


def load_set(folder) -> tuple[np.ndarray, pd.DataFrame]:
    """A synthetic set written by :func:`generate_set`: uint8 (N,H,W) images and the manifest."""
    images, manifest = load_images(folder)
    missing = [c for c in ("prompt_name", "method") if c not in manifest.columns]
    if missing:
        raise InputError(f"{Path(folder) / MANIFEST} lacks columns {missing}; expected a synthetic set written "
                         "by cxrgen.sampling.synthetic_sets.generate_set")
    return images, manifest


def load_zafar_set(folder) -> tuple[list[np.ndarray], pd.DataFrame]:
    """A Zafar set written by :func:`cxrgen.studies.zafar.sample_zafar_sets`: its images as stored (grayscale
    (H, W), or RGB (H, W, 3) for the out-of-domain part) and the manifest."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise InputError(f"{folder / MANIFEST} missing; expected a folder written by sample_zafar_sets")
    man = pd.read_csv(folder / MANIFEST, keep_default_na=False, na_values=[""])
    imgs = [np.asarray(Image.open(folder / f)) for f in man["file"]]
    return imgs, man
