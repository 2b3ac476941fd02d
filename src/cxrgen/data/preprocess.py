"""Image preprocessing variants used by the papers.

* ``chambon``: resize the whole image to the model resolution (Chambon et al. 2022, 2.3).
* ``dewilde``: crop to the non-zero bounding box, resize the longest edge, zero-pad to a square
  (de Wilde et al. 2023, 3.1).
* ``cheff``: resize the shortest edge, then centre-crop (Weber et al. 2023, 3.1 / MaCheX).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cxrgen.errors import InputError

PREPROCESSING = ("chambon", "dewilde", "cheff")


def load_grayscale(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 grayscale.

    16-bit and 32-bit (integer or float) images are min-max rescaled to 0-255 (a constant image gives zeros);
    RGB(A), palette and CMYK images are converted to luminance, with any alpha channel composited onto black
    (a transparent pixel carries no signal). A missing, truncated, corrupt, empty or oversized (decompression
    bomb) file raises :class:`InputError` naming the path.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise InputError(f"image {path} {what}; expected a readable JPEG/PNG file")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(img, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                if not (np.isfinite(lo) and np.isfinite(hi)):
                    raise InputError(f"image {path} holds non-finite pixel values; expected finite intensities")
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                return arr.round().astype(np.uint8)
            if "A" in img.getbands() or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise InputError(f"image {path} is too large to decode safely ({exc}); expected a chest X-ray of at most "
                         f"{Image.MAX_IMAGE_PIXELS} pixels") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"image {path} cannot be decoded ({exc}); expected a valid JPEG/PNG file") from exc


def _resize(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def resize_square(arr: np.ndarray, size: int) -> np.ndarray:
    return _resize(arr, size, size)


def crop_nonzero_pad(arr: np.ndarray, size: int, threshold: int = 0) -> np.ndarray:
    rows = np.flatnonzero((arr > threshold).any(axis=1))
    cols = np.flatnonzero((arr > threshold).any(axis=0))
    if rows.size == 0:
        raise InputError("image is empty (all pixels zero); expected some non-zero content to crop to")
    arr = arr[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    h, w = arr.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = _resize(arr, nw, nh)
    out = np.zeros((size, size), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def resize_shortest_center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    resized = _resize(arr, nw, nh)
    top, left = (nh - size) // 2, (nw - size) // 2
    return resized[top : top + size, left : left + size]


def preprocess(arr: np.ndarray, method: str, size: int) -> np.ndarray:
    check_preprocessing(method, size)
    arr = np.asarray(arr)
    if arr.ndim != 2 or arr.size == 0:
        raise InputError(f"image of shape {arr.shape}; expected a non-empty 2-D grayscale array")
    if method == "chambon":
        return resize_square(arr, size)
    if method == "dewilde":
        return crop_nonzero_pad(arr, size)
    return resize_shortest_center_crop(arr, size)


def check_preprocessing(method: str, size: int) -> None:
    """Refuse an unknown preprocessing name or a non-positive size before any image is read."""
    if method not in PREPROCESSING:
        raise InputError(f"unknown preprocessing {method!r}; expected one of {list(PREPROCESSING)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or int(size) < 1:
        raise InputError(f"image size={size!r}; expected an integer >= 1")


def load_preprocessed(path: str | Path, method: str, size: int) -> np.ndarray:
    """``preprocess(load_grayscale(path), method, size)``; every error names the image file."""
    arr = load_grayscale(path)
    try:
        return preprocess(arr, method, size)
    except InputError as exc:
        raise InputError(f"image {path}: {exc}") from exc


def check_uint8_batch(images, name: str = "images") -> np.ndarray:
    """``images`` (array or tensor) as a non-empty uint8 grayscale batch (N, H, W), or an InputError naming ``name``."""
    arr = images.detach().cpu().numpy() if hasattr(images, "detach") else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise InputError(f"{name}: dtype {arr.dtype}, shape {arr.shape}; expected uint8 grayscale (N, H, W)")
    if arr.shape[0] == 0:
        raise InputError(f"{name}: empty batch; expected at least one image")
    return arr


def resize_images(images, resolution: int, batch_size: int = 64, mode: str = "bicubic") -> np.ndarray:
    """uint8 (N,H,W) -> uint8 (N,res,res): antialiased ``mode`` (bicubic or bilinear) interpolation, clamped to
    0-255 and rounded (no-op if same size)."""
    import torch  # the data rules that import this module run without torch
    import torch.nn.functional as F

    arr = check_uint8_batch(images)
    res = int(resolution)
    if res < 1:
        raise InputError(f"resolution={resolution!r}; expected a positive integer")
    if arr.shape[1:] == (res, res):
        return arr.copy()
    out = []
    for i in range(0, arr.shape[0], batch_size):
        x = torch.from_numpy(np.ascontiguousarray(arr[i : i + batch_size])).float()[:, None]
        y = F.interpolate(x, size=(res, res), mode=mode, align_corners=False, antialias=True)
        out.append(y.clamp(0, 255).round().to(torch.uint8)[:, 0].numpy())
    return np.concatenate(out)
