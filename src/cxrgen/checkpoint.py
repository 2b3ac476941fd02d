"""Resumable training checkpoints: model weights (safetensors) + optimizer, LR scheduler, step, RNG.

Layout of a checkpoint folder::

    <name>.safetensors   one file per model (``save_file`` of its state_dict)
    state.pt             optimizer / lr-scheduler state, step, RNG states (Python, NumPy, torch CPU and, once
                         CUDA is initialised, every CUDA device's), extra (weights_only-safe)

Written atomically, so a killed job leaves either the previous checkpoint or the new one.
``load_checkpoint`` reads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from cxrgen.io import atomic_path

STATE_FILE = "state.pt"


def get_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    return {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [
            np_state[0],
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
        # only once CUDA is in use: querying it would otherwise initialise CUDA in CPU-only runs
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }


def set_rng_state(state: dict, generators: Mapping[str, torch.Generator] | None = None) -> None:
    v, inner, gauss = state["python"]
    random.setstate((v, tuple(inner), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    for k, g in (generators or {}).items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])


def save_checkpoint(
    path: str | os.PathLike,
    models: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    step: int = 0,
    generators: Mapping[str, torch.Generator] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.mkdir()
        for name, m in models.items():
            sd = {k: v.detach().contiguous().cpu() for k, v in m.state_dict().items()}
            save_file(sd, str(tmp / f"{name}.safetensors"))
        state = {
            "step": int(step),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
            "rng": get_rng_state(generators),
            "extra": extra or {},
        }
        torch.save(state, tmp / STATE_FILE)
    return path


def load_checkpoint(
    path: str | os.PathLike,
    models: Mapping[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
    generators: Mapping[str, torch.Generator] | None = None,
    restore_rng: bool = True,
) -> dict:
    """Restore models/optimizer/scheduler/RNG in place; return the state dict (``step``, ``extra``)."""
    path = Path(path)
    for name, m in models.items():
        m.load_state_dict(load_file(str(path / f"{name}.safetensors")))
    state = read_checkpoint_state(path)
    if optimizer is not None and state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    if lr_scheduler is not None and state["lr_scheduler"] is not None:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    if restore_rng:
        set_rng_state(state["rng"], generators)
    return state


def read_checkpoint_state(path: str | os.PathLike) -> dict:
    """The checkpoint's ``state.pt`` (step, optimizer, RNG, extra) without touching any model."""
    return torch.load(Path(path) / STATE_FILE, weights_only=True, map_location="cpu")


def has_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / STATE_FILE).is_file()
