"""Cheff's semantic diffusion model (SDM, Weber et al. 2023 sec. 3 eq. 2 and 7.3.2): an epsilon-predicting (paper;
``prediction_type="v_prediction"`` optional) U-Net on
the autoencoder's latents, unconditional (diffusers ``UNet2DModel``) or report-conditioned through cross-attention
(``UNet2DConditionModel`` + the from-scratch BERT encoder of :mod:`cxrgen.cheff.text_encoder`), LDM's linear schedule
with max beta 0.0295 over 1000 steps, sampled with DDIM (paper: 150 steps).

Latents are multiplied by ``latent_scale`` before diffusion (LDM's ``scale_by_std``: 1 / std of the training
latents when not given) and divided by it before decoding.  The saved folder holds ``unet/``, ``scheduler/``
(the DDIM sampler config), for the report model ``text_encoder/`` and ``tokenizer/``, and ``cheff_sdm.json``.

Paper: base 224 channels x (1,2,4,4), 2 residual layers per level, attention at 32/16/8 (latent 64), lr 5e-5,
batch 256, 500k steps (unconditional) / 750k (reports).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.cheff import text_encoder as te
from cxrgen.cheff.schedules import CHEFF_BETA_END, LDM_BETA_START, ddim_from, make_scheduler
from cxrgen.cheff.training import (
    finish_stage, image_dataset, settings, to_unit, train_loop, write_stage_card, write_training_log,
)
from cxrgen.data.shards import ShardedDataset, ShardWriter
from cxrgen.diffusion import add_noise_and_target
from cxrgen.engine import Engine, RuntimeConfig, default_device, module_device
from cxrgen.errors import InputError
from cxrgen.io import atomic_path
from cxrgen.progress import progress_bar

log = logging.getLogger(__name__)
CONDITIONING = ("none", "report")
PREDICTION_TYPES = ("epsilon", "v_prediction")
META_FILE = "cheff_sdm.json"


@dataclass
class SDMConfig:
    conditioning: str = "none"
    block_out_channels: tuple[int, ...] = (32, 64)
    attention: tuple[bool, ...] = (False, True)  # per level, highest resolution first
    layers_per_block: int = 1
    head_channels: int = 16
    num_train_timesteps: int = 1000
    beta_start: float = LDM_BETA_START
    beta_end: float = CHEFF_BETA_END
    beta_schedule: str = "scaled_linear"  # LDM's "linear" (linear in sqrt(beta))
    latent_scale: float | None = None  # None: 1 / std of the training latents
    lr: float = 3e-4
    batch_size: int = 32
    steps: int = 1000
    checkpoint_every: int = 250
    ddim_steps: int = 50
    cond_dropout: float = 0.0  # not in the paper; > 0 enables classifier-free guidance at sampling
    # eq. 2 predicts epsilon; "v_prediction" (Salimans & Ho 2022) keeps an undertrained model's x_0 estimate
    # bounded at high noise, where an epsilon error is amplified by sqrt(1 - abar) / sqrt(abar)
    prediction_type: str = "epsilon"
    encoder: te.ReportEncoderConfig = field(default_factory=te.ReportEncoderConfig)

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> SDMConfig:
        presets = {
            # v-prediction: after 150 steps the paper's epsilon model decoded to blobs (KID 0.25 against the
            # phantom test images at 64 px, reference-classifier features), the v model to phantoms (0.16; 0.12
            # after 300 steps)
            "default": dict(block_out_channels=(16, 32), batch_size=16, steps=300, lr=5e-4, ddim_steps=20,
                            prediction_type="v_prediction"),
            "smoke": dict(block_out_channels=(8, 16), attention=(False, True), head_channels=8, batch_size=4,
                          steps=4, checkpoint_every=2, ddim_steps=3, encoder=te.ReportEncoderConfig.preset("smoke"),
                          prediction_type="v_prediction"),
            "paper": dict(block_out_channels=(224, 448, 896, 896), attention=(False, True, True, True),
                          layers_per_block=2, head_channels=32, lr=5e-5, batch_size=256, steps=500_000,
                          checkpoint_every=5000, ddim_steps=150, encoder=te.ReportEncoderConfig.preset("paper")),
        }
        if name not in presets:
            raise InputError(f"SDM preset {name!r}; expected one of {sorted(presets)}")
        cfg = replace(cls(), **presets[name])
        overrides = dict(overrides)
        enc = overrides.pop("encoder", None)
        bad = [k for k in overrides if k not in cls.__dataclass_fields__]
        if bad:
            raise InputError(f"SDMConfig: unknown setting(s) {bad}; expected some of {sorted(cls.__dataclass_fields__)}")
        cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        if enc:
            cfg = replace(cfg, encoder=replace(cfg.encoder, **enc) if isinstance(enc, dict) else enc)
        if name == "paper" and cfg.conditioning == "report" and "steps" not in overrides:
            cfg = replace(cfg, steps=750_000)  # 7.3.2: the report model trains longer
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.conditioning not in CONDITIONING:
            raise InputError(f"conditioning={self.conditioning!r}; expected one of {list(CONDITIONING)}")
        if len(self.attention) != len(self.block_out_channels):
            raise InputError(f"attention has {len(self.attention)} entries for {len(self.block_out_channels)} levels; expected one per level")
        if self.prediction_type not in PREDICTION_TYPES:
            raise InputError(f"cheff.sdm.prediction_type={self.prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")


def build_sdm_unet(cfg: SDMConfig, latent_channels: int, sample_size: int, cross_attention_dim: int | None = None):
    """The diffusers U-Net: attention blocks where ``cfg.attention`` says, cross-attention for reports."""
    from diffusers import UNet2DConditionModel, UNet2DModel

    heads = tuple(max(1, c // cfg.head_channels) for c in cfg.block_out_channels)
    groups = min(32, min(cfg.block_out_channels) // 2)
    if cfg.conditioning == "none":
        return UNet2DModel(
            sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
            block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
            attention_head_dim=cfg.head_channels, norm_num_groups=groups,
        )
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=latent_channels, out_channels=latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention)),
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        attention_head_dim=heads, norm_num_groups=groups, cross_attention_dim=cross_attention_dim,
    )


def report_text(findings: Sequence[str], impression: Sequence[str]) -> list[str]:
    """Findings and Impression concatenated (sec. 5, report-to-image synthesis)."""
    return [" ".join(p for p in (str(f or "").strip(), str(i or "").strip()) if p) for f, i in zip(findings, impression)]


class SDM:
    """A trained semantic diffusion model: U-Net, DDIM sampler, latent scale and (for reports) tau_phi."""

    def __init__(self, unet, scheduler, latent_scale: float, conditioning: str = "none", encoder=None,
                 tokenizer=None, max_length: int = 0, ddim_steps: int = 50):
        self.unet, self.scheduler, self.latent_scale = unet.eval(), scheduler, float(latent_scale)
        self.conditioning, self.encoder, self.tokenizer = conditioning, encoder, tokenizer
        self.max_length, self.ddim_steps = max_length, ddim_steps
        if encoder is not None:
            encoder.eval()

    def context(self, reports: Sequence[str] | None, n: int) -> torch.Tensor | None:
        if self.conditioning == "none":
            return None
        if reports is None or len(reports) != n:
            raise InputError(f"a report-conditioned model needs one report per sample: got {None if reports is None else len(reports)} for {n}")
        return te.embed(self.encoder, te.tokenize(self.tokenizer, reports, self.max_length))

    def eps(self, z: torch.Tensor, t, ctx: torch.Tensor | None, uncond: torch.Tensor | None = None,
            guidance: float = 1.0) -> torch.Tensor:
        if ctx is None:
            return self.unet(z, t).sample
        out = self.unet(z, t, encoder_hidden_states=ctx).sample
        if uncond is not None and guidance != 1.0:
            base = self.unet(z, t, encoder_hidden_states=uncond).sample
            out = base + guidance * (out - base)
        return out

    def save(self, folder: str | os.PathLike, extra: dict | None = None) -> None:
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            self.unet.save_pretrained(str(tmp / "unet"))
            self.scheduler.save_pretrained(str(tmp / "scheduler"))
            if self.encoder is not None:
                self.encoder.save_pretrained(str(tmp / "text_encoder"))
                self.tokenizer.save_pretrained(str(tmp / "tokenizer"))
            meta = {"latent_scale": self.latent_scale, "conditioning": self.conditioning,
                    "max_length": self.max_length, "ddim_steps": self.ddim_steps, **(extra or {})}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))

    def untrained(self, seed: int = 0) -> SDM:
        """This SDM's architecture, sampler and latent scale with fresh seeded weights (unconditional only): the
        baseline that shows what training the SDM adds to a cascade's samples."""
        if self.conditioning != "none":
            raise InputError("an untrained baseline is built for the unconditional SDM; got a report-conditioned one")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            unet = type(self.unet).from_config(self.unet.config)
        return SDM(unet.to(module_device(self.unet)), self.scheduler, self.latent_scale, ddim_steps=self.ddim_steps)

    def to(self, device) -> SDM:
        self.unet.to(device)
        if self.encoder is not None:
            self.encoder.to(device)
        return self

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device | None = None) -> SDM:
        """A saved SDM on ``device`` (default :func:`cxrgen.engine.default_device`)."""
        return cls._load(folder).to(default_device(device))

    @classmethod
    def _load(cls, folder: str | os.PathLike) -> SDM:
        from diffusers import DDIMScheduler, UNet2DConditionModel, UNet2DModel

        folder = Path(folder)
        if not (folder / META_FILE).is_file():
            raise InputError(f"{folder} holds no Cheff SDM ({META_FILE} missing); expected a train_sdm output")
        meta = json.loads((folder / META_FILE).read_text())
        scheduler = DDIMScheduler.from_pretrained(str(folder / "scheduler"))
        if meta["conditioning"] == "none":
            return cls(UNet2DModel.from_pretrained(str(folder / "unet")), scheduler, meta["latent_scale"],
                       ddim_steps=meta["ddim_steps"])
        from transformers import BertModel, BertTokenizerFast

        return cls(UNet2DConditionModel.from_pretrained(str(folder / "unet")), scheduler, meta["latent_scale"], "report",
                   BertModel.from_pretrained(str(folder / "text_encoder"), add_pooling_layer=False),
                   BertTokenizerFast.from_pretrained(str(folder / "tokenizer")), meta["max_length"], meta["ddim_steps"])


