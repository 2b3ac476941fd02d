"""Feature extractors for FID/KID and latent-similarity metrics, looked up by name.

Every extractor takes uint8 images (N,H,W) or (N,H,W,C) (numpy or torch; C = 1, 3 or 4, alpha dropped),
runs batched without gradients on ``device`` (default :func:`cxrgen.engine.default_device`: CUDA when present)
and returns a float32 CPU tensor (N, D).

* ``inception``: InceptionV3 pool features, 2048-d (torchmetrics' ``NoTrainInceptionV3`` = torch-fidelity's
  port of the TF FID network).  Grey images are repeated to 3 channels; the network itself resizes to 299x299
  (``antialias=True``: torchmetrics' default antialiased bilinear; ``False``: torch-fidelity's TF1-compatible
  bilinear, as in the reference FID code).  Weights: ``$TORCH_HOME/hub/checkpoints/<file>`` (see
  :func:`inception_weights_path`) or ``weights_path=``.
* ``xrv``: torchxrayvision DenseNet-121 ``features2`` (1024-d).  Grey (RGB averaged), scaled to [-1024, 1024]
  with ``xrv.datasets.normalize(img, 255)``, optionally centre-cropped to a square, resized to ``size`` (224).
  ``weights=None`` gives a random-init network (for tests only).  Weights live in ``~/.torchxrayvision/models_data/``
  or ``cache_dir=``.
* ``reference``: any classifier: ``model=`` (nn.Module) or ``path=`` (folder loaded with the project's
  ``load_reference_classifier``), and/or ``features=`` (callable (N,C,H,W) float -> (N,D)).

Offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE``/``CXRGEN_OFFLINE`` set to a true value), missing weights raise
:class:`~cxrgen.errors.WeightsUnavailableError` before any download is attempted; online, a failed download is
turned into the same error.  Either way the message names the file and where to place it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cxrgen.engine import default_device
from cxrgen.errors import InputError, WeightsUnavailableError

DOWNLOAD_TIMEOUT_S = 30.0


def _offline() -> bool:
    return any(
        os.environ.get(k, "").strip().lower() not in ("", "0", "false", "no")
        for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CXRGEN_OFFLINE")
    )


@contextlib.contextmanager
def _socket_timeout(seconds: float):
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def to_uint8_nchw(images) -> torch.Tensor:
    """uint8 images (N,H,W) / (N,H,W,C) as numpy or torch -> uint8 tensor (N,C,H,W), C in {1, 3}."""
    x = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if x.dtype != torch.uint8:
        raise InputError(f"images have dtype {x.dtype}; expected uint8 (0-255)")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        if x.shape[-1] not in (1, 3, 4):
            raise InputError(f"images have shape {tuple(x.shape)}; expected (N,H,W) or (N,H,W,C) with C in 1, 3, 4")
        x = x[..., :3].permute(0, 3, 1, 2)
    else:
        raise InputError(f"images have shape {tuple(x.shape)}; expected (N,H,W) or (N,H,W,C) uint8")
    if x.shape[0] == 0:
        raise InputError("got an empty batch of images; expected at least one")
    return x.contiguous()


def _center_crop(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


def _resize(x: torch.Tensor, size: int | None, antialias: bool) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)


class FeatureExtractor:
    """Base class: subclasses set ``name``, ``dim`` and implement ``_forward(uint8 (n,C,H,W)) -> (n, D)``."""

    name: str = "base"
    dim: int = 0

    def __init__(self, size: int | None, antialias: bool = True, batch_size: int = 32, device: str | torch.device | None = None):
        if batch_size < 1:
            raise InputError(f"batch_size={batch_size}; expected a positive integer")
        self.size = size
        self.antialias = antialias
        self.batch_size = int(batch_size)
        self.device = default_device(device)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, images) -> torch.Tensor:
        x = to_uint8_nchw(images)
        out = []
        with torch.inference_mode():
            for i in range(0, x.shape[0], self.batch_size):
                f = self._forward(x[i : i + self.batch_size].to(self.device))
                out.append(f.reshape(f.shape[0], -1).float().cpu())
        feats = torch.cat(out)
        if self.dim and feats.shape[1] != self.dim:
            raise RuntimeError(f"extractor {self.name!r} returned {feats.shape[1]} features; expected {self.dim}")
        return feats

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, size={self.size}, antialias={self.antialias})"


# ----------------------------------------------------------------------------------------------------- inception
INCEPTION_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


def inception_weights_path() -> str:
    """Where torch-fidelity/torchmetrics look for the FID InceptionV3 weights (torch hub cache)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(INCEPTION_WEIGHTS_URL))


