"""Shared pieces of the benchmarks: environment, the tiny foundation (built once, cached), data, timing, tables.

Every figure a benchmark reports is measured in the same process on the same machine as its reference, with the
same model, data, batch size and step count, so the *ratio* (ours / reference, higher = better for a throughput)
is the portable number; the absolute figures only describe this machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

for _k, _v in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("MPLBACKEND", "Agg"),
               ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_k, _v)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
CACHE_DIR = Path(os.environ.get("CXRGEN_BENCH_CACHE", BENCH_DIR / ".cache"))

#: Foundation architectures: the test-suite's "smoke" one and the embedded workflow's "default" one. Few
#: pretraining steps: a benchmark needs the architecture, not a good model.
FOUNDATION_OVERRIDES = {"n_images": 48, "vae_steps": 4, "unet_steps": 4, "preview_per_prompt": 0}


def set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(int(n))


def foundation(preset: str = "smoke", cache_dir: Path | None = None, progress: bool = False) -> Path:
    """A tiny foundation pipeline folder of ``preset`` architecture, built once and reused from the cache."""
    from cxrgen.models.foundation import FoundationConfig, build_foundation

    cfg = FoundationConfig.preset(preset, **FOUNDATION_OVERRIDES)
    key = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    out = Path(cache_dir or CACHE_DIR) / f"foundation-{preset}-{key}"
    if not (out / "model_index.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        build_foundation(cfg, out, progress=progress)
    return out


def chest_images(n: int, size: int = 64, seed: int = 0):
    """``n`` phantom chest radiographs, uint8 (n, size, size): the project's own generator."""
    from cxrgen.data.phantom import generate_generic_chest_images

    return generate_generic_chest_images(n, size, seed)


def chambon_prompts(n: int) -> list[str]:
    """Half "no finding", half "pleural effusion" prompts (Chambon et al.), one per image."""
    from cxrgen.data.prompts import CHAMBON_PROMPTS

    return [CHAMBON_PROMPTS["normal"] if i < (n + 1) // 2 else CHAMBON_PROMPTS["effusion"] for i in range(n)]


def steady_rate(stamps: list[float], warmup: int) -> float:
    """Steps per second from cumulative end-of-step times: 1 / median step time after the first ``warmup`` steps.

    The median, not the mean, so that a burst of load from another process on a shared machine does not decide the
    figure; both sides of every comparison are reduced the same way (:func:`mean_rate` gives the plain mean)."""
    import numpy as np

    d = np.diff(np.concatenate([[0.0], np.asarray(stamps, dtype=np.float64)]))[max(int(warmup), 0):]
    return float(1.0 / np.median(d)) if len(d) and np.median(d) > 0 else float("nan")


def mean_rate(stamps: list[float], warmup: int) -> float:
    """Steps per second over the steps after ``warmup`` (total steps / total time)."""
    warmup = min(max(int(warmup), 0), len(stamps) - 1)
    start = stamps[warmup - 1] if warmup > 0 else 0.0
    span = stamps[-1] - start
    return (len(stamps) - warmup) / span if span > 0 else float("nan")


def best_of(fn, repeats: int = 3) -> tuple[float, object]:
    """(minimum wall seconds of ``repeats`` calls of ``fn``, its last result): the usual micro-benchmark estimate."""
    best, out = math.inf, None
    for _ in range(max(1, int(repeats))):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


@dataclass
class Row:
    """One benchmark figure: ours and the reference in ``unit`` (a throughput unless ``lower_is_better``)."""

    group: str
    name: str
    unit: str
    ours: float | None
    reference: float | None
    reference_name: str = ""
    lower_is_better: bool = False
    note: str = ""
    extra: dict = field(default_factory=dict)
    comparable: bool = True  # False: both figures shown, but they time different work (no ratio)

    @property
    def ratio(self) -> float | None:
        """ours / reference for a throughput, reference / ours for a time: > 1 means ours is better."""
        if not self.comparable or self.ours is None or self.reference is None or not self.ours or not self.reference:
            return None
        return self.reference / self.ours if self.lower_is_better else self.ours / self.reference

    def to_dict(self) -> dict:
        return {"group": self.group, "name": self.name, "unit": self.unit, "ours": self.ours,
                "reference": self.reference, "reference_name": self.reference_name, "ratio": self.ratio,
                "lower_is_better": self.lower_is_better, "note": self.note, **self.extra}


def fmt(x, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (int, float)):
        ax = abs(float(x))
        if ax == 0:
            return "0"
        if ax >= 1000 or ax < 1e-3:
            return f"{x:.{digits}g}"
        return f"{x:.{max(0, digits - 1 - int(math.floor(math.log10(ax))))}f}"
    return str(x)


def markdown_table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]])


def rows_table(rows: list[Row]) -> str:
    """The run's table: every figure with both absolute values and the ratio (> 1: ours better)."""
    body = []
    for r in rows:
        ratio = r.ratio
        body.append([r.group, r.name, r.unit, r.ours, r.reference, r.reference_name,
                     f"{ratio:.2f}x" if ratio is not None else "-", r.note])
    return markdown_table(["bench", "figure", "unit", "ours", "reference", "reference is", "ratio", "note"], body)
