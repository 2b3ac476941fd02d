"""The one training engine: every trainer gets its device, its processes and its checkpoints from here.

It wraps ``accelerate``: a :class:`RuntimeConfig` (mixed precision, gradient accumulation, CPU-only switch,
DataLoader workers) becomes a fresh :class:`Engine` holding an ``Accelerator``; trainers ``prepare`` their
model(s), optimizer, DataLoader and LR scheduler through it and put every tensor on ``engine.device``.

Batch semantics (whatever the number of processes): a config's batch size is the **global** batch of one
optimizer step, ``per-process micro-batch = global batch / (processes x gradient_accumulation_steps)``;
learning rates refer to that global batch. The engine's DataLoaders are built with accelerate's
``split_batches=True``: the loader draws the global micro-batch and each process receives its contiguous
slice, so 1 and N processes see the same items in the same order. Randomness drawn per item (noise,
timesteps) is drawn for the global micro-batch from a generator seeded alike on every process and sliced
with :meth:`Engine.shard`, so an N-process run reproduces a 1-process run up to float summation order.

One resume policy (:meth:`Engine.resume`): no checkpoint -> start from step 0; a checkpoint written under
the same settings -> resume from it; under different settings -> :class:`~cxrgen.errors.InputError` naming
the differing keys and the folder to delete to start over. Checkpoints are :mod:`cxrgen.checkpoint` folders
(atomic, safetensors, RNG states incl. CUDA's), written by the main process only from the unwrapped models
while the others wait. The process count is not a setting: a 2-process checkpoint resumes in 1 process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.utils.data

from cxrgen.checkpoint import has_checkpoint, load_checkpoint, read_checkpoint_state, save_checkpoint
from cxrgen.errors import InputError

log = logging.getLogger(__name__)

MIXED_PRECISION = ("no", "fp16", "bf16")
SETTINGS_KEY = "settings"  # where a checkpoint's ``extra`` records the settings it was written under


@dataclass
class RuntimeConfig:
    """How a trainer runs (not what it learns).

    mixed_precision: "no" | "fp16" | "bf16" (accelerate autocast + grad scaling for fp16).
    gradient_accumulation_steps: micro-batches per optimizer step; the global batch stays the config's batch
    size (per-process micro-batch = global / (processes x accumulation)). cpu: force the CPU even where an
    accelerator is present. num_workers: DataLoader worker processes (0 = load in the training process, the
    deterministic default of the CPU miniature).
    """

    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    cpu: bool = False
    num_workers: int = 0

    @classmethod
    def from_dict(cls, d: Mapping | None, where: str = "runtime") -> "RuntimeConfig":
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise InputError(f"unknown {where} keys {unknown}; expected some of {names}")
        cfg = cls(**d)
        cfg.validate(where)
        return cfg

    @classmethod
    def split(cls, settings: Mapping | None, where: str = "runtime") -> tuple["RuntimeConfig", dict]:
        """A trainer's settings with the runtime keys (mixed_precision, gradient_accumulation_steps, cpu,
        num_workers) taken out: ``(RuntimeConfig, the other settings)``."""
        rest = dict(settings or {})
        names = [f.name for f in dataclasses.fields(cls)]
        return cls.from_dict({k: rest.pop(k) for k in names if k in rest}, where), rest

    def validate(self, where: str = "runtime") -> None:
        if self.mixed_precision not in MIXED_PRECISION:
            raise InputError(f"{where}.mixed_precision={self.mixed_precision!r}; expected one of {list(MIXED_PRECISION)}")
        for key, low in (("gradient_accumulation_steps", 1), ("num_workers", 0)):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise InputError(f"{where}.{key}={v!r}; expected an integer >= {low}")
        if not isinstance(self.cpu, bool):
            raise InputError(f"{where}.cpu={self.cpu!r}; expected true or false")


def make_accelerator(mixed_precision: str = "no", gradient_accumulation_steps: int = 1, cpu: bool = False):
    """A fresh ``Accelerator`` with ``split_batches=True`` (see the module docstring).

    accelerate keeps a process-wide state; it is reset so each run can pick its own mixed-precision mode.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=int(gradient_accumulation_steps),
                       cpu=bool(cpu), dataloader_config=DataLoaderConfiguration(split_batches=True))


