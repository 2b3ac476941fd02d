"""A script job that asks for N GPUs runs as N DDP processes (cxrgen.launch through cxrgen.workflow.script_context).

The toy job below is what a Snakemake script is: a file carrying its own ``snakemake`` object, run with
``python <file>``. On this CUDA-less machine its workers are CPU processes over gloo.
"""

import os
import re
import stat
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from cxrgen import launch
from cxrgen.errors import InputError

SRC = Path(__file__).resolve().parents[1] / "src"

# each rank all-reduces its rank + 1 (1 + 2 = 3 for two ranks); the main process alone writes the output
TOY = """
import os, sys, types
from cxrgen.workflow import script_context
snakemake = types.SimpleNamespace(log=[{log!r}], rule="toy", threads=2, config={{"seed": 0}},
                                  resources={resources!r}, output=[{out!r}])
with script_context(snakemake) as log:
    import torch
    from accelerate import Accelerator
    acc = Accelerator()
    total = acc.reduce(torch.tensor([acc.process_index + 1.0]), reduction="sum").item()
    log.info("world %d type %s total %g", acc.num_processes, acc.distributed_type, total)
    if {fail!r} and acc.process_index == 1:
        raise ValueError("rank 1 broke")
    if acc.is_main_process:
        open(snakemake.output[0], "w").write(f"{{acc.num_processes}} {{total:g}}\\n")
"""


def _run_toy(tmp_path, resources, fail=False, env=None):
    log, out = tmp_path / "toy.log", tmp_path / "out.txt"
    script = tmp_path / "toy_script.py"
    script.write_text(TOY.format(log=str(log), out=str(out), resources=resources, fail=fail))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    env.pop(launch.LAUNCHED, None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    return proc, log.read_text() if log.is_file() else "", out


def _ranks(text):
    return sorted(set(re.findall(r"process rank (\d) of (\d)", text)))


@pytest.mark.slow
def test_a_two_gpu_job_runs_two_ddp_processes_writing_one_log(tmp_path):
    proc, text, out = _run_toy(tmp_path, {"gpu": 2})
    assert proc.returncode == 0, proc.stderr + text
    assert _ranks(text) == [("0", "2"), ("1", "2")], text
    assert text.count("world 2 type DistributedType.MULTI_CPU total 3") == 2, text  # gloo all-reduce over both
    assert "all 2 processes finished" in text
    assert out.read_text() == "2 3\n"


def test_a_one_gpu_job_runs_in_the_snakemake_process(tmp_path):
    proc, text, out = _run_toy(tmp_path, {"gpu": 1})
    assert proc.returncode == 0, proc.stderr + text
    assert _ranks(text) == [] and "launching" not in text
    assert out.read_text() == "1 1\n"


@pytest.mark.slow
def test_a_failing_rank_fails_the_job_and_its_error_is_in_the_log(tmp_path):
    proc, text, out = _run_toy(tmp_path, {"gpu": 2}, fail=True)
    assert proc.returncode != 0
    assert "ValueError: rank 1 broke" in text
    assert re.search(r"rule toy: its 2 processes exited with status [1-9]", text), text


def _fake_slurm(bin_dir: Path):
    """srun: run the command once per node (SLURM_NODEID 0..N-1) on this host; scontrol: one host name."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(textwrap.dedent("""\
        #!/usr/bin/env bash
        n=1
        while [[ "$1" == --* ]]; do [[ "$1" == --nodes=* ]] && n=${1#--nodes=}; shift; done
        pids=()
        for ((i = 0; i < n; i++)); do SLURM_NODEID=$i SLURM_JOB_NODELIST=localhost "$@" & pids+=($!); done
        rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done; exit $rc
        """))
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho localhost\n")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
def test_a_two_node_job_starts_one_launcher_per_node_through_srun(tmp_path):
    _fake_slurm(tmp_path / "bin")
    env = {"PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": str(4000 + os.getpid() % 900)}
    proc, text, out = _run_toy(tmp_path, {"gpu": 2, "nodes": 2}, env=env)
    assert proc.returncode == 0, proc.stderr + text
    assert "launching: srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in text
    assert len(re.findall(r"--num_machines 2 --machine_rank [01] --main_process_ip localhost", text)) == 2, text
    assert _ranks(text) == [("0", "2"), ("1", "2")], text
    assert re.search(r"process rank 1 of 2 \(local rank 0, node 1\)", text), text
    assert out.read_text() == "2 3\n"


def test_a_multi_node_job_outside_slurm_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    proc, text, _ = _run_toy(tmp_path, {"gpu": 2, "nodes": 2}, env={**env, "SLURM_JOB_ID": ""})
    assert proc.returncode != 0
    assert "nodes=2 needs a SLURM allocation" in text


@pytest.mark.parametrize("resources, message", [({"gpu": 3, "nodes": 2}, "gpu=3 over nodes=2"),
                                                ({"gpu": "2"}, "resources gpu='2'")])
def test_bad_gpu_and_node_counts_are_named(resources, message):
    job = types.SimpleNamespace(rule="toy", resources=resources)
    with pytest.raises(InputError, match=re.escape(message)):
        launch.nodes(job)


def test_worker_environment_uses_gloo_without_cuda_and_shares_the_threads():
    env = launch.worker_env(2, threads=8, cuda_devices=0, env={})
    assert env == {launch.LAUNCHED: "1", "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "4"}
    assert "ACCELERATE_USE_CPU" not in launch.worker_env(2, threads=8, cuda_devices=2, env={})


REPO = Path(__file__).resolve().parents[1]


def _dry_run(tmp_path, overlay: str, *args):
    cfg = tmp_path / "gpus.yaml"
    cfg.write_text(overlay)
    # in an empty working directory: a finished or running `make reproduce` in the checkout changes the plan
    return subprocess.run([sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
                           "--directory", str(tmp_path), "--configfile", str(REPO / "config.yaml"), str(cfg), *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def _planned_gpus(output: str) -> dict:
    """rule -> the gpu resource of its planned job, from the dry run's job announcements."""
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"^rule (\w+):\n(?:\s+\w+: .*\n)*?\s+resources: .*?\bgpu=(\d+)", output, re.M)}


