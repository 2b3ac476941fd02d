"""Build the miniature text-to-image foundation model (a tiny Stable Diffusion) from scratch.

tokenizer (CLIP-format BPE on the corpus captions) -> AutoencoderKL (f=4) -> per-channel latent
standardisation folded into the VAE's quant convs -> cached latents -> CLIPTextModel trained jointly
with UNet2DConditionModel (v-prediction, zero-terminal-SNR, 10% caption dropout) -> a standard
``StableDiffusionPipeline`` folder (DDIM sampler, trailing spacing) plus ``training_log.csv`` and
``loss_curve.png``. Resumable: checkpoints go to ``<out_dir>.ckpt`` and are removed on success.

Data: the generated corpus (images and caption tokens) and the latent cache live on disk as shard folders
(:mod:`cxrgen.data.shards`) under the checkpoint folder; both phases read their batches through a DataLoader, so
training memory does not grow with ``n_images`` (generating the corpus still holds its uint8 images once: the
generator draws the whole corpus from one stream).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.data.shards import SHARD_SIZE, ShardedDataset, ShardWriter, write_shards
from cxrgen.diffusion import diffusion_loss, make_sampling_scheduler, make_train_scheduler
from cxrgen.engine import Engine, RuntimeConfig, check_settings
from cxrgen.io import atomic_path
from cxrgen.models.corpus import corpus_text, foundation_corpus
from cxrgen.models.foundation_config import FoundationConfig
from cxrgen.models.tokenizer import train_clip_tokenizer

LOG_FILE = "training_log.csv"
CURVE_FILE = "loss_curve.png"
CONFIG_FILE = "foundation_config.json"
PREVIEW_FILE = "preview.png"
logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# model constructors


def make_vae(cfg: FoundationConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_block_out_channels),
        layers_per_block=cfg.vae_layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.vae_norm_groups,
        sample_size=cfg.image_size,
        scaling_factor=1.0,
        mid_block_add_attention=False,
        force_upcast=False,
    )


def make_text_encoder(cfg: FoundationConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    tc = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_hidden * 4,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        projection_dim=cfg.text_hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(tc)


def make_unet(cfg: FoundationConfig):
    from diffusers import UNet2DConditionModel

    n = len(cfg.unet_block_out_channels)
    f = 2 ** (len(cfg.vae_block_out_channels) - 1)
    return UNet2DConditionModel(
        sample_size=cfg.image_size // f,
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        # attention at the full 16x16 latent resolution costs ~4x the whole step on CPU: cross-attend
        # only at the lower resolutions (and in the mid block)
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        block_out_channels=tuple(cfg.unet_block_out_channels),
        layers_per_block=cfg.unet_layers_per_block,
        norm_num_groups=cfg.unet_norm_groups,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=cfg.attention_head_dim,
    )


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------------------------
# helpers


def _images_to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.as_tensor(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


CORPUS_DIR = "corpus"  # <checkpoint folder>/corpus: shard folder, fields image (H, W, 3) uint8 and ids (tokens)
LATENTS_DIR = "latents"  # <checkpoint folder>/latents: shard folder, fields latent and ids
ENCODE_BATCH = 128


def _write_corpus(images: np.ndarray, ids: torch.Tensor, folder: Path, engine: Engine) -> ShardedDataset:
    """The corpus as a shard folder (the main process writes it, the others wait), read back item by item."""
    with engine.accelerator.main_process_first():
        if engine.is_main:
            write_shards(folder, ({"image": images[i:i + SHARD_SIZE], "ids": ids[i:i + SHARD_SIZE]}
                                  for i in range(0, len(images), SHARD_SIZE)))
    return ShardedDataset(folder)


class _ChannelMoments:
    """Per-channel mean and sample std of (N, C, H, W) batches, accumulated in float64 batch by batch."""

    def __init__(self):
        self.sum = self.sum_sq = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.double()
        s, sq = x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3))
        self.sum, self.sum_sq = (s, sq) if self.sum is None else (self.sum + s, self.sum_sq + sq)
        self.count += x.numel() // x.shape[1]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.sum / self.count
        var = (self.sum_sq - self.sum * mean) / max(1, self.count - 1)
        return mean.float(), var.clamp_min(0).sqrt().float()


@torch.no_grad()
def _latent_moments(vae, corpus: ShardedDataset, engine: Engine, cache: Path | None = None) -> tuple:
    """Encode the corpus in order (posterior means, batch by batch); return their per-channel mean and std. With
    ``cache`` the main process also writes them with the caption tokens into that shard folder (the moments in its
    meta) while the others wait and read the moments from there; without, every process computes them."""
    if cache is not None:
        with engine.accelerator.main_process_first():
            if engine.is_main:
                _encode_corpus(vae, corpus, engine, ShardWriter(cache))
        meta = ShardedDataset(cache).meta
        return torch.tensor(meta["mean"]), torch.tensor(meta["std"])
    return _encode_corpus(vae, corpus, engine)


def _encode_corpus(vae, corpus: ShardedDataset, engine: Engine, writer: ShardWriter | None = None) -> tuple:
    moments = _ChannelMoments()
    for batch in engine.sequential_loader(corpus, ENCODE_BATCH):
        lat = vae.encode(_images_to_tensor(batch["image"]).to(vae.device)).latent_dist.mean.cpu()
        moments.add(lat)
        if writer is not None:
            writer.add(latent=lat, ids=batch["ids"])
    mean, std = moments.mean_std()
    if writer is not None:
        writer.close({"mean": mean.tolist(), "std": std.tolist()})
    return mean, std


@torch.no_grad()
def standardise_latents_in_vae(vae, mean: torch.Tensor, std: torch.Tensor) -> None:
    """Reparametrise the VAE so that its latents are per-channel standardised: z' = (z - mean) / std.

    Exact: quant_conv's mean half is rescaled/shifted (and its log-variance half shifted by
    -2 log std); post_quant_conv absorbs the inverse, so ``decode(encode(x))`` is unchanged.
    """
    c = mean.numel()
    qc, pqc = vae.quant_conv, vae.post_quant_conv
    if qc is None or pqc is None or qc.kernel_size != (1, 1) or pqc.kernel_size != (1, 1):
        raise ValueError("latent standardisation needs 1x1 quant_conv and post_quant_conv")
    qc.weight[:c] /= std.view(c, 1, 1, 1)
    qc.bias[:c] = (qc.bias[:c] - mean) / std
    qc.bias[c:] -= 2.0 * torch.log(std)
    w = pqc.weight[:, :, 0, 0].clone()  # (out, in)
    pqc.bias += w @ mean
    pqc.weight *= std.view(1, c, 1, 1)


class _Log:
    def __init__(self, rows=None, progress=True, is_main=True):
        self.rows = list(rows or [])
        self.progress = progress and is_main
        self.t0 = time.perf_counter() - (self.rows[-1][3] if self.rows else 0.0)

    def add(self, phase, step, loss, every=1, total=None):
        sec = time.perf_counter() - self.t0
        self.rows.append([phase, int(step), float(loss), float(sec)])
        if self.progress and (step % every == 0 or step == total):
            logger.info("[foundation] %s step %d/%s loss %.4f (%.0fs)", phase, step, total, loss, sec)

    def note(self, message: str) -> None:
        if self.progress:
            logger.info("[foundation] %s", message)


def _write_log(rows, folder: Path) -> None:
    import pandas as pd

    df = pd.DataFrame(rows, columns=["phase", "step", "loss", "seconds"])
    df.to_csv(folder / LOG_FILE, index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    phases = list(dict.fromkeys(df["phase"]))
    fig, axes = plt.subplots(1, max(1, len(phases)), figsize=(4.5 * max(1, len(phases)), 3.2))
    axes = np.atleast_1d(axes)
    for ax, ph in zip(axes, phases):
        d = df[df.phase == ph]
        ax.plot(d.step, d.loss, lw=0.5, alpha=0.4, color="C0")
        if len(d) >= 10:
            k = max(5, len(d) // 30)
            ax.plot(d.step, d.loss.rolling(k, min_periods=1).mean(), color="C1", lw=1.5, label=f"mean of {k}")
            ax.legend()
        ax.set_title(ph)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(folder / CURVE_FILE, dpi=100)
    plt.close(fig)


def _budget_hit(cfg, t_start) -> bool:
    return cfg.time_budget_s is not None and time.perf_counter() - t_start > cfg.time_budget_s


# ----------------------------------------------------------------------------------------------
# phases


# what may change between an interrupted build and its resumption without invalidating its checkpoints
_RESUME_FREE = ("checkpoint_every", "num_threads", "time_budget_s", "preview_prompts", "preview_per_prompt",
                "preview_steps", "preview_guidance")


def resume_settings(cfg: FoundationConfig, phase: str) -> dict:
    """The settings a phase's checkpoint must have been written under to be resumed."""
    return {"phase": phase, **{k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}}


