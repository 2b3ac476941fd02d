"""Cheff's super-resolution diffusion model (Weber et al. 2023, sec. 3 eq. 3 and 7.3.3), SR3-style: a diffusers
``UNet2DModel`` that sees the noisy high-resolution image concatenated on the channel axis with the low-resolution
image upsampled (bicubic) to the same size, epsilon prediction, cosine schedule with 2000 steps, DDIM sampling
(pixel space: x_0 estimates clipped to [-1, 1], steps from t = T - 1, :data:`SR_SAMPLER`).

Trained first on bicubic downsamples x_LR of x_HR ("SR_base"), then fine-tuned on decoded latents D(E(x_LR))
("SR_fine"), which carry the autoencoder's blur and artefacts that the cascade feeds it at sampling time.
Paper: base 16 channels x (1,2,4,8,16,32,32,32), 2 residual layers, attention in the lowest 5 levels, lr 5e-5
(fine-tuning 2e-5), batch 32, 1M steps + 500k fine-tuning steps, 256 -> 1024 px.

``crop_size`` (default None = whole images, as in the paper) trains on random ``crop_size`` crops of x_HR and of its
upsampled condition (the same window in both), as SR3 and the SR stages of cascaded pixel models do; the U-Net is
fully convolutional, so it still upsamples whole images at sampling time.  The miniature uses it because a step on
whole 128 px images costs ~16x a step on 32 px crops on a CPU.

``prediction_type`` and ``residual`` (paper: epsilon, False) let the miniatures, which train a few hundred steps
instead of 1M, predict v (Salimans & Ho 2022) of the scaled residual x_HR - up(x_LR) (SRDiff, Li et al. 2022):
the condition is the prediction's starting point, so a briefly trained model adds detail to the bicubic upsample
instead of drawing an image from scratch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.cheff.autoencoder import reconstruct
from cxrgen.cheff.diffusion import ddim_sample
from cxrgen.cheff.schedules import ddim_from, make_scheduler
from cxrgen.cheff.training import (
    finish_stage, image_dataset, settings, to_uint8, to_unit, train_loop, write_stage_card, write_training_log,
)
from cxrgen.data.shards import ShardedDataset, write_shards
from cxrgen.diffusion import add_noise_and_target
from cxrgen.engine import Engine, RuntimeConfig, default_device, module_device
from cxrgen.errors import InputError
from cxrgen.io import atomic_path
from cxrgen.progress import progress_bar

log = logging.getLogger(__name__)
LR_SOURCES = ("bicubic", "decoded")
PREDICTION_TYPES = ("epsilon", "v_prediction")
META_FILE = "cheff_sr.json"
#: DDIM settings of the SR sampler, over the training schedule's. The SR model works in pixel space (x_0 in
#: [-1, 1]), so its x_0 estimate is clipped to that range at every step, as DDPM / SR3 sample pixels: unclipped,
#: an epsilon error at high noise reaches x_0 multiplied by sqrt(1 - alpha_bar) / sqrt(alpha_bar) (13x at t = 1900
#: of the 2000-step cosine schedule) and saturates the image. The steps are "trailing", so the first is t = T - 1,
#: where x_T ~ N(0, I) is what the model was trained on ("leading" started at t = 1801, where the model expects 15%
#: signal). The SDM samples unbounded latents and keeps its own sampler.
SR_SAMPLER = {"clip_sample": True, "clip_sample_range": 1.0, "timestep_spacing": "trailing"}


def sr_sampler(scheduler_config, clip_range: float = 1.0):
    """The SR's DDIM sampler: a (training or saved) scheduler config with :data:`SR_SAMPLER` over it; x_0 clipped
    to +-``clip_range`` (1 for images in [-1, 1]; a residual of such images lies in +-2 times its scale)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config({**dict(scheduler_config), **SR_SAMPLER, "clip_sample_range": float(clip_range)})


