"""Every trainer in 1 process and as 2 CPU processes (gloo) with the same global batch: the losses agree and the
2-process checkpoint resumes in 1 process (tests/engine_harness.py); and every trainer on the engine's device."""

import json

import numpy as np
import pandas as pd
import pytest

from engine_harness import case_losses, check_on_engine_device, check_two_processes_match_one, run_two_process_checks

# the module fixture below runs every case once: its tests stay on one pytest-xdist worker
pytestmark = pytest.mark.xdist_group("two_processes")

STEPS = {"unet_finetune": 3, "cheff_sdm": 3, "foundation": 3, "reference_classifier": 2, "textual_projection": 3,
         "resnet_study": 3, "zafar_classifier": 3}


@pytest.fixture(scope="module")
def two_process_runs(foundation, tmp_path_factory):
    """Every case of engine_harness.CASES run once per phase (three launches in all, not three per trainer)."""
    from test_reference_classifier import _write_folder
    from test_zafar import _write_sample

    tmp = tmp_path_factory.mktemp("two_processes")
    _write_folder(tmp / "classifier_data" / "train", 16, 0)
    _write_folder(tmp / "classifier_data" / "validate", 8, 1)
    # Zafar: blanks fall unevenly between the processes (sex unknown on 5 of the first 8 rows)
    zafar_data = _write_sample(tmp / "zafar_data", 16, 0)
    manifest = pd.read_csv(zafar_data / "manifest.csv")
    manifest.loc[[0, 1, 2, 4, 6, 9], "sex"] = np.nan
    manifest.to_csv(zafar_data / "manifest.csv", index=False)
    args = {"unet_finetune": [foundation], "textual_projection": [foundation],
            "reference_classifier": [tmp / "classifier_data"], "zafar_classifier": [zafar_data]}
    no_checkpoints = {"resnet_study", "zafar_classifier"}  # compared without the resume
    runs = [{"case": case, "steps": steps, "args": args.get(case, []), "resume": case not in no_checkpoints}
            for case, steps in STEPS.items()]
    return tmp, run_two_process_checks(tmp, runs)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["unet_finetune", "cheff_sdm", "foundation", "reference_classifier",
                                  "textual_projection"])
def test_trainer_two_processes_match_one_and_resume(two_process_runs, case):
    """Adaptation trainer (U-Net), a Cheff stage, the foundation, the reference classifier (a step is an epoch)
    and the textual projection: 2 processes stopped a step early, resumed in 1, match 1 process."""
    check_two_processes_match_one(two_process_runs[1][case], case, STEPS[case])


@pytest.mark.slow
def test_resnet_study_two_processes_match_one(two_process_runs):
    tmp, runs = two_process_runs
    one, two = (case_losses(runs["resnet_study"], phase) for phase in ("single", "ddp"))
    assert runs["resnet_study"]["ddp"]["world"] == 2 and len(one) == 3
    np.testing.assert_allclose(two, one, rtol=1e-3)
    # the FLOP meter: rank 0 writes the whole step's FLOPs (its share x 2), the same as one process counts
    flops_one, flops_two = (json.loads((tmp / "resnet_study" / phase / "flops.json").read_text())
                            for phase in ("single", "ddp"))
    assert flops_two["processes"] == 2 and flops_two["rank0_flops_per_step"] * 2 == flops_two["flops_per_step"]
    assert flops_two["flops_per_step"] == flops_one["flops_per_step"] > 0
    # evaluation (8 validation + 8 test images) is shared: each process predicts half, one process all
    rows = {phase: [json.loads(f.read_text()) for f in sorted((tmp / "resnet_study" / phase).glob("eval_rows_*.json"))]
            for phase in ("single", "ddp")}
    assert rows == {"single": [16], "ddp": [8, 8]}


@pytest.mark.slow
def test_zafar_classifier_two_processes_match_one(two_process_runs):
    """The binary heads' BCE is the mean over the global batch's targets (blanks fall unevenly between the
    processes), so 2 processes train what 1 does (compared: the trained model's probabilities on its images)."""
    runs = two_process_runs[1]["zafar_classifier"]
    one, two = case_losses(runs, "single"), case_losses(runs, "ddp")
    assert runs["ddp"]["world"] == 2 and len(one) == 32
    np.testing.assert_allclose(two, one, rtol=1e-3)


def test_adaptation_trainer_puts_everything_on_the_engine_device(foundation, tmp_path, monkeypatch):
    from cxrgen.adapt.unet_finetune import UNetFinetuneConfig, train_unet

    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    cfg = UNetFinetuneConfig(steps=1, resolution=32, batch_size=2, num_threads=1)
    check_on_engine_device(monkeypatch, lambda: train_unet(foundation, images, ["a lung xray"] * 2, cfg,
                                                           tmp_path / "out", progress=False))


def test_cheff_stage_puts_everything_on_the_engine_device(tmp_path, monkeypatch):
    from cxrgen.cheff.super_resolution import SRConfig, train_sr

    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    cfg = SRConfig.preset("smoke", steps=1, batch_size=2, crop_size=16)
    check_on_engine_device(monkeypatch, lambda: train_sr(images, cfg, tmp_path / "sr", progress=False))


def test_foundation_puts_everything_on_the_engine_device(tmp_path, monkeypatch):
    from cxrgen.models.foundation import FoundationConfig, build_foundation

    cfg = FoundationConfig.preset("smoke", n_images=8, vae_steps=1, vae_batch=2, unet_steps=1, unet_batch=2,
                                  preview_per_prompt=0)
    check_on_engine_device(monkeypatch, lambda: build_foundation(cfg, tmp_path / "f", progress=False))
