"""A generated general-domain captioned image corpus for pretraining the miniature foundation model.

Coloured shapes at sizes/positions on coloured backgrounds, a few simple scenes, and a share of generic chest
images (as LAION holds some X-rays) captioned with generic visual attributes (brightness, size, position), so that
later adaptation has something to build on.

Stable Diffusion knew "pleural effusion" from web images that look unlike a clinical radiograph (Chambon et al.
Table 5: the original model's effusion AUC 0.51, textual inversion's 0.74, which borrows that knowledge and supplies
the look). Three options draw that premise; the foundation's defaults (``FoundationConfig``) caption every x-ray with
its findings, drawn washed:

* ``finding_share``: the share of the chest images whose captions name their findings;
* ``finding_look``: how those are drawn: "dataset" as the other x-rays, the caption extended ("... lung xray with
  pleural effusion"), or "negative" as film negatives ("a negative of a lung xray with pleural effusion"; it also
  inverts the finding's own signature: an effusion's bright lung base turns dark);
* ``xray_look``: how every chest image is drawn: "dataset" as the phantom renderer draws the dataset's, or "washed"
  as a photographed film (0.35 + 0.4 x: low contrast, grey blacks), which keeps each finding's signature but which
  the reference classifier does not read (effusion AUC 0.43 on washed real phantoms, 0.94 as drawn).

With the dataset look neither finding look gave a textual-inversion lift: the foundation's x-rays already looked like
the dataset's, so a token had no look to supply (docs/showcase.md).
"""

from __future__ import annotations

import re

import numpy as np

from cxrgen.errors import InputError

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "orange": (245, 140, 20),
    "purple": (140, 40, 180),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
    "light blue": (170, 200, 240),
    "pink": (240, 180, 200),
    "beige": (225, 210, 170),
}
SHAPES = ("circle", "square", "triangle", "ring", "cross", "stripes", "diamond")
SIZES = {"small": 0.14, "large": 0.3}
POSITIONS = {
    "top left": (0.28, 0.28),
    "top right": (0.28, 0.72),
    "bottom left": (0.72, 0.28),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}
SCENES = ("house", "sunset", "tree", "two shapes")
FINDING_LOOKS = ("negative", "dataset")  # how finding-captioned x-rays are drawn: film negatives, or as the rest
XRAY_LOOKS = ("dataset", "washed")  # how every corpus x-ray is drawn (module docstring)


def _check_xray_look(look: str) -> None:
    if look not in XRAY_LOOKS:
        raise InputError(f"xray_look={look!r}; expected one of {XRAY_LOOKS}")


def in_xray_look(images01: np.ndarray, look: str) -> np.ndarray:
    """Chest images in [0, 1] drawn in ``look`` (``XRAY_LOOKS``): "dataset" returns them as they are, "washed" as a
    photographed film, 0.35 + 0.4 x. The corpus and ``cxrgen evaluate-classifier --look`` (the check that chose
    the look) both draw through here."""
    _check_xray_look(look)
    return 0.35 + 0.4 * images01 if look == "washed" else images01


def _chest_source(n: int, size: int, seed: int) -> tuple[np.ndarray, list[str | None]]:
    """Chest images (n, size, size) uint8 and, per image, the phrase naming its findings ("pleural effusion and
    cardiomegaly", "no findings"; None when it has only uncertain ones)."""
    from cxrgen.data.phantom import FINDINGS, generic_chest_studies, render_phantom

    studies = generic_chest_studies(n, seed)
    images = np.stack([render_phantom(s, size) for s in studies]) if studies else np.zeros((0, size, size), np.uint8)
    phrases = []
    for s in studies:
        positive = [f.lower() for f in FINDINGS if s.labels.get(f) == 1.0]
        phrases.append(" and ".join(positive) if positive else "no findings" if s.labels.get("No Finding") == 1.0 else None)
    return images, phrases


