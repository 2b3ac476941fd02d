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
    """Read an image file as uint8 grayscale (16-bit images are rescaled, RGB(A) converted)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist; expected a readable JPEG/PNG file")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                lo, hi = float(arr.min()), float(arr.max())
                arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
                return arr.round().astype(np.uint8)
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
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
    if method == "chambon":
        return resize_square(arr, size)
    if method == "dewilde":
        return crop_nonzero_pad(arr, size)
    if method == "cheff":
        return resize_shortest_center_crop(arr, size)
    raise InputError(f"unknown preprocessing {method!r}; expected one of {list(PREPROCESSING)}")
