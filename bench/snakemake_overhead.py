"""Snakemake planning overhead: wall seconds of a dry run (``snakemake -n --quiet rules``, best of ``repeats``).

* Always: the default config and ``configs/smoke.yaml`` planned from scratch in an empty scratch copy of the
  workflow files (:data:`WORKFLOW_FILES` copied to a temporary folder, so nothing is written into the checkout):
  every job of the DAG is to be run, so this is the full planning cost (config validation, DAG, ``all_targets``).
* With ``workdir``: the same dry run inside a folder holding an already *completed* run (its Snakefile and
  ``results/``), where Snakemake must stat every output and compare code / parameter / input records to find
  that nothing is to be done. Without one the figure is skipped with a message.

The command runs with the working directory's ``profiles/default`` workflow profile, as a user's would.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO_ROOT, Row

WORKFLOW_FILES = ("Snakefile", "config.yaml", "rules", "scripts", "schemas", "configs", "report", "profiles", "envs")
COMMAND = ["-n", "--quiet", "rules"]


def snakemake_exe() -> str:
    exe = Path(sys.executable).with_name("snakemake")
    return str(exe) if exe.is_file() else "snakemake"


def scratch_copy(dest: Path, root: Path = REPO_ROOT) -> Path:
    for name in WORKFLOW_FILES:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
        elif src.is_file():
            shutil.copy2(src, dest / name)
    return dest


def dry_run(workdir: Path, extra_args=(), repeats: int = 3) -> tuple[float, int | None]:
    """(best wall seconds, number of jobs planned) of ``snakemake -n --quiet rules`` in ``workdir``."""
    cmd = [snakemake_exe(), *COMMAND, *extra_args]
    best, jobs = float("inf"), None
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        res = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
        elapsed = time.perf_counter() - t
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed in {workdir} (rc {res.returncode}):\n"
                               f"{(res.stdout + res.stderr)[-2000:]}")
        best = min(best, elapsed)
        m = re.search(r"^total\s+(\d+)\s*$", res.stdout + res.stderr, flags=re.M)
        jobs = int(m.group(1)) if m else 0  # no job stats: nothing to be done
    return best, jobs


def run(workdir: str | Path | None = None, extra_args=(), repeats: int = 3, log=print) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="cxrgen-bench-smk-") as tmp:
        scratch = scratch_copy(Path(tmp))
        for label, args in (("default config", ()), ("configs/smoke.yaml", ("--configfile", "configs/smoke.yaml"))):
            secs, jobs = dry_run(scratch, args, repeats)
            log(f"[snakemake] dry run, {label}, empty folder: {secs:.2f} s ({jobs} jobs)")
            rows.append(Row("snakemake", f"dry run from scratch, {label}", "s", secs, None,
                            lower_is_better=True, note=f"{jobs} jobs planned; target: a few seconds"))
    if workdir is None:
        msg = "skipped: pass --workdir DIR of a completed run"
        log(f"[snakemake] dry run on a completed workflow {msg}")
        rows.append(Row("snakemake", "dry run in --workdir (a completed run)", "s", None, None, note=msg))
    else:
        secs, jobs = dry_run(Path(workdir), tuple(extra_args), repeats)
        log(f"[snakemake] dry run, completed workflow in {workdir}: {secs:.2f} s ({jobs} jobs left)")
        rows.append(Row("snakemake", "dry run in --workdir (a completed run)", "s", secs, None, lower_is_better=True,
                        note=f"{workdir}: {jobs} jobs left to run; target: a few seconds"))
    return rows