def _shape_masks(kind: np.ndarray, cy, cx, r, yy, xx) -> np.ndarray:
    """Boolean masks (n,H,W) for shapes ``kind`` (indices into SHAPES) centred at (cy,cx), radius r."""
    dy = yy[None] - cy[:, None, None]
    dx = xx[None] - cx[:, None, None]
    rr = r[:, None, None]
    k = kind[:, None, None]
    d = np.sqrt(dy**2 + dx**2)
    circle = d <= rr
    square = (np.abs(dy) <= rr * 0.85) & (np.abs(dx) <= rr * 0.85)
    triangle = (dy <= rr * 0.8) & (dy >= -rr) & (np.abs(dx) <= (dy + rr) * 0.6)
    ring = (d <= rr) & (d >= rr * 0.6)
    cross = ((np.abs(dy) <= rr * 0.3) & (np.abs(dx) <= rr)) | ((np.abs(dx) <= rr * 0.3) & (np.abs(dy) <= rr))
    stripes = square & ((np.floor((dy + rr) / (rr * 0.4)) % 2) == 0)
    diamond = (np.abs(dy) + np.abs(dx)) <= rr
    out = np.zeros(d.shape, dtype=bool)
    for i, m in enumerate((circle, square, triangle, ring, cross, stripes, diamond)):
        out |= (k == i) & m
    return out


def _pick(rng, names, n):
    return rng.integers(0, len(names), n)


