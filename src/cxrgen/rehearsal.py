"""Full-size rehearsal of the paper configs (``make rehearse``): the papers' real architectures, 1-2 steps each, on the CPU.

For each paper, ``configs/<paper>.yaml`` then ``configs/rehearsal/<paper>.yaml`` (which keeps the architectures and
cuts steps, images, sample counts and resolution) are merged over ``config.yaml`` and the paper's outputs are made by
Snakemake in a scratch working directory ``<root>/<paper>/`` (so nothing under the repository's ``results/`` is
touched), under the overlay's own run name (``results/rehearsal-<paper>/``, :mod:`cxrgen.runs`). Stable Diffusion foundations are built once under ``<root>/models/<architecture>/`` from the published
configs with random weights (:mod:`cxrgen.models.architectures`). Every job's FLOPs per optimizer step are measured
while it runs (:mod:`cxrgen.flop_meter`). Afterwards one table lists every job: wall time and peak RSS (Snakemake's
``benchmarks/``), optimizer steps, seconds per step (the trainer's ``training_log.csv``), measured FLOPs per step and
in total, the parameters of the weights it wrote and, on a CUDA machine, the job's peak GPU memory (the meter's
``peak_gpu_mb``; blank on the CPU); the foundations' components get a row each.

Run: ``python -m cxrgen.rehearsal [--paper chambon2022 ...] [--root rehearsal] [--cores 2]``; writes
``<root>/table.csv`` and ``<root>/table.md``. Its numbers test that the paper path works as code; none is a result.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrgen.errors import InputError
from cxrgen.flop_meter import ENV_VAR
from cxrgen.io import write_csv_atomic, write_text_atomic
from cxrgen.runs import output_roots, run_name

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: the built foundations' default sampling size: 64 px on the CPU (published 512 px; weights unchanged)
NATIVE_SIZE = 64


@dataclass(frozen=True)
class PaperRehearsal:
    architecture: str | None  # the Stable Diffusion foundation to build (None: the paper trains its own models)
    targets: tuple[str, ...]  # what Snakemake makes: the paper's tables and figures (rule names or files; {results}:
    # the run's results folder)


#: the rehearsal overlay's dataset is the phantom ("phantom"); text-encoder tables are named after it
PAPERS = {
    "chambon2022": PaperRehearsal("sd-v1", (
        "evaluate_reference_classifier", "render_vae_study", "{results}/tables/chambon2022_table2_phantom.md",
        "render_synthesis", "render_memorization")),
    "zafar2023": PaperRehearsal("sd-v1", ("zafar_render",)),
    "dewilde2023": PaperRehearsal("sd-2-base", ("render_dewilde",)),
    "weber2023": PaperRehearsal(None, (
        "cheff_machex", "cheff_reconstruction", "cheff_synthesis", "cheff_inpainting", "cheff_beta_check")),
}
COLUMNS = ["paper", "stage", "wall_s", "peak_rss_mb", "optimizer_steps", "s_per_step", "flops_per_step",
           "total_flops", "parameters", "peak_gpu_mb"]


def config_files(paper: str) -> list[Path]:
    """The config files of a paper's rehearsal, in merge order."""
    if paper not in PAPERS:
        raise InputError(f"unknown paper {paper!r}; expected one of {sorted(PAPERS)}")
    return [REPO_ROOT / "config.yaml", REPO_ROOT / "configs" / f"{paper}.yaml",
            REPO_ROOT / "configs" / "rehearsal" / f"{paper}.yaml"]


def snakemake_command(paper: str, workdir: Path, cores: int = 2, extra: tuple[str, ...] = (),
                      targets: tuple[str, ...] | None = None) -> list[str]:
    """The Snakemake call that makes the paper's outputs (or ``targets``) in ``workdir`` (targets first: --configfile
    takes a list)."""
    snakemake = Path(sys.executable).with_name("snakemake")
    targets = [t.format(results=paper_roots(paper)["results"]) for t in targets or PAPERS[paper].targets]
    return [str(snakemake) if snakemake.exists() else "snakemake", *targets, "--snakefile",
            str(REPO_ROOT / "Snakefile"), "--directory", str(workdir), "--cores", str(cores), *extra,
            "--configfile", *map(str, config_files(paper))]