def _start_over_folder(ckpt: Path) -> Path:
    """The folder whose deletion starts a run over: the ``<out>.partial`` folder holding the checkpoint."""
    for p in (ckpt, *ckpt.parents):
        if p.name.endswith(".partial"):
            return p
    return ckpt


def settings_difference(saved: Mapping, now: Mapping) -> list[str]:
    """The keys whose values differ between two settings dicts (missing counts as different)."""
    return sorted(k for k in set(saved) | set(now) if saved.get(k, "<missing>") != now.get(k, "<missing>"))


class Engine:
    """One run's accelerate state, device, batch split and checkpoint policy (see the module docstring)."""

    def __init__(self, runtime: RuntimeConfig | None = None):
        self.runtime = runtime or RuntimeConfig()
        self.runtime.validate()
        self.accelerator = make_accelerator(self.runtime.mixed_precision, self.runtime.gradient_accumulation_steps,
                                            self.runtime.cpu)

    # -- where and how many ----------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def num_processes(self) -> int:
        return self.accelerator.num_processes

    @property
    def process_index(self) -> int:
        return self.accelerator.process_index

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def gradient_accumulation_steps(self) -> int:
        return self.runtime.gradient_accumulation_steps

    def micro_batch(self, global_batch: int, what: str = "batch_size") -> int:
        """Items per optimizer micro-step summed over processes: ``global_batch / accumulation``; it must split
        evenly over the processes (each gets ``micro_batch / processes``)."""
        ga, n = self.gradient_accumulation_steps, self.num_processes
        if global_batch % (ga * n):
            raise InputError(f"{what}={global_batch} does not split over {n} process(es) x {ga} accumulation "
                             f"step(s); expected a multiple of {ga * n}")
        return global_batch // ga

    def per_process_batch(self, global_batch: int, what: str = "batch_size") -> int:
        """``global_batch / (processes x accumulation)``: the items one process sees per micro-step."""
        return self.micro_batch(global_batch, what) // self.num_processes

    def local_rows(self, n: int) -> slice:
        """This process's contiguous slice of a global micro-batch of ``n`` rows (all of them in 1 process)."""
        k, r = divmod(n, self.num_processes)
        if r:
            raise InputError(f"a batch of {n} rows does not split over {self.num_processes} processes; expected a "
                             f"multiple of {self.num_processes}")
        return slice(self.process_index * k, (self.process_index + 1) * k)

    def shard(self, x):
        """This process's rows of ``x`` (a tensor or sequence whose first axis is the global micro-batch)."""
        return x[self.local_rows(len(x))]

    # -- accelerate ------------------------------------------------------------------------------
    def prepare(self, *objects):
        """``accelerator.prepare``: modules to the device (DDP-wrapped in distributed runs), optimizer, LR
        scheduler and DataLoaders (sharded per process)."""
        return self.accelerator.prepare(*objects)

    def unwrap(self, model):
        """The module under accelerate's wrappers (DDP, compile); objects that only have a ``state_dict`` as is."""
        return self.accelerator.unwrap_model(model) if isinstance(model, torch.nn.Module) else model

    def dataloader(self, dataset, global_batch: int, *, shuffle: bool, seed: int, drop_last: bool = False,
                   collate_fn=None, what: str = "batch_size", sampler=None):
        """A prepared DataLoader over ``dataset`` yielding this process's share of each global micro-batch.

        The loader's own batch is the micro-batch summed over processes (``global_batch / accumulation``);
        accelerate splits it. Shuffling uses a ``torch.Generator`` seeded with ``seed`` (same order on every
        process and every run), or ``sampler`` when given (e.g. :class:`EpochPermutation` over a trainer's own
        generator); workers are ``runtime.num_workers``.
        """
        from torch.utils.data import DataLoader

        micro = self.micro_batch(global_batch, what)
        gen = torch.Generator().manual_seed(int(seed))
        loader = DataLoader(dataset, batch_size=micro, shuffle=shuffle and sampler is None, sampler=sampler,
                            drop_last=drop_last, generator=gen,
                            num_workers=self.runtime.num_workers, collate_fn=collate_fn,
                            persistent_workers=self.runtime.num_workers > 0)
        return self.accelerator.prepare(loader)

    def mean(self, value) -> float:
        """The mean of a per-process scalar over all processes (a float; the value itself in 1 process)."""
        t = torch.as_tensor(value, dtype=torch.float32, device=self.device).detach().reshape(1)
        if self.num_processes > 1:
            t = self.accelerator.reduce(t, reduction="mean")
        return float(t)

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """All-reduce (mean) the gradients of ``params`` across processes, once per optimizer step.

        For trainers whose trained modules are called inside a closure rather than as one prepared (DDP)
        module, e.g. an embedding row of a frozen text encoder; a no-op in 1 process.
        """
        if self.num_processes == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= self.num_processes
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    # -- checkpoints: the one resume policy ------------------------------------------------------
    def resume(self, ckpt: str | os.PathLike, settings: Mapping, models: Mapping[str, torch.nn.Module],
               optimizer: Any = None, lr_scheduler: Any = None,
               generators: Mapping[str, torch.Generator] | None = None) -> dict | None:
        """Restore a checkpoint written under ``settings`` into the (unwrapped) models, optimizer, scheduler,
        RNG states and the fp16 grad scaler; return its state (``step``, ``extra``), or None when there is none.

        Raises InputError when the checkpoint was written under different settings, naming the keys.
        """
        ckpt = Path(ckpt)
        if not has_checkpoint(ckpt):
            return None
        saved = read_checkpoint_state(ckpt)["extra"].get(SETTINGS_KEY)
        now = _plain(settings)
        if saved != now:
            diff = settings_difference(saved or {}, now)
            detail = ", ".join(f"{k}: {(saved or {}).get(k, '<missing>')!r} -> {now.get(k, '<missing>')!r}"
                               for k in diff)
            raise InputError(f"checkpoint {ckpt} was written with different settings ({detail}); expected the same "
                             f"settings to resume, or delete {_start_over_folder(ckpt)} to start over")
        state = load_checkpoint(ckpt, {k: self.unwrap(m) for k, m in models.items()}, optimizer, lr_scheduler,
                                generators)
        scaler = state["extra"].get("grad_scaler")
        if self.accelerator.scaler is not None and scaler:
            self.accelerator.scaler.load_state_dict(scaler)
        log.info("resumed from step %d (%s)", int(state["step"]), ckpt)
        return state

    def save(self, ckpt: str | os.PathLike, settings: Mapping, models: Mapping[str, torch.nn.Module],
             optimizer: Any = None, lr_scheduler: Any = None, step: int = 0,
             generators: Mapping[str, torch.Generator] | None = None, extra: Mapping | None = None) -> Path:
        """Write a checkpoint (atomically, main process only, unwrapped models) recording ``settings``; every
        process waits until it is on disk."""
        ckpt = Path(ckpt)
        self.accelerator.wait_for_everyone()
        if self.is_main:
            data = {**(extra or {}), SETTINGS_KEY: _plain(settings)}
            if self.accelerator.scaler is not None:
                data["grad_scaler"] = self.accelerator.scaler.state_dict()
            save_checkpoint(ckpt, {k: self.unwrap(m) for k, m in models.items()}, optimizer, lr_scheduler, step,
                            generators, extra=data)
        self.accelerator.wait_for_everyone()
        return ckpt


