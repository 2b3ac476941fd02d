"""The results index: what each output is, which rule made it, how long it took, and what compute it cost.

Energy and carbon follow Zafar et al. 2023 (V.C, after Lacoste et al. 2019): hours x power x grid carbon
intensity. GPU rules are charged the GPU's TDP for their wall time; CPU rules their CPU time at a per-core power.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrgen.io import write_text_atomic

#: Zafar et al. V.C: GCP us-west1, 0.3 kgCO2eq/kWh; Tesla V100-PCIE-16GB, TDP 300 W.
DEFAULT_ACCOUNTING = {"gpu_tdp_w": 300.0, "cpu_w_per_core": 10.0, "carbon_kg_per_kwh": 0.3}


def read_benchmarks(bench_root: str | Path) -> pd.DataFrame:
    """All Snakemake ``benchmark:`` TSVs under ``bench_root``; the rule is the file's path without suffix."""
    bench_root = Path(bench_root)
    frames = []
    for tsv in sorted(bench_root.rglob("*.tsv")):
        df = pd.read_csv(tsv, sep="\t")
        df.insert(0, "job", str(tsv.relative_to(bench_root).with_suffix("")))
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["job", "s", "cpu_time", "max_rss"])
    return pd.concat(frames, ignore_index=True)


def compute_costs(bench: pd.DataFrame, gpu_jobs: set[str] | frozenset = frozenset(), accounting: dict | None = None) -> pd.DataFrame:
    """Per job: wall seconds, CPU hours, GPU hours, energy (kWh) and carbon (kg CO2eq)."""
    acc = {**DEFAULT_ACCOUNTING, **(accounting or {})}
    out = pd.DataFrame({"job": bench["job"], "wall_s": pd.to_numeric(bench["s"], errors="coerce")})
    cpu_s = pd.to_numeric(bench.get("cpu_time", pd.Series(0.0, index=bench.index)), errors="coerce").fillna(0.0)
    out["cpu_h"] = cpu_s / 3600
    is_gpu = out["job"].map(lambda j: any(j == g or j.startswith(g + "/") or j.split("/")[-1].startswith(g) for g in gpu_jobs))
    out["gpu_h"] = out["wall_s"].where(is_gpu, 0.0) / 3600
    out["energy_kwh"] = out["gpu_h"] * acc["gpu_tdp_w"] / 1000 + out["cpu_h"] * acc["cpu_w_per_core"] / 1000
    out["carbon_kg"] = out["energy_kwh"] * acc["carbon_kg_per_kwh"]
    out["max_rss_mb"] = pd.to_numeric(bench.get("max_rss", pd.Series(float("nan"), index=bench.index)), errors="coerce")
    return out


def _fmt(value, digits=3) -> str:
    return "" if pd.isna(value) else f"{value:.{digits}g}"


def render_index(items: list[dict], costs: pd.DataFrame, scale: str, config_files: list[str], accounting: dict | None = None) -> str:
    """Markdown for ``results/<run>/README.md``. ``items``: dicts with path, rule, description."""
    acc = {**DEFAULT_ACCOUNTING, **(accounting or {})}
    lines = [
        "# Results index",
        "",
        f"Scale of this run: **{scale}**. "
        + ("Numbers are measurements of the embedded miniature, not the papers' own." if scale == "miniature" else ""),
        f"Config: {', '.join(f'`{c}`' for c in config_files) or 'config.yaml'}.",
        "",
        "## Tables and figures",
        "",
        "| output | rule | what it is |",
        "|---|---|---|",
    ]
    lines += [f"| `{i['path']}` | `{i['rule']}` | {i.get('description', '')} |" for i in items]
    lines += [
        "",
        "## Compute per job (from `benchmark:` files)",
        "",
        "| job | wall (s) | CPU h | GPU h | energy (kWh) | CO2eq (kg) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in costs.sort_values("wall_s", ascending=False).iterrows():
        lines.append(
            f"| `{r['job']}` | {_fmt(r['wall_s'], 4)} | {_fmt(r['cpu_h'])} | {_fmt(r['gpu_h'])} | "
            f"{_fmt(r['energy_kwh'])} | {_fmt(r['carbon_kg'])} | {_fmt(r['max_rss_mb'], 4)} |"
        )
    total = costs[["wall_s", "cpu_h", "gpu_h", "energy_kwh", "carbon_kg"]].sum()
    rss = costs["max_rss_mb"]
    peak = f"max {_fmt(rss.max(), 4)} (`{costs.loc[rss.idxmax(), 'job']}`)" if rss.notna().any() else ""
    lines += [
        f"| **total** | {_fmt(total['wall_s'], 4)} | {_fmt(total['cpu_h'])} | {_fmt(total['gpu_h'])} | "
        f"{_fmt(total['energy_kwh'])} | {_fmt(total['carbon_kg'])} | {peak} |",
        "",
        f"Energy = GPU hours x {acc['gpu_tdp_w']:g} W (TDP) + CPU hours x {acc['cpu_w_per_core']:g} W per core; "
        f"carbon = energy x {acc['carbon_kg_per_kwh']:g} kgCO2eq/kWh (the estimate of Zafar et al. 2023, section V.C). "
        "Wall time is summed over jobs, so it exceeds the elapsed time of a parallel run.",
        "",
    ]
    return "\n".join(lines)


def write_index(out_md, items, bench_root, scale, config_files, gpu_jobs=frozenset(), accounting=None) -> pd.DataFrame:
    costs = compute_costs(read_benchmarks(bench_root), gpu_jobs, accounting)
    write_text_atomic(out_md, render_index(items, costs, scale, config_files, accounting))
    return costs
