"""Every trainer in 1 process and as 2 CPU processes (gloo) with the same global batch: the losses agree and the
2-process checkpoint resumes in 1 process (tests/engine_harness.py)."""

import pytest

from engine_harness import check_on_engine_device, check_two_processes_match_one


@pytest.mark.slow
def test_adaptation_trainer_two_processes_match_one(foundation, tmp_path):
    check_two_processes_match_one("unet_finetune", tmp_path, [foundation])


def test_adaptation_trainer_puts_everything_on_the_engine_device(foundation, tmp_path, monkeypatch):
    import numpy as np

    from cxrgen.adapt.unet_finetune import UNetFinetuneConfig, train_unet

    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    cfg = UNetFinetuneConfig(steps=1, resolution=32, batch_size=2, num_threads=1)
    check_on_engine_device(monkeypatch, lambda: train_unet(foundation, images, ["a lung xray"] * 2, cfg,
                                                           tmp_path / "out", progress=False))


@pytest.mark.slow
def test_cheff_stage_two_processes_match_one(tmp_path):
    check_two_processes_match_one("cheff_sdm", tmp_path)


@pytest.mark.slow
def test_foundation_two_processes_match_one(tmp_path):
    check_two_processes_match_one("foundation", tmp_path)


def test_cheff_stage_puts_everything_on_the_engine_device(tmp_path, monkeypatch):
    import numpy as np

    from cxrgen.cheff.super_resolution import SRConfig, train_sr

    images = np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8)
    cfg = SRConfig.preset("smoke", steps=1, batch_size=2, crop_size=16)
    check_on_engine_device(monkeypatch, lambda: train_sr(images, cfg, tmp_path / "sr", progress=False))


def test_foundation_puts_everything_on_the_engine_device(tmp_path, monkeypatch):
    from cxrgen.models.foundation import FoundationConfig, build_foundation

    cfg = FoundationConfig.preset("smoke", n_images=8, vae_steps=1, vae_batch=2, unet_steps=1, unet_batch=2,
                                  preview_per_prompt=0)
    check_on_engine_device(monkeypatch, lambda: build_foundation(cfg, tmp_path / "f", progress=False))