class InceptionExtractor(FeatureExtractor):
    name = "inception"
    dim = 2048

    def __init__(
        self,
        weights_path: str | None = None,
        antialias: bool = True,
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ):
        super().__init__(size=299, antialias=antialias, batch_size=batch_size, device=device)
        from torchmetrics.image.fid import NoTrainInceptionV3  # a slow import that only this extractor needs

        where = inception_weights_path()
        hint = (
            f"download {INCEPTION_WEIGHTS_URL} and place it at {where} (the torch hub cache; set TORCH_HOME to move it, "
            f"i.e. $TORCH_HOME/hub/checkpoints/), or in Python pass weights_path=<file>"
        )
        if weights_path is not None:
            if not os.path.isfile(weights_path):
                raise WeightsUnavailableError(f"InceptionV3 weights file {weights_path} does not exist; {hint}")
        elif os.path.isfile(where):
            weights_path = where
        elif _offline():
            raise WeightsUnavailableError(f"InceptionV3 FID weights are not cached and downloads are off (offline); {hint}")
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                model = NoTrainInceptionV3(
                    name="inception-v3-compat",
                    features_list=["2048"],
                    feature_extractor_weights_path=weights_path,
                    antialias=antialias,
                )
        except Exception as e:  # download/network/corrupt file
            raise WeightsUnavailableError(f"could not load InceptionV3 FID weights ({type(e).__name__}: {e}); {hint}") from e
        self.model = model.to(self.device).eval()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.model(x.contiguous())


# ----------------------------------------------------------------------------------------------------------- xrv
def xrv_weights_path(weights: str, cache_dir: str | None = None) -> str:
    """Local file torchxrayvision loads ``weights`` from (``~/.torchxrayvision/models_data/`` by default)."""
    import torchxrayvision as xrv  # optional: only the xrv extractor and weights need it

    if weights not in xrv.models.model_urls:
        known = sorted(k for k in xrv.models.model_urls if k.startswith("densenet"))
        raise InputError(f"unknown torchxrayvision weights {weights!r}; expected one of {known}")
    folder = cache_dir if cache_dir is not None else xrv.utils.get_cache_dir()
    fname = os.path.basename(xrv.models.model_urls[weights]["weights_url"])
    return os.path.expanduser(os.path.join(folder, fname))


def xrv_preprocess(x: torch.Tensor, size: int | None = 224, antialias: bool = True, center_crop: bool = True) -> torch.Tensor:
    """uint8 (n,C,H,W) -> float32 (n,1,size,size) in [-1024, 1024] as torchxrayvision models expect."""
    import torchxrayvision as xrv  # optional: only the xrv extractor and weights need it

    gray = x.float().mean(dim=1, keepdim=True) if x.shape[1] > 1 else x.float()
    arr = xrv.datasets.normalize(gray.cpu().numpy(), 255)
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).to(x.device)
    if center_crop:
        t = _center_crop(t)
    return _resize(t, size, antialias)