def make_corpus(n: int, size: int = 64, seed: int = 0, xray_share: float = 0.08, finding_share: float = 0.0,
                finding_look: str = "negative", xray_look: str = "dataset"):
    """Return ``(images uint8 (n,size,size,3), captions list[str])``, deterministic in ``seed``.

    ``finding_share``: the share of the chest images captioned with their findings, drawn as ``finding_look`` says
    (module docstring); the rest of the corpus is the same whatever their values. ``xray_look``: how every chest
    image is drawn (``XRAY_LOOKS``); it changes those images only."""
    if n <= 0:
        raise ValueError("make_corpus: n must be positive")
    if not 0.0 <= float(finding_share) <= 1.0:
        raise InputError(f"finding_share={finding_share!r}; expected a share in [0, 1]")
    if finding_look not in FINDING_LOOKS:
        raise InputError(f"finding_look={finding_look!r}; expected one of {FINDING_LOOKS}")
    _check_xray_look(xray_look)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    n_x = int(round(n * xray_share))
    n_scene = int(round(n * 0.12))
    n_shape = n - n_x - n_scene
    images = np.empty((n, size, size, 3), dtype=np.uint8)
    captions: list[str] = [""] * n
    col_names, bg_names = list(COLOURS), list(BACKGROUNDS)
    col_arr = np.array([COLOURS[c] for c in col_names], dtype=np.float32)
    bg_arr = np.array([BACKGROUNDS[c] for c in bg_names], dtype=np.float32)
    size_names, pos_names = list(SIZES), list(POSITIONS)

    # --- single shapes ---------------------------------------------------------------------------
    kind = _pick(rng, SHAPES, n_shape)
    ci = _pick(rng, col_names, n_shape)
    bi = _pick(rng, bg_names, n_shape)
    bi = np.where(bg_arr[bi].sum(1) == col_arr[ci].sum(1), (bi + 1) % len(bg_names), bi)
    si = _pick(rng, size_names, n_shape)
    pi = _pick(rng, pos_names, n_shape)
    rad = np.array([SIZES[s] for s in size_names], np.float32)[si] * rng.uniform(0.85, 1.15, n_shape)
    pos = np.array([POSITIONS[p] for p in pos_names], np.float32)[pi]
    jitter = rng.normal(0, 0.03, (n_shape, 2)).astype(np.float32)
    cy, cx = pos[:, 0] + jitter[:, 0], pos[:, 1] + jitter[:, 1]
    # large shapes need room: pull them towards the centre
    big = si == size_names.index("large")
    cy = np.where(big, 0.5 + (cy - 0.5) * 0.6, cy)
    cx = np.where(big, 0.5 + (cx - 0.5) * 0.6, cx)
    masks = _shape_masks(kind, cy, cx, rad, yy, xx)
    shade = rng.uniform(0.9, 1.1, (n_shape, 1, 1, 1)).astype(np.float32)
    img = np.where(masks[..., None], col_arr[ci][:, None, None, :] * shade, bg_arr[bi][:, None, None, :])
    img += rng.normal(0, 4, img.shape).astype(np.float32)
    images[:n_shape] = np.clip(img, 0, 255).astype(np.uint8)
    keep = rng.random((n_shape, 3)) > 0.3  # drop size / position / background words sometimes
    for j in range(n_shape):
        words = ["a photo of a"]
        if keep[j, 0]:
            words.append(size_names[si[j]])
        words += [col_names[ci[j]], SHAPES[kind[j]]]
        if keep[j, 1]:
            words.append(f"at the {pos_names[pi[j]]}")
        if keep[j, 2]:
            words.append(f"on a {bg_names[bi[j]]} background")
        captions[j] = " ".join(words)

    # --- simple scenes -----------------------------------------------------------------------------
    o = n_shape
    sc = _pick(rng, SCENES, n_scene)
    for j in range(n_scene):
        s = SCENES[sc[j]]
        g = rng.uniform(0.9, 1.1)
        if s == "house":
            im = np.broadcast_to(np.array(BACKGROUNDS["light blue"], np.float32), (size, size, 3)).copy()
            im[yy > 0.8] = COLOURS["green"]
            cxj = rng.uniform(0.35, 0.65)
            body = _shape_masks(np.array([1]), np.array([0.62]), np.array([cxj]), np.array([0.2]), yy, xx)[0]
            roof = _shape_masks(np.array([2]), np.array([0.3]), np.array([cxj]), np.array([0.18]), yy, xx)[0]
            im[body] = np.array(COLOURS["red"]) * g
            im[roof] = np.array(COLOURS["black"]) + 60
            cap = "a photo of a house"
        elif s == "sunset":
            sky = np.stack([240 - 60 * yy, 140 - 80 * yy, 60 + 60 * yy], -1)
            im = sky.astype(np.float32)
            im[yy > 0.65] = COLOURS["blue"]
            sun = _shape_masks(np.array([0]), np.array([0.55]), np.array([rng.uniform(0.3, 0.7)]),
                               np.array([0.15]), yy, xx)[0] & (yy <= 0.65)
            im[sun] = np.array(COLOURS["yellow"]) * g
            cap = "a photo of a sunset over the sea"
        elif s == "tree":
            im = np.broadcast_to(np.array(BACKGROUNDS["white"], np.float32), (size, size, 3)).copy()
            cxj = rng.uniform(0.35, 0.65)
            trunk = (np.abs(xx - cxj) < 0.05) & (yy > 0.5) & (yy < 0.9)
            crown = _shape_masks(np.array([0]), np.array([0.38]), np.array([cxj]), np.array([0.22]), yy, xx)[0]
            im[trunk] = (110, 70, 30)
            im[crown] = np.array(COLOURS["green"]) * g
            cap = "a photo of a green tree on a white background"
        else:
            a, b = rng.choice(len(col_names) - 3, 2, replace=False)  # colourful pair
            ka, kb = rng.choice(len(SHAPES), 2)
            im = np.broadcast_to(np.array(BACKGROUNDS["white"], np.float32), (size, size, 3)).copy()
            m = _shape_masks(np.array([ka, kb]), np.array([0.28, 0.72]), np.array([0.5, 0.5]),
                             np.array([0.17, 0.17]), yy, xx)
            im[m[0]] = col_arr[a]
            im[m[1]] = col_arr[b]
            cap = f"a photo of a {col_names[a]} {SHAPES[ka]} above a {col_names[b]} {SHAPES[kb]}"
        im += rng.normal(0, 4, im.shape)
        images[o + j] = np.clip(im, 0, 255).astype(np.uint8)
        captions[o + j] = cap

    # --- generic chest images (captions name findings only under finding_share) --------------------
    o = n_shape + n_scene
    if n_x:
        chest, findings = _chest_source(n_x, size, int(rng.integers(0, 2**31 - 1)))
        chest = in_xray_look(chest.astype(np.float32) / 255.0, xray_look)
        gamma_kind = rng.integers(0, 3, n_x)  # 0 normal, 1 bright, 2 dark
        gam = np.array([1.0, 0.6, 1.6], np.float32)[gamma_kind] * rng.uniform(0.95, 1.05, n_x)
        chest = chest ** gam[:, None, None]
        small = rng.random(n_x) < 0.3
        pi = _pick(rng, pos_names, n_x)
        out = chest.copy()
        half = size // 2
        shrunk = chest.reshape(n_x, half, 2, half, 2).mean((2, 4)) if size % 2 == 0 else chest
        for j in np.nonzero(small)[0]:
            py, px = POSITIONS[pos_names[pi[j]]]
            y0 = int(np.clip(round(py * size - half / 2), 0, size - half))
            x0 = int(np.clip(round(px * size - half / 2), 0, size - half))
            out[j] = 0.05
            out[j, y0:y0 + half, x0:x0 + half] = shrunk[j]
        images[o:] = np.clip(out * 255, 0, 255).astype(np.uint8)[..., None].repeat(3, -1)
        keep = rng.random((n_x, 2)) > 0.35
        for j in range(n_x):
            words = ["a photo of a"]
            if small[j]:
                words.append("small")
            if gamma_kind[j] and keep[j, 0]:
                words.append("bright" if gamma_kind[j] == 1 else "dark")
            words.append("lung xray")
            if small[j] and keep[j, 1]:
                words.append(f"at the {pos_names[pi[j]]} on a black background")
            captions[o + j] = " ".join(words)
        # its own stream, so that the share leaves every other image and caption as it was
        drawn = np.random.default_rng([seed, 11]).random(n_x) < float(finding_share)
        for j in np.flatnonzero(drawn):
            if findings[j] is None:
                continue
            if finding_look == "negative":
                images[o + j] = np.clip((1.0 - chest[j]) * 255, 0, 255).astype(np.uint8)[..., None].repeat(3, -1)
                captions[o + j] = f"a negative of a lung xray with {findings[j]}"
            else:  # the image as drawn, its caption extended
                captions[o + j] = f"{captions[o + j]} with {findings[j]}"

    perm = rng.permutation(n)
    return images[perm], [captions[i] for i in perm]


