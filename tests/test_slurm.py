"""The workflow on a real (one-node, localhost) SLURM cluster through profiles/slurm and profiles/slurm-gpu-only.

tests/cluster/slurm-up.sh installs Debian's slurmctld/slurmd/slurm-client/munge when absent and starts them
by hand: partitions `cpu` and `gpu`, one node with two fake GPUs. The smoke config then runs with the
repo's SLURM profile plus what this test cluster needs (squeue status polling: no slurmdbd; small memory
cap; a GPU model for `foundation`). Needs root (CI runs as root); skipped otherwise, or without apt-get
when SLURM is not installed.
"""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
UP, DOWN = REPO / "tests" / "cluster" / "slurm-up.sh", REPO / "tests" / "cluster" / "slurm-down.sh"
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
WORKFLOW = ("Snakefile", "config.yaml", "rules", "scripts", "schemas", "configs", "report", "profiles", "envs")
SBIN = "/usr/sbin:/sbin"

# one localhost cluster: every SLURM test on the same pytest-xdist worker (make test runs --dist loadgroup)
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.xdist_group("slurm")]


def _env():
    return {**os.environ, "PATH": f"{os.environ.get('PATH', '')}:{SBIN}", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}


def _have(binary):
    return shutil.which(binary, path=_env()["PATH"]) is not None


def _skip_reason():
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root: tests/cluster/slurm-up.sh installs SLURM with apt-get and starts its daemons"
    if not all(_have(b) for b in SLURM_BINARIES) and not _have("apt-get"):
        return "SLURM is not installed and apt-get is unavailable to install it"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    already_up = _have("scontrol") and subprocess.run(["scontrol", "ping"], capture_output=True, env=_env()).returncode == 0
    t0 = time.monotonic()
    up = subprocess.run(["bash", str(UP)], capture_output=True, text=True, env=_env(), timeout=1200)
    assert up.returncode == 0, f"slurm-up.sh failed:\n{up.stdout}\n{up.stderr}"
    seconds = time.monotonic() - t0
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True, env=_env()).stdout
    mem = int(re.search(r"RealMemory=(\d+)", node).group(1))
    print(f"\nSLURM bring-up: {seconds:.1f} s ({up.stdout.strip()})")
    yield {"real_memory_mb": mem, "bringup_s": seconds}
    if not already_up:  # leave a cluster the user started alone
        subprocess.run(["bash", str(DOWN)], capture_output=True, env=_env(), timeout=120)


def _ci_profile(workdir: Path, base: str, name: str, mem_mb: int) -> str:
    """The repo's profile plus what the localhost test cluster needs; returns its path for --workflow-profile."""
    cfg = yaml.safe_load((workdir / "profiles" / base / "config.yaml").read_text())
    cfg.update({
        "slurm-status-command": "squeue",  # no slurmdbd here; slurm-up.sh sets MinJobAge=3600
        "slurm-init-seconds-before-status-checks": 2,
        "cores": 1,  # CPUs per job: two jobs share the 2-CPU node
        "latency-wait": 5,
        "resources": [f"mem_mb={mem_mb}"],  # per-job cap: no request above the node's RealMemory
        "set-resources": {"foundation": {"gpu_model": "fake"}},  # the GPU-model mapping (Gres=gpu:fake:2)
        "slurm-keep-successful-logs": True,
    })
    (workdir / "profiles" / name).mkdir(exist_ok=True)
    (workdir / "profiles" / name / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return f"profiles/{name}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cluster):
    """A copy of the workflow (not the package) so runs never touch the repo's results/."""
    dst = tmp_path_factory.mktemp("slurmwf")
    for name in WORKFLOW:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst / name)
    _ci_profile(dst, "slurm", "slurm-ci", cluster["real_memory_mb"])
    _ci_profile(dst, "slurm-gpu-only", "slurm-gpu-only-ci", cluster["real_memory_mb"])
    return dst


def _snakemake(workdir, *args, timeout=1800):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, capture_output=True, text=True,
                          env=_env(), timeout=timeout)
    return proc, time.monotonic() - t0


