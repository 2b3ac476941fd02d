"""Runs: which papers' studies a config selects (``studies:``) and where its outputs live (``run:``).

Every output of a run lives under ``results/<run>/`` (its logs under ``logs/<run>/``, its benchmarks under
``benchmarks/<run>/``), so runs of different configs (the default, smoke, the paper configs) never overwrite each
other. The run name of a set of config files is the ``run`` of the last file that sets it, else the schema default
(the merge order of ``snakemake --configfile``). ``python -m cxrgen.runs [CONFIG ...]`` prints it (the Makefile's
``make report``/``make publish`` use it); ``config.yaml`` comes first implicitly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from cxrgen.errors import InputError

REPO_ROOT = Path(__file__).resolve().parents[2]
#: the papers a config's ``studies`` may select (schemas/config.schema.yaml lists the same names)
PAPERS = ("chambon2022", "weber2023", "zafar2023", "dewilde2023")
DEFAULT_RUN = "default"  # the schema's default of ``run``
OUTPUT_TOPS = ("results", "logs", "benchmarks")


def run_name(config_files) -> str:
    """The ``run`` of merged ``config_files`` (later files win; :data:`DEFAULT_RUN` when none sets it)."""
    name = DEFAULT_RUN
    for path in map(Path, config_files):
        if not path.is_file():
            raise InputError(f"config file {path} does not exist; expected a YAML config")
        name = (yaml.safe_load(path.read_text()) or {}).get("run", name)
    return name


def output_roots(run: str) -> dict[str, str]:
    """``{"results": "results/<run>", "logs": "logs/<run>", "benchmarks": "benchmarks/<run>"}``."""
    return {top: f"{top}/{run}" for top in OUTPUT_TOPS}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Print the run name of config.yaml merged with CONFIG files.")
    ap.add_argument("configs", nargs="*", help="config files given to snakemake --configfile, in order")
    a = ap.parse_args(argv)
    print(run_name([REPO_ROOT / "config.yaml", *a.configs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
