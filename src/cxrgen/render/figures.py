"""Metric distributions and paper-vs-run bars, in the project's figure style (:mod:`cxrgen.plotting`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from cxrgen.errors import InputError
from cxrgen.plotting import save_figure, set_style

PAPER_COLOR = "#9e9e9e"
OURS_COLOR = "#1f77b4"


def distribution_plot(
    df: pd.DataFrame,
    columns: Sequence[str],
    out_stem: str | os.PathLike,
    kind: str = "violin",
    group: str | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """One panel per metric column (e.g. SSIM, PSNR): ``kind="violin"`` or ``"hist"``, optionally split by ``group``."""
    if kind not in ("violin", "hist"):
        raise InputError(f"distribution_plot: kind must be 'violin' or 'hist', got {kind!r}")
    columns = list(columns)
    missing = [c for c in columns + ([group] if group else []) if c not in df.columns]
    if not columns or missing:
        raise InputError(f"distribution_plot: columns {missing or columns} not usable; frame has {list(df.columns)}")
    set_style()
    fig, axes = plt.subplots(1, len(columns), figsize=(3.0 * len(columns), 2.8), squeeze=False)
    for ax, col in zip(axes[0], columns):
        data = df[[col] + ([group] if group else [])].dropna()
        if kind == "violin":
            if group:
                sns.violinplot(data=data, x=group, y=col, ax=ax, cut=0, inner="quartile")
            else:
                sns.violinplot(data=data, y=col, ax=ax, cut=0, inner="quartile")
        else:
            sns.histplot(data=data, x=col, hue=group, ax=ax, bins=20, element="step")
        ax.set_title(col)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_stem)


def bar_with_reference(
    df_ours: pd.DataFrame,
    df_paper: pd.DataFrame,
    key: str,
    value: str,
    out_stem: str | os.PathLike,
    ours_ci: tuple[str, str] | None = None,
    title: str | None = None,
    ylabel: str | None = None,
    paper_label: str = "paper",
    ours_label: str = "this run",
) -> dict[str, Path]:
    """Grouped bars per ``key`` category: the paper's ``value`` next to this run's (with CI whiskers if given).

    Categories follow the paper's order, then any only this run has. ``ours_ci`` names (low, high) columns
    of ``df_ours``; by default ``<value>_ci_low``/``<value>_ci_high`` or ``ci_low``/``ci_high`` if present.
    """
    for name, frame in (("paper", df_paper), ("this run", df_ours)):
        if key not in frame.columns or value not in frame.columns:
            raise InputError(f"bar_with_reference: {name} frame needs columns {key!r} and {value!r}; has {list(frame.columns)}")
    if ours_ci is None:
        for low, high in ((f"{value}_ci_low", f"{value}_ci_high"), ("ci_low", "ci_high")):
            if low in df_ours.columns and high in df_ours.columns:
                ours_ci = (low, high)
                break
    cats = list(dict.fromkeys(list(df_paper[key].astype(str)) + list(df_ours[key].astype(str))))
    paper = df_paper.assign(_k=df_paper[key].astype(str)).set_index("_k")
    ours = df_ours.assign(_k=df_ours[key].astype(str)).set_index("_k")
    pv = np.array([paper[value].get(c, np.nan) for c in cats], dtype=float)
    ov = np.array([ours[value].get(c, np.nan) for c in cats], dtype=float)
    set_style()
    fig, ax = plt.subplots(figsize=(max(3.0, 0.6 * len(cats) + 1.5), 3.0))
    x = np.arange(len(cats))
    width = 0.38
    ax.bar(x - width / 2, pv, width, label=paper_label, color=PAPER_COLOR)
    yerr = None
    if ours_ci is not None:
        lo = np.array([ours[ours_ci[0]].get(c, np.nan) for c in cats], dtype=float)
        hi = np.array([ours[ours_ci[1]].get(c, np.nan) for c in cats], dtype=float)
        yerr = np.vstack([np.clip(ov - lo, 0, None), np.clip(hi - ov, 0, None)])
        yerr = np.nan_to_num(yerr)
    ax.bar(x + width / 2, ov, width, label=ours_label, color=OURS_COLOR, yerr=yerr, capsize=2 if yerr is not None else 0)
    ax.set_xticks(x)
    ax.set_xticklabels(cats, rotation=45 if len(cats) > 4 else 0, ha="right" if len(cats) > 4 else "center")
    ax.set_ylabel(ylabel or value)
    ax.set_xlabel("")
    ax.legend(frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, out_stem)
