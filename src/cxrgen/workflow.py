"""Glue between Snakemake scripts and the package: logging, threads, seeds."""

from __future__ import annotations

import logging
import os
import random
import signal
import sys
from contextlib import contextmanager

import numpy as np

from cxrgen import launch
from cxrgen.render.tables import CAPTION_NOTES


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # torch is optional for data-only rules
        pass


def _leakage_guard(snakemake):
    """Run the rule's patient-overlap checks (``params.leakage``, rules/common.smk ``manifest_checks``) and let its
    tables' captions state the overlaps the config allows; returns the caption-notes token to reset."""
    from cxrgen.data.leakage import caption_notes, check_sample_dirs

    params = getattr(snakemake, "params", None)
    checks = params.get("leakage") if hasattr(params, "get") else None
    if checks:
        check_sample_dirs(checks)
    if snakemake.config.get("allow_overlap"):
        return CAPTION_NOTES.set(caption_notes(snakemake.config))
    return None


@contextmanager
def _step_flops(snakemake, log_path):
    """Measure the job's FLOPs per optimizer step when the rehearsal asks for it (cxrgen.flop_meter)."""
    from cxrgen.flop_meter import ENV_VAR, measure_step_flops

    folder = os.environ.get(ENV_VAR)
    if not folder:
        yield
        return
    name = (log_path or snakemake.rule).replace(os.sep, "__")
    info = {"rule": snakemake.rule, "wildcards": dict(snakemake.wildcards.items()), "log": log_path,
            "output": [str(o) for o in snakemake.output]}
    with measure_step_flops(os.path.join(folder, f"{name}.json"), info):
        yield


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


@contextmanager
def script_context(snakemake):
    """Redirect stdout/stderr into the rule's log, cap torch threads to the rule's, seed from config, check the
    rule's samples for shared patients (cxrgen.data.leakage).

    A rule with ``resources: gpu=N`` > 1 runs as N processes (:mod:`cxrgen.launch`): in the process Snakemake
    started, the block does not run; it starts the N workers, which run the block (each one rank, all writing to
    the same log), and ends the script with their exit status.
    """
    worker = launch.current_rank() if os.environ.get(launch.LAUNCHED) else None
    log_path = snakemake.log[0] if len(snakemake.log) else None
    # workers (and a multi-node job's per-node tasks) inherit the log file as stdout/stderr from the job's process
    inherits_log = bool(os.environ.get(launch.LAUNCHED) or os.environ.get(launch.NODE_TASK))
    stream = open(log_path, "w", buffering=1) if log_path and not inherits_log else None
    old_out, old_err = sys.stdout, sys.stderr
    if stream:
        sys.stdout = sys.stderr = stream
    prefix = f"[rank {worker.rank}/{worker.world}] " if worker else ""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format=f"%(asctime)s {prefix}%(name)s %(levelname)s %(message)s", force=True)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # matplotlib's PDF font subsetting logs every glyph
    placement = {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_JOB_PARTITION", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES") if k in os.environ}
    if placement:  # where a cluster job ran and which accelerators it was given
        logging.getLogger("cxrgen").info("placement %s", " ".join(f"{k}={v}" for k, v in placement.items()))
    if worker:
        logging.getLogger("cxrgen").info("process %s", worker)
    # SIGTERM (Snakemake or SLURM stopping the job) unwinds like Ctrl-C, so every ``finally`` runs: atomic writes
    # delete their temporaries instead of leaving them beside the outputs
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        status = launch.relaunch(snakemake, stream)
        if status is not None:
            if status:
                raise RuntimeError(f"rule {snakemake.rule}: its {launch.processes(snakemake)} processes exited with "
                                   f"status {status}; see the ranks' messages above")
            logging.getLogger("cxrgen").info("all %d processes finished", launch.processes(snakemake))
            raise SystemExit(0)  # the workers ran the block; nothing left for this process
        threads = max(1, int(getattr(snakemake, "threads", 1)))
        if worker:  # the job's threads are shared by the processes on this node
            threads = max(1, threads // int(os.environ.get("LOCAL_WORLD_SIZE", worker.world)))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))  # read by torch at import
        if "torch" in sys.modules:  # already imported: cap it now (data-only rules never pay for the import)
            sys.modules["torch"].set_num_threads(threads)
        seed_everything(int(snakemake.config.get("seed", 0)))
        notes = _leakage_guard(snakemake)
        with _step_flops(snakemake, log_path):
            yield logging.getLogger(f"cxrgen.{snakemake.rule}")
        if notes is not None:
            CAPTION_NOTES.reset(notes)
        if worker:
            launch.finish_worker(snakemake.rule, worker)
    except SystemExit as stop:
        if stop.code:
            logging.getLogger("cxrgen").error("rule %s exited with status %s", snakemake.rule, stop.code)
        raise
    except BaseException:
        logging.getLogger("cxrgen").exception("rule %s failed", snakemake.rule)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        sys.stdout, sys.stderr = old_out, old_err
        if stream:
            stream.close()
