"""Run a Snakemake script job as one process per GPU under accelerate's distributed launcher (DDP).

A training rule asks for N GPUs with ``resources: gpu=N`` (from the config's ``gpus`` section). Its script stays a
thin adapter: :func:`cxrgen.workflow.script_context` calls :func:`relaunch` first, which, for N > 1, starts
``python -m accelerate.commands.launch --multi_gpu --num_processes N <this script>`` (torchrun underneath) and waits
for it. The N workers re-execute the same script file (Snakemake's temporary copy, which carries the job's
``snakemake`` object and lives until the job ends); they find :data:`LAUNCHED` set and run the body, each as one
rank. The launching process runs no body: it exits with the launcher's status. Logs and benchmarks keep working
because every worker writes into the log file the launching process opened, and Snakemake's benchmark sums the
whole process tree.

Without CUDA (a laptop, CI, the localhost SLURM with fake GPUs) the N workers are CPU processes that talk over
gloo: accelerate reads ``ACCELERATE_USE_CPU`` (``accelerate launch --cpu`` itself would start one process only).

Several nodes (``resources: nodes=M``, set per rule in a SLURM profile, see docs/cluster.md): the
launching process, inside the SLURM allocation, starts one task per node with ``srun``; each task re-executes the
script with :data:`NODE_TASK` set and runs accelerate's launcher with ``--num_machines M --machine_rank
$SLURM_NODEID`` and the allocation's first host as the rendezvous, for N processes in all (N / M per node).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass

from cxrgen.errors import InputError

log = logging.getLogger(__name__)

#: set in every worker the launcher starts: the script runs its body there
LAUNCHED = "CXRGEN_LAUNCHED"
#: set in the per-node ``srun`` tasks of a multi-node job: they start the node's workers
NODE_TASK = "CXRGEN_NODE_TASK"
#: rendezvous port of a multi-node job (every node must agree without talking): this base + SLURM job id % 1000
MULTI_NODE_PORT_BASE = 29500


@dataclass(frozen=True)
class Rank:
    """Where this process sits in a launched job (world 1 when not launched)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    node: int = 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world} (local rank {self.local_rank}, node {self.node})"


def current_rank(env=None) -> Rank:
    """This process's rank, from the variables torchrun sets in every worker."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", 1))
    rank, local = int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0))
    local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    return Rank(rank, world, local, rank // max(1, local_world))


def finish_worker(rule: str, rank: Rank) -> None:
    """A worker's end: check that the job's code joined the process group, then leave it cleanly.

    A body whose trainer never made an ``Accelerator`` (or process group) ran N independent copies of the whole job:
    that is an error, not N-fold data parallelism. Leaving: wait for the other ranks, then close the group (a worker
    that exits with it open can abort in gloo's threads, "terminate called without an active exception")."""
    import torch.distributed as dist
    from accelerate.state import PartialState

    joined = dist.is_available() and dist.is_initialized()
    # a trainer may have closed the group itself (Accelerator.end_training); accelerate's state still shows the world
    if not joined and PartialState._shared_state.get("num_processes", 1) != rank.world:
        raise RuntimeError(f"rule {rule} ran as {rank.world} processes, but its code never joined their process "
                           "group (its trainer does not use accelerate): each process ran the whole job alone; "
                           "set its gpus entry to 1")
    if joined:
        dist.barrier()
        dist.destroy_process_group()


def _resource(snakemake, name: str, default: int = 1) -> int:
    res = getattr(snakemake, "resources", None)
    value = res.get(name, None) if hasattr(res, "get") else getattr(res, name, None)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InputError(f"rule {getattr(snakemake, 'rule', '?')}: resources {name}={value!r}; expected an integer >= 0")
    return value


def processes(snakemake) -> int:
    """Processes the job runs: one per GPU it asked for (``resources: gpu``), at least one."""
    return max(1, _resource(snakemake, "gpu"))


def nodes(snakemake) -> int:
    """Nodes the job spans (``resources: nodes``, set by a cluster profile; 1 when unset)."""
    n, gpus = max(1, _resource(snakemake, "nodes")), processes(snakemake)
    if gpus % n:
        raise InputError(f"rule {getattr(snakemake, 'rule', '?')}: gpu={gpus} over nodes={n}; expected the GPUs to "
                         "divide evenly over the nodes (the same number of processes on each)")
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_command(script: str, num_processes: int, num_machines: int = 1, machine_rank: int = 0,
                     main_process_ip: str = "127.0.0.1", main_process_port: int | None = None) -> list[str]:
    """``accelerate launch`` (its module, with this interpreter) for ``script``: DDP over ``num_processes`` in all."""
    port = main_process_port if main_process_port is not None else free_port()
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(num_processes), "--num_machines", str(num_machines),
            "--machine_rank", str(machine_rank), "--main_process_ip", main_process_ip,
            "--main_process_port", str(port),
            # the trainer's Accelerator(mixed_precision=...) decides; these only silence the launcher's defaults
            "--mixed_precision", "no", "--dynamo_backend", "no", script]


