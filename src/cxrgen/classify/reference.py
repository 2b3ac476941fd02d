"""The reference CXR classifier that scores real vs. reconstructed / generated images (Chambon et al. 2022, 2.3).

Two flavours behind one :class:`ReferenceClassifier` interface:

* **Paper scale** -- ``load_reference_classifier("xrv:densenet121-res224-all")``: torchxrayvision's
  DenseNet-121 (18 outputs, 224 px, 1 channel, inputs scaled to [-1024, 1024] by
  ``xrv.datasets.normalize(img, 255)``), per-class thresholds from its ``op_threshs``. The weights
  file must be in torchxrayvision's cache folder (``~/.torchxrayvision/models_data/``); offline a
  :class:`~cxrgen.errors.WeightsUnavailableError` names the file, the folder and the URL.
* **Miniature** (default) -- the same DenseNet-121 architecture (``xrv.models.DenseNet(weights=None,
  num_classes=len(labels), in_channels=1)``) trained from scratch by :func:`train_reference_classifier`
  on a materialised training folder at the sample's resolution, best epoch chosen on the validation
  folder by mean AUC, per-label thresholds chosen there (Youden's J). Saved as ``model.safetensors``
  + ``config.json`` + ``training_log.csv``.

Labels are CheXpert names. The xrv model's names are mapped ``Effusion -> Pleural Effusion`` and
``Pleural_Thickening -> Pleural Other`` (the closest xrv output to CheXpert's "Pleural Other"; an
approximation); :meth:`ReferenceClassifier.label_index` accepts either spelling.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from cxrgen.data.schema import CHAMBON_TABLE1_LABELS, label_names_to_columns
from cxrgen.data.sampling import SampleFolderDataset
from cxrgen.engine import Engine, EpochPermutation, RuntimeConfig, default_device, module_device
from cxrgen.errors import InputError, WeightsUnavailableError
from cxrgen.io import atomic_path
from cxrgen.metrics.classification import MIN_CLASS_COUNT, binary_metrics, choose_threshold, per_label_table
from cxrgen.models.card import write_model_card
from cxrgen.progress import progress_bar

logger = logging.getLogger(__name__)  # ``log`` names the training log in train_reference_classifier

XRV_PREFIX = "xrv:"
#: torchxrayvision output name -> CheXpert label name (others keep their xrv name).
XRV_TO_CHEXPERT = {"Effusion": "Pleural Effusion", "Pleural_Thickening": "Pleural Other"}
ARCHITECTURE = "torchxrayvision.models.DenseNet"
DENSENET121 = {"growth_rate": 32, "block_config": [6, 12, 24, 16], "num_init_features": 64, "bn_size": 4, "in_channels": 1}
INPUT_SCALING = {"function": "xrv.datasets.normalize", "maxval": 255, "range": [-1024.0, 1024.0], "channels": 1}
MODEL_FILE, CONFIG_FILE, LOG_FILE = "model.safetensors", "config.json", "training_log.csv"


@dataclass
class ReferenceClassifierConfig:
    """Training setup of the miniature reference classifier.

    ``image_size``: training/inference resolution (images of another size are resized to it).
    ``augment``: small random affine per batch (rotation ``max_rotate_deg``, translation
    ``max_translate`` as a fraction of the side, isotropic scale ``1 +- max_scale``); ``hflip`` is off by
    default because a CXR is not left/right symmetric.
    """

    labels: tuple[str, ...] = CHAMBON_TABLE1_LABELS
    image_size: int = 64
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True
    max_rotate_deg: float = 5.0
    max_translate: float = 0.05
    max_scale: float = 0.05
    hflip: bool = False
    threshold_method: str = "youden"

    def __post_init__(self):
        self.labels = tuple(label_names_to_columns(list(self.labels)))
        if not self.labels:
            raise InputError("ReferenceClassifierConfig.labels is empty; expected at least one CheXpert label")
        for name in ("image_size", "epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"ReferenceClassifierConfig.{name}={getattr(self, name)!r}; expected a positive integer")
        if self.threshold_method not in ("youden", "f1"):
            raise InputError(f"threshold_method={self.threshold_method!r}; expected 'youden' or 'f1'")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["labels"] = list(self.labels)
        return d


# ----------------------------------------------------------------------------------------------- metrics
def _auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC on the non-NaN targets; NaN when a class is missing."""
    return float(binary_metrics(y, s, 0.5)["auc"])


