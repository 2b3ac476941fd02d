"""De Wilde et al. 2023, 3.2 and 4.2 (Table 4): ResNet-18 binary classifiers trained on real, synthetic, or real +
synthetic images over repeated seeds; the best-validation checkpoint is scored on a held-out real test set.

* Model: torchvision ResNet-18 with a one-logit head. ``weights=None`` (the offline miniature) starts from random
  init; a torchvision weights name such as ``"IMAGENET1K_V1"`` (the paper: ImageNet-pretrained) loads from the
  torch hub cache only and stops with a clear error when the file is not there (nothing here downloads).
* Training (paper): Adam, fixed lr 1e-4, batch 32, 6250 batches; AUC on the validation set every ``eval_every``
  batches, the best one kept. Augmentation as listed in 3.2: random horizontal flip, Gaussian noise, intensity
  (brightness / contrast), channel dropout, translation, scaling and rotation, all on the batch with a seeded
  generator.
* Splits: :func:`check_patient_disjoint` refuses a study whose train / validation / test images share a patient.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import torch.utils.data

from cxrgen.engine import Engine, RuntimeConfig, module_device
from cxrgen.errors import InputError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Paper settings (de Wilde 3.2); image size 512 px as their embeddings' images.
PAPER = {"steps": 6250, "batch_size": 32, "lr": 1e-4, "eval_every": 62, "weights": "IMAGENET1K_V1",
         "image_size": 512, "augment": True}


@dataclass
class ResNetStudyConfig:
    """ResNet-18 training settings. Miniature defaults: 40 batches, 32 px; paper: :data:`PAPER`."""

    steps: int = 40
    batch_size: int = 32
    lr: float = 1e-4
    eval_every: int = 10
    image_size: int = 32
    weights: str | None = None
    augment: bool = True
    num_threads: int | None = None

    @classmethod
    def from_dict(cls, d: Mapping | None) -> ResNetStudyConfig:
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown ResNet-18 study settings {unknown}; expected some of {sorted(names)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "image_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise InputError(f"ResNetStudyConfig.{name}={v!r}; expected an integer >= 1")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise InputError(f"ResNetStudyConfig.lr={self.lr!r}; expected a positive number")

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------------------ model
def build_resnet18(weights: str | None = None) -> torch.nn.Module:
    """torchvision ResNet-18 with a single-logit head; ``weights`` a ``ResNet18_Weights`` name from the local cache."""
    import torchvision

    if weights is None:
        model = torchvision.models.resnet18(weights=None)
    else:
        try:
            w = torchvision.models.ResNet18_Weights[str(weights)]
        except KeyError as exc:
            names = [m.name for m in torchvision.models.ResNet18_Weights]
            raise InputError(f"ResNet-18 weights {weights!r}; expected one of {names} or null (random init)") from exc
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
        if not path.is_file():
            raise InputError(f"ResNet-18 weights {weights!r} are not in the local torch hub cache ({path}); nothing "
                             f"here downloads: place the file from {w.url} there, or set weights: null for random init")
        model = torchvision.models.resnet18(weights=None)
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.fc = torch.nn.Linear(model.fc.in_features, 1)
    return model


def to_input(images, size: int) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 3, size, size) in [0, 1] (grey replicated to the three channels)."""
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise InputError(f"images of dtype {arr.dtype} and shape {arr.shape}; expected uint8 (N, H, W)")
    x = torch.from_numpy(arr.astype(np.float32) / 255.0)[:, None]
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.expand(-1, 3, -1, -1).contiguous()


