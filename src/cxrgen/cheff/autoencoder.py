"""Cheff's KL autoencoder (Weber et al. 2023, sec. 3 and supplement 7.3.1): a diffusers ``AutoencoderKL`` with
downsampling factor 4, trained as in LDM with pixel L1 + perceptual + patch-adversarial loss and a KL term.

Paper: 3 blocks of 128/256/512 channels, 2 residual layers each, no self-attention, KL weight 1e-6, Adam lr 4.5e-6,
batch 64, 3 epochs over MaCheX at 256 px, latent 3x64x64.  The loss follows LDM's ``LPIPSWithDiscriminator``:
``nll = (|x - x^| + w_p * perceptual) / exp(logvar) + logvar`` (learned scalar logvar), ``+ kl_weight * KL``,
``+ adaptive_weight * disc_factor * (-D(x^))`` after ``disc_start`` steps, the patch discriminator trained with the
hinge loss.

Perceptual term offline: LPIPS needs VGG weights that cannot be downloaded here.  ``perceptual="random_features"``
(default) uses LPIPS's distance (unit-normalised channels, squared difference, spatial mean, summed over layers,
no learned linear heads) on a fixed, seeded, randomly initialised 4-stage conv net; Zhang et al. (2018) found
random-network features already far better aligned with perception than pixel distances, though below trained
VGG.  ``perceptual="lpips"`` uses the ``lpips`` package if it and its weights are installed; ``"none"`` turns the
term off.  The choice is recorded in the saved model folder (``cheff_autoencoder.json``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cxrgen.cheff.training import (
    StateBundle, finish_stage, image_dataset, save_pretrained_atomic, settings, to_uint8, to_unit, train_loop,
    write_stage_card,
    write_training_log,
)
from cxrgen.engine import Engine, RuntimeConfig, default_device, module_device
from cxrgen.errors import InputError, WeightsUnavailableError
from cxrgen.io import write_text_atomic

log = logging.getLogger(__name__)
PERCEPTUAL = ("random_features", "lpips", "none")
META_FILE = "cheff_autoencoder.json"


@dataclass
class AutoencoderConfig:
    image_size: int = 32  # x_LR size the AE is trained on
    in_channels: int = 1  # grey; the paper's RGB-stored X-rays carry 3 identical channels
    block_out_channels: tuple[int, ...] = (16, 32, 32)
    layers_per_block: int = 1
    latent_channels: int = 3
    norm_num_groups: int = 8
    kl_weight: float = 1e-6
    perceptual: str = "random_features"
    perceptual_weight: float = 1.0
    disc_start: int = 250
    disc_weight: float = 0.5
    disc_channels: int = 32
    disc_layers: int = 2
    lr: float = 4.5e-4  # miniature: the paper's 4.5e-6 is for 3 epochs over 650k images at batch 64
    batch_size: int = 16
    steps: int = 500
    checkpoint_every: int = 200

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> AutoencoderConfig:
        presets = {
            # the embedded miniature (config.yaml): x_LR 64 px, ~2 minutes of a 2-core CPU; like the paper's 3 epochs
            # (30.5k steps < disc_start 50001) it ends before the discriminator starts
            "default": dict(image_size=64, batch_size=8, steps=150, lr=1e-3, disc_start=1000),
            "smoke": dict(image_size=16, block_out_channels=(8, 16, 16), norm_num_groups=4, disc_channels=8,
                          batch_size=4, steps=6, disc_start=3, checkpoint_every=3),
            # 7.3.1; steps = 3 epochs of the 651,471 MaCheX images at batch 64
            "paper": dict(image_size=256, in_channels=3, block_out_channels=(128, 256, 512), layers_per_block=2,
                          norm_num_groups=32, lr=4.5e-6, batch_size=64, steps=30538, disc_start=50001,
                          disc_channels=64, disc_layers=3, checkpoint_every=2000),
        }
        if name not in presets:
            raise InputError(f"autoencoder preset {name!r}; expected one of {sorted(presets)}")
        cfg = replace(cls(), **presets[name])
        return replace(cfg, **_coerce(cls, overrides))

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def _coerce(cls, overrides: dict) -> dict:
    names = set(cls.__dataclass_fields__)
    bad = [k for k in overrides if k not in names]
    if bad:
        raise InputError(f"{cls.__name__}: unknown setting(s) {bad}; expected some of {sorted(names)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}


def build_autoencoder(cfg: AutoencoderConfig):
    """The diffusers ``AutoencoderKL``: len(blocks)-1 downsamplings (3 blocks = factor 4), no attention."""
    from diffusers import AutoencoderKL

    if cfg.image_size % cfg.downsampling_factor:
        raise InputError(f"image_size={cfg.image_size} is not divisible by the downsampling factor {cfg.downsampling_factor}")
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=cfg.in_channels,
        out_channels=cfg.in_channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.image_size,
        mid_block_add_attention=False,  # 7.3.1: "No self-attention"
        scaling_factor=1.0,
    )


class PatchDiscriminator(nn.Module):
    """pix2pix's N-layer PatchGAN (the discriminator LDM's autoencoders use), BatchNorm swapped for GroupNorm so a
    batch of 4 in a smoke run trains the same way."""

    def __init__(self, in_channels: int = 1, channels: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = channels
        for i in range(1, n_layers + 1):
            out = channels * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(min(8, out), out), nn.LeakyReLU(0.2, True)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RandomFeaturePerceptual(nn.Module):
    """LPIPS-style distance on a frozen, seeded, randomly initialised conv net (see module doc)."""

    def __init__(self, in_channels: int = 1, widths=(16, 32, 64, 64), seed: int = 1234):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        stages, ch = [], in_channels
        for i, w in enumerate(widths):
            conv = nn.Conv2d(ch, w, 3, 1 if i == 0 else 2, 1)
            with torch.no_grad():  # Kaiming-uniform-like init drawn from our own generator: identical everywhere
                bound = (6.0 / (ch * 9)) ** 0.5
                conv.weight.copy_((torch.rand(conv.weight.shape, generator=g) * 2 - 1) * bound)
                conv.bias.zero_()
            stages.append(nn.Sequential(conv, nn.ReLU()))
            ch = w
        self.stages = nn.ModuleList(stages)
        self.requires_grad_(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        total = a.new_zeros(a.shape[0])
        for stage in self.stages:
            a, b = stage(a), stage(b)
            na = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (na - nb).pow(2).sum(1).mean(dim=(1, 2))
        return total


def make_perceptual(kind: str, in_channels: int) -> nn.Module | None:
    if kind == "none":
        return None
    if kind == "random_features":
        return RandomFeaturePerceptual(in_channels)
    if kind == "lpips":
        try:
            import lpips
        except ImportError as e:
            raise WeightsUnavailableError(
                "perceptual='lpips' needs the 'lpips' package and its VGG weights (pip install lpips; the weights "
                "download on first use); offline, use perceptual='random_features' or 'none'"
            ) from e
        net = lpips.LPIPS(net="vgg", verbose=False).requires_grad_(False)
        return _LpipsAdapter(net)
    raise InputError(f"perceptual={kind!r}; expected one of {list(PERCEPTUAL)}")


class _LpipsAdapter(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, a, b):
        if a.shape[1] == 1:
            a, b = a.expand(-1, 3, -1, -1), b.expand(-1, 3, -1, -1)
        return self.net(a, b).flatten()


class AutoencoderLoss(nn.Module):
    """LDM's LPIPSWithDiscriminator: learned logvar, KL, perceptual, hinge-GAN with adaptive weight."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.logvar = nn.Parameter(torch.zeros(()))
        self.discriminator = PatchDiscriminator(cfg.in_channels, cfg.disc_channels, cfg.disc_layers)
        self.perceptual = make_perceptual(cfg.perceptual, cfg.in_channels)

    def reconstruction(self, x, x_hat) -> torch.Tensor:
        rec = (x - x_hat).abs()
        if self.perceptual is not None and self.cfg.perceptual_weight > 0:
            rec = rec + self.cfg.perceptual_weight * self.perceptual(x, x_hat).view(-1, 1, 1, 1)
        return rec

    def generator_loss(self, x, x_hat, posterior, last_layer, step: int) -> tuple[torch.Tensor, dict]:
        rec = self.reconstruction(x, x_hat)
        nll = (rec / torch.exp(self.logvar) + self.logvar).sum() / x.shape[0]
        kl = posterior.kl().sum() / x.shape[0]
        loss = nll + self.cfg.kl_weight * kl
        parts = {"rec_l1": (x - x_hat).abs().mean().item(), "nll": nll.item(), "kl": kl.item()}
        if step >= self.cfg.disc_start:
            g = -self.discriminator(x_hat).mean()
            # LDM's adaptive weight balances the GAN gradient against the reconstruction gradient at the decoder output
            gn = torch.autograd.grad(nll, last_layer, retain_graph=True)[0].norm()
            gg = torch.autograd.grad(g, last_layer, retain_graph=True)[0].norm()
            w = (gn / (gg + 1e-4)).clamp(0.0, 1e4).detach() * self.cfg.disc_weight
            loss = loss + w * g
            parts["g_adv"] = g.item()
        return loss, parts

    def discriminator_loss(self, x, x_hat) -> torch.Tensor:
        real, fake = self.discriminator(x.detach()), self.discriminator(x_hat.detach())
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def train_autoencoder(
    images,
    cfg: AutoencoderConfig,
    out_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike | None = None,
    seed: int = 0,
    progress: bool = True,
    keep_checkpoint: bool = False,
    stop_after: int | None = None,
    runtime: RuntimeConfig | None = None,
):
    """Train on uint8 images at ``cfg.image_size`` (an (N,H,W) array or a ShardedDataset read batch by batch);
    writes ``out_dir`` (``save_pretrained`` folder plus training_log.csv, loss_curve.png and
    cheff_autoencoder.json); returns the trained ``AutoencoderKL``.

    ``cfg.batch_size`` is the global batch (see :mod:`cxrgen.engine`). The VAE and loss modules are placed on
    the engine's device but not DDP-wrapped (``encode``/``decode`` are called separately and LDM's adaptive GAN
    weight takes ``autograd.grad`` at the decoder output); their gradients are averaged over processes once
    per step. As in LDM under DDP, that adaptive weight is computed from each process's own batch, so
    multi-process runs match single-process ones exactly only before ``disc_start``.
    """
    engine = Engine(runtime)
    torch.manual_seed(seed)
    data = image_dataset(images, cfg.image_size, "autoencoder")
    vae, loss_mod = engine.place(build_autoencoder(cfg), AutoencoderLoss(cfg))
    gen_params = list(vae.parameters()) + [loss_mod.logvar]
    disc_params = list(loss_mod.discriminator.parameters())
    opt_g, opt_d = engine.prepare(torch.optim.Adam(gen_params, lr=cfg.lr, betas=(0.5, 0.9)),
                                  torch.optim.Adam(disc_params, lr=cfg.lr, betas=(0.5, 0.9)))
    last_layer = vae.decoder.conv_out.weight

    def step_fn(step, batch):
        x = to_unit(batch)
        if cfg.in_channels != 1:
            x = x.expand(-1, cfg.in_channels, -1, -1).contiguous()
        posterior = vae.encode(x).latent_dist
        eps = engine.global_draw(lambda n: torch.randn((n, *posterior.mean.shape[1:])), len(x))
        x_hat = vae.decode(posterior.mean + posterior.std * eps.to(posterior.mean.dtype)).sample
        loss, parts = loss_mod.generator_loss(x, x_hat, posterior, last_layer, step)
        opt_g.zero_grad(set_to_none=True)
        engine.backward(loss)
        engine.average_gradients(gen_params)
        opt_g.step()
        if step >= cfg.disc_start:
            d = loss_mod.discriminator_loss(x, x_hat)
            opt_d.zero_grad(set_to_none=True)
            engine.backward(d)
            engine.average_gradients(disc_params)
            opt_d.step()
            parts["d_loss"] = d.item()
        return {"loss": loss.item(), **parts}

    log_df = train_loop(step_fn, data, cfg.batch_size, cfg.steps, {"vae": vae, "loss": loss_mod},
                        StateBundle(g=opt_g, d=opt_d), checkpoint_dir, seed, settings(cfg, seed=seed), engine,
                        cfg.checkpoint_every, "autoencoder", progress, stop_after)
    if stop_after is not None and len(log_df) < cfg.steps:
        return vae  # a simulated preemption: no model folder yet

    def write():
        save_autoencoder(vae, cfg, out_dir)
        write_training_log(log_df, out_dir, "Cheff autoencoder")
        write_stage_card(out_dir, cfg, log_df, len(data))

    finish_stage(engine, write, checkpoint_dir, keep_checkpoint)
    return vae