def build_foundation(architecture: str, root: Path) -> Path:
    """``<root>/models/<architecture>``, built once (random weights from the published configs, sampling by default
    at :data:`NATIVE_SIZE`)."""
    from cxrgen.models.architectures import build_pipeline_folder

    import multiprocessing

    folder = root / "models" / architecture
    if not (folder / "model_index.json").is_file():
        # in a child process: the allocator keeps the ~5 GB the build touched, and this process waits through every
        # full-size job after it
        child = multiprocessing.get_context("spawn").Process(
            target=build_pipeline_folder, args=(architecture, folder), kwargs={"native_size": NATIVE_SIZE})
        child.start()
        child.join()
        if child.exitcode:
            raise RuntimeError(f"building {folder} failed (exit code {child.exitcode})")
    return folder


#: stand-ins for the LAION-400M captions the paper's textual projection trains on (configs/rehearsal/chambon2022.yaml)
CAPTIONS = ("a photo of a dog on the grass", "a red car parked in a street", "an x-ray of a hand",
            "a painting of a house by the sea", "a bird sitting on a tree", "a chest x-ray of a patient",
            "a close-up photo of a green apple", "a black and white photo of a city at night")


def write_captions(root: Path) -> Path:
    path = root / "captions.txt"
    if not path.is_file():
        write_text_atomic(path, "\n".join(CAPTIONS) + "\n")
    return path


def available_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return -1


def run_paper(paper: str, root: Path, cores: int = 2, targets: tuple[str, ...] | None = None) -> float:
    """Build the foundation if needed, run the paper's rehearsal; returns its wall seconds (foundation build included)."""
    t0 = time.perf_counter()
    if PAPERS[paper].architecture:
        build_foundation(PAPERS[paper].architecture, root)
    write_captions(root)
    workdir = root / paper
    (workdir / "flops").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, ENV_VAR: str((workdir / "flops").resolve())}
    cmd = snakemake_command(paper, workdir.resolve(), cores, targets=targets)
    log.info("%s: %d MB available; %s", paper, available_memory_mb(), " ".join(cmd))
    subprocess.run(cmd, check=True, env=env, cwd=REPO_ROOT)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------------------------ the table
def _weights_parameters(paths) -> int | None:
    """Parameters in the safetensors files under ``paths`` (the weights a job wrote), None if there are none."""
    from safetensors import safe_open

    files = [f for p in map(Path, paths) for f in ([p] if p.is_file() else sorted(p.rglob("*.safetensors")))
             if f.suffix == ".safetensors" and ".partial" not in str(f)]
    if not files:
        return None
    total = 0
    for f in files:
        with safe_open(str(f), "pt") as handle:
            total += sum(int(pd.Series(handle.get_slice(k).get_shape()).prod()) for k in handle.keys())
    return total


def _seconds_per_step(paths, steps: int) -> float | None:
    """The last logged step's seconds from a ``training_log.csv`` under ``paths`` (cumulative ``seconds`` column)."""
    for p in map(Path, paths):
        logs = [p] if p.name == "training_log.csv" else sorted(p.rglob("training_log.csv")) if p.is_dir() else []
        for f in logs:
            df = pd.read_csv(f)
            if "phase" in df.columns:
                df = df[df["phase"] == "train"]
            if "seconds" not in df.columns or df.empty:
                continue
            if "step" in df.columns and len(df) >= 2:
                a, b = df.iloc[-2], df.iloc[-1]
                return float((b["seconds"] - a["seconds"]) / max(1, b["step"] - a["step"]))
            return float(df["seconds"].sum()) / steps if steps else None
    return None


def paper_roots(paper: str) -> dict[str, str]:
    """The rehearsal's output roots in its working directory (``results/<run>``, ``logs/<run>``, ``benchmarks/<run>``)."""
    return output_roots(run_name(config_files(paper)))