class _StudyItems(torch.utils.data.Dataset):
    """uint8 (N, H, W) images with their targets, converted to inputs (:func:`to_input`) as they are read, so the
    float copies (12 times the uint8 bytes: float32, three channels) never exist for the whole set."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, size: int):
        self.images, self.targets, self.size = images, torch.from_numpy(np.asarray(targets, np.float32)), int(size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return to_input(self.images[i:i + 1], self.size)[0], self.targets[i]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean) / std


def augment(x: torch.Tensor, gen: torch.Generator, n: int | None = None, rows: slice = slice(None)) -> torch.Tensor:
    """De Wilde 3.2's augmentations on a [0, 1] batch: flip, rotation (+-10 deg), translation (+-10%), scaling
    (0.9-1.1), brightness (+-0.1), contrast (0.9-1.1), Gaussian noise (sd 0.02), channel dropout (p 0.1).

    ``x`` holds the ``rows`` of a global batch of ``n`` (default: all of it); the random draws are made for all
    ``n`` rows on the CPU generator and sliced, so each process of a distributed run draws the same stream."""
    b = x.shape[0] if n is None else int(n)

    def u(lo, hi, shape=(b,)):
        return lo + (hi - lo) * torch.rand(shape, generator=gen)

    def local(t):
        return t[rows].to(x.device)

    flip = local(torch.rand(b, generator=gen) < 0.5)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    ang = u(-10, 10) * math.pi / 180
    scale = u(0.9, 1.1)
    tx, ty = u(-0.1, 0.1), u(-0.1, 0.1)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx * 2], 1), torch.stack([sin, cos, ty * 2], 1)], 1)
    grid = F.affine_grid(local(theta), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * local(u(0.9, 1.1))[:, None, None, None] + mean + local(u(-0.1, 0.1))[:, None, None, None]
    x = x + 0.02 * local(torch.randn((b, *x.shape[1:]), generator=gen))
    drop = local(torch.rand(b, generator=gen) < 0.1)
    ch = local(torch.randint(0, 3, (b,), generator=gen))
    mask = torch.ones_like(x)
    mask[drop, ch[drop]] = 0.0
    return (x * mask).clamp(0.0, 1.0)


class _AugmentingCollate:
    """Stack (image, target) items and augment the batch with the training generator. It runs in the DataLoader,
    right after the batch's indices are drawn from the same generator, so draws keep the order of one
    index-then-augment loop whatever the loader prefetches (workers: 0)."""

    def __init__(self, gen: torch.Generator, enabled: bool, processes: int, rows_of):
        self.gen, self.enabled, self.processes, self.rows_of = gen, enabled, processes, rows_of

    def __call__(self, items):
        x, y = torch.utils.data.default_collate(items)
        if self.enabled:
            n = len(x) * self.processes  # the global batch this process holds a slice of
            x = augment(x, self.gen, n, self.rows_of(n))
        return x, y


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if len(np.unique(y)) < 2:
        raise InputError(f"AUC needs both classes; got only {np.unique(y).tolist()} in {len(y)} images")
    return float(roc_auc_score(y, s))


@torch.no_grad()
def predict(model: torch.nn.Module, x, batch_size: int = 128, size: int | None = None) -> np.ndarray:
    """P(positive) for the [0, 1] images ``x`` (or, with ``size``, uint8 (N, H, W) images converted batch by batch
    with :func:`to_input`), computed on the model's device, returned as a CPU array."""
    model.eval()
    device = module_device(model)
    batch = (lambda i: x[i:i + batch_size]) if size is None else (lambda i: to_input(x[i:i + batch_size], size))
    out = [torch.sigmoid(model(_normalise(batch(i).to(device)))).flatten().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out).double().numpy()


def _shared_predict(engine: Engine, model: torch.nn.Module, images: np.ndarray, size: int,
                    batch_size: int = 128) -> np.ndarray:
    """:func:`predict` on uint8 images, each process predicting its share (:meth:`Engine.predict`); all get every row."""
    return engine.predict(lambda batch: torch.from_numpy(predict(model, batch.numpy(), batch_size, size)), images,
                          batch_size).numpy()


def _uint8_images(name: str, images):
    """``images`` as given when array-like (a ``FolderImages`` stays on disk), else as an array; uint8 (N, H, W)."""
    if not hasattr(images, "dtype"):
        images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise InputError(f"{name} images of dtype {images.dtype} and shape {images.shape}; expected uint8 (N, H, W)")
    return images


