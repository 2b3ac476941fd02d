"""Peak memory of a Cheff training stage against the size of its dataset: does it grow with the number of images?

    python bench/cheff_memory.py                          # autoencoder, 1,000 vs 10,000 images, batch 8, 3 steps
    python bench/cheff_memory.py --sizes 1000,10000,20000 --stage sdm --steps 5 --json mem.json

For each size: phantom chest images written as a generic image folder (a pool of rendered phantoms, each copy
shifted so that every file differs), unified by the workflow's own MaCheX stage (``run_machex``, at the miniature's
x_HR size), then the stage itself (``run_autoencoder`` / ``run_sdm`` / ``run_sr``, the functions the rules call, the
embedded default preset) for a few steps with the same batch, in a fresh process. Peak memory is sampled every
0.1 s over that process and its children (DataLoader workers): the sum of their PSS, which counts pages shared
between a process and its forked workers once. The process's own peak RSS (``getrusage``) is reported beside it.
A stage that streams its data from disk shows the same peak at every size; one that loads the split into memory
grows by about the split's bytes (uint8 images, plus any float copies) per image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
STAGES = ("autoencoder", "sdm", "sr")
POOL = 64  # distinct phantom renders; the dataset's files are shifted copies of them


def write_folder_dataset(root: Path, n: int, size: int, seed: int = 0) -> Path:
    """``n`` frontal phantom images (PNG) and ``labels.csv`` in the generic folder layout (adapter ``folder``)."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from cxrgen.data.phantom import generate_generic_chest_images

    pool = generate_generic_chest_images(min(POOL, n), size, seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        img = np.roll(pool[i % len(pool)], shift=i // len(pool) % size, axis=1)
        name = f"images/{i:06d}.png"
        Image.fromarray(img).save(root / name)
        rows.append({"image": name, "patient_id": f"p{i:06d}", "view": "PA",
                     "report": "FINDINGS: Lungs are clear. IMPRESSION: No acute cardiopulmonary process."})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def prepare(workdir: Path, n: int, hr_size: int, seed: int = 0) -> Path:
    """The MaCheX folder (what rule ``cheff_machex`` writes) for ``n`` phantom images; returns its path."""
    from cxrgen.studies.cheff import run_machex

    root = write_folder_dataset(workdir / "dataset", n, hr_size, seed)
    out = workdir / "machex"
    run_machex([{"adapter": "folder", "root": str(root), "name": f"phantom folder ({n})"}], True, hr_size, out,
               workdir / "table1", "miniature", seed=seed, max_train=None, max_test=8)
    return out


def _stage_config(stage: str, steps: int, batch_size: int, preset: str) -> dict:
    settings = {"steps": steps, "batch_size": batch_size, "checkpoint_every": 10**9}
    return {"preset": preset, stage: settings}


def run_stage(stage: str, machex: Path, out: Path, steps: int, batch_size: int, preset: str = "default") -> None:
    """One Cheff stage as its rule runs it (``sdm`` / ``sr`` first train the autoencoder they need, 1 step)."""
    from cxrgen.studies import cheff as stages
    from cxrgen.cheff.config import CheffConfig

    cfg = CheffConfig.from_dict(_stage_config(stage, steps, batch_size, preset))
    if stage == "autoencoder":
        stages.run_autoencoder(machex, cfg, out / "model", out / "model.partial")
    elif stage == "sdm":
        ae_cfg = CheffConfig.from_dict(_stage_config("autoencoder", 1, batch_size, preset))
        stages.run_autoencoder(machex, ae_cfg, out / "ae", out / "ae.partial")
        stages.run_sdm(machex, out / "ae", cfg, "unconditional", out / "model", out / "model.partial")
    else:
        stages.run_sr(machex, cfg, out / "model", out / "model.partial")


def _tree_pss(proc) -> int:
    """Bytes: PSS of ``proc`` and its descendants (RSS where PSS is unavailable)."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            info = p.memory_full_info()
            total += getattr(info, "pss", info.rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def measure(stage: str, machex: Path, workdir: Path, steps: int, batch_size: int, preset: str = "default",
            interval: float = 0.1) -> dict:
    """Run the stage in a fresh process; its peak tree PSS (sampled) and its own peak RSS, in MB."""
    import psutil

    report = workdir / "child.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", stage, "--machex", str(machex),
           "--out", str(workdir / "run"), "--steps", str(steps), "--batch-size", str(batch_size),
           "--preset", preset, "--report", str(report)]
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            peak = max(peak, _tree_pss(proc))
        except psutil.NoSuchProcess:
            break
        time.sleep(interval)
    output = child.communicate()[0]
    if child.returncode != 0:
        raise RuntimeError(f"{stage} on {machex} failed (exit {child.returncode}):\n{output[-4000:]}")
    own = json.loads(report.read_text())
    return {"peak_tree_pss_mb": peak / 2**20, "peak_rss_mb": own["maxrss_kb"] / 1024, "stage_s": own["seconds"],
            "wall_s": time.perf_counter() - t0}


def run(sizes=(1000, 10000), stage: str = "autoencoder", steps: int = 3, batch_size: int = 8, hr_size: int = 128,
        workdir: str | os.PathLike | None = None, preset: str = "default", log=print) -> list[dict]:
    """One row per size: images, MaCheX train images, peak tree PSS and own peak RSS of the stage (MB), seconds.
    ``preset``: the Cheff preset the stage uses (default = the miniature; smoke = toy, for tests)."""
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r}; expected one of {STAGES}")
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cxrgen-cheff-memory-"))
    rows = []
    try:
        for n in sizes:
            where = base / f"n{n}"
            shutil.rmtree(where, ignore_errors=True)
            t = time.perf_counter()
            machex = prepare(where, n, hr_size)
            import pandas as pd

            n_train = len(pd.read_csv(machex / "train.csv"))
            log(f"[memory] {n} images -> MaCheX train {n_train} ({time.perf_counter() - t:.0f} s to prepare)")
            m = measure(stage, machex, where, steps, batch_size, preset)
            log(f"[memory] {stage} on {n_train} images: peak tree PSS {m['peak_tree_pss_mb']:.0f} MB, own peak RSS "
                f"{m['peak_rss_mb']:.0f} MB ({m['stage_s']:.0f} s)")
            rows.append({"stage": stage, "images": n, "train_images": n_train, "batch_size": batch_size,
                         "steps": steps, **m})
            shutil.rmtree(where, ignore_errors=True)
    finally:
        if workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    return rows


def bench_rows(rows: list[dict]):
    """The run's figures as bench rows: the largest size (ours) against the smallest (reference), lower better."""
    from bench.common import Row

    small, large = rows[0], rows[-1]
    out = []
    for key, what in (("peak_tree_pss_mb", "peak PSS, process + workers"), ("peak_rss_mb", "peak RSS, main process")):
        growth = large[key] - small[key]
        per_k = growth / max(1, large["train_images"] - small["train_images"]) * 1000
        out.append(Row("memory", f"cheff {small['stage']} {what}", "MB", large[key], small[key],
                       f"same stage on {small['train_images']} images", lower_is_better=True,
                       note=f"{large['train_images']} vs {small['train_images']} train images, batch "
                            f"{small['batch_size']}: {growth:+.0f} MB ({per_k:+.1f} MB per 1k images)",
                       extra={"sizes": rows}))
    return out


def table(rows: list[dict]) -> str:
    from bench.common import markdown_table

    body = [[r["stage"], str(r["images"]), str(r["train_images"]), str(r["batch_size"]), str(r["steps"]),
             f"{r['peak_tree_pss_mb']:.0f}", f"{r['peak_rss_mb']:.0f}", f"{r['stage_s']:.0f}"] for r in rows]
    return markdown_table(["stage", "images", "MaCheX train", "batch", "steps", "peak PSS MB (tree)",
                           "peak RSS MB (main)", "stage s"], body)


def _child(a) -> int:
    t = time.perf_counter()
    run_stage(a.child, Path(a.machex), Path(a.out), a.steps, a.batch_size, a.preset)
    Path(a.report).write_text(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                                          "seconds": time.perf_counter() - t}))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000", help="comma-separated image counts (default %(default)s)")
    ap.add_argument("--stage", default="autoencoder", choices=STAGES)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--preset", default="default", choices=("default", "smoke"),
                    help="Cheff preset of the stage (default: the miniature's architecture)")
    ap.add_argument("--hr-size", type=int, default=128, help="x_HR size MaCheX stores (the miniature's, default 128)")
    ap.add_argument("--workdir", help="where the datasets go (default: a temporary folder, removed after)")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    ap.add_argument("--machex", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--report", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return _child(a)
    sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("MPLBACKEND", "Agg")
    sizes = [int(s) for s in a.sizes.split(",") if s.strip()]
    rows = run(sizes, a.stage, a.steps, a.batch_size, a.hr_size, a.workdir, a.preset,
               log=lambda *x: print(*x, file=sys.stderr, flush=True))
    print(f"# peak memory of the Cheff {a.stage} stage against dataset size (same batch {a.batch_size}, "
          f"{a.steps} steps; Cheff preset {a.preset}, x_HR {a.hr_size} px, phantom images)\n")
    print(table(rows))
    if len(rows) > 1:
        for r in bench_rows(rows):
            print(f"\n{r.name}: {r.note}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
