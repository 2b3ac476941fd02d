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

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.utils.data

from cxrgen.checkpoint import has_checkpoint, load_checkpoint, read_checkpoint_state, save_checkpoint
from cxrgen.errors import InputError
from cxrgen.runtime import MIXED_PRECISION, RuntimeConfig  # noqa: F401  (re-exported: trainers import them from here)

log = logging.getLogger(__name__)

SETTINGS_KEY = "settings"  # where a checkpoint's ``extra`` records the settings it was written under


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


class SampledBatches(torch.utils.data.Sampler):
    """Index batches drawn with replacement: batch k is the k-th ``torch.randint(0, n, (batch_size,))`` of a
    generator seeded with ``seed`` (every batch full whatever the data size). Starting at ``start`` replays the
    earlier draws, so a resumed run continues the same stream without saving the generator, and DataLoader
    prefetching cannot put a checkpoint's generator ahead of the batches actually trained on.

    ``generator`` instead draws from a generator the trainer shares (e.g. with its augmentation, so draws keep the
    order of one index-then-augment loop); the stream then depends on what else drew from it, so no replay."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, total: int = 0, start: int = 0,
                 generator: torch.Generator | None = None):
        if n < 1:
            raise InputError("no training items; expected at least one")
        if generator is not None and start:
            raise InputError(f"start={start} with a shared generator; expected 0 (a shared stream cannot be replayed)")
        self.n, self.batch_size, self.seed, self.total, self.start = int(n), int(batch_size), int(seed), int(total), int(start)
        self.generator = generator
        self.drop_last = False  # read by accelerate when it shards the batches

    def __iter__(self):
        gen = self.generator if self.generator is not None else torch.Generator().manual_seed(self.seed)
        for k in range(self.total):
            idx = torch.randint(0, self.n, (self.batch_size,), generator=gen)
            if k >= self.start:
                yield idx.tolist()

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def check_settings(where: str | os.PathLike, saved: Mapping | None, now: Mapping) -> None:
    """The resume policy's test: raise InputError naming every key whose value differs between the settings a
    saved state (``where``: a checkpoint or a finished phase's file) was written under and ``now``."""
    saved, now = _plain(saved or {}), _plain(now)
    if saved != now:
        detail = ", ".join(f"{k}: {saved.get(k, '<missing>')!r} -> {now.get(k, '<missing>')!r}"
                           for k in settings_difference(saved, now))
        raise InputError(f"checkpoint {where} was written with different settings ({detail}); expected the same "
                         f"settings to resume, or delete {_start_over_folder(Path(where))} to start over")


class Engine:
    """One run's accelerate state, device, batch split and checkpoint policy (see the module docstring)."""

    def __init__(self, runtime: RuntimeConfig | None = None):
        self.runtime = runtime or RuntimeConfig()
        self.runtime.validate()
        self.accelerator = make_accelerator(self.runtime.mixed_precision, self.runtime.gradient_accumulation_steps,
                                            self.runtime.cpu)
        if self.runtime.mixed_precision != "no" and not self.accelerator.native_amp:
            # accelerate then trains in fp32 without a word (fp16 on a CPU): a paper config's timing or memory
            # measured here would silently not be the mixed-precision one
            log.warning("mixed_precision=%r is not available on %s; this run trains in fp32",
                        self.runtime.mixed_precision, self.device)

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

    def micro_rows(self, n: int, what: str = "batch") -> list[slice]:
        """This process's rows of each micro-step of a global batch of ``n`` rows drawn at once: one slice of
        ``n / (accumulation x processes)`` rows per micro-step (micro-step k, process p: chunk ``k * N + p``)."""
        ga, procs = self.gradient_accumulation_steps, self.num_processes
        c = self.per_process_batch(n, what)
        return [slice((k * procs + self.process_index) * c, (k * procs + self.process_index + 1) * c) for k in range(ga)]

    def shard(self, x):
        """This process's rows of ``x`` (a tensor or sequence whose first axis is the global micro-batch)."""
        return x[self.local_rows(len(x))]

    # -- accelerate ------------------------------------------------------------------------------
    def prepare(self, *objects):
        """``accelerator.prepare``: modules to the device (DDP-wrapped in distributed runs; BatchNorm layers
        synchronised, :meth:`sync_batchnorm`), optimizer, LR scheduler and DataLoaders (sharded per process)."""
        objects = tuple(self.sync_batchnorm(o) if isinstance(o, torch.nn.Module) else o for o in objects)
        return self.accelerator.prepare(*objects)

    def sync_batchnorm(self, model: torch.nn.Module) -> torch.nn.Module:
        """In N > 1 processes, BatchNorm layers normalised by the statistics of the global batch
        (``torch.nn.SyncBatchNorm``), as one process sees it; otherwise each would use its 1/N share and a model
        trained on N devices would differ from one trained on one. The layers keep their parameters (the optimizer
        built on them stays valid). torch has no SyncBatchNorm for CPU processes (no kernels; DDP refuses it on the
        CPU): there BatchNorm stays per process, with a warning."""
        if self.num_processes == 1 or not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                                              for m in model.modules()):
            return model
        if self.device.type == "cpu":
            log.warning("%s: BatchNorm statistics are per process in this %d-process CPU run (torch has no CPU "
                        "SyncBatchNorm); each normalises over its %d-th of the global batch", type(model).__name__,
                        self.num_processes, self.num_processes)
            return model
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def unwrap(self, model):
        """The module under accelerate's wrappers (DDP, compile); objects that only have a ``state_dict`` as is."""
        return self.accelerator.unwrap_model(model) if isinstance(model, torch.nn.Module) else model

    def place(self, *modules: torch.nn.Module):
        """Move modules to the device without DDP wrapping: for modules that are called through several methods
        (a VAE's ``encode``/``decode``) or frozen; their gradients, if any, go through
        :meth:`average_gradients`. Returns the module, or a tuple of them."""
        for m in modules:
            m.to(self.device)
        return modules[0] if len(modules) == 1 else modules

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
        if self.num_processes == 1:
            return float(value.detach() if torch.is_tensor(value) else value)
        t = torch.as_tensor(value, dtype=torch.float64).detach().reshape(1).to(self.device)
        return float(self.accelerator.reduce(t, reduction="mean"))

    def average_gradients(self, params: Iterable[torch.nn.Parameter]) -> None:
        """All-reduce (mean) the gradients of ``params`` across processes, once per optimizer step.

        For trainers whose trained modules are called inside a closure rather than as one prepared (DDP)
        module, e.g. an embedding row of a frozen text encoder; a no-op in 1 process.
        """
        if self.num_processes == 1 or not self.accelerator.sync_gradients:  # accumulating: sync on the last micro-step
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

    @torch.no_grad()
    def predict(self, fn: Callable[[Any], torch.Tensor], dataset, batch_size: int = 64, collate_fn=None) -> torch.Tensor:
        """``fn(batch)`` (a tensor with one row per item) over all of ``dataset`` in order, the work shared by the
        processes: process p takes the p-th of N contiguous blocks of items, in batches of ``batch_size``, and
        the blocks are gathered so every process returns all rows, on the CPU, in dataset order. In 1 process:
        the batches in turn."""
        from torch.utils.data import DataLoader, Subset

        n, procs = len(dataset), self.num_processes
        block = -(-n // procs)
        lo, hi = min(self.process_index * block, n), min((self.process_index + 1) * block, n)
        loader = DataLoader(Subset(dataset, range(lo, hi)) if procs > 1 else dataset, batch_size=int(batch_size),
                            shuffle=False, num_workers=self.runtime.num_workers, collate_fn=collate_fn,
                            generator=torch.Generator().manual_seed(0))
        rows = [fn(batch).cpu() for batch in loader]
        if procs > 1:
            blocks = [None] * procs
            torch.distributed.all_gather_object(blocks, torch.cat(rows) if rows else None)
            rows = [b for b in blocks if b is not None]
        if not rows:
            raise InputError("nothing to predict: an empty dataset; expected at least one item")
        return torch.cat(rows)

    def sequential_loader(self, dataset, batch_size: int):
        """All of ``dataset`` in order, in batches, in this process (e.g. to fill a cache on the main process),
        with the runtime's workers and a generator of its own, so iterating it leaves torch's RNG untouched."""
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=int(batch_size), shuffle=False, num_workers=self.runtime.num_workers,
                          generator=torch.Generator().manual_seed(0))

    def drawn_loader(self, dataset, batch_size: int, batches: int, generator: torch.Generator, collate_fn=None):
        """``batches`` batches of ``batch_size`` items drawn with replacement from ``generator``, a stream the
        trainer shares (:class:`SampledBatches`), loaded in this process without workers: the sampler draws a
        batch's indices, then ``collate_fn`` may draw that batch's augmentation or noise from the same generator,
        so the draws keep the order of one index-then-augment loop. Not prepared: every process gets the whole
        batch (``prepare`` it to split it)."""
        from torch.utils.data import DataLoader

        sampler = SampledBatches(len(dataset), batch_size, total=batches, generator=generator)
        # its own generator: a DataLoader iterator draws a base seed from it (else from torch's global RNG)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=0,
                          generator=torch.Generator().manual_seed(0))

    def sampled_loader(self, dataset, global_batch: int, seed: int, steps: int, start_step: int = 0,
                       collate_fn=None, what: str = "batch_size"):
        """A prepared DataLoader of ``steps`` optimizer steps' micro-batches drawn with replacement
        (:class:`SampledBatches`), from optimizer step ``start_step`` on; each process gets its slice."""
        from torch.utils.data import DataLoader

        ga = self.gradient_accumulation_steps
        sampler = SampledBatches(len(dataset), self.micro_batch(global_batch, what), seed, steps * ga, start_step * ga)
        # its own generator: a DataLoader iterator draws a base seed from it (else from torch's global RNG, which
        # would shift every later draw, and differently in a resumed run)
        loader = DataLoader(dataset, batch_sampler=sampler, num_workers=self.runtime.num_workers,
                            collate_fn=collate_fn, generator=torch.Generator().manual_seed(int(seed)))
        return self.accelerator.prepare(loader)

    def mean_dict(self, values: Mapping[str, float]) -> dict[str, float]:
        """Per-process scalars averaged over the processes in one all-reduce (as is in 1 process)."""
        if self.num_processes == 1 or not values:
            return {k: float(v) for k, v in values.items()}
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self.device)
        t = self.accelerator.reduce(t, reduction="mean")
        return dict(zip(keys, map(float, t.tolist())))

    def global_draw(self, draw: Callable[[int], torch.Tensor], local_n: int) -> torch.Tensor:
        """``draw(global_n)`` for the whole global micro-batch, this process's rows kept, on the device.

        Every process draws the same numbers (their RNGs are seeded alike), so per-item noise, timesteps or
        crops do not depend on the process count; in 1 process this is ``draw(local_n)``."""
        return self.shard(draw(local_n * self.num_processes)).to(self.device)

    def backward(self, loss: torch.Tensor) -> None:
        """``accelerator.backward`` (grad scaling under fp16, loss / accumulation steps)."""
        self.accelerator.backward(loss)

    def run_steps(self, step_fn: Callable[[int, Any], Mapping[str, float]], batches: Callable[[int], Iterable],
                  steps: int, models: Mapping[str, torch.nn.Module], optimizer: Any, checkpoint_dir, settings: Mapping,
                  checkpoint_every: int = 500, desc: str = "train", progress: bool = True,
                  stop_after: int | None = None, lr_scheduler: Any = None,
                  generators: Mapping[str, torch.Generator] | None = None) -> list[dict]:
        """Run (or resume, by :meth:`resume`'s policy) ``steps`` optimizer steps; return the per-step log rows.

        ``batches(start_step)`` yields the micro-batches from optimizer step ``start_step`` on (e.g.
        :meth:`sampled_loader`); ``step_fn(step, micro_batch)`` computes the loss, calls :meth:`backward` and
        steps its (prepared) optimizer(s), returning floats to log -- it runs under ``accelerator.accumulate``
        and ``autocast``, so with accumulation the optimizer steps once per ``gradient_accumulation_steps``
        calls. Logged values are averaged over micro-batches and processes. A checkpoint is written every
        ``checkpoint_every`` steps, at the end and when ``stop_after`` steps of this call are done (a simulated
        preemption). ``checkpoint_dir`` None: no checkpoints.
        """
        import time

        from cxrgen.progress import progress_bar

        if steps < 1:
            raise InputError(f"{desc}: steps={steps}; expected a positive integer")
        ckpt = Path(checkpoint_dir) if checkpoint_dir else None
        start, rows = 0, []
        state = self.resume(ckpt, settings, models, optimizer, lr_scheduler, generators) if ckpt else None
        if state is not None:
            start, rows = int(state["step"]), list(state["extra"].get("log", []))
        for m in models.values():
            m.train()
        ga = self.gradient_accumulation_steps
        micro_batches = iter(batches(start))
        t0 = time.perf_counter() - (rows[-1]["seconds"] if rows else 0.0)
        bar = progress_bar(range(start, steps), desc=desc, disable=not (progress and self.is_main), initial=start, total=steps)
        done_here = 0
        for step in bar:
            sums: dict[str, float] = {}
            for _ in range(ga):
                batch = next(micro_batches)
                with self.accelerator.accumulate(*models.values()), self.accelerator.autocast():
                    parts = step_fn(step, batch)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v) / ga
            logged = self.mean_dict(sums)
            rows.append({"step": step + 1, **logged, "seconds": time.perf_counter() - t0})
            bar.set_postfix({k: f"{v:.4f}" for k, v in list(logged.items())[:3]})
            done_here += 1
            last = step + 1 == steps or (stop_after is not None and done_here >= stop_after)
            if ckpt is not None and ((step + 1) % checkpoint_every == 0 or last):
                self.save(ckpt, settings, models, optimizer, lr_scheduler, step + 1, generators, {"log": rows})
            if last:
                break
        for m in models.values():
            m.eval()
        return rows

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
        check_settings(ckpt, read_checkpoint_state(ckpt)["extra"].get(SETTINGS_KEY), settings)
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


def _plain(settings: Mapping, prefix: str = "") -> dict:
    """Settings as stored in a checkpoint: nested mappings flattened to dotted keys (so a difference names the
    field), tuples as lists (so a reloaded dict compares equal)."""
    out = {}
    for k, v in dict(settings).items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_plain(v, key + "."))
        else:
            out[key] = [_scalar(x) for x in v] if isinstance(v, (list, tuple)) else _scalar(v)
    return out


def _scalar(v):
    """A value a weights_only checkpoint can hold (paths and other objects as their text)."""
    if isinstance(v, (list, tuple)):
        return [_scalar(x) for x in v]
    return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)


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
