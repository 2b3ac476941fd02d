"""Checks every trainer must pass: same results in 1 and 2 processes, and everything on the engine's device.

**Two processes.** Run a trainer once in 1 process and once as 2 CPU processes (accelerate's launcher, gloo),
same global batch.

A *case* is Python source defining ``train(out: Path, steps: int, stop_after: int | None, *args) -> list[float]``:
train ``steps`` optimizer steps into ``out`` (ending early after ``stop_after`` with its checkpoint left, as a
preempted job would) and return the per-step logged losses of the whole run so far (resumed steps included).
:func:`run_two_process_checks` runs every case in three phases,

1. 1 process, ``steps`` steps                        -> the reference losses,
2. 2 processes, same steps, ``stop_after=steps-1``   -> a checkpoint written by a distributed run,
3. 1 process again on that output                    -> resumes it and finishes,

each phase one launch for all cases (each case in its own namespace: the launches, not the trainers, cost most of
the time), and :func:`check_two_processes_match_one` asserts the losses of 2.+3. equal the reference within ``rtol``
(float summation order differs: gradients are all-reduced, per-process means averaged). Adding a trainer = one
entry in :data:`CASES`, one in the test's list of runs and a test line.

Why ``--multi_gpu`` with ``ACCELERATE_USE_CPU``: in accelerate 1.x ``launch --cpu --num_processes 2`` starts a
single process unless mpirun is configured; ``--multi_gpu`` starts ``torch.distributed.run`` and the
accelerator, told to use the CPU, joins a gloo process group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

RUNNER = r'''
import json, sys, traceback
from pathlib import Path
import torch
torch.set_num_threads(1)

cases, jobs = json.loads(Path(sys.argv[1]).read_text()), json.loads(Path(sys.argv[2]).read_text())
results = {}
import cxrgen.engine
for job in jobs:  # one failing case is reported, the others still run
    cxrgen.engine._stop_after_for_tests = None  # a case's early stop (stop_after_save) never reaches the next case
    namespace = {"__name__": "case_" + job["case"], "Path": Path, "torch": torch, "json": json}
    try:
        exec(compile(cases[job["case"]], job["case"], "exec"), namespace)
        losses = namespace["train"](Path(job["out"]), job["steps"], job["stop_after"], *job["args"])
        results[job["tag"]] = {"losses": [float(x) for x in losses]}
    except Exception:
        results[job["tag"]] = {"error": traceback.format_exc()}
import torch.distributed as dist
world = dist.get_world_size() if dist.is_initialized() else 1
if world == 1 or dist.get_rank() == 0:
    Path(sys.argv[3]).write_text(json.dumps({"world": world, "results": results}))
'''

# Each case: tiny model, a few steps; global batch divisible by 2 processes.
CASES: dict[str, str] = {
    # U-Net fine-tuning (adapt.trainer.run_training); args: foundation folder
    "unet_finetune": r'''
import numpy as np
import pandas as pd
from cxrgen.adapt.unet_finetune import UNetFinetuneConfig, train_unet

def train(out, steps, stop_after, foundation):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 32, 32), dtype=np.uint8)
    prompts = ["a photo of a lung xray"] * 2 + ["a photo of a lung xray with pleural effusion"] * 2
    cfg = UNetFinetuneConfig(steps=steps, resolution=32, batch_size=4, checkpoint_every=100, num_threads=1,
                             seed=0, stop_after=stop_after)
    summary = train_unet(foundation, images, prompts, cfg, out, progress=False)
    if summary["finished"]:
        return pd.read_csv(Path(out) / "training_log.csv")["loss"].tolist()
    from cxrgen.checkpoint import read_checkpoint_state
    return [r["loss"] for r in read_checkpoint_state(Path(str(out) + ".partial") / "checkpoint")["extra"]["log"]]
''',
    # a Cheff stage (cheff.training.train_loop): the unconditional SDM on a random smoke-size autoencoder
    "cheff_sdm": r'''
import numpy as np
import pandas as pd
from cxrgen.cheff.autoencoder import AutoencoderConfig, build_autoencoder
from cxrgen.cheff.diffusion import SDMConfig, train_sdm

def train(out, steps, stop_after):
    torch.manual_seed(0)
    vae = build_autoencoder(AutoencoderConfig.preset("smoke")).eval()
    images = np.random.default_rng(0).integers(0, 255, (6, 16, 16), dtype=np.uint8)
    cfg = SDMConfig.preset("smoke", steps=steps, batch_size=4, checkpoint_every=100)
    ckpt = Path(str(out) + ".partial")
    train_sdm(vae, images, cfg, out, checkpoint_dir=ckpt, seed=0, progress=False, stop_after=stop_after)
    if (Path(out) / "training_log.csv").is_file():
        return pd.read_csv(Path(out) / "training_log.csv")["loss"].tolist()
    from cxrgen.checkpoint import read_checkpoint_state
    return [r["loss"] for r in read_checkpoint_state(ckpt)["extra"]["log"]]
''',
    # the miniature foundation (VAE phase in full, then the U-Net phase; the U-Net losses are compared)
    "foundation": r'''
from cxrgen.models.foundation import FoundationConfig, build_foundation

def train(out, steps, stop_after):
    cfg = FoundationConfig.preset("smoke", n_images=12, vae_steps=2, vae_batch=4, unet_steps=steps, unet_batch=4,
                                  checkpoint_every=100, preview_per_prompt=0, num_threads=1)
    summary = build_foundation(cfg, out, progress=False, stop_after=stop_after)
    if summary["finished"]:
        import pandas as pd
        log = pd.read_csv(Path(out) / "training_log.csv")
        return log[log.phase == "unet"]["loss"].tolist()
    return [r[2] for r in summary["log"] if r[0] == "unet"]
''',
}


# ------------------------------------------------------------------------------------------------ more trainers
# Reference classifier, ResNet-18 study and textual projection (issue 16). A case with a stop_after ends early
# through Engine.save: every process raises once the checkpoint of that step is written, so none waits for another.
# DenseNet-121, ResNet-18 and the Zafar CNN normalise with BatchNorm, which in N CPU processes sees each process's share
# of the batch (Engine.sync_batchnorm converts it on accelerators only: SyncBatchNorm has no CPU kernel) and so cannot
# match 1 process; these cases swap it for GroupNorm(1, C), which
# normalises each image alone, so the comparison checks everything else exactly: data order, augmentation draws,
# the split of the global batch, gradient averaging and the resume.
_TRAINER_CASE_TOOLS = r"""
import cxrgen.engine as engine_module
# cases share a process: the patch is installed once and reads the running case's limit
Stop = engine_module.__dict__.setdefault("_StopForTests", type("Stop", (Exception,), {}))
def stop_after_save(stop_after):
    engine_module._stop_after_for_tests = stop_after
    if getattr(engine_module.Engine.save, "stops_for_tests", False):
        return
    real = engine_module.Engine.save
    def save(self, *args, **kwargs):
        path = real(self, *args, **kwargs)
        step = kwargs.get("step", args[5] if len(args) > 5 else 0)
        limit = engine_module._stop_after_for_tests
        if limit and step >= limit:
            raise Stop
        return path
    save.stops_for_tests = True
    engine_module.Engine.save = save
