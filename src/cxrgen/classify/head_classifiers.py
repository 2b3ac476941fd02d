"""Small CNN classifiers with named heads that score synthetic images for the Zafar study (Zafar et al. 2023):
:func:`train_attribute_classifier` (sex = F and view = AP on the real training images; the phantom draws a breast
shadow for F, scapulae, a magnified heart and a higher diaphragm for AP) and :func:`train_corpus_classifier` (colour
and shape of the foundation's corpus images, :func:`cxrgen.models.corpus.make_corpus`, crisp and degraded the way the
foundation draws them, :func:`degrade_like_generator`). Both train through :mod:`cxrgen.engine` and are saved as
safetensors + ``classifier.json`` (:meth:`HeadClassifier.save`, :func:`load_head_classifier`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from safetensors.torch import load_file, save_file
from sklearn.metrics import roc_auc_score

from cxrgen.classify.reference import masked_bce
from cxrgen.data.sampling import SampleFolderDataset
from cxrgen.engine import Engine, EpochPermutation, RuntimeConfig, default_device, module_device
from cxrgen.errors import InputError
from cxrgen.io import atomic_path
from cxrgen.models.card import write_model_card
from cxrgen.models.corpus import COLOURS, SHAPES, make_corpus, parse_corpus_prompt

#: attribute head -> (manifest column, negative value, positive value); the head scores the positive.
ATTRIBUTE_HEADS: dict[str, tuple[str, str, str]] = {"sex": ("sex", "M", "F"), "view": ("view", "PA", "AP")}
CLASSIFIER_FILE = "model.safetensors"


CLASSIFIER_META = "classifier.json"


class SmallCNN(torch.nn.Module):
    """Four conv blocks + global pooling + one linear head per output (binary heads: 1 logit)."""

    def __init__(self, in_channels: int, heads: Mapping[str, int], width: int = 24):
        super().__init__()
        chans = [in_channels, width, width * 2, width * 2, width * 4]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [torch.nn.Conv2d(a, b, 3, padding=1), torch.nn.BatchNorm2d(b), torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        self.body = torch.nn.Sequential(*layers)
        self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(chans[-1], int(n)) for k, n in heads.items()})

    def forward(self, x):
        h = self.body(x).mean((2, 3))
        return {k: head(h) for k, head in self.heads.items()}


def _to_tensor(images, channels: int, size: int) -> torch.Tensor:
    arr = np.stack([np.asarray(i) for i in images])
    if arr.ndim == 3:
        arr = arr[..., None]
    if channels == 1 and arr.shape[-1] == 3:
        arr = arr.mean(-1, keepdims=True)
    elif channels == 3 and arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, -1)
    x = torch.from_numpy(np.ascontiguousarray(arr)).float().permute(0, 3, 1, 2) / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class HeadClassifier:
    """A trained :class:`SmallCNN` with named heads; ``predict(images) -> {head: scores}`` (binary: P(positive),
    multi-class: (N, C) probabilities)."""

    def __init__(self, model: SmallCNN, meta: dict):
        self.model, self.meta = model.eval(), meta
        self.heads = dict(meta["heads"])

    @torch.no_grad()
    def predict(self, images, batch_size: int = 128) -> dict[str, np.ndarray]:
        out: dict[str, list] = {k: [] for k in self.heads}
        device = module_device(self.model)
        for i in range(0, len(images), batch_size):  # a list or a Dataset read from disk batch by batch
            chunk = [images[j] for j in range(i, min(i + batch_size, len(images)))]
            x = _to_tensor(chunk, int(self.meta["channels"]), int(self.meta["image_size"]))
            logits = self.model(x.to(device))
            for k, n in self.heads.items():
                z = logits[k].cpu()
                out[k].append(torch.sigmoid(z[:, 0]) if n == 1 else torch.softmax(z, -1))
        return {k: torch.cat(v).double().numpy() if v else np.zeros(0) for k, v in out.items()}

    def save(self, folder) -> None:
        with atomic_path(folder) as tmp:
            tmp.mkdir()
            save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()},
                      str(tmp / CLASSIFIER_FILE))
            (tmp / CLASSIFIER_META).write_text(json.dumps(self.meta, indent=2, default=str))
            write_model_card(tmp, training_config={k: v for k, v in self.meta.items() if not k.startswith("val_")},
                             data={"sample": Path(self.meta["train_dir"]).name if self.meta.get("train_dir") else
                                   "synthetic single-shape corpus", "n_images": self.meta.get("n_train")},
                             metrics={k: v for k, v in self.meta.items() if k.startswith("val_")})


def load_head_classifier(folder, device: str | torch.device | None = None) -> HeadClassifier:
    """A saved :class:`HeadClassifier`, its network on ``device`` (default: :func:`cxrgen.engine.default_device`)."""
    folder = Path(folder)
    if not (folder / CLASSIFIER_META).is_file() or not (folder / CLASSIFIER_FILE).is_file():
        raise InputError(f"{folder}: expected {CLASSIFIER_META} and {CLASSIFIER_FILE} written by "
                         "train_attribute_classifier / train_corpus_classifier")
    meta = json.loads((folder / CLASSIFIER_META).read_text())
    model = SmallCNN(int(meta["channels"]), meta["heads"], int(meta.get("width", 24)))
    model.load_state_dict(load_file(str(folder / CLASSIFIER_FILE)))
    return HeadClassifier(model.to(default_device(device)), meta)


def _fit(engine: Engine, data, heads: Mapping[str, int], epochs: int, batch_size: int, lr: float, seed: int,
         width: int = 24) -> SmallCNN:
    """Adam on the summed head losses (binary: BCE on rows with a target; multi-class: CE), random shifts.

    ``data``: a Dataset of ``(image (C, H, W), {head: target})``; ``batch_size`` is the global batch. Runs through
    ``engine`` (:mod:`cxrgen.engine`); the shuffle order and the shifts come from one generator seeded ``seed``."""
    g = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    model = SmallCNN(int(data[0][0].shape[0]), heads, width)
    opt = torch.optim.Adam(model.parameters(), lr=float(lr))
    loader = engine.dataloader(data, int(batch_size), shuffle=True, seed=int(seed), sampler=EpochPermutation(len(data), g),
                               collate_fn=getattr(data, "collate", None))
    model, opt = engine.prepare(model, opt)
    accelerator = engine.accelerator
    for _ in range(int(epochs)):
        model.train()
        for xb, targets in loader:
            if len(xb) * engine.num_processes < 2:
                continue
            dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            with accelerator.accumulate(model):
                out = model(torch.roll(xb, shifts=(dy, dx), dims=(2, 3)))
                loss = 0.0
                for k, nk in heads.items():
                    term = _head_loss(out[k], targets[k], nk, engine)
                    if term is not None:
                        loss = loss + term
                accelerator.backward(loss)
                opt.step()
                opt.zero_grad()
    return engine.unwrap(model).eval()


def _head_loss(logits: torch.Tensor, y: torch.Tensor, n_classes: int, engine: Engine) -> torch.Tensor | None:
    """One head's loss: BCE on the rows with a target (binary; None when there is none) or cross-entropy.

    In N processes the binary BCE is the mean over the global batch's targets (:func:`masked_bce`), so the
    processes' averaged gradients are one process's even when the blanks fall unevenly between them (and a
    process without a target keeps the head in its graph, which DDP needs)."""
    if n_classes != 1:
        return F.cross_entropy(logits, y.long())
    if engine.num_processes > 1:
        return masked_bce(logits[:, 0], y, engine)
    ok = ~torch.isnan(y)
    return F.binary_cross_entropy_with_logits(logits[ok, 0], y[ok]) if ok.any() else None


class _HeadItems:
    """Dataset transform: a folder image -> (classifier input (C, size, size), {head: target of row i})."""

    def __init__(self, targets: Mapping[str, np.ndarray], channels: int, size: int):
        self.targets = {k: torch.tensor(v, dtype=torch.float32) for k, v in targets.items()}
        self.channels, self.size = int(channels), int(size)

    def __call__(self, image: np.ndarray, i: int):
        return _to_tensor([image], self.channels, self.size)[0], {k: v[i] for k, v in self.targets.items()}


class _TensorItems(torch.utils.data.Dataset):
    """In-memory inputs (N, C, H, W) with {head: targets (N,)}."""

    def __init__(self, x: torch.Tensor, targets: Mapping[str, torch.Tensor]):
        self.x, self.targets = x, dict(targets)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], {k: v[i] for k, v in self.targets.items()}

    def collate(self, items):
        """Default collation, keeping the memory layout of ``x`` (conv kernels differ between layouts in the last
        bits, so a channels-last batch stays channels-last as indexing ``x`` gave it)."""
        x, targets = torch.utils.data.default_collate(items)
        if self.x.dim() == 4 and not self.x.is_contiguous() and self.x.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return x, targets


def auc_known(y, s) -> float:
    """ROC AUC of scores ``s`` over the rows with a (non-NaN) target ``y``; NaN when a class is missing."""
    y, s = np.asarray(y, float), np.asarray(s, float)
    ok = ~np.isnan(y)
    y, s = y[ok], s[ok]
    return float(roc_auc_score(y, s)) if y.size and 0 < y.sum() < y.size else float("nan")


def _attribute_targets(manifest: pd.DataFrame) -> dict[str, np.ndarray]:
    out = {}
    for attr in ("sex", "view"):
        column, neg, pos = ATTRIBUTE_HEADS[attr]
        if column not in manifest.columns:
            raise InputError(f"manifest has no {column!r} column; expected the {attr} of each real image")
        v = manifest[column].astype(str)
        out[attr] = np.where(v == pos, 1.0, np.where(v == neg, 0.0, np.nan))
    return out


def train_attribute_classifier(train_dir, val_dir, out_dir, epochs: int = 8, batch_size: int = 32, lr: float = 2e-3,
                               image_size: int = 64, seed: int = 0, runtime: RuntimeConfig | None = None) -> dict:
    """Sex (F) and view (AP) classifier on the real training images; validation AUC per head in classifier.json."""
    train = SampleFolderDataset(train_dir)  # images read from disk batch by batch
    vimages = SampleFolderDataset(val_dir)
    heads = {"sex": 1, "view": 1}
    train.transform = _HeadItems(_attribute_targets(train.manifest), 1, image_size)
    engine = Engine(runtime)
    model = _fit(engine, train, heads, epochs, batch_size, lr, seed)
    clf = HeadClassifier(model, {"kind": "attribute", "heads": heads, "channels": 1, "image_size": image_size,
                                 "positive": {"sex": "F", "view": "AP"}, "n_train": len(train), "epochs": epochs,
                                 "train_dir": str(train_dir), "val_dir": str(val_dir)})
    if engine.is_main:  # the validation AUC only goes into the file the main process writes
        scores = clf.predict(vimages)
        yv = _attribute_targets(vimages.manifest)
        clf.meta["val_auc"] = {k: auc_known(yv[k], scores[k]) for k in heads}
        clf.meta["n_val"] = len(vimages)
        clf.save(out_dir)
    engine.accelerator.wait_for_everyone()
    return clf.meta


def degrade_like_generator(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """Crisp corpus images (uint8 (N,H,W,3), flat background) rendered the way the foundation's samples look:
    the shape's colour shifted in hue (+-8 degrees), saturation (x0.6-1.1) and value (x0.35-1.1; the miniature
    draws e.g. "green" dark), a global tint (per-channel gain 5%, offset 4%), the image downscaled to 1/4-3/4 of its
    side and back up (blur) and pixel noise (sigma up to 3%). Deterministic in ``seed``."""
    rng = np.random.default_rng(int(seed))
    x = np.asarray(images, np.float32) / 255.0
    if x.ndim != 4 or x.shape[-1] != 3:
        raise InputError(f"degrade_like_generator: images of shape {x.shape}; expected (N, H, W, 3)")
    n, h, w, _ = x.shape
    b = max(1, h // 16)
    border = np.concatenate([x[:, :b].reshape(n, -1, 3), x[:, -b:].reshape(n, -1, 3),
                             x[:, :, :b].reshape(n, -1, 3), x[:, :, -b:].reshape(n, -1, 3)], 1)
    shape_mask = np.linalg.norm(x - np.median(border, 1)[:, None, None], axis=-1) > 0.12
    hsv = rgb_to_hsv(x)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-8, 8, (n, 1, 1)) / 360.0) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.1, (n, 1, 1)), 0, 1)
    hsv[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.35, 1.1, (n, 1, 1)), 0, 1)
    x = np.where(shape_mask[..., None], hsv_to_rgb(hsv), x)
    x = x * (1 + rng.normal(0, 0.05, (n, 1, 1, 3))) + rng.normal(0, 0.04, (n, 1, 1, 3))
    t = torch.from_numpy(np.clip(x, 0, 1).astype(np.float32)).permute(0, 3, 1, 2)
    sides = rng.choice([max(2, h // 4), max(2, h * 3 // 8), max(2, h // 2), max(2, h * 3 // 4)], n)
    t = torch.cat([F.interpolate(F.interpolate(t[i:i + 1], size=(int(s_), int(s_)), mode="bilinear", antialias=True),
                                 size=(h, w), mode="bicubic", align_corners=False) for i, s_ in enumerate(sides)])
    noise = torch.from_numpy(rng.normal(0, 1, t.shape).astype(np.float32) * rng.uniform(0, 0.03, (n, 1, 1, 1)))
    return ((t + noise.float()).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _single_shape_corpus(n_images: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fresh single-shape corpus images with colour and shape indices (scenes and shape pairs left out)."""
    images, captions = make_corpus(int(n_images), size, seed=int(seed), xray_share=0.0)
    keep, colours, shapes = [], [], []
    for i, cap in enumerate(captions):
        if " above " in cap:
            continue
        try:
            c, s = parse_corpus_prompt(cap)
        except InputError:
            continue  # scenes
        keep.append(i)
        colours.append(list(COLOURS).index(c))
        shapes.append(SHAPES.index(s))
    return images[keep], np.array(colours), np.array(shapes)


