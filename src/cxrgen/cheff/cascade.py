"""The full Cheff cascade (Weber et al. 2023, Fig. 2): z ~ SDM (optionally given reports) -> x_LR = D(z) ->
x_HR = SR(x_LR)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

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