def per_image_norm(build):
    def built(*args, **kwargs):
        model = build(*args, **kwargs)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, torch.nn.BatchNorm2d):
                    setattr(parent, name, torch.nn.GroupNorm(1, child.num_features))
        return model

    return built
"""

CASES.update({
    # a "step" is an epoch (the reference classifier checkpoints per epoch); args: folder with train/ and validate/
    "reference_classifier": _TRAINER_CASE_TOOLS + r"""
from cxrgen.checkpoint import read_checkpoint_state
from cxrgen.classify import reference
from cxrgen.classify.reference import ReferenceClassifierConfig, train_reference_classifier

reference._build_densenet = per_image_norm(reference._build_densenet)


def train(out, epochs, stop_after, data):
    stop_after_save(stop_after)
    cfg = ReferenceClassifierConfig(labels=("Pleural Effusion", "Cardiomegaly"), image_size=32, epochs=epochs,
                                    batch_size=8, lr=1e-3, seed=0)
    try:
        log = train_reference_classifier(Path(data) / "train", Path(data) / "validate", cfg, out, progress=False)["log"]
    except Stop:
        log = read_checkpoint_state(Path(str(out) + ".partial"))["extra"]["log"]
    return [row["train_loss"] for row in log]
""",
    # no checkpoints (a run is a few minutes even at paper scale): compared without the resume; args: none.
    # Also measured: the FLOP meter's record (out/flops.json, rank 0's) and the rows each process predicts in
    # evaluation (out/eval_rows_<rank>.json: a share of the validation and test sets, not all of them)
    "resnet_study": _TRAINER_CASE_TOOLS + r"""