def train_corpus_classifier(out_dir, n_images: int = 1500, epochs: int = 6, batch_size: int = 64, lr: float = 2e-3,
                            image_size: int = 32, augment_copies: int = 3, seed: int = 0,
                            runtime: RuntimeConfig | None = None) -> dict:
    """Colour and shape classifier on fresh single-shape images of the foundation's corpus (seed offset so they are
    not the pretraining images), drawn at the foundation's 64 px and trained on the crisp images plus
    ``augment_copies`` copies through :func:`degrade_like_generator` (the foundation's samples are blurry blobs in
    shifted colours: a classifier of crisp images alone calls their pale background the colour). classifier.json
    holds the accuracy on a held-out fifth, crisp (``val_accuracy``) and degraded with a different seed
    (``val_accuracy_degraded``)."""
    if not (isinstance(augment_copies, int) and augment_copies >= 0):
        raise InputError(f"augment_copies={augment_copies!r}; expected an integer >= 0")
    images, yc, ys = _single_shape_corpus(n_images, 64, int(seed) + 7777)
    n_val = max(1, len(images) // 5)
    train = images[n_val:]
    parts = [train] + [degrade_like_generator(train, int(seed) + 1 + k) for k in range(augment_copies)]
    x = _to_tensor(list(np.concatenate(parts)), 3, image_size)
    reps = len(parts)
    heads = {"colour": len(COLOURS), "shape": len(SHAPES)}
    data = _TensorItems(x, {"colour": torch.from_numpy(np.tile(yc[n_val:], reps)),
                            "shape": torch.from_numpy(np.tile(ys[n_val:], reps))})
    engine = Engine(runtime)
    model = _fit(engine, data, heads, epochs, batch_size, lr, seed)
    clf = HeadClassifier(model, {"kind": "corpus", "heads": heads, "channels": 3, "image_size": image_size,
                                 "classes": {"colour": list(COLOURS), "shape": list(SHAPES)},
                                 "n_train": len(x), "n_train_distinct": len(train), "augment_copies": augment_copies,
                                 "augmentation": "cxrgen.classify.head_classifiers.degrade_like_generator", "epochs": epochs})
    if engine.is_main:  # the validation accuracies only go into the file the main process writes
        for key, val in (("val_accuracy", images[:n_val]),
                         ("val_accuracy_degraded", degrade_like_generator(images[:n_val], int(seed) + 999))):
            p = clf.predict(list(val))
            clf.meta[key] = {"colour": float((p["colour"].argmax(1) == yc[:n_val]).mean()),
                             "shape": float((p["shape"].argmax(1) == ys[:n_val]).mean())}
        clf.meta["n_val"] = n_val
        clf.save(out_dir)
    engine.accelerator.wait_for_everyone()
    return clf.meta