def _jobs(output: str) -> dict:
    """rule name -> {"local": bool, "gpu": bool, "partitions": set} from Snakemake's job announcements."""
    jobs: dict = {}
    for block in re.split(r"\n(?=\[[^\]]+\]\n)", output):
        m = re.search(r"^(local)?rule (\w+):", block, re.M)
        if not m:
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        job = jobs.setdefault(m.group(2), {"local": bool(m.group(1)), "gpu": False, "partitions": set()})
        job["gpu"] |= bool(res and re.search(r"\bgpu=[1-9]", res.group(1)))
    for part, rule in re.findall(r"Auto-selected partition '(\w+)' for job (\w+)", output):
        jobs.setdefault(rule, {"local": False, "gpu": False, "partitions": set()})["partitions"].add(part)
    return jobs


def _placement(log: Path) -> dict:
    """The `placement` line cxrgen.workflow.script_context logs inside a cluster job ({} when run locally)."""
    m = re.search(r"placement (.*)$", log.read_text(), re.M) if log.is_file() else None
    return dict(kv.split("=", 1) for kv in m.group(1).split()) if m else {}


# A slice of the smoke run with GPU rules (foundation, reference classifier and its evaluation), submitted CPU
# rules (phantom data, table, samples) and a local rule (data summary): the whole smoke DAG has ~50 jobs, each
# paying SLURM's start-up, which would take CI many minutes. CXRGEN_SLURM_FULL=1 runs all of it instead.
SLICE = ["results/smoke/models/foundation", "results/smoke/reference_classifier/test_metrics.csv",
         "results/smoke/data/smoke/summary/label_counts.csv"]
TARGETS = [] if os.environ.get("CXRGEN_SLURM_FULL") == "1" else ["--", *SLICE]


def test_smoke_workflow_on_slurm_routes_gpu_rules_to_gpus(workdir, cluster):
    run = ["--workflow-profile", "profiles/slurm-ci", "--configfile", "configs/smoke.yaml", *TARGETS]
    proc, seconds = _snakemake(workdir, *run)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    print(f"\nsmoke workflow on SLURM ({'all' if not TARGETS else 'slice'}): {seconds:.1f} s")
    assert (workdir / "results" / "smoke" / "reference_classifier" / "test_metrics.csv").is_file()

    jobs = _jobs(out)
    gpu_rules = {r for r, j in jobs.items() if j["gpu"]}
    assert {"foundation", "reference_classifier"} <= gpu_rules, jobs
    for rule, job in jobs.items():
        if job["local"]:  # localrule: True (renderers, index, targets) ran on the submit host
            assert not job["partitions"], (rule, job)
        else:  # everything else was submitted, GPU rules to the GPU partition, the rest to the CPU one
            assert job["partitions"] == ({"gpu"} if job["gpu"] else {"cpu"}), (rule, job)

    # inside the jobs: GPU rules got a SLURM job with a GPU allocated, CPU rules a job without one
    logs = workdir / "logs" / "smoke"
    for log in (logs / "foundation.log", logs / "reference_classifier" / "train.log"):
        where = _placement(log)
        assert where.get("SLURM_JOB_ID") and where.get("SLURM_JOB_PARTITION") == "gpu", (log, where)
        assert where.get("CUDA_VISIBLE_DEVICES") in ("0", "1"), (log, where)
    for log in (logs / "data" / "smoke" / "dataset_table.log", *sorted((logs / "data" / "smoke").glob("sample_*.log"))):
        where = _placement(log)
        assert where.get("SLURM_JOB_ID") and where.get("SLURM_JOB_PARTITION") == "cpu", (log, where)
        assert "CUDA_VISIBLE_DEVICES" not in where, (log, where)
    # the profile's gpu_model for foundation reached sbatch (--gpus=fake:1)
    job = subprocess.run(["scontrol", "show", "job", _placement(logs / "foundation.log")["SLURM_JOB_ID"]],
                         capture_output=True, text=True, env=_env()).stdout
    assert "gpu:fake:1" in job, job

    # nothing left to do afterwards
    again, _ = _snakemake(workdir, "-n", *run)
    assert "Nothing to be done" in again.stdout + again.stderr