import os
import numpy as np
from cxrgen.classify import resnet_study
from cxrgen.classify.resnet_study import ResNetStudyConfig, train_and_evaluate
from cxrgen.flop_meter import measure_step_flops

resnet_study.build_resnet18 = per_image_norm(resnet_study.build_resnet18)


def train(out, steps, stop_after):
    rng = np.random.default_rng(0)
    y = np.arange(24) % 2
    x = (rng.integers(0, 120, (24, 32, 32)) + 100 * y[:, None, None]).astype(np.uint8)
    cfg = ResNetStudyConfig(steps=steps, batch_size=8, eval_every=steps, image_size=32)
    eval_rows = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda m, a: eval_rows.append(len(a[0])) if isinstance(m, torch.nn.Linear) and not m.training else None)
    Path(out).mkdir(parents=True, exist_ok=True)
    with measure_step_flops(Path(out) / "flops.json"):
        losses = train_and_evaluate(x[:16], y[:16], x[16:], y[16:], x[16:], y[16:], cfg, seed=0)["losses"]
    hook.remove()
    (Path(out) / f"eval_rows_{os.environ.get('RANK', '0')}.json").write_text(json.dumps(sum(eval_rows)))
    return losses
""",
    # Zafar's attribute heads (binary BCE on the rows with a target); args: a sample folder whose blanks fall
    # unevenly between the processes. Compared: the trained model's probabilities on the training images
    "zafar_classifier": _TRAINER_CASE_TOOLS + r"""
from cxrgen.data.sampling import SampleFolderDataset
from cxrgen.engine import Engine
from cxrgen.classify import head_classifiers as heads

heads.SmallCNN = per_image_norm(heads.SmallCNN)


def train(out, epochs, stop_after, data):
    items = SampleFolderDataset(data)
    items.transform = heads._HeadItems(heads._attribute_targets(items.manifest), 1, 16)
    model = heads._fit(Engine(), items, {"sex": 1, "view": 1}, epochs, 8, 5e-3, 0, width=4)
    with torch.no_grad():
        logits = model(torch.stack([items[i][0] for i in range(len(items))]))
    return torch.sigmoid(torch.cat([logits["sex"][:, 0], logits["view"][:, 0]])).tolist()
""",
    # args: foundation folder
    "textual_projection": _TRAINER_CASE_TOOLS + r"""
import pandas as pd
from cxrgen.adapt.textual_projection import train_from_config
from cxrgen.checkpoint import read_checkpoint_state


def train(out, steps, stop_after, foundation):
    stop_after_save(stop_after)
    cfg = {"variant": "token", "steps": steps, "batch_size": 4, "eval_prompts": 3, "eval_every": steps,
           "checkpoint_every": 1, "warmup_steps": 1, "num_threads": 1}
    try:
        train_from_config(foundation, cfg, out, seed=0, progress=False)
        log = pd.read_csv(Path(out) / "training_log.csv")
        return log[log["phase"] == "train"]["loss"].tolist()
    except Stop:
        rows = json.loads(read_checkpoint_state(Path(str(out) + ".partial") / "checkpoint")["extra"]["rows"])
        return [r[2] for r in rows if r[0] == "train"]