def worker_env(num_processes_here: int, threads: int, cuda_devices: int, env=None) -> dict:
    """The workers' environment: :data:`LAUNCHED`, CPU DDP (gloo) without CUDA, the job's threads shared out."""
    env = dict(os.environ if env is None else env)
    env[LAUNCHED] = "1"
    if cuda_devices == 0:
        env["ACCELERATE_USE_CPU"] = "true"
    env["OMP_NUM_THREADS"] = str(max(1, threads // max(1, num_processes_here)))
    return env


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _run(cmd: list[str], env: dict, stream) -> int:
    """Run the launcher and wait; SIGTERM / SIGINT reaching this process (a preempted or cancelled job) go on to it,
    and torchrun passes them to the workers, so none is left behind."""
    log.info("launching: %s", " ".join(cmd))
    for h in logging.getLogger().handlers:
        h.flush()
    proc = subprocess.Popen(cmd, env=env, stdout=stream, stderr=subprocess.STDOUT)
    forward = {sig: signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
               for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        for sig, handler in forward.items():
            signal.signal(sig, handler)


def _script() -> str:
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not os.path.isfile(script):
        raise InputError(f"cannot relaunch {script!r} as several processes; expected the path of the running script")
    return script


def _first_host(nodelist: str) -> str:
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def relaunch(snakemake, stream) -> int | None:
    """Start this script's workers when the job wants more than one process; None when this process should run
    the body itself (one process, or already a worker), else the launcher's exit status once the workers ended.
    ``stream``: where the workers write (the rule's log file), None to inherit this process's output."""
    if os.environ.get(LAUNCHED):
        return None
    n, m = processes(snakemake), nodes(snakemake)
    if n == 1:
        return None
    threads = max(1, int(getattr(snakemake, "threads", 1)))
    in_node = m == 1 or bool(os.environ.get(NODE_TASK))
    devices = cuda_device_count() if in_node else 0
    if devices and devices < n // m:
        raise InputError(f"rule {snakemake.rule}: resources gpu={n} over {m} node(s) needs {n // m} CUDA device(s) "
                         f"per node; this node has {devices}")
    if m == 1:
        if not devices:
            log.warning("no CUDA device: running the %d processes on the CPU (DDP over gloo)", n)
        return _run(launcher_command(_script(), n), worker_env(n, threads, devices), stream)
    if os.environ.get(NODE_TASK):  # one srun task per node: start this node's n / m workers
        env = os.environ
        rank, host = int(env["SLURM_NODEID"]), _first_host(env["SLURM_JOB_NODELIST"])
        port = MULTI_NODE_PORT_BASE + int(env["SLURM_JOB_ID"]) % 1000
        cmd = launcher_command(_script(), n, m, rank, host, port)
        return _run(cmd, worker_env(n // m, threads, devices), stream)
    if not (os.environ.get("SLURM_JOB_ID") and shutil.which("srun")):
        raise InputError(f"rule {snakemake.rule}: resources nodes={m} needs a SLURM allocation (srun and "
                         "SLURM_JOB_ID); expected the job to run through profiles/slurm with nodes set there")
    # the allocation's GPUs, n / m on each node (a step gets no GPU it does not ask for)
    srun = ["srun", f"--nodes={m}", f"--ntasks={m}", "--ntasks-per-node=1", f"--cpus-per-task={threads}",
            f"--gpus-per-node={n // m}"]
    return _run([*srun, sys.executable, _script()], {**os.environ, NODE_TASK: "1"}, stream)
