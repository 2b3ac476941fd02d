"""Which device inference runs on: CUDA when present, the CPU otherwise, overridable.

Every inference path (feature extraction, classifiers, VAE study, sampling, text encoders, Cheff evaluation)
asks :func:`default_device` where to put its modules; outputs come back to the CPU, so the CPU miniature's
numbers do not depend on this. Order of precedence: an explicit ``requested`` device (a config value or a
function argument; ``None`` or ``"auto"`` defer), the ``CXRGEN_DEVICE`` environment variable (e.g. ``cpu``,
``cuda``, ``cuda:1``), then CUDA if :func:`torch.cuda.is_available` (``cuda:<LOCAL_RANK>`` under a distributed
launcher, else ``cuda:0``), else ``cpu``.
"""

from __future__ import annotations

import os

import torch

from cxrgen.errors import InputError

DEVICE_ENV = "CXRGEN_DEVICE"
AUTO = "auto"


def _parse(value, origin: str) -> torch.device:
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"{origin}={value!r} is not a device; expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"{origin}={value!r} but torch sees no CUDA device here; expected 'auto' or 'cpu'")
    return device


def default_device(requested: str | torch.device | None = None) -> torch.device:
    """The device to run inference on (see the module docstring for the precedence)."""
    if isinstance(requested, torch.device):
        return requested
    if requested is not None and str(requested).strip().lower() != AUTO:
        return _parse(str(requested).strip(), "device")
    env = os.environ.get(DEVICE_ENV, "").strip()
    if env and env.lower() != AUTO:
        return _parse(env, DEVICE_ENV)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    # under a distributed launcher each process takes its own GPU, as accelerate does
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())


def module_device(module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module without tensors."""
    for tensors in (module.parameters(), module.buffers()):
        for t in tensors:
            return t.device
    return torch.device("cpu")
