"""In- and outpainting with the unconditional SDM (Weber et al. 2023, sec. 5 "In- and Outpainting", Figs. 5, 7):
latent-mask blending as in LDM / RePaint without resampling.

The pixel mask (True = region to fill) is max-pooled to the latent grid (a latent cell is regenerated when any of
its pixels is unknown).  At every DDIM step the known latent cells are replaced by the known latent z_0 noised to
the next timestep, q(z_{t-1} | z_0), so the model only ever invents the masked cells and sees the provided content
as its prior; at the end the known cells equal z_0 exactly.  The decoded image is then composited: known pixels are
the original.  :func:`preservation` measures the known region both before that paste (``*_decoded``: what the
latent blending alone keeps, bounded by the autoencoder's fidelity) and after it (``*_final``: exact by design).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from cxrgen.cheff.autoencoder import decode, encode
from cxrgen.cheff.diffusion import SDM, ddim_sample
from cxrgen.engine import module_device
from cxrgen.errors import InputError


def rect_mask(size: int, top: float, left: float, height: float, width: float) -> np.ndarray:
    """A (size, size) bool mask, True inside the rectangle given in fractions of the image."""
    m = np.zeros((size, size), dtype=bool)
    y0, x0 = int(round(top * size)), int(round(left * size))
    m[y0:y0 + max(1, int(round(height * size))), x0:x0 + max(1, int(round(width * size)))] = True
    return m


def latent_mask(mask: np.ndarray, latent_size: int) -> torch.Tensor:
    """(N,H,W) or (H,W) bool pixel mask -> (N,1,h,w) float latent mask (1 = regenerate)."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32))
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise InputError(f"mask of shape {tuple(m.shape)}; expected (H, W) or (N, H, W) booleans")
    return F.adaptive_max_pool2d(m[:, None], latent_size)


def inpaint(
    sdm: SDM,
    vae,
    images: np.ndarray,
    mask: np.ndarray,
    steps: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fill ``mask`` (True = unknown) in uint8 images (N,H,W); returns (final composite, raw decoded) uint8."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise InputError(f"images of dtype {images.dtype}, shape {images.shape}; expected uint8 (N, H, W)")
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), images.shape)
    if not mask.any():
        raise InputError("the mask marks no pixel to fill; expected True where content is to be generated")
    if sdm.conditioning != "none":
        raise InputError("inpainting uses the unconditional SDM; got a report-conditioned one")
    device = module_device(sdm.unet)
    z0 = (encode(vae, images) * sdm.latent_scale).to(device)
    m = latent_mask(mask, z0.shape[-1]).to(device, z0.dtype)
    sched = sdm.scheduler

    def keep_known(x, t_prev):
        if t_prev < 0:  # the last step: the known cells are the clean latent
            known = z0
        else:  # noise drawn on the CPU generator, as x_T
            noise = torch.randn(z0.shape, generator=generator).to(device)
            known = sched.add_noise(z0, noise, torch.full((len(z0),), t_prev, device=device))
        return m * x + (1 - m) * known

    z = ddim_sample(lambda x, t: sdm.eps(x, t, None), sched, tuple(z0.shape), steps or sdm.ddim_steps, generator,
                    after_step=keep_known, device=device)
    decoded = decode(vae, z / sdm.latent_scale)
    final = np.where(mask, decoded, images)
    return final, decoded


def outpaint(sdm: SDM, vae, image: np.ndarray, keep: np.ndarray, n: int = 4, steps: int | None = None,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` completions of one uint8 image (H,W) around the provided area ``keep`` (True = provided)."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"outpaint takes one image (H, W); got shape {image.shape}")
    gen = torch.Generator().manual_seed(seed)
    return inpaint(sdm, vae, np.repeat(image[None], n, 0), ~np.asarray(keep, dtype=bool), steps, gen)


def preservation(originals: np.ndarray, final: np.ndarray, decoded: np.ndarray, mask: np.ndarray) -> pd.DataFrame:
    """Per image: MAE / PSNR (0-255 scale, inf when identical) of the known region (mask False) and the mean absolute change inside the mask."""
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), originals.shape)
    rows = []
    for i in range(len(originals)):
        k, u = ~mask[i], mask[i]
        o = originals[i].astype(np.float64)
        row = {"image": i, "known_fraction": float(k.mean())}
        for name, img in (("decoded", decoded[i]), ("final", final[i])):
            diff = np.abs(img.astype(np.float64) - o)
            row[f"known_mae_{name}"] = float(diff[k].mean())
            mse = float((diff[k] ** 2).mean())
            row[f"known_psnr_{name}"] = float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
        row["masked_mae_change"] = float(np.abs(final[i].astype(np.float64) - o)[u].mean())
        rows.append(row)
    return pd.DataFrame(rows)


def diversity(completions: np.ndarray, mask: np.ndarray) -> float:
    """Mean per-pixel standard deviation across completions inside the generated region (0 = collapse)."""
    mask = np.broadcast_to(np.asarray(mask, dtype=bool), completions.shape)[0]
    return float(completions.astype(np.float64).std(axis=0)[mask].mean())
