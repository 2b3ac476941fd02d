"""Preemption: a training job killed with SIGTERM (what SLURM sends on preemption or time-out) resumes from
its last checkpoint on rerun and ends bit-identical to an uninterrupted run with the same seed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cxrgen.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint

# U-Net fine-tuning on a tiny foundation (as tests/test_adapt_ti_unet.py builds it): long enough to be
# killed in the middle, a checkpoint every 2 steps.
WORKER = r"""
import json, sys
from pathlib import Path
import numpy as np, torch
from cxrgen.adapt.unet_finetune import UNetFinetuneConfig, train_unet

foundation, out = sys.argv[1], Path(sys.argv[2])
rng = np.random.default_rng(0)
yy, xx = np.mgrid[:40, :40]
images = np.stack([(30 + 150 * (((yy - 20) ** 2 + (xx - 20) ** 2) < (10 + i) ** 2)
                    + rng.integers(0, 40, (40, 40))).clip(0, 255).astype(np.uint8) for i in range(6)])
prompts = ["a photo of a lung xray"] * 3 + ["a photo of a lung xray with pleural effusion"] * 3
cfg = UNetFinetuneConfig(steps=STEPS, resolution=32, batch_size=2, checkpoint_every=2, num_threads=1, seed=0)
summary = train_unet(foundation, images, prompts, cfg, out, progress=False)
print("SUMMARY " + json.dumps({k: summary[k] for k in ("finished", "step", "resumed_from")}), flush=True)
"""
STEPS = 40


def _worker(tmp_path: Path) -> Path:
    script = tmp_path / "train_worker.py"
    script.write_text(WORKER.replace("STEPS", str(STEPS)))
    return script


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(script, foundation, out):
    proc = subprocess.run([sys.executable, str(script), str(foundation), str(out)], capture_output=True, text=True,
                          env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("SUMMARY ")][-1]
    import json

    return json.loads(line[len("SUMMARY "):])


def _unet_weights(out: Path) -> dict:
    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_sigterm_mid_training_resumes_to_the_same_final_state(foundation, tmp_path):
    script = _worker(tmp_path)
    # the uninterrupted reference
    ref = _run(script, foundation, tmp_path / "ref")
    assert ref == {"finished": True, "step": STEPS, "resumed_from": 0}

    # the same training, SIGTERMed once its first checkpoint is on disk
    out = tmp_path / "killed"
    ckpt = tmp_path / "killed.partial" / "checkpoint"
    proc = subprocess.Popen([sys.executable, str(script), str(foundation), str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 300
    while not has_checkpoint(ckpt):
        assert proc.poll() is None, f"training ended before its first checkpoint:\n{proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, stdout[-2000:], stderr[-2000:])
    assert not out.exists()  # no half-written output folder

    # what SIGTERM left is a complete, loadable checkpoint of a step short of the end
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(foundation, subfolder="unet")
    state = load_checkpoint(ckpt, {"unet": unet}, restore_rng=False)
    assert 2 <= state["step"] < STEPS and state["step"] % 2 == 0
    assert len(state["extra"]["log"]) == state["step"]

    # the rerun resumes from it and ends bit-identical to the uninterrupted run
    resumed = _run(script, foundation, out)
    assert resumed["finished"] and resumed["step"] == STEPS
    assert resumed["resumed_from"] >= state["step"] > 0
    assert not (tmp_path / "killed.partial").exists()  # checkpoints dropped once the output is complete
    wa, wb = _unet_weights(tmp_path / "ref"), _unet_weights(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    log_a = (tmp_path / "ref" / "training_log.csv").read_text().splitlines()
    log_b = (out / "training_log.csv").read_text().splitlines()
    # same steps and losses (the seconds column differs)
    assert [l.split(",")[:2] for l in log_a] == [l.split(",")[:2] for l in log_b]


class _Crash(BaseException):
    pass


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_checkpoint_write_interrupted_anywhere_is_never_corrupt(tmp_path, monkeypatch, fail_at):
    """A kill while a checkpoint replaces the previous one leaves the old one, the new one, or none, never a mix."""
    import cxrgen.io as cio

    model = torch.nn.Linear(3, 2)
    ckpt = tmp_path / "checkpoint"
    save_checkpoint(ckpt, {"m": model}, step=2)
    old = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    calls = {"n": 0}
    real_replace, real_rmtree = os.replace, cio.shutil.rmtree

    def counted(real):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == fail_at:
                if real is real_rmtree:  # die half-way through deleting a tree
                    top = Path(args[0])
                    files = sorted(p for p in top.rglob("*") if p.is_file())
                    if files:
                        files[0].unlink()
                raise _Crash()
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(cio.os, "replace", counted(real_replace))
    monkeypatch.setattr(cio.shutil, "rmtree", counted(real_rmtree))
    try:
        save_checkpoint(ckpt, {"m": model}, step=4)
    except _Crash:
        pass
    monkeypatch.undo()
    if has_checkpoint(ckpt):
        fresh = torch.nn.Linear(3, 2)
        state = load_checkpoint(ckpt, {"m": fresh}, restore_rng=False)
        assert state["step"] in (2, 4)
        expected = model.weight if state["step"] == 4 else old
        assert torch.equal(fresh.weight, expected)