def _plain(settings: Mapping) -> dict:
    """Settings as stored in a checkpoint (tuples as lists, so a reloaded dict compares equal)."""
    return {str(k): (list(v) if isinstance(v, tuple) else v) for k, v in dict(settings).items()}


class EpochPermutation(torch.utils.data.Sampler):
    """Shuffled order of ``n`` items: one ``torch.randperm(n, generator=generator)`` per pass, drawn when the pass
    starts. Unlike ``RandomSampler`` (which draws a second, empty permutation when a pass ends) it leaves the
    generator exactly where a plain ``randperm`` loop would, so a trainer may draw its augmentation from the same
    stream; accelerate synchronises ``generator`` across processes."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = int(n), generator

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=self.generator).tolist())

    def __len__(self) -> int:
        return self.n

# ------------------------------------------------------------------------------------------------ inference device
# Inference paths (feature extraction, classifiers, VAE study, sampling, text encoders, Cheff evaluation) ask
# default_device() where to put their modules; outputs come back to the CPU, so the CPU miniature's numbers do not
# depend on it. Precedence: an explicit ``requested`` device (a config value or an argument; None or "auto" defer),
# the CXRGEN_DEVICE environment variable (e.g. cpu, cuda, cuda:1), then CUDA if torch sees it (cuda:<LOCAL_RANK>
# under a distributed launcher, else cuda:0), else the CPU.
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