def cache_latent_stats(vae, images, folder: str | os.PathLike, engine: Engine, reports: Sequence[str] | None = None,
                       tokenizer=None, max_length: int = 0, batch_size: int = 64) -> ShardedDataset:
    """Encode every training image once (posterior mean and std) into a shard folder on disk, with the report
    tokens when given; the index's meta holds the std of all latent means (LDM's ``scale_by_std``), accumulated
    batch by batch. The main process writes; the others wait and read it."""
    ch = vae.config.in_channels
    with engine.accelerator.main_process_first():
        if engine.is_main:
            total, total_sq, count = 0.0, 0.0, 0
            writer = ShardWriter(folder)
            loader = engine.sequential_loader(images, batch_size)
            start = 0
            with torch.no_grad():
                for batch in loader:
                    x = to_unit(batch.to(engine.device)).expand(-1, ch, -1, -1)
                    d = vae.encode(x).latent_dist
                    row = {"mean": d.mean.float().cpu(), "std": d.std.float().cpu()}
                    if reports is not None:
                        toks = te.tokenize(tokenizer, reports[start:start + len(batch)], max_length)
                        row.update(input_ids=toks["input_ids"], attention_mask=toks["attention_mask"])
                    m = row["mean"].double()
                    total, total_sq, count = total + float(m.sum()), total_sq + float((m * m).sum()), count + m.numel()
                    writer.add(**row)
                    start += len(batch)
            var = (total_sq - total * total / count) / max(1, count - 1)
            writer.close({"latent_std": float(np.sqrt(max(var, 0.0)))})
    return ShardedDataset(folder)


