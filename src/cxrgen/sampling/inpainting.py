"""Inpainting by latent-mask blending (RePaint, Lugmayr et al. 2022; the Stable Diffusion inpainting loop for a
plain 4-channel U-Net), as de Wilde et al. 2023 (4.4) use it to paint a disease into a healthy generated image.

The masked region is denoised under the (composed) prompt, e.g. ``<pleural-effusion>``; after every sampler step
the unmasked region is replaced by the original latents noised to the next step's level
(``scheduler.add_noise(x0, noise, t_next)``), and after the last step by the original latents themselves, so
the latents outside the mask come back *exactly* unchanged.  The decoder's receptive field can still move pixels
near the mask edge: :func:`inpaint` reports latents, and callers measure the pixel change outside the mask.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.errors import InputError
from cxrgen.sampling.composable import _check_common, _pipe_of, _size, as_terms, decode_latents, denoise, \
    encode_terms, initial_latents


def box_mask(size: int, box) -> np.ndarray:
    """A boolean (size, size) pixel mask, True inside ``box = [top, bottom, left, right]`` given as fractions of
    the image (e.g. ``[0.45, 0.85, 0.5, 0.9]``: the lower image-right quarter, the patient's left lung base)."""
    try:
        top, bottom, left, right = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise InputError(f"mask box {box!r}; expected [top, bottom, left, right] fractions in [0, 1]") from exc
    if not (0.0 <= top < bottom <= 1.0 and 0.0 <= left < right <= 1.0):
        raise InputError(f"mask box {box!r}; expected 0 <= top < bottom <= 1 and 0 <= left < right <= 1")
    m = np.zeros((int(size), int(size)), dtype=bool)
    r0, r1 = int(round(top * size)), max(int(round(bottom * size)), int(round(top * size)) + 1)
    c0, c1 = int(round(left * size)), max(int(round(right * size)), int(round(left * size)) + 1)
    m[r0:r1, c0:c1] = True
    return m


def latent_mask(pixel_mask: np.ndarray, latent_hw: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w) float mask on the latent grid: a latent cell is masked when any of its pixels is."""
    m = torch.as_tensor(np.asarray(pixel_mask, dtype=np.float32))[None, None]
    if m.ndim != 4:
        raise InputError(f"pixel mask of shape {tuple(np.shape(pixel_mask))}; expected (H, W)")
    return (F.adaptive_max_pool2d(m, latent_hw) > 0).float()


def pixel_mask_of(lat_mask: torch.Tensor, size: int) -> np.ndarray:
    """The pixels covered by a latent mask (nearest upsampling), boolean (size, size)."""
    return F.interpolate(lat_mask.float(), size=(size, size), mode="nearest")[0, 0].numpy() > 0.5


@torch.no_grad()
def inpaint(pipeline, original_latents: torch.Tensor, mask: np.ndarray | torch.Tensor, prompt, seed: int,
            steps: int = 20, guidance: float = 4.0, batch_size: int = 8, noise_seed_offset: int = 0):
    """Inpaint the masked region of images given by their latents (n, C, h, w) under ``prompt`` (a weighted-AND
    string or terms). ``mask``: a boolean pixel mask (H, W) or a latent mask (1, 1, h, w) / (h, w).

    Image ``i`` uses the generator seeded ``seed + noise_seed_offset + i`` for its starting noise (masked region),
    the noise that re-noises the original, and an ancestral sampler's noise. Returns ``(images uint8 (n, H, W),
    latents (n, C, h, w), latent_mask (1, 1, h, w))``; the latents outside the mask equal ``original_latents``.
    """
    pipe = _pipe_of(pipeline)
    x0_all = torch.as_tensor(original_latents).float()
    if x0_all.ndim != 4 or x0_all.shape[1] != int(pipe.unet.config.in_channels):
        raise InputError(f"original latents of shape {tuple(x0_all.shape)}; expected (n, "
                         f"{pipe.unet.config.in_channels}, h, w) from composable_generate(return_latents=True)")
    n = int(x0_all.shape[0])
    _check_common(max(n, 1), steps, batch_size)
    size = _size(pipe, x0_all.shape[-1] * int(pipe.vae_scale_factor))
    hw = tuple(x0_all.shape[-2:])
    m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, torch.Tensor) else mask
    if m.dtype == torch.bool and tuple(m.shape) == (size, size):
        lm = latent_mask(m.numpy(), hw)
    else:
        lm = m.float().reshape(1, 1, *m.shape[-2:])
        if tuple(lm.shape[-2:]) != hw:
            raise InputError(f"mask of shape {tuple(m.shape)}; expected a boolean pixel mask ({size}, {size}) or a "
                             f"latent mask {hw}")
    if not bool(lm.any()):
        raise InputError("inpainting mask is empty; expected some masked region")
    terms = as_terms(prompt)
    embeds = encode_terms(pipe, [t.text for t in terms])
    device, dtype = pipe.unet.device, pipe.unet.dtype
    sched = pipe.scheduler
    images, lats = [], []
    for start in range(0, n, int(batch_size)):
        b = min(int(batch_size), n - start)
        latents, gens = initial_latents(pipe, b, int(seed) + int(noise_seed_offset) + start, size, steps)
        x0 = x0_all[start:start + b].to(device, dtype)
        noise = torch.stack([torch.randn(x0.shape[1:], generator=g, dtype=x0.dtype) for g in gens]).to(device)
        keep = lm.to(device, dtype)  # 1 = masked (repainted), 0 = kept from the original

        def blend(i, t, lat, x0=x0, noise=noise, keep=keep):
            timesteps = sched.timesteps
            if i < len(timesteps) - 1:
                known = sched.add_noise(x0, noise, timesteps[i + 1:i + 2])
            else:
                known = x0
            return keep * lat + (1.0 - keep) * known

        # the starting noise outside the mask is the original noised to the first timestep, as in SD inpainting
        sched.set_timesteps(int(steps), device=device)
        first = sched.add_noise(x0, noise, sched.timesteps[:1])
        latents = keep * latents + (1.0 - keep) * first
        latents = denoise(pipe, latents, terms, guidance, steps, gens, after_step=blend, embeds=embeds)
        # exact: outside the mask the result is the original latent (floating blend 0*x + 1*x0 is x0 when finite)
        latents = torch.where(keep.bool().expand_as(latents), latents, x0)
        images.append(decode_latents(pipe, latents, gens))
        lats.append(latents.cpu())
    return np.concatenate(images), torch.cat(lats), lm


__all__ = ["box_mask", "latent_mask", "pixel_mask_of", "inpaint"]