""",
})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "ACCELERATE_USE_CPU": "true", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}


def run_cases(tmp_path: Path, jobs: list[dict], processes: int, tag: str) -> dict:
    """Run ``jobs`` (``{"case", "tag", "out", "steps", "stop_after", "args"}``) one after another in one launch of
    ``processes`` processes; return ``{job tag: {"losses": [...]} or {"error": traceback}, "world": n}``."""
    cases, job_file, result = tmp_path / "cases.json", tmp_path / f"{tag}_jobs.json", tmp_path / f"{tag}.json"
    cases.write_text(json.dumps(CASES))
    job_file.write_text(json.dumps([{**job, "out": str(job["out"]), "args": [str(a) for a in job.get("args", ())]}
                                    for job in jobs]))
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    argv = [str(script), str(cases), str(job_file), str(result)]
    if processes == 1:
        cmd = [sys.executable, *argv]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=900)
    assert proc.returncode == 0, f"{tag}: {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    out = json.loads(result.read_text())
    return {**out["results"], "world": out["world"]}


def run_two_process_checks(tmp_path: Path, runs: list[dict]) -> dict:
    """The three phases for every run (``{"case", "steps", "args", "resume"}``; ``resume: False`` = no checkpoint to
    resume: phase 2 runs all steps and phase 3 is skipped). Returns ``{case: {"single", "ddp", "resumed"}}``, each
    ``{"losses": [...], "world": n}`` or ``{"error": ...}``."""
    def job(run, phase, stop_after):
        return {"case": run["case"], "tag": run["case"], "out": tmp_path / run["case"] / phase,
                "steps": run["steps"], "stop_after": stop_after, "args": run.get("args", ())}

    single = run_cases(tmp_path, [job(r, "single", None) for r in runs], 1, "single")
    ddp = run_cases(tmp_path, [job(r, "ddp", r["steps"] - 1 if r.get("resume", True) else None) for r in runs], 2,
                    "ddp")
    resumed = run_cases(tmp_path, [job(r, "ddp", None) for r in runs if r.get("resume", True)], 1, "resumed")
    phases = {"single": single, "ddp": ddp, "resumed": resumed}
    return {r["case"]: {name: {**result.get(r["case"], {"error": "not run"}), "world": result["world"]}
                        for name, result in phases.items()} for r in runs}


def case_losses(result: dict, phase: str) -> list[float]:
    """The losses of one phase of a case, failing the test with the case's traceback if it raised."""
    assert "error" not in result[phase], f"{phase} run raised:\n{result[phase]['error']}"
    return result[phase]["losses"]


def check_two_processes_match_one(result: dict, case: str, steps: int, rtol: float = 1e-3) -> None:
    """The 1-process reference vs. the 2-process run stopped one step early and resumed in 1 process."""
    ref, two, resumed = (case_losses(result, phase) for phase in ("single", "ddp", "resumed"))
    assert len(ref) == steps and result["single"]["world"] == 1
    assert result["ddp"]["world"] == 2, "the 2-process run did not start 2 processes"
    assert len(two) == steps - 1
    assert len(resumed) == steps
    assert resumed[: steps - 1] == two, "the resumed run did not continue the 2-process log"
    np.testing.assert_allclose(resumed, ref, rtol=rtol, err_msg=f"{case}: 2 processes + resume vs 1 process")


# ------------------------------------------------------------------------------------------------ device placement
class ReachedBackward(Exception):
    """Raised by the spied ``Accelerator.backward``: the first loss was computed; its device is ``args[0]``."""


def check_on_engine_device(monkeypatch, train: Callable[[], object]) -> None:
    """Run ``train()`` with the engine's device set to ``torch.device("meta")`` until its first backward pass.

    Every module called meanwhile (trained or frozen, e.g. the VAE that encodes the training images) must hold
    its parameters and receive its tensor inputs on that device -- a global forward pre-hook records any that
    are elsewhere -- and the first loss must be a meta tensor. Meta tensors have shapes but no data, so a
    trainer that leaves a module or a batch on the CPU is caught here on a machine without any accelerator.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate's own override of the device its state picks (read when each Engine makes its Accelerator)
    monkeypatch.setenv("ACCELERATE_TORCH_DEVICE", "meta")

    def spy_backward(self, loss, **kwargs):
        raise ReachedBackward(loss.device)

    off_device: list[str] = []

    def hook(module, args):
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False),
                   *(a for a in args if torch.is_tensor(a) and a.ndim > 0)]
        off_device.extend(f"{type(module).__name__}: {tuple(t.shape)} on {t.device}" for t in tensors
                          if t.device.type != "meta")

    monkeypatch.setattr(Accelerator, "backward", spy_backward)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        with pytest.raises(ReachedBackward) as reached:
            train()
    finally:
        handle.remove()
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert not off_device, f"modules or inputs off the engine's device: {sorted(set(off_device))[:10]}"
    assert reached.value.args[0].type == "meta", f"the loss was computed on {reached.value.args[0]}"
