"""FLOPs of a job's optimizer steps, measured while it runs (the full-size rehearsal's FLOPs/step column).

:func:`measure_step_flops` runs a block under :class:`torch.utils.flop_counter.FlopCounterMode` and notes the running
FLOP total after every ``optimizer.step()`` of any optimizer (a global step post-hook), so the FLOPs of one training
step are the difference between two consecutive notes: forward, backward and everything else the trainer does per step
(e.g. a VAE encode), counted on the real tensors of the real trainer. FlopCounterMode counts matrix products,
convolutions and attention, not normalisations, activations or the optimizer's element-wise updates.

In a job of N processes (:mod:`cxrgen.launch`) every process counts its own share and only rank 0 writes: the
engine splits each global batch evenly, so a step's FLOPs are rank 0's times N (``flops_per_step``,
``total_flops``; rank 0's own in ``rank0_flops_per_step`` / ``rank0_total_flops``, with ``processes``).

On a CUDA machine the record also holds the block's peak GPU memory (``peak_gpu_mb``: rank 0's device,
``torch.cuda.max_memory_allocated`` after its peak statistics were reset when the block began; ``peak_gpu_reserved_mb``:
what the caching allocator held) and the device's name; on the CPU these are absent.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from cxrgen.io import write_text_atomic

#: environment variable naming a folder: when set, every Snakemake script measures its steps into a JSON file there
#: (``cxrgen.workflow.script_context``; the rehearsal sets it)
ENV_VAR = "CXRGEN_STEP_FLOPS_DIR"


@contextmanager
def measure_step_flops(path: str | os.PathLike, info: dict | None = None):
    """Count FLOPs inside the block; write ``{**info, total_flops, step_totals, flops_per_step}`` to ``path`` (JSON)
    when it ends, also on failure (then with ``"failed": true``); rank 0 only in a job of several processes (see
    the module docstring). ``flops_per_step`` is the last step's FLOPs (the difference of the last two step
    totals), None with fewer than two steps."""
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.utils.flop_counter import FlopCounterMode

    from cxrgen.launch import current_rank

    rank = current_rank()
    gpu = _gpu_memory_meter() if rank.rank == 0 else dict  # other ranks: no context on device 0

    counter = FlopCounterMode(display=False)
    step_totals: list[int] = []
    handle = register_optimizer_step_post_hook(lambda *_: step_totals.append(int(counter.get_total_flops())))
    failed = True
    try:
        with counter:
            yield step_totals
        failed = False
    finally:
        handle.remove()
        per_step = step_totals[-1] - step_totals[-2] if len(step_totals) >= 2 else None
        total = int(counter.get_total_flops())
        record = {**(info or {}), "total_flops": total * rank.world, "step_totals": step_totals,
                  "flops_per_step": None if per_step is None else per_step * rank.world, "failed": failed}
        record.update(gpu())
        if rank.world > 1:
            record.update(processes=rank.world, rank0_flops_per_step=per_step, rank0_total_flops=total)
        if rank.rank == 0:
            write_text_atomic(Path(path), json.dumps(record, indent=2))


def _gpu_memory_meter():
    """Reset the CUDA device's (rank 0's: the first visible) peak memory statistics; returns a function that reads
    them as a dict (``peak_gpu_mb``, ``peak_gpu_reserved_mb``, ``gpu``), or one that returns ``{}`` without CUDA."""
    import torch

    cuda = torch.cuda
    if not cuda.is_available():
        return dict
    device = 0
    cuda.reset_peak_memory_stats(device)

    def read() -> dict:
        return {"peak_gpu_mb": cuda.max_memory_allocated(device) / 2**20,
                "peak_gpu_reserved_mb": cuda.max_memory_reserved(device) / 2**20, "gpu": cuda.get_device_name(device)}

    return read
