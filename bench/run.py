"""Run the cxrgen benchmarks and print one table: every figure ours vs its reference, with the ratio.

    python bench/run.py                                   # everything (a few minutes on 2 CPU cores)
    python bench/run.py --only training,sampling --steps 40 --json out.json
    python bench/run.py --only snakemake --workdir /path/to/completed/run

Ratios are ours / reference for throughputs and reference / ours for times, so > 1 always means ours is better.
They are measured in this one run, on this machine, for the same model, data, batch size and steps on both
sides; the absolute figures describe only this machine. The exit status is 1 when a metric disagrees with its
reference beyond the stated tolerance (or the two samplers make different images), 0 otherwise; speed never
fails the run (these are benchmarks, not timed tests). See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

BENCHES = ("training", "sampling", "metrics", "snakemake", "gpu", "memory")
#: what a plain `bench/run.py` runs: memory writes and reads 11k images (minutes), so it runs when named
DEFAULT_BENCHES = ("training", "sampling", "metrics", "snakemake", "gpu")
#: what the issue asks of each ratio (printed beside the figures; never an exit status)
TARGETS = {"training": (1.0, 1.5), "sampling": (1.0, 1.0)}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(DEFAULT_BENCHES),
                    help=f"comma-separated subset of {','.join(BENCHES)} (default: all but memory)")
    ap.add_argument("--foundation", default="default", choices=("default", "smoke"),
                    help="tiny foundation architecture: the embedded workflow's (default) or the tests' (smoke)")
    ap.add_argument("--foundation-dir", help="use this foundation pipeline folder instead of building one")
    ap.add_argument("--steps", type=int, default=30, help="training steps per run (default %(default)s)")
    ap.add_argument("--warmup", type=int, default=3, help="training steps left out of the rate (default %(default)s)")
    ap.add_argument("--batch-size", type=int, default=8, help="training batch size (default %(default)s)")
    ap.add_argument("--resolution", type=int, default=64, help="training resolution (default %(default)s)")
    ap.add_argument("--repeats", type=int, default=2, help="alternating repeats, best kept (default %(default)s)")
    ap.add_argument("--sample-n", type=int, default=25, help="images per sampling pass (default %(default)s)")
    ap.add_argument("--sample-steps", type=int, default=20, help="sampling steps (default %(default)s)")
    ap.add_argument("--sample-repeats", type=int, default=3, help="sampling rounds, best kept (default %(default)s)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch / BLAS threads (default 1: on a shared 2-core machine 2 threads make small kernels "
                         "wait on each other and the timings erratic)")
    ap.add_argument("--quick", action="store_true",
                    help="minimal sizes (a smoke check of the bench code; the figures mean little)")
    ap.add_argument("--workdir", help="folder of a completed workflow run, for the Snakemake no-op dry run")
    ap.add_argument("--snakemake-args", default="", help="extra arguments for the --workdir dry run")
    ap.add_argument("--memory-sizes", default="1000,10000",
                    help="memory: dataset sizes (images) the Cheff stage trains on (default %(default)s)")
    ap.add_argument("--memory-stage", default="autoencoder", choices=("autoencoder", "sdm", "sr"),
                    help="memory: the Cheff stage measured (default %(default)s)")
    ap.add_argument("--tflops", type=float, default=None, help="GPU estimate: sustained fp16 TFLOP/s")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    a = ap.parse_args(argv)
    a.only = [b.strip() for b in a.only.split(",") if b.strip()]
    bad = sorted(set(a.only) - set(BENCHES))
    if bad:
        ap.error(f"unknown benchmark(s) {bad}; expected some of {list(BENCHES)}")
    if a.quick:
        a.steps, a.warmup, a.repeats, a.sample_n, a.sample_steps, a.sample_repeats = 3, 1, 1, 2, 2, 1
        a.memory_sizes = "20,60"
    return a


def _limit_threads(n: int) -> None:
    """Before numpy / torch load: BLAS and OpenMP pools of ``n`` threads (both sides of every comparison)."""
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(k, str(n))


#: run-to-run spread of a ratio on this shared machine: a ratio within it of 1.0 is "equal", not a win or a loss
NOISE = 0.03


def targets_lines(rows) -> list[str]:
    out = []
    for r in rows:
        if r.group in TARGETS and r.unit in ("steps/s", "img/s") and r.ratio is not None:
            need, aim = TARGETS[r.group]
            if r.ratio >= max(aim, need + NOISE):
                verdict = "meets the aim"
            elif r.ratio >= need + NOISE:
                verdict = "meets the minimum"
            elif r.ratio >= need - NOISE:
                verdict = f"equal within the ~{NOISE:.0%} run-to-run noise"
            else:
                verdict = "BELOW"
            out.append(f"- {r.group} {r.name}: {r.ratio:.2f}x (issue: >= {need:g}x, aim {aim:g}x) -> {verdict}")
    return out


def main(argv=None) -> int:
    a = parse_args(argv)
    _limit_threads(a.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import common

    common.set_threads(a.threads)
    log = lambda *x: print(*x, file=sys.stderr, flush=True)  # noqa: E731
    rows, failures, gpu_text, gpu_rows = [], [], None, None
    t_all = time.perf_counter()
    timings = {}
    foundation = None
    if {"training", "sampling"} & set(a.only):
        t = time.perf_counter()
        foundation = Path(a.foundation_dir) if a.foundation_dir else common.foundation(a.foundation)
        timings["foundation_s"] = time.perf_counter() - t
        log(f"[bench] foundation {foundation} ({timings['foundation_s']:.1f} s, built once and cached)")
    for bench in a.only:
        t = time.perf_counter()
        if bench == "training":
            from bench import training

            rows += training.run(foundation, steps=a.steps, warmup=a.warmup, batch_size=a.batch_size,
                                 resolution=a.resolution, n_images=4 if a.quick else 16, repeats=a.repeats, log=log)
        elif bench == "sampling":
            from bench import sampling

            new = sampling.run(foundation, n=a.sample_n, batch_size=a.sample_n, steps=a.sample_steps,
                               repeats=a.sample_repeats, log=log)
            diff = new[0].extra["max_abs_diff_grey_levels"]
            if diff > 1:
                failures.append(f"sampling: ours and plain diffusers differ by {diff} grey levels (> 1): the two "
                                "timings do not measure the same work")
            rows += new
        elif bench == "metrics":
            from bench import metrics

            kw = dict(n_fid=200, dim=256, n_batches=2, ref_batches=1, n_pairs=4, size=64, n_reports=100,
                      n_images_fid=8, repeats=1, scipy_check=True) if a.quick else dict(repeats=a.repeats)
            new, fails = metrics.run(log=log, **kw)
            rows += new
            failures += fails
        elif bench == "snakemake":
            from bench import snakemake_overhead

            rows += snakemake_overhead.run(a.workdir, a.snakemake_args.split(), repeats=1 if a.quick else 3, log=log)
        elif bench == "memory":
            from bench import cheff_memory

            sizes = [int(x) for x in a.memory_sizes.split(",") if x.strip()]
            mem = cheff_memory.run(sizes, a.memory_stage, steps=1 if a.quick else 3, batch_size=2 if a.quick else 8,
                                   log=log)
            rows += cheff_memory.bench_rows(mem)
        elif bench == "gpu":
            from bench import gpu_estimate

            kw = {"tflops": a.tflops} if a.tflops else {}
            gpu_text, gpu_rows = gpu_estimate.report(**kw)
        timings[f"{bench}_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_all

    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
           "foundation": str(foundation) if foundation else None, "argv": sys.argv[1:]}
    print("# cxrgen benchmarks (ratio > 1: ours better; measured in this run, same inputs on both sides)\n")
    print(f"machine: {platform.machine()}, {env['cpus']} CPUs, {env['threads']} torch thread(s), torch "
          f"{env['torch']}, load average {tuple(round(x, 2) for x in env['load_average'] or ())}\n")
    if rows:
        print(common.rows_table(rows))
        lines = targets_lines(rows)
        if lines:
            print("\nissue targets (informative, not an exit status):")
            print("\n".join(lines))
    if gpu_text:
        print("\n" + gpu_text)
    print("\nagreement checks: " + ("all within tolerance" if not failures else "FAILED:\n  " + "\n  ".join(failures)))
    print(f"bench wall time: {timings['total_s']:.0f} s ("
          + ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in timings.items() if k != "total_s") + ")")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": [r.to_dict() for r in rows], "failures": failures,
                                            "gpu_estimate": gpu_rows, "timings": timings,
                                            "environment": env}, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
