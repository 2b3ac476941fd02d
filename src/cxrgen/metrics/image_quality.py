"""Per-image reconstruction quality on the 0-255 scale (Chambon et al. 2022, sec. 2.3 / 3.2).

RMSE, PSNR (``data_range=255``) and SSIM (Gaussian window, sigma 1.5, 11x11 (truncate 3.5), population covariance,
K1=0.01, K2=0.03, i.e. skimage's ``structural_similarity(..., gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=255)``) are computed in float64: RMSE and PSNR batched (PSNR with
torchmetrics' functional implementation), SSIM with that skimage function per pair (it averages over the valid,
un-padded interior and over channels).  skimage's separable filters are ~15x faster on the CPU than torchmetrics'
float64 11x11 ``conv2d`` for the same values (``python bench/run.py --only metrics``).

Identical images: RMSE is 0, SSIM is 1 and PSNR is ``+inf`` (10*log10(255^2/0)).  The value ``inf`` is kept
in the per-image table; :func:`cxrgen.metrics.summary.describe` leaves non-finite values out of the
statistics and counts them in ``n_nonfinite``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from cxrgen.errors import InputError

DATA_RANGE = 255.0


def _to_nchw(images, name: str) -> torch.Tensor:
    """uint8 (or any real) array (N,H,W) / (N,H,W,C) -> float64 tensor (N,C,H,W)."""
    if isinstance(images, torch.Tensor):
        arr = images.detach().cpu()
    else:
        arr = torch.from_numpy(np.asarray(images))
    if arr.ndim == 2:
        raise InputError(f"{name}: got one image of shape {tuple(arr.shape)}; expected a batch (N,H,W) or (N,H,W,C)")
    if arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4:
        arr = arr.permute(0, 3, 1, 2)
    else:
        raise InputError(f"{name}: shape {tuple(arr.shape)}; expected (N,H,W) or (N,H,W,C) uint8 images")
    return arr.to(torch.float64)


def _pair(originals, reconstructions) -> tuple[torch.Tensor, torch.Tensor]:
    a = _to_nchw(originals, "originals")
    b = _to_nchw(reconstructions, "reconstructions")
    if a.shape != b.shape:
        raise InputError(
            f"originals have shape {tuple(a.shape)} (N,C,H,W) but reconstructions {tuple(b.shape)}; expected equal shapes"
        )
    return a, b


def rmse(originals, reconstructions) -> np.ndarray:
    """Root-mean-square error per image on the 0-255 scale, shape (N,)."""
    a, b = _pair(originals, reconstructions)
    return torch.sqrt(((a - b) ** 2).mean(dim=(1, 2, 3))).numpy()


def psnr(originals, reconstructions, data_range: float = DATA_RANGE) -> np.ndarray:
    """Peak signal-to-noise ratio (dB) per image, shape (N,); ``inf`` for identical images."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # here: a 3 s import most jobs skip

    a, b = _pair(originals, reconstructions)
    out = peak_signal_noise_ratio(b, a, data_range=data_range, reduction="none", dim=(1, 2, 3))
    return out.reshape(-1).numpy()


def ssim(originals, reconstructions, data_range: float = DATA_RANGE, sigma: float = 1.5) -> np.ndarray:
    """Structural similarity per image, shape (N,): skimage's Gaussian-weighted SSIM (see module doc)."""
    from skimage.metrics import structural_similarity

    a, b = _pair(originals, reconstructions)
    pad = int(3.5 * sigma + 0.5)  # the window's half width: skimage averages only the interior it covers
    if min(a.shape[-2:]) <= 2 * pad:
        raise InputError(f"SSIM needs images larger than {2 * pad}x{2 * pad} pixels; got {tuple(a.shape[-2:])}")
    return np.array([structural_similarity(x, y, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                           data_range=data_range, channel_axis=0)
                     for x, y in zip(a.numpy(), b.numpy())], dtype=np.float64)


def reconstruction_metrics(originals, reconstructions, ids=None) -> pd.DataFrame:
    """One row per image-reconstruction pair: ``rmse``, ``psnr``, ``ssim`` (plus ``image_id`` if ``ids`` given)."""
    df = pd.DataFrame(
        {
            "rmse": rmse(originals, reconstructions),
            "psnr": psnr(originals, reconstructions),
            "ssim": ssim(originals, reconstructions),
        }
    )
    if ids is not None:
        ids = list(ids)
        if len(ids) != len(df):
            raise InputError(f"got {len(ids)} ids for {len(df)} images; expected one id per image")
        df.insert(0, "image_id", ids)
    return df
