"""The training loop shared by the adaptation methods (textual inversion, U-Net fine-tuning, ...).

A method supplies a :class:`TrainTask` (what is optimised, what is checkpointed, and a function that
returns the loss of one micro-batch); :func:`run_training` does the rest with ``accelerate``: optimizer
(AdamW), diffusers LR schedule with warm-up, gradient accumulation, gradient clipping, mixed precision
(autocast), optional EMA of the trained parameters, a tqdm progress bar, a per-step log, and resumable
checkpoints (model state, optimizer, LR scheduler, step, RNG, EMA, log) written with
:mod:`cxrgen.checkpoint` every ``checkpoint_every`` steps into ``<out_dir>.partial/checkpoint``.

Data helpers: grayscale uint8 images -> 3-channel [-1, 1] tensors at the training resolution, VAE latents
encoded once and cached (posterior mean and std; a fresh posterior sample is drawn per step, as diffusers'
cached-latent trainers do), and a stateless batch stream (epoch permutations keyed by seed and epoch), so a
resumed run draws exactly the batches an uninterrupted one would.

Images are not flipped or cropped at random: a horizontal flip mirrors the anatomy (heart side) of a chest
X-ray, and fixed inputs are what make the latent cache valid.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.adapt.config import TrainConfig
from cxrgen.adapt.methods import ADAPTER_FILE, LOSS_CURVE_STEM, TRAIN_CONFIG_FILE, TRAIN_LOG_FILE
from cxrgen.engine import Engine, RuntimeConfig
from cxrgen.errors import InputError
from cxrgen.io import atomic_path
from cxrgen.models.card import loss_metrics, write_model_card

log = logging.getLogger(__name__)
# keys that may change between an interrupted run and its resumption without invalidating the checkpoint
_RESUME_FREE = {"stop_after", "num_threads", "checkpoint_every"}


# ------------------------------------------------------------------------------------------------
# data helpers


def images_to_tensor(images, resolution: int, what: str = "images") -> torch.Tensor:
    """uint8 (N,H,W) grayscale or (N,H,W,3) RGB -> float (N,3,R,R) in [-1, 1].

    Resized (bilinear, antialiased) so the shortest side is ``resolution``, then centre-cropped.
    """
    arr = np.asarray(images)
    if arr.dtype != np.uint8:
        raise InputError(f"{what} have dtype {arr.dtype}; expected uint8 pixel values 0-255")
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)  # grayscale -> the 3 channels the VAE expects
    elif not (arr.ndim == 4 and arr.shape[-1] == 3):
        raise InputError(f"{what} have shape {arr.shape}; expected (N, H, W) grayscale or (N, H, W, 3) RGB")
    if arr.shape[0] == 0 or min(arr.shape[1:3]) == 0:
        raise InputError(f"{what} are empty (shape {arr.shape}); expected at least one image")
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    h, w = x.shape[-2:]
    if (h, w) != (resolution, resolution):
        s = resolution / min(h, w)
        nh, nw = max(resolution, round(h * s)), max(resolution, round(w * s))
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        top, left = (nh - resolution) // 2, (nw - resolution) // 2
        x = x[..., top:top + resolution, left:left + resolution]
    return x.clamp(-1.0, 1.0).contiguous()


def check_resolution(pipe, resolution: int) -> None:
    """The latent side must survive every U-Net downsampling."""
    vae_f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    unet_f = 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if resolution % (vae_f * unet_f):
        raise InputError(
            f"resolution={resolution} is not a multiple of {vae_f * unet_f} (VAE factor {vae_f} x U-Net "
            f"downsampling {unet_f}); expected e.g. {max(1, round(resolution / (vae_f * unet_f))) * vae_f * unet_f}"
        )


def few_shot_sample(sample_dir, classes) -> tuple[np.ndarray, Any, list[str] | None]:
    """A materialised sample folder's images and manifest (``cxrgen.data.sampling.load_images``), restricted to the
    rows whose ``class_label`` is in ``classes`` (None = all). Returns ``(images, manifest, labels)``; ``labels`` is
    the kept rows' ``class_label`` (None when the manifest has no such column)."""
    from cxrgen.data.sampling import load_images

    images, manifest = load_images(sample_dir)
    labels = manifest["class_label"].astype(str).tolist() if "class_label" in manifest.columns else None
    if classes:
        if labels is None:
            raise InputError(f"{sample_dir}/manifest.csv has no class_label column; expected a few-shot sample "
                             f"when classes={list(classes)} is set")
        unknown = sorted(set(classes) - set(labels))
        if unknown:
            raise InputError(f"classes {unknown} not in {sample_dir} (it holds {sorted(set(labels))}); expected "
                             f"labels of that sample")
        keep = np.isin(np.asarray(labels), list(classes))
        images, manifest = images[keep], manifest[keep].reset_index(drop=True)
        labels = [l for l, k in zip(labels, keep) if k]
    return images, manifest, labels


