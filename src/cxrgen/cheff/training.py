"""The resumable training loop every Cheff stage shares: batches, checkpoints, training_log.csv, loss curves.

A stage supplies ``step_fn(step, batch_idx) -> dict of floats`` that does one optimisation step.  The loop draws
batch indices from its own seeded ``torch.Generator`` (saved in the checkpoint with the global RNG states), writes a
checkpoint (:mod:`cxrgen.checkpoint`) every ``checkpoint_every`` steps and at the end, and resumes from one when
present, so a preempted job continues where it stopped and gives the same weights as an uninterrupted run.
A checkpoint written under another configuration (its ``fingerprint`` differs) is ignored, not resumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from cxrgen.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint
from cxrgen.errors import InputError
from cxrgen.io import atomic_path, write_csv_atomic

log = logging.getLogger(__name__)


class StateBundle:
    """Several optimizers / LR schedulers saved as one ``optimizer`` entry of a checkpoint."""

    def __init__(self, **parts):
        self.parts = {k: v for k, v in parts.items() if v is not None}

    def state_dict(self) -> dict:
        return {k: v.state_dict() for k, v in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        for k, v in self.parts.items():
            v.load_state_dict(state[k])


def fingerprint(*configs) -> str:
    """A short hash of the configs (dataclasses or dicts) that a checkpoint must match to be resumed."""
    plain = [asdict(c) if is_dataclass(c) else c for c in configs]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_pretrained_atomic(model, folder: str | os.PathLike) -> Path:
    """``model.save_pretrained`` into ``folder`` so that a reader never sees a half-written folder."""
    with atomic_path(folder) as tmp:
        model.save_pretrained(str(tmp))
    return Path(folder)


def plot_losses(log_df: pd.DataFrame, out_png: str | os.PathLike, title: str) -> None:
    """One panel per loss column against step (moving average over ~2% of the steps)."""
    from cxrgen.render.figures import save_figure, set_style
    import matplotlib.pyplot as plt

    cols = [c for c in log_df.columns if c not in ("step", "seconds", "lr")]
    set_style()
    fig, axes = plt.subplots(1, max(1, len(cols)), figsize=(3.2 * max(1, len(cols)), 2.6), squeeze=False)
    win = max(1, len(log_df) // 50)
    for ax, col in zip(axes[0], cols):
        ax.plot(log_df["step"], log_df[col], alpha=0.3, lw=0.8)
        ax.plot(log_df["step"], log_df[col].rolling(win, min_periods=1).mean(), lw=1.2)
        ax.set_title(col)
        ax.set_xlabel("step")
    fig.suptitle(title, fontsize=10)
    save_figure(fig, Path(out_png).with_suffix(""))


def train_loop(
    step_fn: Callable[[int, torch.Tensor], Mapping[str, float]],
    n_items: int,
    batch_size: int,
    steps: int,
    models: Mapping[str, torch.nn.Module],
    optimizer,
    checkpoint_dir: str | os.PathLike | None,
    seed: int,
    config_fingerprint: str,
    checkpoint_every: int = 500,
    desc: str = "train",
    progress: bool = True,
    stop_after: int | None = None,
) -> pd.DataFrame:
    """Run ``steps`` optimisation steps (resuming from ``checkpoint_dir``); returns the training log.

    ``stop_after`` stops early after that many steps *of this call* (tests simulate a preempted job with it).
    """
    if n_items < 1:
        raise InputError(f"{desc}: no training items; expected at least one image")
    if batch_size < 1 or steps < 1:
        raise InputError(f"{desc}: batch_size={batch_size}, steps={steps}; expected positive integers")
    gen = torch.Generator().manual_seed(int(seed))
    start, rows = 0, []
    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    if ckpt is not None and has_checkpoint(ckpt):
        state = torch.load(ckpt / "state.pt", weights_only=True, map_location="cpu")
        if state["extra"].get("fingerprint") == config_fingerprint:
            state = load_checkpoint(ckpt, models, optimizer, generators={"batches": gen})
            start, rows = int(state["step"]), list(state["extra"].get("log", []))
            log.info("%s: resumed from %s at step %d", desc, ckpt, start)
        else:
            log.warning("%s: checkpoint %s was written under another configuration; starting afresh", desc, ckpt)
    for m in models.values():
        m.train()
    t0 = time.perf_counter() - (rows[-1]["seconds"] if rows else 0.0)
    done_here = 0
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, initial=start, total=steps)
    for step in bar:
        # sampling with replacement keeps every batch full whatever the data size
        idx = torch.randint(0, n_items, (batch_size,), generator=gen)
        losses = {k: float(v) for k, v in step_fn(step, idx).items()}
        rows.append({"step": step + 1, **losses, "seconds": time.perf_counter() - t0})
        bar.set_postfix({k: f"{v:.4f}" for k, v in list(losses.items())[:3]})
        done_here += 1
        last = step + 1 == steps or (stop_after is not None and done_here >= stop_after)
        if ckpt is not None and ((step + 1) % checkpoint_every == 0 or last):
            save_checkpoint(ckpt, models, optimizer, step=step + 1, generators={"batches": gen},
                            extra={"fingerprint": config_fingerprint, "log": rows})
        if last:
            break
    for m in models.values():
        m.eval()
    return pd.DataFrame(rows)


def write_training_log(log_df: pd.DataFrame, out_dir: str | os.PathLike, title: str) -> None:
    """``training_log.csv`` and ``loss_curve.png/.pdf`` beside a trained model."""
    out_dir = Path(out_dir)
    write_csv_atomic(log_df, out_dir / "training_log.csv")
    if len(log_df):
        plot_losses(log_df, out_dir / "loss_curve.png", title)


def finish_checkpoint(checkpoint_dir: str | os.PathLike | None, keep: bool) -> None:
    """Remove a stage's checkpoint once its model folder is written (unless asked to keep it)."""
    if checkpoint_dir and not keep:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)


def to_unit(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N,H,W) or (N,C,H,W) -> float (N,C,H,W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images_uint8) if not isinstance(images_uint8, torch.Tensor) else images_uint8)
    if x.dtype != torch.uint8:
        raise InputError(f"images of dtype {x.dtype}; expected uint8 (0-255)")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise InputError(f"images of shape {tuple(x.shape)}; expected (N,H,W) or (N,C,H,W)")
    return x.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N,C,H,W) in [-1, 1] -> uint8 (N,H,W) (channels averaged to grey)."""
    y = x.detach().float().mean(dim=1).clamp(-1, 1)
    return ((y + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()