def _threshold(y: np.ndarray, s: np.ndarray, method: str) -> float:
    """Operating point chosen on validation data; 0.5 when the validation data lack a class for this label."""
    keep = ~np.isnan(y)
    if len(np.unique(y[keep])) < 2:
        return 0.5
    return float(choose_threshold(y, s, method=method))


# ----------------------------------------------------------------------------------------------- model
def _build_densenet(num_classes: int, arch: dict | None = None) -> torch.nn.Module:
    import torchxrayvision as xrv

    arch = {**DENSENET121, **(arch or {})}
    return xrv.models.DenseNet(
        growth_rate=int(arch["growth_rate"]),
        block_config=tuple(int(b) for b in arch["block_config"]),
        num_init_features=int(arch["num_init_features"]),
        bn_size=int(arch["bn_size"]),
        num_classes=int(num_classes),
        in_channels=int(arch["in_channels"]),
        weights=None,
    )


def _to_input(images, size: int) -> torch.Tensor:
    """uint8 (N,H,W) (or a list of (H,W)) -> float (N,1,size,size) in [-1024, 1024] (xrv.datasets.normalize(img, 255))."""
    if isinstance(images, np.ndarray) and images.ndim == 2:
        images = images[None]
    if isinstance(images, np.ndarray):
        if images.ndim != 3:
            raise InputError(f"images of shape {images.shape}; expected uint8 (N, H, W) grayscale")
        arrays = [images]
    else:
        arrays = [np.asarray(a)[None] for a in images]
        if any(a.ndim != 3 for a in arrays):
            raise InputError("images: expected a list of 2-D uint8 grayscale arrays")
    outs = []
    for arr in arrays:
        if arr.dtype != np.uint8:
            raise InputError(f"images have dtype {arr.dtype}; expected uint8 in [0, 255]")
        x = torch.from_numpy(np.ascontiguousarray(arr)).float()[:, None]
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 255)
        outs.append(x)
    x = torch.cat(outs) if outs else torch.zeros((0, 1, size, size))
    return (2.0 * (x / 255.0) - 1.0) * 1024.0  # == xrv.datasets.normalize(img, 255)


