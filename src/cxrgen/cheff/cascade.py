"""The full Cheff cascade (Weber et al. 2023, Fig. 2): z ~ SDM (optionally given reports) -> x_LR = D(z) ->
x_HR = SR(x_LR).

:class:`CheffPipeline` holds the three trained stages as one diffusers ``DiffusionPipeline``: ``save_pretrained``
writes one folder (``model_index.json`` + a subfolder per component), ``CheffPipeline.from_pretrained`` loads it
without the stage folders, and calling it samples the cascade."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

from cxrgen.cheff.autoencoder import decode
from cxrgen.cheff.diffusion import SDM, sample_latents
from cxrgen.cheff.super_resolution import SuperResolution
from cxrgen.errors import InputError


def sample_cascade(sdm: SDM, vae, sr: SuperResolution | None, n: int, reports: Sequence[str] | None = None,
                   seed: int = 0, sdm_steps: int | None = None, sr_steps: int | None = None, guidance: float = 1.0,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """``n`` samples: (x_LR uint8 (n, h, w), x_HR uint8 (n, H, W) or None without an SR model)."""
    if int(n) < 1:
        raise InputError(f"n={n!r}; expected at least one sample")
    gen = torch.Generator().manual_seed(int(seed))
    z = sample_latents(sdm, int(n), reports, sdm_steps, gen, guidance=guidance, progress=progress)
    x_lr = decode(vae, z)
    x_hr = sr.upscale(x_lr, sr_steps, gen, progress=progress) if sr is not None else None
    return x_lr, x_hr


@dataclass
class CheffPipelineOutput(BaseOutput):
    """``images``: x_HR uint8 (n, H, W); ``images_lr``: x_LR = D(z) uint8 (n, h, w)."""

    images: np.ndarray
    images_lr: np.ndarray


class CheffPipeline(DiffusionPipeline):
    """The Cheff cascade as one diffusers pipeline (components: the SDM's U-Net and DDIM sampler, the autoencoder,
    the SR U-Net and its sampler, and for the report model its text encoder and tokenizer)."""

    _optional_components = ["text_encoder", "tokenizer"]  # the unconditional cascade has none

    def __init__(self, sdm_unet, sdm_scheduler, vae, sr_unet, sr_scheduler, text_encoder=None, tokenizer=None,
                 latent_scale: float = 1.0, conditioning: str = "none", max_length: int = 0, sdm_ddim_steps: int = 50,
                 sr_ddim_steps: int = 25, sr_residual: bool = False, sr_residual_scale: float = 1.0):
        super().__init__()
        self.register_modules(sdm_unet=sdm_unet, sdm_scheduler=sdm_scheduler, vae=vae, sr_unet=sr_unet,
                              sr_scheduler=sr_scheduler, text_encoder=text_encoder, tokenizer=tokenizer)
        self.register_to_config(latent_scale=float(latent_scale), conditioning=conditioning,
                                max_length=int(max_length), sdm_ddim_steps=int(sdm_ddim_steps),
                                sr_ddim_steps=int(sr_ddim_steps), sr_residual=bool(sr_residual),
                                sr_residual_scale=float(sr_residual_scale))

    @classmethod
    def from_stages(cls, autoencoder_dir, sdm_dir, sr_dir) -> CheffPipeline:
        """The cascade from the three trained stage folders (``train_autoencoder``, ``train_sdm``, ``train_sr``)."""
        from cxrgen.cheff.autoencoder import load_autoencoder

        sdm = SDM.load(sdm_dir, "cpu")
        sr = SuperResolution.load(sr_dir, "cpu")
        return cls(sdm.unet, sdm.scheduler, load_autoencoder(autoencoder_dir, "cpu"), sr.unet, sr.scheduler,
                   sdm.encoder, sdm.tokenizer, latent_scale=sdm.latent_scale, conditioning=sdm.conditioning,
                   max_length=sdm.max_length, sdm_ddim_steps=sdm.ddim_steps, sr_ddim_steps=sr.ddim_steps,
                   sr_residual=sr.residual, sr_residual_scale=sr.residual_scale)

    def stages(self) -> tuple[SDM, SuperResolution]:
        c = self.config
        sdm = SDM(self.sdm_unet, self.sdm_scheduler, c.latent_scale, c.conditioning, self.text_encoder,
                  self.tokenizer, c.max_length, c.sdm_ddim_steps)
        # the SR sampler is saved as SuperResolution.load built it (clipping, spacing)
        return sdm, SuperResolution(self.sr_unet, self.sr_scheduler, c.sr_ddim_steps, c.sr_residual,
                                    c.sr_residual_scale)

    @torch.no_grad()
    def __call__(self, n: int = 1, reports: Sequence[str] | None = None, seed: int = 0, sdm_steps: int | None = None,
                 sr_steps: int | None = None, guidance: float = 1.0, progress: bool = False) -> CheffPipelineOutput:
        """``n`` cascade samples (one report per sample for the report-conditioned model), as
        :func:`sample_cascade` draws them from ``seed``."""
        sdm, sr = self.stages()
        lr, hr = sample_cascade(sdm, self.vae, sr, n, reports, seed, sdm_steps, sr_steps, guidance, progress)
        return CheffPipelineOutput(images=hr, images_lr=lr)


def save_cascade(autoencoder_dir, sdm_dir, sr_dir, out_dir: str | os.PathLike) -> Path:
    """Assemble the trained stages into one :class:`CheffPipeline` folder, written atomically with its model card."""
    from cxrgen.io import atomic_path
    from cxrgen.models.card import read_model_card, write_model_card

    pipe = CheffPipeline.from_stages(autoencoder_dir, sdm_dir, sr_dir)
    stages = {"autoencoder": autoencoder_dir, "sdm": sdm_dir, "sr": sr_dir}
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        config, data, metrics = {}, {}, {}
        for name, folder in stages.items():  # the stages' own cards, where they have one
            try:
                card = read_model_card(folder)
            except InputError:
                continue
            config[name] = card.get("training_config", {})
            data = data or card.get("data", {})
            metrics.update({f"{name}/{k}": v for k, v in (card.get("metrics") or {}).items()})
        write_model_card(tmp, training_config={"stages": {k: str(v) for k, v in stages.items()}, **config},
                         data=data, metrics=metrics, title=f"Cheff cascade ({pipe.config.conditioning})")
    return out_dir