def test_the_gpus_config_sets_a_training_rules_gpu_resource(tmp_path):
    proc = _dry_run(tmp_path, "gpus: {cheff_sdm: 4}\n", "--resources", "gpu=4", "--", "results/default/models/cheff/sdm_report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _planned_gpus(proc.stdout) == {"cheff_autoencoder": 1, "cheff_sdm": 4}, proc.stdout[-3000:]


@pytest.mark.parametrize("overlay, named", [("gpus: {cheff_sdm: 0}\n", "cheff_sdm"),
                                            ("gpus: {cheff_sdms: 2}\n", "cheff_sdms")])
def test_a_bad_gpus_entry_stops_the_run_naming_it(tmp_path, overlay, named):
    proc = _dry_run(tmp_path, overlay)
    assert proc.returncode != 0
    assert named in proc.stdout + proc.stderr and "gpus" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_a_multi_process_job_whose_code_never_joins_the_group_fails(tmp_path):
    script = tmp_path / "lonely.py"
    script.write_text(textwrap.dedent(f"""
        import types
        from cxrgen.workflow import script_context
        snakemake = types.SimpleNamespace(log=[{str(tmp_path / 'lonely.log')!r}], rule="lonely", threads=2,
                                          config={{"seed": 0}}, resources={{"gpu": 2}})
        with script_context(snakemake) as log:
            log.info("training alone")
        """))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop(launch.LAUNCHED, None)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    text = (tmp_path / "lonely.log").read_text()
    assert proc.returncode != 0
    assert text.count("training alone") == 2 and "never joined their process group" in text, text


@pytest.mark.slow
def test_terminating_the_job_stops_its_workers(tmp_path):
    """A preempted / cancelled job (SIGTERM to the process Snakemake started) leaves no worker running."""
    import signal
    import time

    import psutil

    log = tmp_path / "term.log"
    script = tmp_path / "term.py"
    script.write_text(textwrap.dedent(f"""
        import os, time, types
        from cxrgen.workflow import script_context
        snakemake = types.SimpleNamespace(log=[{str(log)!r}], rule="term", threads=2, config={{"seed": 0}},
                                          resources={{"gpu": 2}})
        with script_context(snakemake) as log:
            log.info("worker pid %d ready", os.getpid())
            time.sleep(120)
        """))
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop(launch.LAUNCHED, None)
    job = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.monotonic() + 240
    while len(pids := re.findall(r"worker pid (\d+) ready", log.read_text() if log.is_file() else "")) < 2:
        assert time.monotonic() < deadline and job.poll() is None, log.read_text() if log.is_file() else ""
        time.sleep(0.5)
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=60) != 0
    time.sleep(1)
    alive = [p for p in map(int, pids) if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], log.read_text()