def train_and_evaluate(train_images, train_labels, val_images, val_labels, test_images, test_labels,
                       cfg: ResNetStudyConfig, seed: int, runtime: RuntimeConfig | None = None) -> dict:
    """Train one ResNet-18; return the best-validation checkpoint's test AUC, its bookkeeping and the per-step
    training losses (``losses``, averaged over processes).

    Runs through the engine (:mod:`cxrgen.engine`, ``runtime``); ``cfg.batch_size`` is the global batch. The
    images (uint8, the small sets of one Table 4 configuration) are converted to inputs batch by batch as they are
    read (validation and test may be :class:`cxrgen.data.sampling.FolderImages`, read batch by batch); training batches are drawn with replacement and augmented in the DataLoader (``num_workers`` 0: the
    draws share one generator)."""
    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    y_tr = np.asarray(train_labels, dtype=np.float32)
    if len(y_tr) == 0:
        raise InputError("ResNet-18 study: empty training set")
    runtime = replace(runtime or RuntimeConfig(), num_workers=0)
    engine = Engine(runtime)
    train_images = _uint8_images("training", train_images)
    x_va, y_va = _uint8_images("validation", val_images), np.asarray(val_labels, dtype=int)
    x_te, y_te = _uint8_images("test", test_images), np.asarray(test_labels, dtype=int)
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    model = build_resnet18(cfg.weights)
    opt = torch.optim.Adam(model.parameters(), lr=float(cfg.lr))
    micro = engine.micro_batch(cfg.batch_size)
    data = _StudyItems(train_images, y_tr, cfg.image_size)
    loader = engine.prepare(engine.drawn_loader(
        data, micro, cfg.steps * engine.gradient_accumulation_steps, gen,
        _AugmentingCollate(gen, cfg.augment, engine.num_processes, engine.local_rows)))
    model, opt = engine.prepare(model, opt)
    accelerator = engine.accelerator
    best = {"val_auc": -math.inf, "step": 0, "state": copy.deepcopy(engine.unwrap(model).state_dict())}
    t0 = time.perf_counter()
    step, losses, step_loss = 0, [], 0.0
    model.train()
    for xb, yb in loader:
        with accelerator.accumulate(model):
            loss = F.binary_cross_entropy_with_logits(model(_normalise(xb)).flatten(), yb)
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
        step_loss += engine.mean(loss.detach()) / engine.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        step += 1
        losses.append(step_loss)
        step_loss = 0.0
        if step % cfg.eval_every == 0 or step == cfg.steps:
            val_auc = _auc(y_va, _shared_predict(engine, engine.unwrap(model), x_va, cfg.image_size))
            if val_auc > best["val_auc"]:
                best = {"val_auc": val_auc, "step": step, "state": copy.deepcopy(engine.unwrap(model).state_dict())}
        model.train()
    final = engine.unwrap(model)
    final.load_state_dict(best["state"])
    test_auc = _auc(y_te, _shared_predict(engine, final, x_te, cfg.image_size))
    return {"test_auc": test_auc, "best_val_auc": best["val_auc"], "best_step": best["step"],
            "n_train": int(len(y_tr)), "n_train_positive": int(y_tr.sum()), "n_val": int(len(y_va)),
            "n_test": int(len(y_te)), "n_test_positive": int(y_te.sum()), "seconds": time.perf_counter() - t0,
            "losses": losses}


# ------------------------------------------------------------------------------------------------ splits
def check_patient_disjoint(manifests: Mapping[str, pd.DataFrame]) -> None:
    """Raise :class:`InputError` naming the sets and patients when two of ``manifests`` share a patient."""
    names = list(manifests)
    for name, m in manifests.items():
        if "patient_id" not in m.columns:
            raise InputError(f"{name} manifest has no patient_id column; expected a materialised sample")
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = sorted(set(manifests[a]["patient_id"].astype(str)) & set(manifests[b]["patient_id"].astype(str)))
            if shared:
                raise InputError(f"the {a} and {b} sets share {len(shared)} patient(s), e.g. {shared[:5]}; "
                                 "expected patient-disjoint splits")


def binary_subset(manifest: pd.DataFrame, finding: str, negative: str = "No Finding") -> tuple[np.ndarray, np.ndarray]:
    """Row indices and 0/1 targets of the images whose sole finding is ``finding`` (1) or ``negative`` (0).

    A manifest with ``class_label`` (a few-shot sample) is read by that; otherwise by the label columns."""
    if "class_label" in manifest.columns:
        lab = manifest["class_label"].astype(str)
        pos, neg = (lab == finding).to_numpy(), (lab == negative).to_numpy()
    else:
        from cxrgen.data.sampling import sole_finding

        for col in (finding, negative):
            if col not in manifest.columns:
                raise InputError(f"manifest has no {col!r} column; expected CheXpert label columns")
        pos, neg = sole_finding(manifest, finding).to_numpy(), sole_finding(manifest, negative).to_numpy()
    idx = np.flatnonzero(pos | neg)
    return idx, pos[idx].astype(int)


