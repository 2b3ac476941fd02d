"""How a trainer runs (mixed precision, gradient accumulation, CPU switch, DataLoader workers), apart from
:mod:`cxrgen.engine` so that configs can be checked without importing torch (the workflow does so when it builds
its job graph)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from collections.abc import Mapping

from cxrgen.errors import InputError

MIXED_PRECISION = ("no", "fp16", "bf16")


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
    def from_dict(cls, d: Mapping | None, where: str = "runtime") -> RuntimeConfig:
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise InputError(f"unknown {where} keys {unknown}; expected some of {names}")
        cfg = cls(**d)
        cfg.validate(where)
        return cfg

    @classmethod
    def split(cls, settings: Mapping | None, where: str = "runtime") -> tuple[RuntimeConfig, dict]:
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