def train_sdm(
    vae,
    images,
    cfg: SDMConfig,
    out_dir: str | os.PathLike,
    reports: Sequence[str] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    keep_checkpoint: bool = False,
    stop_after: int | None = None,
    runtime: RuntimeConfig | None = None,
) -> SDM:
    """Encode ``images`` (uint8 at the AE's size: an (N,H,W) array or a ShardedDataset) once into a latent cache
    on disk (``<checkpoint_dir>.latents``, else ``<out_dir>.latents``; removed with the checkpoint), then train the SDM
    on posterior samples (eq. 2), reading the cache batch by batch. ``cfg.batch_size`` is the global batch."""
    cfg.validate()
    engine = Engine(runtime)
    torch.manual_seed(seed)
    data = image_dataset(images, vae.config.sample_size, "SDM")
    vae = engine.place(vae.eval())
    ddpm = make_scheduler("ddpm", cfg.num_train_timesteps, cfg.beta_start, cfg.beta_end, cfg.beta_schedule,
                          cfg.prediction_type)
    encoder = tokenizer = empty = None
    if cfg.conditioning == "report":
        if reports is None or len(reports) != len(data):
            raise InputError(f"report conditioning needs one report per image: got {None if reports is None else len(reports)} for {len(data)}")
        tok_dir = Path(checkpoint_dir) / "tokenizer" if checkpoint_dir else None
        with engine.accelerator.main_process_first():
            if tok_dir is not None and (tok_dir / "tokenizer.json").is_file():  # resuming: the ids the weights were trained with
                from transformers import BertTokenizerFast

                tokenizer = BertTokenizerFast.from_pretrained(str(tok_dir))
            else:
                tokenizer = te.train_wordpiece_tokenizer(reports, cfg.encoder.vocab_size, cfg.encoder.max_length)
                if tok_dir is not None and engine.is_main:
                    tokenizer.save_pretrained(str(tok_dir))
        encoder = te.build_report_encoder(cfg.encoder, len(tokenizer))
        empty = {k: v.to(engine.device) for k, v in te.tokenize(tokenizer, [""], cfg.encoder.max_length).items()}
    # beside the checkpoint, not in it: each checkpoint write replaces the checkpoint folder
    cache_dir = Path(str(checkpoint_dir or out_dir) + ".latents")
    cache = cache_latent_stats(vae, data, cache_dir, engine, list(reports) if encoder is not None else None,
                               tokenizer, cfg.encoder.max_length)
    latent_shape = cache.item_shape("mean")
    # in float32, as 1 / std of the float32 latents always was (torch accumulates that std in double, too)
    scale = (float(cfg.latent_scale) if cfg.latent_scale
             else float(1.0 / torch.tensor(cache.meta["latent_std"], dtype=torch.float32)))
    unet = build_sdm_unet(cfg, latent_shape[0], latent_shape[-1], cfg.encoder.hidden_size if encoder is not None else None)
    params = list(unet.parameters()) + (list(encoder.parameters()) if encoder is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    log.info("SDM (%s): %.2f M U-Net parameters, latent %s, scale %.4f", cfg.conditioning,
             sum(p.numel() for p in unet.parameters()) / 1e6, latent_shape, scale)
    if encoder is not None:
        unet, encoder, opt = engine.prepare(unet, encoder, opt)
    else:
        unet, opt = engine.prepare(unet, opt)

    def step_fn(step, batch):
        mean, std = batch["mean"], batch["std"]
        n, shape = len(mean), tuple(mean.shape[1:])
        z0 = (mean + std * engine.global_draw(lambda k: torch.randn((k, *shape)), n)) * scale
        noise = engine.global_draw(lambda k: torch.randn((k, *shape)), n)
        t = engine.global_draw(lambda k: torch.randint(0, cfg.num_train_timesteps, (k,)), n)
        zt, target = add_noise_and_target(ddpm, z0, noise, t)
        if encoder is not None:
            ids, mask = batch["input_ids"].clone(), batch["attention_mask"].clone()
            if cfg.cond_dropout > 0:  # the empty report teaches the unconditional score for guidance
                drop = engine.global_draw(lambda k: torch.rand(k), n) < cfg.cond_dropout
                ids[drop], mask[drop] = empty["input_ids"][0], empty["attention_mask"][0]
            pred = unet(zt, t, encoder_hidden_states=te.embed(encoder, {"input_ids": ids, "attention_mask": mask})).sample
        else:
            pred = unet(zt, t).sample
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        engine.backward(loss)
        opt.step()
        return {"loss": loss.item()}

    models = {"unet": unet, **({"text_encoder": encoder} if encoder is not None else {})}
    log_df = train_loop(step_fn, cache, cfg.batch_size, cfg.steps, models, opt, checkpoint_dir, seed,
                        settings(cfg, seed=seed, n_train=len(data)), engine, cfg.checkpoint_every,
                        f"SDM {cfg.conditioning}", progress, stop_after)
    sdm = SDM(engine.unwrap(unet), ddim_from(ddpm), scale, cfg.conditioning,
              engine.unwrap(encoder) if encoder is not None else None, tokenizer, cfg.encoder.max_length, cfg.ddim_steps)
    if stop_after is not None and len(log_df) < cfg.steps:
        return sdm

    def write():
        sdm.save(out_dir, {"config": asdict(cfg), "n_train": len(data)})
        write_training_log(log_df, out_dir, f"Cheff SDM ({cfg.conditioning})")
        write_stage_card(out_dir, cfg, log_df, len(data))
        if not keep_checkpoint:
            shutil.rmtree(cache_dir, ignore_errors=True)

    finish_stage(engine, write, checkpoint_dir, keep_checkpoint)
    return sdm


@torch.no_grad()
def ddim_sample(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler,
    shape: tuple[int, ...],
    steps: int,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    after_step: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
    progress: bool = False,
    desc: str = "DDIM",
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """DDIM from x_T ~ N(0, I): ``eps_fn(x_t, t)``; ``after_step(x_{t-1}, t_prev)`` may edit each iterate
    (inpainting pastes the known region there). x_T is drawn on the CPU (``generator``: a CPU generator, so samples
    do not depend on the device) and moved to ``device`` (default: the CPU), where the iterates stay."""
    scheduler.set_timesteps(int(steps))
    x = torch.randn(shape, generator=generator).to(device or "cpu")
    ts = list(scheduler.timesteps)
    for i, t in enumerate(progress_bar(ts, desc=desc, disable=not progress, leave=False)):
        eps = eps_fn(x, t)
        x = scheduler.step(eps, t, x, eta=eta, generator=generator).prev_sample
        if after_step is not None:
            t_prev = int(ts[i + 1]) if i + 1 < len(ts) else -1
            x = after_step(x, t_prev)
    return x


@torch.no_grad()
def sample_latents(sdm: SDM, n: int, reports: Sequence[str] | None = None, steps: int | None = None,
                   generator: torch.Generator | None = None, batch_size: int = 64, guidance: float = 1.0,
                   progress: bool = True) -> torch.Tensor:
    """n raw latents on the CPU (divided by ``latent_scale``, ready for the decoder); sampled on the U-Net's device."""
    cfg = sdm.unet.config
    device = module_device(sdm.unet)
    out = []
    for i in progress_bar(range(0, n, batch_size), desc="SDM sampling", disable=not progress, leave=False):
        m = min(batch_size, n - i)
        ctx = sdm.context(None if reports is None else list(reports[i:i + m]), m)
        unc = sdm.context([""] * m, m) if ctx is not None and guidance != 1.0 else None
        z = ddim_sample(lambda x, t: sdm.eps(x, t, ctx, unc, guidance), sdm.scheduler,  # noqa: B023 (run here)
                        (m, cfg.in_channels, cfg.sample_size, cfg.sample_size), steps or sdm.ddim_steps, generator,
                        device=device)
        out.append((z / sdm.latent_scale).cpu())
    return torch.cat(out)
