"""The resumable training loop every Cheff stage shares: batches, checkpoints, training_log.csv, loss curves.

A stage supplies a dataset (items read from disk, e.g. :class:`cxrgen.data.shards.ShardedDataset`) and
``step_fn(step, batch) -> dict of floats`` that does one optimisation step on a micro-batch already on the
engine's device. The loop is :meth:`cxrgen.engine.Engine.run_steps` over a DataLoader of batches drawn with
replacement from a seeded generator (:class:`cxrgen.engine.SampledBatches`): checkpoints every
``checkpoint_every`` steps and at the end, resumed when present, so a preempted job continues where it stopped
and gives the same weights as an uninterrupted run. A checkpoint written under other settings is refused
(InputError naming the keys), the engine's one resume policy.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.engine import Engine
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


def settings(config, **more) -> dict:
    """What a stage's checkpoint must have been written under to be resumed: the stage config's fields (a
    dataclass or dict) plus ``more`` (seed, data size, ...)."""
    return {**(asdict(config) if is_dataclass(config) else dict(config)), **more}


def save_pretrained_atomic(model, folder: str | os.PathLike) -> Path:
    """``model.save_pretrained`` into ``folder`` so that a reader never sees a half-written folder."""
    with atomic_path(folder) as tmp:
        model.save_pretrained(str(tmp))
    return Path(folder)


def plot_losses(log_df: pd.DataFrame, out_png: str | os.PathLike, title: str) -> None:
    """One panel per loss column against step (moving average over ~2% of the steps)."""
    from cxrgen.plotting import save_figure, set_style
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
    step_fn: Callable[[int, object], Mapping[str, float]],
    dataset,
    batch_size: int,
    steps: int,
    models: Mapping[str, torch.nn.Module],
    optimizer,
    checkpoint_dir: str | os.PathLike | None,
    seed: int,
    run_settings: Mapping,
    engine: Engine,
    checkpoint_every: int = 500,
    desc: str = "train",
    progress: bool = True,
    stop_after: int | None = None,
    collate_fn=None,
) -> pd.DataFrame:
    """Run ``steps`` optimisation steps (resuming from ``checkpoint_dir``); returns the training log.

    ``batch_size`` is the global batch of a step (split over processes and accumulation steps by the engine);
    batches are drawn with replacement, which keeps every batch full whatever the data size. ``stop_after``
    stops early after that many steps *of this call* (tests simulate a preempted job with it).
    """
    if len(dataset) < 1:
        raise InputError(f"{desc}: no training items; expected at least one image")
    if batch_size < 1 or steps < 1:
        raise InputError(f"{desc}: batch_size={batch_size}, steps={steps}; expected positive integers")
    rows = engine.run_steps(
        step_fn, lambda start: engine.sampled_loader(dataset, batch_size, seed, steps, start, collate_fn),
        steps, models, optimizer, checkpoint_dir, run_settings, checkpoint_every, desc, progress, stop_after)
    return pd.DataFrame(rows)


def write_training_log(log_df: pd.DataFrame, out_dir: str | os.PathLike, title: str) -> None:
    """``training_log.csv`` and ``loss_curve.png/.pdf`` beside a trained model."""
    out_dir = Path(out_dir)
    write_csv_atomic(log_df, out_dir / "training_log.csv")
    if len(log_df):
        plot_losses(log_df, out_dir / "loss_curve.png", title)


def write_stage_card(out_dir: str | os.PathLike, config, log_df: pd.DataFrame, n_train: int,
                     base_model=None) -> None:
    """The model card of a trained stage (cxrgen.models.card): its config, MaCheX training size, final loss."""
    from cxrgen.models.card import loss_metrics, write_model_card

    write_model_card(out_dir, base_model=base_model, training_config=settings(config),
                     data={"sample": "MaCheX train", "n_images": int(n_train)},
                     metrics=loss_metrics(log_df["loss"]) if "loss" in log_df else {})


def image_dataset(images, size: int, what: str):
    """The training images of a stage as a dataset of uint8 (size, size) items: a uint8 (N, size, size) array
    (checked whole) or a dataset of such items (e.g. :func:`cxrgen.studies.cheff.load_split`; its first item
    is checked)."""
    if isinstance(images, np.ndarray):
        arr = images
    elif len(images) == 0:
        raise InputError(f"{what}: no training images; expected at least one")
    else:
        arr = np.asarray(images[0])[None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[1:] != (size, size):
        raise InputError(f"{what}: images of dtype {arr.dtype}, shape {arr.shape}; expected uint8 (N, {size}, {size})")
    return images


def finish_stage(engine: Engine, write: Callable[[], None], checkpoint_dir, keep_checkpoint: bool) -> None:
    """The main process writes a trained stage's outputs and drops its checkpoint; every process waits for it."""
    if engine.is_main:
        write()
        finish_checkpoint(checkpoint_dir, keep_checkpoint)
    engine.accelerator.wait_for_everyone()


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