class LatentCache:
    """VAE posterior (mean, std) of every training image, encoded once; ``sample`` draws scaled latents."""

    def __init__(self, vae, pixels: torch.Tensor, device, batch: int = 32, progress: bool = False):
        from cxrgen.progress import progress_bar

        means, stds = [], []
        dtype = next(vae.parameters()).dtype
        with torch.no_grad():
            for i in progress_bar(range(0, len(pixels), batch), disable=not progress, desc="encode latents", leave=False):
                dist = vae.encode(pixels[i:i + batch].to(device, dtype)).latent_dist
                means.append(dist.mean.float())
                stds.append(dist.std.float())
        self.mean = torch.cat(means)
        self.std = torch.cat(stds)
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(shift) if shift is not None else 0.0

    def __len__(self) -> int:
        return self.mean.shape[0]

    def sample(self, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        m, s = self.mean[idx], self.std[idx]
        eps = torch.randn(m.shape, generator=generator).to(m.device)
        return (m + s * eps - self.shift_factor) * self.scaling_factor


class BatchStream:
    """Batches of indices into ``n`` items: consecutive slices of per-epoch permutations.

    Stateless (the permutation of epoch e depends only on ``seed`` and e), so batch ``k`` is the same in an
    uninterrupted and a resumed run, and every item is seen once per epoch.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self._cache: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache = {epoch: torch.randperm(self.n, generator=g)}
        return self._cache[epoch]

    def batch(self, k: int) -> torch.Tensor:
        start = k * self.batch_size
        out = []
        for pos in range(start, start + self.batch_size):
            out.append(int(self._perm(pos // self.n)[pos % self.n]))
        return torch.tensor(out, dtype=torch.long)


def train_scheduler_from(pipe):
    """A DDPM training scheduler with the pipeline's noise schedule and prediction type (as diffusers'
    trainers do with ``DDPMScheduler.from_pretrained(model, subfolder="scheduler")``)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], device) -> torch.Tensor:
    ids = tokenize(tokenizer, prompts)
    return text_encoder(ids.to(device))[0].float()


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(list(prompts), padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def prepare_prompted_training(foundation, images, prompts, cfg: TrainConfig, config_class: type):
    """Set-up shared by the trainers that pair each image with its own prompt (U-Net, LoRA, full fine-tuning):
    the config checked, the images as model-resolution pixels, the prompts checked (one non-empty string per image),
    the training engine, and the foundation pipeline on its device. Returns ``(pixels, prompts, engine, pipe)``."""
    from cxrgen.models.registry import load_pipeline

    if not isinstance(cfg, config_class):
        raise InputError(f"cfg is a {type(cfg).__name__}; expected a {config_class.__name__}")
    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    pixels = images_to_tensor(images, cfg.resolution)
    prompts = list(prompts) if prompts is not None else None
    if prompts is None or len(prompts) != len(pixels) or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise InputError(f"prompts={prompts!r:.200}; expected one non-empty prompt string per image "
                         f"({len(pixels)} images)")
    engine = make_engine(cfg)
    pipe = load_pipeline(foundation)
    check_resolution(pipe, cfg.resolution)
    pipe.to(engine.device)
    return pixels, prompts, engine, pipe


def make_engine(cfg: TrainConfig) -> Engine:
    """The training engine for an adaptation config (its mixed precision and gradient accumulation); checks that
    ``batch_size`` splits evenly over the processes."""
    engine = Engine(RuntimeConfig(mixed_precision=cfg.mixed_precision,
                                  gradient_accumulation_steps=cfg.gradient_accumulation_steps))
    engine.micro_batch(cfg.batch_size * cfg.gradient_accumulation_steps,
                       f"batch_size * gradient_accumulation_steps ({cfg.batch_size} x {cfg.gradient_accumulation_steps})")
    return engine


# ------------------------------------------------------------------------------------------------
# the loop


@dataclass
class TrainTask:
    """What a method trains.

    params: the optimised parameters. state_modules: modules whose ``state_dict`` is checkpointed (keep it
    small: e.g. only the token-embedding module for textual inversion). loss_fn(micro_index, generator)
    returns (loss, {name: float}) for one micro-batch; ``micro_index`` counts micro-batches from 0 over the
    whole run. after_step: called after each optimizer step (e.g. restore frozen embedding rows).
    """

    params: list
    state_modules: dict
    loss_fn: Callable[[int, torch.Generator], tuple[torch.Tensor, dict]]
    after_step: Callable[[], None] | None = None
    desc: str = "train"


@dataclass
class TrainResult:
    rows: list[dict] = field(default_factory=list)
    finished: bool = False
    step: int = 0
    resumed_from: int = 0
    seconds: float = 0.0


def _comparable(cfg_dict: dict) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in _RESUME_FREE}