def _pooled_features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DenseNet features -> relu -> global average pool (xrv's ``features2`` without its resolution fix-up)."""
    f = model.features(x)
    return F.adaptive_avg_pool2d(F.relu(f), (1, 1)).flatten(1)


class ReferenceClassifier:
    """A DenseNet-121 CXR classifier with per-label thresholds.

    ``predict_proba(uint8 (N,H,W)) -> (N, L)`` sigmoid probabilities, columns in ``.labels`` order;
    ``features(...) -> (N, 1024)`` penultimate features (for the cosine similarity of Chambon 3.2);
    ``thresholds``: label -> probability threshold used by :func:`evaluate_classifier`.
    """

    def __init__(self, model: torch.nn.Module, labels: Sequence[str], thresholds: dict[str, float], image_size: int,
                 source: str, aliases: dict[str, str] | None = None, info: dict | None = None):
        self.model = model.eval()
        self.labels = list(labels)
        self.thresholds = {l: float(thresholds[l]) for l in self.labels}
        self.image_size = int(image_size)
        self.source = source
        self.aliases = dict(aliases or {})
        self.info = dict(info or {})

    def __repr__(self):
        return f"ReferenceClassifier(source={self.source!r}, labels={len(self.labels)}, image_size={self.image_size})"

    def label_index(self, name: str) -> int:
        name = self.aliases.get(name, name)
        if name not in self.labels:
            raise InputError(f"label {name!r} is not an output of {self.source}; expected one of {self.labels}")
        return self.labels.index(name)

    @torch.no_grad()
    def _batched(self, images, fn, batch_size: int) -> torch.Tensor:
        x_all = images if isinstance(images, torch.Tensor) else None
        n = len(images)
        outs = []
        self.model.eval()
        device = module_device(self.model)
        for i in range(0, n, batch_size):
            x = x_all[i : i + batch_size] if x_all is not None else _to_input(images[i : i + batch_size], self.image_size)
            outs.append(fn(x.to(device)).cpu())
        return torch.cat(outs) if outs else torch.zeros((0, 0))

    def predict_proba(self, images, batch_size: int = 64) -> np.ndarray:
        """Sigmoid probabilities (N, L) for uint8 grayscale images (N, H, W) (or classifier inputs, a float tensor);
        resized and scaled internally."""
        out = self._batched(images, lambda x: torch.sigmoid(self.model.classifier(_pooled_features(self.model, x))), batch_size)
        return out.reshape(len(images), len(self.labels)).double().numpy()

    def features(self, images, batch_size: int = 64) -> torch.Tensor:
        """Penultimate DenseNet features (N, 1024): features -> relu -> global average pool."""
        out = self._batched(images, lambda x: _pooled_features(self.model, x), batch_size)
        return out.reshape(len(images), -1)

    def predict(self, images, batch_size: int = 64) -> np.ndarray:
        """Binary (N, L) predictions at the stored thresholds."""
        p = self.predict_proba(images, batch_size)
        return (p >= np.array([self.thresholds[l] for l in self.labels])[None]).astype(np.int64)


# ----------------------------------------------------------------------------------------------- loading
def xrv_weights_path(weights: str = "densenet121-res224-all", cache_dir: str | Path | None = None) -> Path:
    """Where torchxrayvision looks for (and downloads) ``weights``: ``<cache_dir>/<basename of its URL>``."""
    import torchxrayvision as xrv

    if weights not in xrv.models.model_urls:
        known = sorted(k for k in xrv.models.model_urls if k.startswith("densenet"))
        raise InputError(f"unknown torchxrayvision weights {weights!r}; expected one of {known}")
    folder = Path(cache_dir) if cache_dir is not None else Path(xrv.utils.get_cache_dir())
    return folder.expanduser() / Path(xrv.models.model_urls[weights]["weights_url"]).name


def _torch_load_module_safely(path: Path):
    """torch.load(weights_only=True) of xrv's pickled model, allow-listing only torch.nn / torchxrayvision classes."""
    from torch.serialization import get_unsafe_globals_in_checkpoint, safe_globals

    allowed, refused = [], []
    for name in get_unsafe_globals_in_checkpoint(str(path)):
        module, _, attr = name.rpartition(".")
        if module.startswith(("torch.nn.", "torchxrayvision.", "collections")):
            try:
                obj = importlib.import_module(module)
                for part in attr.split("."):
                    obj = getattr(obj, part)
                allowed.append(obj)
                continue
            except (ImportError, AttributeError):
                pass
        refused.append(name)
    if refused:
        raise InputError(f"{path}: the weights file references {refused}, which are not torch.nn/torchxrayvision classes; "
                         "refusing to unpickle it (expected torchxrayvision's released DenseNet file)")
    with safe_globals(allowed):
        return torch.load(str(path), map_location="cpu", weights_only=True)


def _load_xrv(weights: str, cache_dir: str | Path | None = None) -> ReferenceClassifier:
    import torchxrayvision as xrv

    path = xrv_weights_path(weights, cache_dir)
    meta = xrv.models.model_urls[weights]
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            xrv.utils.download(meta["weights_url"], str(path))
        except Exception as exc:  # offline, proxy, HTTP error, ...: all mean "no weights here"
            raise WeightsUnavailableError(
                f"torchxrayvision weights {weights!r} not found at {path} and could not be downloaded ({type(exc).__name__}: {exc}); "
                f"place the file {path.name} (from {meta['weights_url']}) in the folder {path.parent}/ "
                "(torchxrayvision's cache folder, ~/.torchxrayvision/models_data/)"
            ) from exc
        finally:
            part = Path(str(path) + ".part")
            if not path.is_file() and part.is_file() and part.stat().st_size == 0:
                part.unlink()
    try:
        saved = _torch_load_module_safely(path)
    except InputError:
        raise
    except Exception as exc:
        raise WeightsUnavailableError(f"{path} exists but cannot be read as torchxrayvision weights ({exc}); "
                                      f"replace it with a fresh copy of {meta['weights_url']}") from exc
    state = saved.state_dict() if isinstance(saved, torch.nn.Module) else saved
    xrv_labels = list(meta["labels"])
    model = _build_densenet(len(xrv_labels))
    state = {k: v for k, v in state.items() if k != "op_threshs"}
    model.load_state_dict(state, strict=True)
    model.op_threshs = None  # we apply a plain sigmoid and keep op_threshs as per-label thresholds
    labels = [XRV_TO_CHEXPERT.get(l, l) for l in xrv_labels]
    op = meta.get("op_threshs") or [0.5] * len(labels)
    thresholds = {l: (0.5 if t is None or np.isnan(t) else float(t)) for l, t in zip(labels, op)}
    aliases = {k: v for k, v in XRV_TO_CHEXPERT.items()}
    return ReferenceClassifier(model, labels, thresholds, int(meta.get("input_resolution", 224)), f"{XRV_PREFIX}{weights}",
                               aliases, {"weights_file": str(path), "architecture": ARCHITECTURE, "input_scaling": INPUT_SCALING})


def load_reference_classifier(path_or_name: str | Path, cache_dir: str | Path | None = None,
                              device: str | torch.device | None = None) -> ReferenceClassifier:
    """A saved folder (from :func:`train_reference_classifier`) or ``"xrv:<weights>"`` (e.g. ``xrv:densenet121-res224-all``).

    ``cache_dir`` overrides torchxrayvision's weights folder (default ``~/.torchxrayvision/models_data/``).
    The network runs on ``device`` (default :func:`cxrgen.engine.default_device`); results come back on the CPU.
    """
    clf = _load_reference_classifier(path_or_name, cache_dir)
    clf.model.to(default_device(device))
    return clf


def _load_reference_classifier(path_or_name, cache_dir) -> ReferenceClassifier:
    spec = str(path_or_name)
    if spec.startswith(XRV_PREFIX):
        weights = spec[len(XRV_PREFIX):]
        if not weights.startswith("densenet"):
            raise InputError(f"reference classifier {spec!r}: only torchxrayvision DenseNet weights are supported "
                             "(e.g. 'xrv:densenet121-res224-all')")
        return _load_xrv(weights, cache_dir)
    folder = Path(spec)
    if not (folder / CONFIG_FILE).is_file() or not (folder / MODEL_FILE).is_file():
        raise InputError(f"reference classifier {spec!r}: expected a folder with {CONFIG_FILE} and {MODEL_FILE} "
                         f"(written by train_reference_classifier) or a name like 'xrv:densenet121-res224-all'")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    if cfg.get("architecture", {}).get("name") != ARCHITECTURE:
        raise InputError(f"{folder / CONFIG_FILE}: architecture {cfg.get('architecture')!r}; expected {ARCHITECTURE}")
    with torch.device("meta"):  # skip the random init: every tensor comes from the file
        model = _build_densenet(len(cfg["labels"]), cfg["architecture"])
    model.load_state_dict(load_file(str(folder / MODEL_FILE)), strict=True, assign=True)
    return ReferenceClassifier(model, cfg["labels"], cfg["thresholds"], cfg["image_size"], str(folder), info=cfg)


# ----------------------------------------------------------------------------------------------- training
def _label_matrix(manifest: pd.DataFrame, labels: Sequence[str], origin: str) -> np.ndarray:
    missing = [l for l in labels if l not in manifest.columns]
    if missing:
        raise InputError(f"{origin}: manifest lacks label columns {missing}; expected the CheXpert label columns")
    y = manifest[list(labels)].astype("float64").to_numpy()
    bad = ~np.isnan(y) & ~np.isin(y, (0.0, 1.0))
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise InputError(f"{origin}: column {labels[c]!r} holds {y[r, c]} (row {r}); expected binarised labels 1/0/blank "
                         "(apply cxrgen.data.schema.apply_label_policy before materialising)")
    return y


class _ClassifierItems:
    """Dataset transform: a folder image -> (classifier input (1, size, size), its label row with NaN = blank)."""

    def __init__(self, labels: np.ndarray, size: int):
        self.labels, self.size = torch.from_numpy(labels).float(), int(size)

    def __call__(self, image: np.ndarray, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return _to_input(image[None], self.size)[0], self.labels[i]


def _folder_dataset(folder, labels, size) -> tuple[SampleFolderDataset, np.ndarray]:
    """The folder's images streamed from disk as classifier inputs with their labels; also the label matrix."""
    data = SampleFolderDataset(folder)
    y = _label_matrix(data.manifest, labels, str(Path(folder) / "manifest.csv"))
    data.transform = _ClassifierItems(y, size)
    return data, y


def _augment(x: torch.Tensor, cfg: ReferenceClassifierConfig, gen: torch.Generator, n: int | None = None,
             rows: slice = slice(None)) -> torch.Tensor:
    """Random affine of this process's ``rows`` of a global batch of ``n`` (default: ``x`` is the whole batch);
    the parameters are drawn for all ``n`` rows on the CPU generator, so every process draws the same stream."""
    n = x.shape[0] if n is None else int(n)
    u = lambda: torch.rand(n, generator=gen) * 2 - 1  # noqa: E731
    ang = u() * math.radians(cfg.max_rotate_deg)
    scale = 1 + u() * cfg.max_scale
    tx, ty = u() * cfg.max_translate * 2, u() * cfg.max_translate * 2  # affine_grid works in [-1, 1] units
    flip = (torch.rand(n, generator=gen) < 0.5).float() * 2 - 1 if cfg.hflip else torch.ones(n)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta[rows].to(x.device), list(x.shape), align_corners=False)
    # pad with the image minimum (-1024 = black), not zero (= mid grey)
    return F.grid_sample(x + 1024.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1024.0


def masked_bce(logits: torch.Tensor, y: torch.Tensor, engine: Engine | None = None) -> torch.Tensor:
    """BCE averaged over the labelled (non-NaN) entries of the global batch. In N processes each returns its sum
    over N / the global count, so the mean of the processes' losses and gradients (DDP) is the global one even
    when the blanks fall unevenly."""
    mask = ~torch.isnan(y)
    if engine is None or engine.num_processes == 1:
        if not mask.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[mask], y[mask])
    count = engine.mean(mask.sum()) * engine.num_processes
    if count == 0:
        return logits.sum() * 0.0
    total = F.binary_cross_entropy_with_logits(logits[mask], y[mask], reduction="sum")
    return total * (engine.num_processes / count)


def _mean_auc(y: np.ndarray, p: np.ndarray) -> tuple[float, list[float]]:
    aucs = [_auc(y[:, j], p[:, j]) for j in range(y.shape[1])]
    valid = [a for a in aucs if not math.isnan(a)]
    return (float(np.mean(valid)) if valid else math.nan), aucs


@torch.no_grad()
def _predict_dataset(model: torch.nn.Module, labels: Sequence[str], data, engine: Engine,
                     batch_size: int = 64) -> np.ndarray:
    """Sigmoid probabilities (N, L) of a classifier dataset, in batches read from disk, on the model's device; in
    N processes each predicts its share and all get every row (:meth:`Engine.predict`), so they agree on the best
    epoch."""
    clf = ReferenceClassifier(model, labels, {l: 0.5 for l in labels}, 1, "training")
    return engine.predict(lambda batch: torch.from_numpy(clf.predict_proba(batch[0], batch_size)), data,
                          batch_size).numpy()


def train_reference_classifier(train_dir, val_dir, cfg: ReferenceClassifierConfig | None = None, out_dir=None,
                               progress: bool = True, runtime: RuntimeConfig | None = None) -> dict:
    """Train the miniature DenseNet-121 on ``train_dir``, pick the epoch and thresholds on ``val_dir``, save to ``out_dir``.

    Both folders are materialised samples (``cxrgen.data.sampling.materialise``) whose label columns are
    binarised (1/0; blank = ignored, masked out of the BCE loss); their images are read from disk batch by batch.
    Training runs through the engine (:mod:`cxrgen.engine`, ``runtime``: device, processes, mixed precision,
    accumulation; ``cfg.batch_size`` is the global batch). Per-epoch checkpoints go to ``<out_dir>.partial/`` so a
    killed run resumes from its last finished epoch (refused when written under other settings); the final
    folder (``model.safetensors``, ``config.json``, ``training_log.csv``) is written atomically.
    Returns a summary dict (out_dir, best_epoch, val_mean_auc, val_auc per label, thresholds, seconds).
    """
    cfg = cfg or ReferenceClassifierConfig()
    if out_dir is None:
        raise InputError("train_reference_classifier: out_dir is required (the folder to write the classifier into)")
    out_dir = Path(out_dir)
    labels = list(cfg.labels)
    t_start = time.perf_counter()
    engine = Engine(runtime)
    train_data, _ = _folder_dataset(train_dir, labels, cfg.image_size)
    val_data, y_va = _folder_dataset(val_dir, labels, cfg.image_size)
    n_train, n_val = len(train_data), len(val_data)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation, one stream as before the engine
    model = _build_densenet(len(labels))
    best_model = _build_densenet(len(labels)).to(engine.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    micro = engine.micro_batch(cfg.batch_size)
    steps_per_epoch = math.ceil(math.ceil(n_train / micro) / engine.gradient_accumulation_steps)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    loader = engine.dataloader(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed, sampler=EpochPermutation(n_train, gen))
    model, opt, sched = engine.prepare(model, opt, sched)

    ckpt_dir = out_dir.with_name(out_dir.name + ".partial")
    log: list[dict] = []
    best = {"epoch": -1, "val_mean_auc": -math.inf}
    start_epoch = 0
    settings = {**json.loads(json.dumps(cfg.to_dict())), "n_train": n_train, "n_val": n_val}
    state = engine.resume(ckpt_dir, settings, {"model": model, "best": best_model}, opt, sched, {"gen": gen})
    if state is not None:
        extra = state["extra"]
        log, best, start_epoch = list(extra["log"]), dict(extra["best"]), int(state["step"])

    accelerator = engine.accelerator
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        bar = progress_bar(loader, disable=not progress or not engine.is_main, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   leave=False)
        for xb, yb in bar:
            n = len(xb) * engine.num_processes  # the global micro-batch this process holds a slice of
            if n < 2:  # BatchNorm needs >1 sample per batch in train mode
                continue
            if cfg.augment:
                xb = _augment(xb, cfg, gen, n, engine.local_rows(n))
            with accelerator.accumulate(model):
                loss = masked_bce(model(xb), yb, engine)
                accelerator.backward(loss)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            total += engine.mean(loss.detach()) * n
            count += n
        probs = _predict_dataset(engine.unwrap(model), labels, val_data, engine)
        mean_auc, _ = _mean_auc(y_va, probs)
        row = {"epoch": epoch + 1, "train_loss": total / max(count, 1), "val_mean_auc": mean_auc,
               "seconds": time.perf_counter() - t0}
        log.append(row)
        if progress and engine.is_main:
            logger.info("epoch %d/%d: train_loss=%.4f val_mean_auc=%.4f (%.1fs)", epoch + 1, cfg.epochs,
                        row["train_loss"], mean_auc, row["seconds"])
        score = -math.inf if math.isnan(mean_auc) else mean_auc
        if best["epoch"] < 0 or score > best["val_mean_auc"]:
            best = {"epoch": epoch + 1, "val_mean_auc": score}
            best_model.load_state_dict(engine.unwrap(model).state_dict())
        engine.save(ckpt_dir, settings, {"model": model, "best": best_model}, opt, sched, step=epoch + 1,
                    generators={"gen": gen}, extra={"log": log, "best": best})

    val_probs = _predict_dataset(best_model, labels, val_data, engine)
    val_mean, val_aucs = _mean_auc(y_va, val_probs)
    thresholds = {l: _threshold(y_va[:, j], val_probs[:, j], cfg.threshold_method) for j, l in enumerate(labels)}
    seconds = time.perf_counter() - t_start
    config = {
        "labels": labels,
        "image_size": cfg.image_size,
        "thresholds": thresholds,
        "threshold_method": cfg.threshold_method,
        "threshold_split": "validation",
        "input_scaling": INPUT_SCALING,
        "architecture": {"name": ARCHITECTURE, **DENSENET121, "num_classes": len(labels)},
        "output": "sigmoid probabilities, one per label",
        "best_epoch": best["epoch"],
        "val_mean_auc": val_mean,
        "val_auc": dict(zip(labels, val_aucs)),
        "train_dir": str(train_dir),
        "val_dir": str(val_dir),
        "n_train": n_train,
        "n_val": n_val,
        "training": cfg.to_dict(),
    }
    if engine.is_main:
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            sd = {k: v.detach().contiguous().cpu() for k, v in best_model.state_dict().items()}
            save_file(sd, str(tmp / MODEL_FILE))
            (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2, allow_nan=True))
            pd.DataFrame(log, columns=["epoch", "train_loss", "val_mean_auc", "seconds"]).to_csv(tmp / LOG_FILE, index=False)
            write_model_card(tmp, training_config=cfg.to_dict(),
                             data={"sample": Path(train_dir).name, "n_images": n_train,
                                   "validation_sample": Path(val_dir).name, "n_validation_images": n_val},
                             metrics={"best_epoch": best["epoch"], "val_mean_auc": val_mean,
                                      **{f"val_auc/{k}": v for k, v in zip(labels, val_aucs)}})
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    accelerator.wait_for_everyone()
    return {"out_dir": str(out_dir), "best_epoch": best["epoch"], "val_mean_auc": val_mean, "val_auc": dict(zip(labels, val_aucs)),
            "thresholds": thresholds, "seconds": seconds, "log": log}


# ----------------------------------------------------------------------------------------------- evaluation
def evaluate_classifier(clf: ReferenceClassifier, images, manifest: pd.DataFrame, labels: Sequence[str] | None = None,
                        n_boot: int = 1000, seed: int = 0, probs: np.ndarray | None = None,
                        min_class_count: int = MIN_CLASS_COUNT) -> pd.DataFrame:
    """Per-label n, prevalence, threshold, auc/accuracy/f1/precision/recall at ``clf.thresholds``, each with a
    stratified percentile-bootstrap 95% CI in ``<metric>_ci_low`` / ``<metric>_ci_high``
    (:func:`cxrgen.metrics.classification.per_label_table`; ``n_boot=0`` skips the CIs; a label with fewer than
    ``min_class_count`` positives or negatives gets no CI and a ``ci_note``).

    ``manifest`` holds binarised label columns (blank rows are left out of that label's metrics).
    ``labels`` defaults to the classifier's labels that are manifest columns (Chambon: the 12 of Table 1).
    ``probs`` skips inference when the (N, L) probabilities are already at hand.
    """
    if labels is None:
        labels = [l for l in clf.labels if l in manifest.columns]
    labels = list(labels)
    if len(manifest) != len(images):
        raise InputError(f"evaluate_classifier: {len(images)} images but {len(manifest)} manifest rows; expected one row per image")
    cols = [clf.label_index(l) for l in labels]
    y = _label_matrix(manifest, labels, "evaluate_classifier manifest")
    p = clf.predict_proba(images) if probs is None else np.asarray(probs, dtype=float)
    scores = p[:, cols]
    thr = [clf.thresholds[clf.labels[c]] for c in cols]
    table = per_label_table(y, scores, labels, thr, n_boot=n_boot, seed=seed, min_class_count=min_class_count)
    return table


def evaluate_folder(clf: ReferenceClassifier, folder, labels=None, n_boot: int = 1000, seed: int = 0,
                    min_class_count: int = MIN_CLASS_COUNT, transform=None) -> pd.DataFrame:
    """:func:`evaluate_classifier` on a materialised folder, its images read from disk batch by batch;
    ``transform(uint8 image, index)`` redraws each before the classifier sees it (``SampleFolderDataset``)."""
    from torch.utils.data import DataLoader

    data = SampleFolderDataset(folder, transform)
    probs = np.concatenate([clf.predict_proba(x.numpy()) for x in DataLoader(data, batch_size=64)])
    return evaluate_classifier(clf, data, data.manifest, labels, n_boot, seed, probs=probs,
                               min_class_count=min_class_count)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Pairwise (row i of a vs row i of b) cosine similarity of feature vectors (Chambon 3.2)."""
    if a.shape != b.shape:
        raise InputError(f"cosine_similarity: shapes {tuple(a.shape)} and {tuple(b.shape)} differ; expected paired features")
    return F.cosine_similarity(a.double(), b.double(), dim=1).numpy()