def test_gpu_only_profile_keeps_cpu_rules_on_the_submit_host(workdir):
    # rerun one CPU rule and one (quick) GPU rule of the finished slice
    targets = ["results/smoke/data/smoke/table.csv", "results/smoke/reference_classifier/test_metrics.csv"]
    proc, seconds = _snakemake(workdir, "--workflow-profile", "profiles/slurm-gpu-only-ci", "--configfile",
                               "configs/smoke.yaml", "--forcerun", "dataset_table", "evaluate_reference_classifier",
                               "--", *targets)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    print(f"\ngpu-only profile, dataset_table + evaluate_reference_classifier: {seconds:.1f} s")
    jobs = _jobs(out)
    assert jobs["dataset_table"]["local"] and not jobs["dataset_table"]["partitions"], jobs
    gpu_job = jobs["evaluate_reference_classifier"]
    assert not gpu_job["local"] and gpu_job["partitions"] == {"gpu"}, jobs
    assert _placement(workdir / "logs" / "smoke" / "data" / "smoke" / "dataset_table.log") == {}  # ran here, not in SLURM
    where = _placement(workdir / "logs" / "smoke" / "reference_classifier" / "evaluate.log")
    assert where.get("SLURM_JOB_PARTITION") == "gpu" and where.get("CUDA_VISIBLE_DEVICES") in ("0", "1"), where


def _smoke_with(workdir, name: str, overlay: str, target: str):
    """The smoke config plus ``overlay`` (YAML written to ``name``) on the test cluster, for ``target``."""
    (workdir / name).write_text(overlay)
    return _snakemake(workdir, "--workflow-profile", "profiles/slurm-ci", "--configfile", "configs/smoke.yaml",
                      str(workdir / name), "--", target)


def test_a_failing_slurm_job_fails_the_run_and_names_its_log(workdir):
    # a setting that parses (an unknown key stops the DAG build) but makes the job itself fail
    proc, _ = _smoke_with(workdir, "bad.yaml", "foundation:\n  overrides: {n_images: 0}\n",
                          "results/smoke/models/foundation")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-4000:]
    assert re.search(r"Error in rule foundation", out), out[-4000:]
    assert "logs/smoke/foundation.log" in out, out[-4000:]
    assert re.search(r"\.snakemake/slurm_logs/rule_foundation/\S*\d+\.log", out), out[-4000:]
    assert "n must be positive" in (workdir / "logs" / "smoke" / "foundation.log").read_text()



def test_a_two_gpu_cheff_stage_is_one_slurm_job_of_two_processes(workdir):
    # gpus.cheff_autoencoder: 2 -> resources gpu=2 -> sbatch/srun --gpus=2 (two fake GPUs) -> accelerate launch runs
    # two ranks (CPU processes over gloo: the fake GPUs are no devices)
    proc, seconds = _smoke_with(workdir, "two_gpus.yaml", "gpus: {cheff_autoencoder: 2}\n"
                                "cheff: {preset: smoke, autoencoder: {steps: 2}}\n", "results/smoke/models/cheff/autoencoder")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    print(f"\n2-GPU cheff_autoencoder on SLURM (with its data jobs): {seconds:.1f} s")
    assert re.search(r"rule cheff_autoencoder:(?:\n.*)*?\n\s+resources: .*\bgpu=2\b", out), out[-6000:]
    assert _jobs(out)["cheff_autoencoder"]["partitions"] == {"gpu"}
    log = workdir / "logs" / "smoke" / "cheff" / "autoencoder.log"
    text = log.read_text()
    where = _placement(log)
    assert where.get("SLURM_JOB_PARTITION") == "gpu" and where.get("CUDA_VISIBLE_DEVICES") == "0,1", where
    assert sorted(set(re.findall(r"process rank (\d) of (\d)", text))) == [("0", "2"), ("1", "2")], text[-4000:]
    assert "all 2 processes finished" in text
    job = subprocess.run(["scontrol", "show", "job", where["SLURM_JOB_ID"]], capture_output=True, text=True,
                         env=_env()).stdout
    assert re.search(r"gres[/:]gpu(?::fake)?[=:]2\b", job), job  # TresPerJob=gres:gpu:2 or TRES ...gres/gpu=2
    assert (workdir / "results" / "smoke" / "models" / "cheff" / "autoencoder").is_dir()