def run_training(cfg: TrainConfig, task: TrainTask, checkpoint_dir: str | os.PathLike, engine: Engine,
                 progress: bool = True) -> TrainResult:
    """Run (or resume, by :meth:`Engine.resume`'s policy) ``cfg.steps`` optimizer steps of ``task``; checkpoints
    go to ``checkpoint_dir``.

    The optimizer and LR scheduler are prepared by the engine; the task's gradients are averaged over the
    processes once per step (its modules are called inside ``loss_fn``, not as one DDP module). The logged
    loss is the mean over processes. Settings that may change between an interrupted run and its resumption:
    ``stop_after``, ``num_threads``, ``checkpoint_every``.
    """
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel
    from cxrgen.progress import progress_bar

    accelerator = engine.accelerator
    ckpt = Path(checkpoint_dir)
    gen = torch.Generator().manual_seed(int(cfg.seed))
    optimizer = torch.optim.AdamW(task.params, lr=cfg.effective_lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    lr_sched = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.warmup,
                             num_training_steps=cfg.steps)
    optimizer, lr_sched = engine.prepare(optimizer, lr_sched)
    ema = EMAModel(task.params, decay=cfg.ema_decay) if cfg.use_ema else None

    result = TrainResult()
    settings = _comparable(cfg.to_dict())
    st = engine.resume(ckpt, settings, task.state_modules, optimizer, lr_sched, {"data": gen})
    if st is not None:
        result.step = result.resumed_from = int(st["step"])
        result.rows = list(st["extra"]["log"])
        if ema is not None:
            ema.load_state_dict(st["extra"]["ema"])
        log.info("[%s] resumed from step %d (%s)", task.desc, result.step, ckpt)

    def checkpoint(step: int) -> None:
        extra: dict[str, Any] = {"log": result.rows}
        if ema is not None:
            extra["ema"] = ema.state_dict()
        engine.save(ckpt, settings, task.state_modules, optimizer, lr_sched, step, {"data": gen}, extra=extra)

    t0 = time.perf_counter() - (result.rows[-1]["seconds"] if result.rows else 0.0)
    ga = cfg.gradient_accumulation_steps
    bar = progress_bar(total=cfg.steps, initial=result.step, disable=not (progress and engine.is_main), desc=task.desc,
               file=sys.stderr)
    for step in range(result.step + 1, cfg.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        total, parts = 0.0, {}
        for micro in range(ga):
            with accelerator.autocast():
                loss, logs = task.loss_fn((step - 1) * ga + micro, gen)
            accelerator.backward(loss / ga)
            total += engine.mean(loss) / ga
            for k, v in logs.items():
                parts[k] = parts.get(k, 0.0) + engine.mean(v) / ga
        if not math.isfinite(total):
            raise FloatingPointError(f"[{task.desc}] loss became {total} at step {step}; lower the lr")
        engine.average_gradients(task.params)
        if cfg.max_grad_norm is not None:
            accelerator.clip_grad_norm_(task.params, float(cfg.max_grad_norm))
        lr_now = float(lr_sched.get_last_lr()[0])
        optimizer.step()
        lr_sched.step()
        if task.after_step is not None:
            task.after_step()
        if ema is not None:
            ema.step(task.params)
        result.rows.append({"step": step, "loss": total, **parts, "lr": lr_now,
                            "seconds": time.perf_counter() - t0})
        result.step = step
        bar.update(1)
        bar.set_postfix(loss=f"{total:.4f}")
        stopping = cfg.stop_after is not None and step >= cfg.stop_after and step < cfg.steps
        if stopping or (step % cfg.checkpoint_every == 0 and step < cfg.steps):
            checkpoint(step)
        if stopping:
            bar.close()
            result.seconds = result.rows[-1]["seconds"]
            log.info("[%s] stopped after step %d (stop_after); checkpoint in %s", task.desc, step, ckpt)
            return result
    bar.close()
    if ema is not None:
        ema.copy_to(task.params)  # the saved model is the EMA model
    result.finished = True
    result.seconds = result.rows[-1]["seconds"] if result.rows else 0.0
    return result


# ------------------------------------------------------------------------------------------------
# outputs


def partial_dir(out_dir: str | os.PathLike) -> Path:
    """``<out_dir>.partial``: checkpoints (and default caches) of an unfinished run."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".partial")


def write_training_outputs(folder: Path, rows: list[dict], train_config: dict, adapter: dict) -> None:
    """``training_log.csv``, ``loss_curve.png/.pdf``, ``train_config.json`` and ``adapter.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from cxrgen.plotting import save_figure, set_style

    df = pd.DataFrame(rows)
    df.to_csv(folder / TRAIN_LOG_FILE, index=False)
    set_style()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    loss_cols = [c for c in df.columns if c == "loss" or c.endswith("_loss")]
    for i, col in enumerate(loss_cols):
        ax.plot(df["step"], df[col], lw=0.6, alpha=0.35, color=f"C{i}")
        k = max(1, len(df) // 25)
        ax.plot(df["step"], df[col].rolling(k, min_periods=1).mean(), lw=1.5, color=f"C{i}",
                label=f"{col} (mean of {k})")
    ax.set_xlabel("step")
    ax.set_ylabel("diffusion loss")
    if len(df) and (df[loss_cols] > 0).all().all():
        ax.set_yscale("log")
    ax.set_title(f"{adapter.get('method', 'training')} loss")
    ax.legend()
    save_figure(fig, folder / LOSS_CURVE_STEM)
    (folder / TRAIN_CONFIG_FILE).write_text(json.dumps(train_config, indent=2, default=str))
    (folder / ADAPTER_FILE).write_text(json.dumps(adapter, indent=2, default=str))


def finish_output(out_dir: str | os.PathLike, write_artefacts: Callable[[Path], None], rows: list[dict],
                  train_config: dict, adapter: dict, engine: Engine | None = None) -> Path:
    """Build the output folder in a temp sibling, rename it onto ``out_dir``, then drop the checkpoints.
    ``adapter.json`` names a local foundation relative to ``out_dir`` (:mod:`cxrgen.adapt.adapter_file`).

    With an ``engine``, only its main process writes; every process returns once the folder is in place.
    """
    from cxrgen.adapt.adapter_file import foundation_reference
    out_dir = Path(out_dir)
    base_model = adapter.get("foundation")
    if "foundation" in adapter:
        adapter = {**adapter, "foundation": foundation_reference(adapter["foundation"], out_dir)}
    if engine is None or engine.is_main:
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            write_artefacts(tmp)
            write_training_outputs(tmp, rows, train_config, adapter)
            write_model_card(tmp, base_model=base_model, training_config=train_config,
                             data={"n_images": train_config.get("n_images")},
                             metrics=loss_metrics([r["loss"] for r in rows]))
        shutil.rmtree(partial_dir(out_dir), ignore_errors=True)
    if engine is not None:
        engine.accelerator.wait_for_everyone()
    return out_dir


def summarise(result: TrainResult, out_dir, method: str, extra: dict | None = None) -> dict:
    return {
        "method": method,
        "out_dir": str(out_dir),
        "finished": result.finished,
        "step": result.step,
        "resumed_from": result.resumed_from,
        "seconds": result.seconds,
        **loss_metrics([r["loss"] for r in result.rows]),
        **(extra or {}),
    }