def study_splits(train: tuple[np.ndarray, pd.DataFrame], val: tuple[np.ndarray, pd.DataFrame],
                 test: tuple[np.ndarray, pd.DataFrame], finding: str, negative: str = "No Finding") -> dict:
    """Binary train / validation / test sets; validation and test patients seen in training are dropped (the
    embeddings' training images are the real training set, drawn from all splits), then disjointness is checked.
    Images are uint8 (N, H, W) arrays or :class:`cxrgen.data.sampling.FolderImages` (subsets stay on disk).

    Returns ``{"train"|"val"|"test": (images, targets, manifest), "dropped": {"val": k, "test": k}}``.
    """
    out, dropped = {}, {}
    tr_idx, tr_y = binary_subset(train[1], finding, negative)
    tr_man = train[1].iloc[tr_idx].reset_index(drop=True)
    out["train"] = (np.take(train[0], tr_idx, axis=0), tr_y, tr_man)
    seen = set(tr_man["patient_id"].astype(str))
    for name, (images, manifest) in (("val", val), ("test", test)):
        idx, y = binary_subset(manifest, finding, negative)
        man = manifest.iloc[idx].reset_index(drop=True)
        keep = ~man["patient_id"].astype(str).isin(seen).to_numpy()
        dropped[name] = int((~keep).sum())
        out[name] = (np.take(images, idx[keep], axis=0), y[keep], man[keep].reset_index(drop=True))
    check_patient_disjoint({k: v[2] for k, v in out.items()})
    for name, (_, y, _) in out.items():
        if len(np.unique(y)) < 2:
            raise InputError(f"ResNet-18 study {name} set has {len(y)} images of classes {np.unique(y).tolist()}; "
                             f"expected both {negative!r} and {finding!r}")
    out["dropped"] = dropped
    return out


def table4_configurations(real_per_class: int, synthetic_per_class: Sequence[int], default_cases: int,
                          few_cases: int) -> list[dict]:
    """The seven rows of de Wilde Table 4 scaled: real only; synthetic only (each size); real + synthetic (each
    size); synthetic from the few-case embedding (largest size) alone and with the real images."""
    syn = sorted(int(s) for s in synthetic_per_class)
    rows = [{"real_per_class": int(real_per_class), "synthetic_per_class": 0, "embedding_cases": None}]
    rows += [{"real_per_class": 0, "synthetic_per_class": s, "embedding_cases": int(default_cases)} for s in syn]
    rows += [{"real_per_class": int(real_per_class), "synthetic_per_class": s, "embedding_cases": int(default_cases)}
             for s in syn]
    rows += [{"real_per_class": r, "synthetic_per_class": syn[-1], "embedding_cases": int(few_cases)}
             for r in (0, int(real_per_class))]
    return rows


def _first_per_class(y: np.ndarray, k: int) -> np.ndarray:
    idx = []
    for c in (0, 1):
        where = np.flatnonzero(y == c)
        if len(where) < k:
            raise InputError(f"asked for {k} images of class {c} but only {len(where)} are available")
        idx.append(where[:k])
    return np.sort(np.concatenate(idx))


def run_study_seed(splits: dict, synthetic: Mapping[int, tuple[np.ndarray, np.ndarray]], configurations: list[dict],
                   cfg: ResNetStudyConfig, seed: int, runtime: RuntimeConfig | None = None) -> pd.DataFrame:
    """Train every configuration once with ``seed``. ``synthetic`` maps embedding cases -> (images, targets)."""
    x_tr, y_tr, _ = splits["train"]
    rows = []
    for conf in configurations:
        parts_x, parts_y = [], []
        if conf["real_per_class"]:
            pick = _first_per_class(y_tr, conf["real_per_class"])
            parts_x.append(x_tr[pick]), parts_y.append(y_tr[pick])
        if conf["synthetic_per_class"]:
            cases = conf["embedding_cases"]
            if cases not in synthetic:
                raise InputError(f"no synthetic set from the {cases}-case embeddings; have {sorted(synthetic)}")
            xs, ys = synthetic[cases]
            pick = _first_per_class(ys, conf["synthetic_per_class"])
            parts_x.append(xs[pick]), parts_y.append(ys[pick])
        res = train_and_evaluate(np.concatenate(parts_x), np.concatenate(parts_y), splits["val"][0], splits["val"][1],
                                 splits["test"][0], splits["test"][1], cfg, seed, runtime)
        rows.append({"seed": int(seed), "real_cases": 2 * conf["real_per_class"],
                     "synthetic_cases": 2 * conf["synthetic_per_class"],
                     "synthetic_embedding_cases": conf["embedding_cases"] if conf["synthetic_per_class"] else None,
                     **{k: v for k, v in res.items() if k != "losses"}})
        log.info("seed %d real %d synthetic %d (embedding %s cases): test AUC %.3f (best val %.3f at %d)", seed,
                 rows[-1]["real_cases"], rows[-1]["synthetic_cases"], rows[-1]["synthetic_embedding_cases"],
                 res["test_auc"], res["best_val_auc"], res["best_step"])
    return pd.DataFrame(rows)


__all__ = ["PAPER", "ResNetStudyConfig", "build_resnet18", "to_input", "augment", "train_and_evaluate",
           "check_patient_disjoint", "binary_subset", "study_splits", "table4_configurations", "run_study_seed"]