def save_autoencoder(vae, cfg: AutoencoderConfig, out_dir) -> None:
    save_pretrained_atomic(vae, out_dir)
    meta = {"config": asdict(cfg), "downsampling_factor": cfg.downsampling_factor,
            "perceptual_note": __doc__.split("Perceptual term offline:")[1].strip().split("\n\n")[0]}
    write_text_atomic(Path(out_dir) / META_FILE, json.dumps(meta, indent=2))


def load_autoencoder(folder: str | os.PathLike, device: str | torch.device | None = None):
    """A saved AutoencoderKL in eval mode on ``device`` (default :func:`cxrgen.engine.default_device`)."""
    from diffusers import AutoencoderKL

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder} holds no AutoencoderKL (config.json missing); expected a train_autoencoder output")
    return AutoencoderKL.from_pretrained(str(folder)).eval().to(default_device(device))


@torch.no_grad()
def encode(vae, images_uint8: np.ndarray, batch_size: int = 64, sample: bool = False,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N,H,W) -> raw latents (N, C, H/f, W/f) on the CPU: posterior mode (default) or a sample (unscaled)."""
    x = to_unit(images_uint8)
    ch = vae.config.in_channels
    device = module_device(vae)
    out = []
    for i in range(0, len(x), batch_size):
        d = vae.encode(x[i:i + batch_size].expand(-1, ch, -1, -1).to(device)).latent_dist
        out.append((d.sample(generator=generator) if sample else d.mode()).cpu())
    return torch.cat(out)


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Raw latents -> uint8 (N,H,W)."""
    device = module_device(vae)
    return np.concatenate([to_uint8(vae.decode(latents[i:i + batch_size].to(device)).sample)
                           for i in range(0, len(latents), batch_size)])


def reconstruct(vae, images_uint8: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """D(E(x)) with the posterior mode: uint8 in, uint8 out."""
    return decode(vae, encode(vae, images_uint8, batch_size), batch_size)