def diffused_target(x_hr: torch.Tensor, cond: torch.Tensor, cfg: SRConfig) -> torch.Tensor:
    """What the SR diffuses: x_HR itself, or its scaled residual over the upsampled condition (``cfg.residual``)."""
    return (x_hr - cond) * float(cfg.residual_scale) if cfg.residual else x_hr


def from_diffused(x: torch.Tensor, cond: torch.Tensor, residual: bool, residual_scale: float) -> torch.Tensor:
    """The image in [-1, 1] from a sample of what the SR diffuses (inverse of :func:`diffused_target`)."""
    return (cond + x / float(residual_scale) if residual else x).clamp(-1, 1)


def clip_range(cfg: SRConfig) -> float:
    return 2.0 * float(cfg.residual_scale) if cfg.residual else 1.0


#: how the miniatures' SR differs from eq. 3 (see SRConfig.preset)
MINIATURE_SR = dict(prediction_type="v_prediction", residual=True, residual_scale=10.0)


@dataclass
class SRConfig:
    lr_size: int = 32
    hr_size: int = 64
    channels: int = 1
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    # per level, highest resolution first; the miniature drops SR attention (it doubles the step cost on a CPU)
    attention: tuple[bool, ...] = (False, False, False)
    layers_per_block: int = 1
    head_channels: int = 16
    num_train_timesteps: int = 2000
    beta_schedule: str = "squaredcos_cap_v2"  # 7.3.3: cosine
    lr: float = 3e-4
    finetune_lr: float = 1.2e-4  # paper ratio 2e-5 / 5e-5
    batch_size: int = 8
    steps: int = 400
    finetune_steps: int = 150
    checkpoint_every: int = 200
    ddim_steps: int = 25
    crop_size: int | None = None  # train on random crops of this size (None: whole images)
    # eq. 3 predicts epsilon of x_HR itself; "v_prediction" (Salimans & Ho 2022) instead
    prediction_type: str = "epsilon"
    # False (paper, SR3): diffuse x_HR. True (SRDiff, Li et al. 2022): diffuse the residual x_HR - up(x_LR),
    # multiplied by residual_scale so it spans about the unit range the schedule is made for; the condition
    # already carries the low frequencies, so a few hundred steps only have to learn the missing detail
    residual: bool = False
    residual_scale: float = 1.0

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> SRConfig:
        presets = {
            # the embedded miniature: 64 -> 128 px, trained on 32 px crops. A residual v-predicting model: the
            # paper's epsilon model of x_HR scored 10.5 dB PSNR after these 150 steps (its x_0 estimates at high
            # noise saturate, so samples are texture), v-prediction alone 16.8 dB, the residual with v 26.4 dB
            # (bicubic 29.4 dB); the phantom's residual std is ~0.074, hence scale 10
            "default": dict(lr_size=64, hr_size=128, block_out_channels=(8, 16, 32), crop_size=32, batch_size=16,
                            steps=150, finetune_steps=60, ddim_steps=10, **MINIATURE_SR),
            "smoke": dict(lr_size=16, hr_size=32, block_out_channels=(8, 16), attention=(False, True), head_channels=8,
                          batch_size=4, steps=4, finetune_steps=2, checkpoint_every=2, ddim_steps=3, **MINIATURE_SR),
            "paper": dict(lr_size=256, hr_size=1024, channels=3,
                          block_out_channels=tuple(16 * m for m in (1, 2, 4, 8, 16, 32, 32, 32)),
                          attention=(False, False, False, True, True, True, True, True), layers_per_block=2,
                          head_channels=32, lr=5e-5, finetune_lr=2e-5, batch_size=32, steps=1_000_000,
                          finetune_steps=500_000, checkpoint_every=5000, ddim_steps=150, crop_size=None),
        }
        if name not in presets:
            raise InputError(f"SR preset {name!r}; expected one of {sorted(presets)}")
        bad = [k for k in overrides if k not in cls.__dataclass_fields__]
        if bad:
            raise InputError(f"SRConfig: unknown setting(s) {bad}; expected some of {sorted(cls.__dataclass_fields__)}")
        cfg = replace(replace(cls(), **presets[name]), **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        if cfg.hr_size <= cfg.lr_size or cfg.hr_size % cfg.lr_size:
            raise InputError(f"hr_size={cfg.hr_size}, lr_size={cfg.lr_size}; expected hr_size an integer multiple > 1 of lr_size")
        if len(cfg.attention) != len(cfg.block_out_channels):
            raise InputError(f"attention has {len(cfg.attention)} entries for {len(cfg.block_out_channels)} levels")
        if cfg.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"cheff.sr.prediction_type={cfg.prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")
        if not float(cfg.residual_scale) > 0:
            raise InputError(f"cheff.sr.residual_scale={cfg.residual_scale!r}; expected a positive number")
        if cfg.crop_size is not None:
            f = 2 ** (len(cfg.block_out_channels) - 1)
            if not f <= int(cfg.crop_size) <= cfg.hr_size or int(cfg.crop_size) % f:
                raise InputError(f"crop_size={cfg.crop_size}; expected a multiple of {f} (the U-Net's downsampling) "
                                 f"between {f} and hr_size={cfg.hr_size}, or null for whole images")
        return cfg