def collect(paper: str, workdir: Path) -> pd.DataFrame:
    """One row per job that ran (benchmarks/<run>/ x flops/), stage named by its log path."""
    roots = paper_roots(paper)
    rows = []
    flops = {}
    for f in sorted((workdir / "flops").glob("*.json")):
        rec = json.loads(f.read_text())
        if rec.get("log"):
            flops[str(Path(rec["log"]).with_suffix(""))] = rec
    for bench in sorted((workdir / roots["benchmarks"]).rglob("*.tsv")):
        stem = str(bench.relative_to(workdir / roots["benchmarks"]).with_suffix(""))
        b = pd.read_csv(bench, sep="\t").iloc[-1]
        rec = flops.get(f"{roots['logs']}/{stem}", {})
        outputs = [workdir / o for o in rec.get("output", [])]
        steps = len(rec.get("step_totals", []))
        rows.append({"paper": paper, "stage": stem, "wall_s": float(b["s"]), "peak_rss_mb": float(b["max_rss"]),
                     "optimizer_steps": steps, "s_per_step": _seconds_per_step(outputs, steps) if steps else None,
                     "flops_per_step": rec.get("flops_per_step"), "total_flops": rec.get("total_flops"),
                     "parameters": _weights_parameters(outputs), "peak_gpu_mb": rec.get("peak_gpu_mb")})
    return pd.DataFrame(rows, columns=COLUMNS)


def foundation_rows(paper: str, root: Path) -> pd.DataFrame:
    arch = PAPERS[paper].architecture
    if not arch or not (root / "models" / arch / "architecture.json").is_file():
        return pd.DataFrame(columns=COLUMNS)
    counts = json.loads((root / "models" / arch / "architecture.json").read_text())["parameters"]
    return pd.DataFrame([{"paper": paper, "stage": f"foundation {arch}: {part} (random weights)", "parameters": n}
                         for part, n in counts.items()], columns=COLUMNS)


def write_table(table: pd.DataFrame, wall: dict[str, float], root: Path) -> str:
    """``<root>/table.csv`` and ``<root>/table.md``; returns the Markdown."""
    write_csv_atomic(table, root / "table.csv")
    fmt = table.copy()
    for col in ("peak_rss_mb", "peak_gpu_mb"):
        fmt[col] = fmt[col].map(lambda v: "" if pd.isna(v) else f"{float(v):.0f}")
    fmt["wall_s"] = fmt["wall_s"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    fmt["s_per_step"] = fmt["s_per_step"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    for col in ("flops_per_step", "total_flops"):
        fmt[col] = fmt[col].map(lambda v: "" if pd.isna(v) else f"{float(v) / 1e12:.3g} T")
    fmt["parameters"] = fmt["parameters"].map(
        lambda v: "" if pd.isna(v) else f"{float(v) / 1e6:.2f} M" if float(v) >= 1e5 else f"{int(v):,}")
    fmt["optimizer_steps"] = fmt["optimizer_steps"].map(lambda v: "" if pd.isna(v) or not v else f"{int(v)}")
    header = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(str(v) for v in r) + " |\n" for r in fmt.itertuples(index=False))
    walls = "".join(f"- {p}: {s:.0f} s wall (foundation build included where it ran)\n" for p, s in wall.items())
    text = ("# Full-size rehearsal (random weights, CPU; code-path test, not results)\n\n" + walls + "\n"
            + header + body)
    write_text_atomic(root / "table.md", text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paper", action="append", choices=sorted(PAPERS), help="paper(s) to rehearse (default: all)")
    ap.add_argument("--root", default="rehearsal", help="scratch folder (default: %(default)s)")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--target", action="append", help="make only these of the paper's outputs (rule names or files; "
                    "default: all of cxrgen.rehearsal.PAPERS[paper].targets)")
    ap.add_argument("--table-only", action="store_true", help="rebuild the table from earlier runs")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    root = Path(a.root).resolve()
    papers = a.paper or list(PAPERS)
    wall_file = root / "wall_seconds.json"
    for paper in papers:
        if not a.table_only:
            seconds = run_paper(paper, root, a.cores, tuple(a.target) if a.target else None)
            wall = json.loads(wall_file.read_text()) if wall_file.is_file() else {}  # another paper may have run
            wall[paper] = seconds
            write_text_atomic(wall_file, json.dumps(wall, indent=2))
    wall = json.loads(wall_file.read_text()) if wall_file.is_file() else {}
    done = [p for p in PAPERS if (root / p / paper_roots(p)["benchmarks"]).is_dir()]
    table = pd.concat([pd.concat([foundation_rows(p, root), collect(p, root / p)]) for p in done], ignore_index=True)
    print(write_table(table, {p: wall[p] for p in done if p in wall}, root))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