def foundation_corpus(cfg):
    """The corpus a :class:`~cxrgen.models.foundation_config.FoundationConfig` pretrains on."""
    return make_corpus(cfg.n_images, cfg.image_size, cfg.seed, cfg.xray_share, cfg.finding_share, cfg.finding_look,
                       cfg.xray_look)


def corpus_text(captions: list[str]) -> list[str]:
    """Text for tokenizer training: the captions plus a small general vocabulary of extra words."""
    extra = (
        "a photo of an image picture chest lung xray x-ray radiograph scan with and the left right "
        "top bottom center small large big bright dark black white background"
    )
    return list(captions) + [extra] * 4


def parse_corpus_prompt(prompt: str) -> tuple[str, str]:
    """(colour, shape) named in a corpus-style prompt such as "a photo of a small red circle at the top left"."""
    words = prompt.lower()
    colour = next((c for c in COLOURS if re.search(rf"\b{c}\b", words)), None)
    shape = next((s for s in SHAPES if re.search(rf"\b{s}\b", words)), None)
    if colour is None or shape is None:
        raise InputError(f"out-of-domain prompt {prompt!r} names no colour and shape of the foundation corpus; expected "
                         f"e.g. 'a photo of a red circle' (colours {list(COLOURS)}, shapes {list(SHAPES)})")
    return colour, shape