def build_sr_unet(cfg: SRConfig):
    """The SR U-Net: 2C input channels (noisy x_HR ++ upsampled x_LR), C output channels (epsilon)."""
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=cfg.hr_size, in_channels=2 * cfg.channels, out_channels=cfg.channels,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        attention_head_dim=cfg.head_channels, norm_num_groups=min(32, min(cfg.block_out_channels) // 2),
    )


def downsample(images_uint8: np.ndarray, size: int) -> np.ndarray:
    """x_HR -> x_LR by antialiased bicubic resizing (uint8 in and out)."""
    x = torch.from_numpy(np.ascontiguousarray(images_uint8)).float()[:, None]
    y = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return y.clamp(0, 255).round().to(torch.uint8)[:, 0].numpy()


def upsample_condition(x_lr: torch.Tensor, hr_size: int) -> torch.Tensor:
    """The conditioning image: x_LR in [-1, 1] upsampled (bicubic) to the HR grid."""
    if x_lr.ndim != 4:
        raise InputError(f"x_LR of shape {tuple(x_lr.shape)}; expected (N, C, H, W)")
    return F.interpolate(x_lr, size=(hr_size, hr_size), mode="bicubic", align_corners=False).clamp(-1, 1)


def random_crop(x_hr: torch.Tensor, cond: torch.Tensor, size: int, draw=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``size`` x ``size`` window of x_HR and its condition, one window per image. Offsets come
    from ``draw(sample)`` (``Engine.global_draw``: drawn for the global batch, this process's rows kept) or
    else from torch's global RNG; either is saved with the training checkpoint, so a resumed run draws the same
    windows."""
    if x_hr.shape != cond.shape:
        raise InputError(f"x_HR {tuple(x_hr.shape)} and condition {tuple(cond.shape)} differ; expected equal shapes")
    n, _, h, w = x_hr.shape
    if size > min(h, w):
        raise InputError(f"crop size {size} exceeds the image size {h}x{w}")
    draw = draw or (lambda sample: sample(n))
    top = draw(lambda k: torch.randint(0, h - size + 1, (k,))).to(x_hr.device)
    left = draw(lambda k: torch.randint(0, w - size + 1, (k,))).to(x_hr.device)
    span = torch.arange(size, device=x_hr.device)
    rows = (top[:, None] + span)[:, None, :, None]  # (n, 1, size, 1)
    cols = (left[:, None] + span)[:, None, None, :]  # (n, 1, 1, size)
    b = torch.arange(n, device=x_hr.device)[:, None, None, None]
    ch = torch.arange(x_hr.shape[1], device=x_hr.device)[None, :, None, None]
    return x_hr[b, ch, rows, cols], cond[b, ch, rows, cols]


def sr_input(x_t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    """Channel concatenation (7.3.3): (N, C, H, W) ++ (N, C, H, W) -> (N, 2C, H, W)."""
    if x_t.shape != cond.shape:
        raise InputError(f"noisy x_HR {tuple(x_t.shape)} and condition {tuple(cond.shape)} differ; expected equal shapes")
    return torch.cat([x_t, cond], dim=1)


def cache_lr_images(hr, cfg: SRConfig, folder: str | os.PathLike, engine: Engine, vae=None,
                    batch_size: int = 64) -> ShardedDataset:
    """x_LR of every training image -- bicubic, or D(E(x_LR)) when ``vae`` is given (5: "we fine-tune SR on
    D(z)") -- computed once, batch by batch, into a shard folder (field ``lr``). The main process writes; the
    others wait and read it."""
    with engine.accelerator.main_process_first():
        if engine.is_main:
            loader = engine.sequential_loader(hr, batch_size)

            def batches():
                for batch in loader:
                    lr = downsample(np.asarray(batch), cfg.lr_size)
                    yield {"lr": reconstruct(vae, lr, batch_size) if vae is not None else lr}

            write_shards(folder, batches())
    return ShardedDataset(folder, "lr")


def train_sr(
    hr_images,
    cfg: SRConfig,
    out_dir: str | os.PathLike,
    lr_source: str = "bicubic",
    vae=None,
    init_from: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    keep_checkpoint: bool = False,
    stop_after: int | None = None,
    runtime: RuntimeConfig | None = None,
):
    """``lr_source="bicubic"``: SR_base from scratch; ``"decoded"``: fine-tune ``init_from`` on D(E(x_LR)) (needs
    ``vae``).  ``hr_images``: uint8 at ``cfg.hr_size``, an (N,H,W) array or a ShardedDataset; x_LR is cached on
    disk beside the checkpoint (``<checkpoint_dir or out_dir>.lr``, removed with it) and both are read batch by
    batch. ``cfg.batch_size`` is the global batch. Writes a ``save_pretrained`` folder (``unet/``,
    ``scheduler/``) + log; returns the U-Net."""
    from diffusers import UNet2DModel

    if lr_source not in LR_SOURCES:
        raise InputError(f"lr_source={lr_source!r}; expected one of {list(LR_SOURCES)}")
    hr = image_dataset(hr_images, cfg.hr_size, "SR: x_HR")
    engine = Engine(runtime)
    torch.manual_seed(seed)
    fine = lr_source == "decoded"
    if fine:
        if vae is None or init_from is None:
            raise InputError("SR fine-tuning on D(z) needs vae= (the autoencoder) and init_from= (the SR_base folder)")
        vae = engine.place(vae.eval())
        unet = UNet2DModel.from_pretrained(str(Path(init_from) / "unet"))
    else:
        unet = build_sr_unet(cfg)
    lr_dir = Path(str(checkpoint_dir or out_dir) + ".lr")
    data = torch.utils.data.StackDataset(hr=hr, lr=cache_lr_images(hr, cfg, lr_dir, engine, vae if fine else None))
    ddpm = make_scheduler("ddpm", cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                          prediction_type=cfg.prediction_type)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.finetune_lr if fine else cfg.lr, weight_decay=0.0)
    unet, opt = engine.prepare(unet, opt)
    steps = cfg.finetune_steps if fine else cfg.steps

    def step_fn(step, batch):
        x0 = to_unit(batch["hr"]).expand(-1, cfg.channels, -1, -1)
        c = upsample_condition(to_unit(batch["lr"]).expand(-1, cfg.channels, -1, -1), cfg.hr_size)
        n = len(x0)
        if cfg.crop_size is not None and cfg.crop_size < cfg.hr_size:
            x0, c = random_crop(x0, c, int(cfg.crop_size), lambda sample: engine.global_draw(sample, n))
        noise = engine.global_draw(lambda k: torch.randn((k, *x0.shape[1:])), n)
        t = engine.global_draw(lambda k: torch.randint(0, cfg.num_train_timesteps, (k,)), n)
        noisy, target = add_noise_and_target(ddpm, diffused_target(x0, c, cfg), noise, t)
        pred = unet(sr_input(noisy, c), t).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        engine.backward(loss)
        opt.step()
        return {"loss": loss.item()}

    name = "SR fine (D(z))" if fine else "SR base (bicubic)"
    log_df = train_loop(step_fn, data, cfg.batch_size, steps, {"unet": unet}, opt, checkpoint_dir, seed,
                        settings(cfg, seed=seed, lr_source=lr_source, n_train=len(hr)), engine, cfg.checkpoint_every,
                        name, progress, stop_after)
    unet = engine.unwrap(unet)
    if stop_after is not None and len(log_df) < steps:
        return unet

    def write():
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            unet.save_pretrained(str(tmp / "unet"))
            sr_sampler(ddim_from(ddpm).config, clip_range(cfg)).save_pretrained(str(tmp / "scheduler"))
            (tmp / META_FILE).write_text(json.dumps({"config": asdict(cfg), "lr_source": lr_source,
                                                     "init_from": str(init_from) if init_from else None}, indent=2))
        write_training_log(log_df, out_dir, f"Cheff {name}")
        write_stage_card(out_dir, cfg, log_df, len(hr), base_model=init_from)
        if not keep_checkpoint:
            shutil.rmtree(lr_dir, ignore_errors=True)

    finish_stage(engine, write, checkpoint_dir, keep_checkpoint)
    return unet


class SuperResolution:
    """A trained SR model: ``upscale(x_LR uint8) -> x_HR uint8``."""

    def __init__(self, unet, scheduler, ddim_steps: int = 25, residual: bool = False, residual_scale: float = 1.0):
        self.unet, self.scheduler, self.ddim_steps = unet.eval(), scheduler, ddim_steps
        self.residual, self.residual_scale = bool(residual), float(residual_scale)

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device | None = None) -> SuperResolution:
        """A saved SR model on ``device`` (default :func:`cxrgen.engine.default_device`)."""
        from diffusers import DDIMScheduler, UNet2DModel

        folder = Path(folder)
        if not (folder / META_FILE).is_file():
            raise InputError(f"{folder} holds no Cheff SR model ({META_FILE} missing); expected a train_sr output")
        meta = json.loads((folder / META_FILE).read_text())
        saved = DDIMScheduler.from_pretrained(str(folder / "scheduler"))  # folders from before SR_SAMPLER get it too
        unet = UNet2DModel.from_pretrained(str(folder / "unet")).to(default_device(device))
        cfg = SRConfig(**{k: v for k, v in meta["config"].items() if k in SRConfig.__dataclass_fields__})
        return cls(unet, sr_sampler(saved.config, clip_range(cfg)), cfg.ddim_steps, cfg.residual, cfg.residual_scale)

    @torch.no_grad()
    def upscale(self, lr_images: np.ndarray, steps: int | None = None, generator: torch.Generator | None = None,
                batch_size: int = 32, progress: bool = True) -> np.ndarray:
        c, size = self.unet.config.out_channels, self.unet.config.sample_size
        device = module_device(self.unet)
        out = []
        for i in progress_bar(range(0, len(lr_images), batch_size), desc="SR", disable=not progress, leave=False):
            cond = upsample_condition(to_unit(lr_images[i:i + batch_size]).expand(-1, c, -1, -1), size).to(device)
            x = ddim_sample(lambda x, t: self.unet(sr_input(x, cond), t).sample,  # noqa: B023 (run here)
                            self.scheduler, tuple(cond.shape),
                            steps or self.ddim_steps, generator, device=device)
            out.append(to_uint8(from_diffused(x, cond, self.residual, self.residual_scale)))
        return np.concatenate(out)