class XRVExtractor(FeatureExtractor):
    dim = 1024

    def __init__(
        self,
        weights: str | None = "densenet121-res224-all",
        size: int = 224,
        antialias: bool = True,
        center_crop: bool = True,
        cache_dir: str | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ):
        super().__init__(size=size, antialias=antialias, batch_size=batch_size, device=device)
        import torchxrayvision as xrv  # optional: only the xrv extractor and weights need it

        self.center_crop = center_crop
        self.weights = weights
        self.name = f"xrv:{weights}" if weights else "xrv:random-init"
        if weights is None:
            model = xrv.models.DenseNet(weights=None)
        else:
            where = xrv_weights_path(weights, cache_dir)
            url = xrv.models.model_urls[weights]["weights_url"]
            hint = (
                f"download {url} and place it at {where} (torchxrayvision's cache, ~/.torchxrayvision/models_data/ "
                f"unless cache_dir= is given)"
            )
            if not os.path.isfile(where) and _offline():
                raise WeightsUnavailableError(
                    f"torchxrayvision weights {weights!r} are not cached and downloads are off (offline); {hint}"
                )
            try:
                with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                    model = xrv.models.DenseNet(weights=weights, cache_dir=cache_dir)
            except Exception as e:
                raise WeightsUnavailableError(
                    f"could not load torchxrayvision weights {weights!r} ({type(e).__name__}: {e}); {hint}"
                ) from e
        self.model = model.to(self.device).eval()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features2(xrv_preprocess(x, self.size, self.antialias, self.center_crop))


# ----------------------------------------------------------------------------------------------------- reference
_REFERENCE_LOADER_MODULES = ("cxrgen.classify", "cxrgen.classify.reference", "cxrgen.classify.model")


def _load_reference(path: str):
    for mod in _REFERENCE_LOADER_MODULES:
        try:
            m = importlib.import_module(mod)
        except ImportError:
            continue
        if hasattr(m, "load_reference_classifier"):
            return m.load_reference_classifier(path)
    raise InputError(
        f"cannot load reference classifier {path}: no load_reference_classifier in {list(_REFERENCE_LOADER_MODULES)}; "
        "pass model=<nn.Module> or features=<callable> instead"
    )


def _normalizer(normalize) -> Callable[[torch.Tensor], torch.Tensor]:
    """Map float (n,C,H,W) in 0-255 to the classifier's input range."""
    if callable(normalize):
        return normalize
    if normalize == "xrv":
        return lambda t: (2.0 * t / 255.0 - 1.0) * 1024.0
    if normalize == "unit":
        return lambda t: t / 255.0
    if normalize == "imagenet":
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return lambda t: (t / 255.0 - mean.to(t.device)[:, : t.shape[1]]) / std.to(t.device)[:, : t.shape[1]]
    raise InputError(f"normalize={normalize!r}; expected 'xrv', 'unit', 'imagenet' or a callable")


class ReferenceExtractor(FeatureExtractor):
    """Features of a caller-supplied classifier.

    The feature function is, in order: ``features=`` if given; else ``model.features2`` (torchxrayvision-style);
    else ``model.features``.  A 4-D output (n,C,h,w) is global-average-pooled to (n,C).  Input: uint8 images ->
    float 0-255 -> grey (``in_channels=1``, RGB averaged) or repeated to 3 channels -> optional centre crop ->
    resize to ``size`` -> ``normalize`` ("xrv": [-1024,1024], "unit": [0,1], "imagenet", or a callable on 0-255).
    ``dim`` is inferred with one dummy forward pass unless given.
    """

    def __init__(
        self,
        model=None,
        path: str | None = None,
        features: Callable | None = None,
        dim: int | None = None,
        size: int | None = 224,
        antialias: bool = True,
        center_crop: bool = True,
        in_channels: int = 1,
        normalize="xrv",
        name: str = "reference",
        batch_size: int = 32,
        device: str | torch.device | None = None,
    ):
        super().__init__(size=size, antialias=antialias, batch_size=batch_size, device=device)
        if model is None and path is not None:
            model = _load_reference(path)
        if model is None and features is None:
            raise InputError("reference extractor needs model=<nn.Module>, path=<classifier folder> or features=<callable>")
        if in_channels not in (1, 3):
            raise InputError(f"in_channels={in_channels}; expected 1 or 3")
        if isinstance(model, torch.nn.Module):
            model = model.to(self.device).eval()
        self.model = model
        if features is None:
            features = getattr(model, "features2", None)
            if not callable(features):
                features = getattr(model, "features", None)
            if not callable(features):
                raise InputError(f"model {type(model).__name__} has no callable .features2/.features; pass features=")
        self.features_fn = features
        self.center_crop = center_crop
        self.in_channels = in_channels
        self.normalize = _normalizer(normalize)
        self.name = name if path is None or name != "reference" else f"reference:{os.path.basename(os.path.normpath(path))}"
        if dim is None:
            s = size or 224
            dim = int(self(np.zeros((1, s, s), dtype=np.uint8)).shape[1])
        self.dim = int(dim)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.float()
        if self.in_channels == 1 and t.shape[1] > 1:
            t = t.mean(dim=1, keepdim=True)
        elif self.in_channels == 3 and t.shape[1] == 1:
            t = t.expand(-1, 3, -1, -1)
        if self.center_crop:
            t = _center_crop(t)
        t = self.normalize(_resize(t, self.size, self.antialias))
        f = self.features_fn(t)
        if f.ndim == 4:
            f = f.mean(dim=(2, 3))
        return f


