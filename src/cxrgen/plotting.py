"""How every figure of the project looks and is saved: one style (:func:`set_style`), PNG (150 dpi) + PDF written
atomically without timestamps in the metadata (:func:`save_figure`), and labelled image grids (:func:`image_grid`).
Plotting primitives any layer may use (trainers draw loss curves with them); :mod:`cxrgen.render` builds the
paper-vs-run tables and figures on top.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from cxrgen.errors import InputError
from cxrgen.io import atomic_path

DPI = 150


def set_style() -> None:
    """The project's figure style (seaborn whitegrid, paper context, colour-blind palette, fixed fonts)."""
    sns.set_theme(
        context="paper",
        style="whitegrid",
        palette="colorblind",
        rc={
            "figure.dpi": DPI,
            "savefig.dpi": DPI,
            "savefig.bbox": "tight",
            "font.family": "DejaVu Sans",
            "axes.titlesize": 10,
            "axes.labelsize": 9,
            "xtick.labelsize": 8,
            "ytick.labelsize": 8,
            "legend.fontsize": 8,
            "pdf.fonttype": 42,
            "svg.hashsalt": "cxrgen",
        },
    )


def save_figure(fig, out_stem: str | os.PathLike, close: bool = True) -> dict[str, Path]:
    """Write ``<stem>.png`` (150 dpi) and ``<stem>.pdf`` atomically; returns the paths keyed by format."""
    stem = Path(out_stem)
    paths = {fmt: stem.with_name(f"{stem.name}.{fmt}") for fmt in ("png", "pdf")}
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "ModDate": None, "Producer": None}}
    try:
        for fmt, path in paths.items():
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=DPI, bbox_inches="tight", metadata=metadata[fmt])
    finally:
        if close:
            plt.close(fig)
    return paths


def _check_image(img, where: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.dtype != np.uint8:
        raise InputError(f"image {where}: expected dtype uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3)):
        raise InputError(f"image {where}: expected HxW grayscale or HxWx3 RGB, got shape {arr.shape}")
    return arr


def image_grid(
    images,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    out_stem: str | os.PathLike,
    title: str | None = None,
    cell_inches: float = 1.6,
) -> dict[str, Path]:
    """A rows x cols grid of uint8 grayscale (HxW) or RGB (HxWx3) images with row and column labels.

    ``images`` is a nested sequence ``[row][col]`` or a flat sequence of ``rows*cols`` images (row-major);
    ``None`` leaves a cell blank.
    """
    n_rows, n_cols = len(row_labels), len(col_labels)
    if n_rows == 0 or n_cols == 0:
        raise InputError("image_grid needs at least one row label and one column label")
    images = list(images)
    if images and all(isinstance(row, (list, tuple)) for row in images):
        grid = [list(row) for row in images]
    elif len(images) == n_rows * n_cols:
        grid = [images[r * n_cols:(r + 1) * n_cols] for r in range(n_rows)]
    else:
        raise InputError(f"image_grid: got {len(images)} images for {n_rows} rows x {n_cols} columns")
    if len(grid) != n_rows or any(len(row) != n_cols for row in grid):
        raise InputError(f"image_grid: expected {n_rows} rows x {n_cols} images to match the labels")
    set_style()
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell_inches * n_cols + 0.6, cell_inches * n_rows + 0.4), squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            img = grid[r][c]
            if img is not None:
                arr = _check_image(img, f"[{r}][{c}]")
                if arr.ndim == 2:
                    ax.imshow(arr, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
                else:
                    ax.imshow(arr, interpolation="nearest")
            if r == 0:
                ax.set_title(str(col_labels[c]), fontsize=8)
            if c == 0:
                ax.set_ylabel(str(row_labels[r]), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, out_stem)