class _VAEBatch:
    """Collate of the VAE phase: stack a global batch (uint8 corpus images) and draw its crop and posterior noise
    from the phase's generator, right after the sampler drew its indices from it (the order of the loop before
    the DataLoader: indices, crop, noise). Counts the steps it collates from ``first_step`` on."""

    def __init__(self, cfg: FoundationConfig, gen: torch.Generator, first_step: int):
        self.cfg, self.gen, self.step = cfg, gen, first_step - 1
        self.full_from = int(cfg.vae_steps * (1 - cfg.vae_full_frac))
        self.factor = 2 ** (len(cfg.vae_block_out_channels) - 1)

    def __call__(self, items) -> tuple[torch.Tensor, torch.Tensor]:
        self.step += 1
        x = _images_to_tensor(np.stack([item["image"] for item in items]))
        c, size = self.cfg.vae_crop, self.cfg.image_size
        if c and c < size and self.step <= self.full_from:
            oy, ox = torch.randint(0, size - c + 1, (2,), generator=self.gen).tolist()
            x = x[:, :, oy:oy + c, ox:ox + c]
        latent_shape = (self.cfg.latent_channels, x.shape[2] // self.factor, x.shape[3] // self.factor)
        return x, torch.randn((len(x), *latent_shape), generator=self.gen)


def _train_vae(cfg, vae, corpus, ckpt, log, progress, engine: Engine):
    """The VAE phase. Each step draws the global batch (indices, crop, posterior noise) from one generator,
    exactly as a single process always did; every process reads that batch and trains on its rows of each
    micro-step (``Engine.micro_rows``) and gradients are averaged, so the step is the same for any process count."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.5 * (1 + math.cos(math.pi * min(s, cfg.vae_steps) / cfg.vae_steps)) * 0.9 + 0.1)
    )
    opt, sched = engine.prepare(opt, sched)
    settings = resume_settings(cfg, "vae")
    st = engine.resume(ckpt, settings, {"vae": vae}, opt, sched, {"data": gen})
    start = 0
    if st is not None:
        start = st["step"]
        log.rows = st["extra"]["log"]
    rows = engine.micro_rows(cfg.vae_batch, "vae_batch")
    ga = len(rows)
    batches = engine.drawn_loader(corpus, cfg.vae_batch, cfg.vae_steps - start, gen, _VAEBatch(cfg, gen, start + 1))
    vae.train()
    for step, (x, eps) in zip(range(start + 1, cfg.vae_steps + 1), batches):
        opt.zero_grad(set_to_none=True)
        rec_total = 0.0
        for r in rows:
            xr = x[r].to(engine.device)
            post = vae.encode(xr).latent_dist
            z = post.mean + post.std * eps[r].to(engine.device)
            rec = vae.decode(z).sample
            rec_loss = F.mse_loss(rec, xr) + 0.5 * F.l1_loss(rec, xr)
            kl = post.kl().mean() / (z[0].numel())
            loss = rec_loss + cfg.vae_kl_weight * kl
            engine.backward(loss / ga)
            rec_total += rec_loss.item() / ga
        engine.average_gradients(vae.parameters())
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        log.add("vae", step, engine.mean(rec_total), every=50, total=cfg.vae_steps)
        if step % cfg.checkpoint_every == 0 and step < cfg.vae_steps:
            engine.save(ckpt, settings, {"vae": vae}, opt, sched, step, {"data": gen}, extra={"log": log.rows})
    vae.eval()


@torch.no_grad()
def _psnr(vae, x, batch=ENCODE_BATCH) -> float:
    rec = torch.cat([vae.decode(vae.encode(x[i:i + batch].to(vae.device)).latent_dist.mean).sample.cpu()
                     for i in range(0, len(x), batch)])
    mse = F.mse_loss(rec.clamp(-1, 1), x).item() / 4.0  # in [0,1] units
    return 10 * math.log10(1.0 / max(mse, 1e-12))


class _UNetBatch:
    """Collate of the U-Net phase: stack a global batch of cached latents and caption tokens, then draw its caption
    dropout, noise and timesteps from the phase's generator (after the sampler's indices, as the loop before the
    DataLoader drew them)."""

    def __init__(self, scheduler, gen: torch.Generator, caption_dropout: float, uncond_ids: torch.Tensor):
        self.scheduler, self.gen, self.caption_dropout, self.uncond_ids = scheduler, gen, caption_dropout, uncond_ids

    def __call__(self, items):
        from cxrgen.diffusion import sample_noise_and_timesteps

        lat = torch.from_numpy(np.stack([item["latent"] for item in items]))
        tok = torch.from_numpy(np.stack([item["ids"] for item in items]))
        drop = torch.rand(len(items), generator=self.gen) < self.caption_dropout
        tok[drop] = self.uncond_ids
        noise, t = sample_noise_and_timesteps(self.scheduler, lat, self.gen)
        return lat, tok, noise, t


def _train_unet(cfg, unet, text_encoder, latents, uncond_ids, ckpt, log, progress, t_start, engine: Engine,
                stop_after: int | None = None):
    """The joint text-encoder + U-Net phase on the latent cache (``latents``: items with ``latent`` and ``ids``);
    the global batch's indices, caption dropout, noise and timesteps are drawn from one generator as a single
    process always did, each process trains on its rows (see _train_vae)."""
    from diffusers.optimization import get_scheduler

    scheduler = make_train_scheduler(
        cfg.prediction_type, cfg.zero_terminal_snr, cfg.num_train_timesteps, cfg.beta_schedule
    )
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    opt = torch.optim.AdamW(
        [
            {"params": list(unet.parameters()), "lr": cfg.unet_lr},
            {"params": list(text_encoder.parameters()), "lr": cfg.text_lr},
        ],
        weight_decay=1e-4,
    )
    lr_sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.unet_steps)
    opt, lr_sched = engine.prepare(opt, lr_sched)
    start = 0
    models = {"unet": unet, "text_encoder": text_encoder}
    settings = resume_settings(cfg, "unet")
    st = engine.resume(ckpt, settings, models, opt, lr_sched, {"data": gen})
    if st is not None:
        start = st["step"]
        log.rows = st["extra"]["log"]
    unet.train()
    text_encoder.train()
    params = [p for g in opt.param_groups for p in g["params"]]
    rows = engine.micro_rows(cfg.unet_batch, "unet_batch")
    ga = len(rows)
    batches = engine.drawn_loader(latents, cfg.unet_batch, cfg.unet_steps - start, gen,
                                  _UNetBatch(scheduler, gen, cfg.caption_dropout, uncond_ids))
    for step, (lat, tok, noise, t) in zip(range(start + 1, cfg.unet_steps + 1), batches):
        lat, noise, t = lat.to(engine.device), noise.to(engine.device), t.to(engine.device)
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for r in rows:
            emb = text_encoder(tok[r].to(engine.device))[0]
            loss = diffusion_loss(unet, scheduler, lat, emb, snr_gamma=cfg.snr_gamma, noise=noise, timesteps=t,
                                  rows=r)
            engine.backward(loss / ga)
            total += loss.item() / ga
        engine.average_gradients(params)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        log.add("unet", step, engine.mean(total), every=100, total=cfg.unet_steps)
        stopping = stop_after is not None and step >= stop_after and step < cfg.unet_steps
        if stopping or (step % cfg.checkpoint_every == 0 and step < cfg.unet_steps):
            engine.save(ckpt, settings, models, opt, lr_sched, step, {"data": gen}, extra={"log": log.rows})
        if stopping:
            return None
        if _budget_hit(cfg, t_start):
            log.note(f"time budget reached at U-Net step {step}")
            break
    unet.eval()
    text_encoder.eval()
    return scheduler


def build_foundation(
    cfg: FoundationConfig | None = None,
    out_dir: str | os.PathLike = "foundation",
    log_dir: str | os.PathLike | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    runtime: RuntimeConfig | None = None,
    stop_after: int | None = None,
) -> dict:
    """Pretrain the miniature foundation model and save it as a ``StableDiffusionPipeline`` folder.

    ``out_dir`` is written atomically. ``training_log.csv``, ``loss_curve.png``, ``preview.png`` and
    ``foundation_config.json`` go into ``out_dir`` (and are copied to ``log_dir`` if given).
    Checkpoints go to ``checkpoint_dir`` (default ``<out_dir>.ckpt``); a killed build resumes from
    them (the engine's resume policy: checkpoints written under other settings are refused, naming the keys)
    and they are removed once the folder is written. ``runtime``: how it runs (:mod:`cxrgen.engine`; batch
    sizes ``vae_batch``/``unet_batch`` are global batches whatever the process count). The corpus is
    generated once per run and written to ``<checkpoint_dir>/corpus``, the latents to ``<checkpoint_dir>/latents``;
    both phases read batches from there (see the module docstring). ``stop_after``: end after that
    U-Net step, leaving the checkpoints (a simulated preemption; returns ``{"finished": False, ...}``).
    Returns a summary dict.
    """
    from diffusers import StableDiffusionPipeline

    from cxrgen.models.card import write_model_card

    cfg = cfg or FoundationConfig()
    engine = Engine(runtime)
    out_dir = Path(out_dir)
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else out_dir.with_name(out_dir.name + ".ckpt")
    ckpt_root.mkdir(parents=True, exist_ok=True)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}

    # corpus + tokenizer (deterministic, cheap: regenerated on resume)
    t = time.perf_counter()
    images, captions = foundation_corpus(cfg)
    tokenizer = train_clip_tokenizer(corpus_text(captions), cfg.vocab_size, cfg.max_length)
    timings["corpus_tokenizer_s"] = time.perf_counter() - t
    ids = tokenizer(captions, padding="max_length", max_length=cfg.max_length, truncation=True,
                    return_tensors="pt").input_ids
    corpus = _write_corpus(images, ids, ckpt_root / CORPUS_DIR, engine)
    del images
    uncond_ids = tokenizer([""], padding="max_length", max_length=cfg.max_length, return_tensors="pt").input_ids[0]

    torch.manual_seed(cfg.seed)
    vae = make_vae(cfg)
    text_encoder = make_text_encoder(cfg, tokenizer)
    unet = make_unet(cfg)
    engine.place(vae, text_encoder, unet)  # not DDP-wrapped: gradients are averaged by the phases

    log = _Log(progress=progress, is_main=engine.is_main)
    # --- VAE ----------------------------------------------------------------------------------
    t = time.perf_counter()
    vae_done = ckpt_root / "vae_final.safetensors"
    vae_log = ckpt_root / "vae_log.json"  # the finished VAE phase: its log and the settings it ran under
    if vae_done.is_file():
        from safetensors.torch import load_file

        done = json.loads(vae_log.read_text())
        done = done if isinstance(done, dict) else {"log": done}  # a log without settings: refused below
        check_settings(ckpt_root, done.get("settings"), resume_settings(cfg, "vae"))
        vae.load_state_dict(load_file(str(vae_done)))
        log.rows = done["log"]
        vae.eval()
    else:
        _train_vae(cfg, vae, corpus, ckpt_root / "vae", log, progress, engine)
        mean, std = _latent_moments(vae, corpus, engine)
        std = std.clamp_min(1e-4)
        standardise_latents_in_vae(vae, mean.to(engine.device), std.to(engine.device))
        from safetensors.torch import save_file

        engine.accelerator.wait_for_everyone()
        if engine.is_main:
            with atomic_path(vae_log) as p:
                p.write_text(json.dumps({"settings": resume_settings(cfg, "vae"), "log": log.rows}))
            with atomic_path(vae_done) as p:
                save_file({k: v.detach().contiguous().cpu() for k, v in vae.state_dict().items()}, str(p))
            shutil.rmtree(ckpt_root / "vae", ignore_errors=True)
        engine.accelerator.wait_for_everyone()
    timings["vae_s"] = time.perf_counter() - t
    t = time.perf_counter()
    latent_mean, latent_std = _latent_moments(vae, corpus, engine, ckpt_root / LATENTS_DIR)
    latents = ShardedDataset(ckpt_root / LATENTS_DIR)
    psnr = _psnr(vae, _images_to_tensor(np.stack([corpus[i]["image"] for i in range(min(256, len(corpus)))])))
    timings["latents_s"] = time.perf_counter() - t

    # --- text encoder + U-Net --------------------------------------------------------------------
    t = time.perf_counter()
    train_sched = _train_unet(cfg, unet, text_encoder, latents, uncond_ids, ckpt_root / "unet", log,
                              progress, t_start, engine, stop_after)
    if train_sched is None:
        return {"finished": False, "log": log.rows, "checkpoint": str(ckpt_root)}
    timings["unet_s"] = time.perf_counter() - t

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=make_sampling_scheduler(train_sched), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    params = {"vae": count_params(vae), "text_encoder": count_params(text_encoder), "unet": count_params(unet)}
    summary = {
        "finished": True,
        "params": params,
        "vocab_size": len(tokenizer),
        "latent_shape": [cfg.latent_channels] + [cfg.image_size // 2 ** (len(cfg.vae_block_out_channels) - 1)] * 2,
        "vae_psnr_db": psnr,
        "latent_mean_after": latent_mean.tolist(),
        "latent_std_after": latent_std.tolist(),
        "final_loss": {ph: float(np.mean([r[2] for r in log.rows if r[0] == ph][-50:]))
                       for ph in dict.fromkeys(r[0] for r in log.rows)},
        "timings": timings,
        "config": cfg.to_dict(),
    }
    if engine.is_main:  # one writer; the others wait below
        with atomic_path(out_dir) as tmp:
            pipe.save_pretrained(tmp, safe_serialization=True)
            _write_log(log.rows, tmp)
            t = time.perf_counter()
            if cfg.preview_prompts and cfg.preview_per_prompt > 0:
                grid = sample_grid(pipe, list(cfg.preview_prompts), cfg.preview_per_prompt, cfg.preview_steps,
                                   cfg.preview_guidance, seed=cfg.seed)
                grid.save(tmp / PREVIEW_FILE)
            timings["preview_s"] = time.perf_counter() - t
            timings["total_s"] = time.perf_counter() - t_start
            (tmp / CONFIG_FILE).write_text(json.dumps(summary, indent=2))
            write_model_card(tmp, training_config=cfg.to_dict(),
                             data={"corpus": "synthetic chest X-ray phantoms and captions (cxrgen.models.corpus)",
                                   "n_images": cfg.n_images},
                             metrics={"vae_psnr_db": psnr, **{f"final_{ph}_loss": v
                                                               for ph, v in summary["final_loss"].items()}})
        if log_dir is not None:
            log_dir = Path(log_dir)
            log_dir.mkdir(parents=True, exist_ok=True)
            for name in (LOG_FILE, CURVE_FILE, CONFIG_FILE, PREVIEW_FILE):
                if (out_dir / name).is_file():
                    with atomic_path(log_dir / name) as p:
                        shutil.copyfile(out_dir / name, p)
        shutil.rmtree(ckpt_root, ignore_errors=True)
    engine.accelerator.wait_for_everyone()
    timings.setdefault("total_s", time.perf_counter() - t_start)
    if progress and engine.is_main:
        logger.info("[foundation] wrote %s in %.0fs; params %s", out_dir, timings["total_s"], params)
    return summary


@torch.no_grad()
def sample_grid(pipe, prompts: list[str], per_prompt: int = 4, steps: int = 20, guidance: float = 4.0,
                seed: int = 0, guidance_rescale: float = 0.0):
    """Sample ``per_prompt`` images for each prompt (one batched call) and tile them: one row per prompt."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    all_prompts = [p for p in prompts for _ in range(per_prompt)]
    out = pipe(all_prompts, num_inference_steps=steps, guidance_scale=guidance, generator=g,
               output_type="np", guidance_rescale=guidance_rescale).images
    out = (np.clip(out, 0, 1) * 255).round().astype(np.uint8)
    h, w = out.shape[1:3]
    grid = out.reshape(len(prompts), per_prompt, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(len(prompts) * h, per_prompt * w, 3)
    return Image.fromarray(grid)