# ------------------------------------------------------------------------------------------------------ registry
_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {
    "inception": InceptionExtractor,
    "xrv": XRVExtractor,
    "reference": ReferenceExtractor,
}


def available_extractors() -> list[str]:
    return sorted(_REGISTRY)


def register_extractor(name: str, factory: Callable[..., FeatureExtractor]) -> None:
    """Add an extractor factory under ``name`` (overwrites an existing one)."""
    _REGISTRY[name] = factory


def get_extractor(name, /, **kw) -> FeatureExtractor:
    """Build the extractor registered as ``name`` (a FeatureExtractor instance is returned unchanged)."""
    if isinstance(name, FeatureExtractor):
        return name
    if name not in _REGISTRY:
        raise InputError(f"unknown feature extractor {name!r}; expected one of {available_extractors()}")
    return _REGISTRY[name](**kw)


def streamed_features(extractor, images, chunk_batches: int = 8):
    """``extractor(images)`` for uint8 (N,H,W) images given as an array or as a dataset read item by item (e.g.
    :func:`cxrgen.studies.cheff.load_split`, :class:`cxrgen.data.sampling.FolderImages`): a dataset is stacked a chunk of whole extractor batches at a time, so
    memory stays bounded and the features equal those of the stacked array (the same batches reach the network)."""
    if isinstance(images, np.ndarray):
        return extractor(images)
    step = getattr(extractor, "batch_size", 32) * int(chunk_batches)
    chunks = [extractor(np.stack([images[i] for i in range(start, min(start + step, len(images)))]))
              for start in range(0, len(images), step)]
    if not chunks:
        raise InputError("an empty image set; expected at least one image to extract features from")
    return torch.cat(chunks)


def make_fid_extractor(name, classifier=None, **kw) -> FeatureExtractor:
    """A feature extractor for FID: ``"reference"`` = the reference classifier's penultimate features
    (:class:`ReferenceExtractor` around ``classifier.features``, input scaled like the classifier, resized to its
    ``image_size``); ``"inception"`` / ``"xrv"`` or a FeatureExtractor instance as is."""
    if isinstance(name, FeatureExtractor):
        return name
    if name == "reference":
        if classifier is None:
            raise InputError("fid_extractor='reference' needs the reference classifier; pass classifier=")
        source = str(getattr(classifier, "source", "classifier"))
        label = source if source.startswith("xrv:") else os.path.basename(os.path.normpath(source)) or source
        kw.setdefault("size", int(getattr(classifier, "image_size", 224)))
        kw.setdefault("normalize", "xrv")
        kw.setdefault("center_crop", False)
        kw.setdefault("name", f"reference:{label}")
        return ReferenceExtractor(model=classifier, features=classifier.features, **kw)
    return get_extractor(name, **kw)
