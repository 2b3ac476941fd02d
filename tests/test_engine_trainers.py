"""The trainers converted to the engine by issue 16 (reference classifier, Zafar classifiers, ResNet-18 study,
textual projection): runtime settings from the config reach the engine, and gradient accumulation keeps the
optimizer-step count."""

from __future__ import annotations

import numpy as np
import pytest

from cxrgen.engine import RuntimeConfig
from cxrgen.errors import InputError


def test_runtime_keys_split_from_trainer_settings():
    runtime, rest = RuntimeConfig.split({"lr": 0.1, "mixed_precision": "bf16", "gradient_accumulation_steps": 2})
    assert runtime == RuntimeConfig(mixed_precision="bf16", gradient_accumulation_steps=2) and rest == {"lr": 0.1}
    assert RuntimeConfig.split(None) == (RuntimeConfig(), {})
    with pytest.raises(InputError, match=r"zafar.attribute_classifier.gradient_accumulation_steps=0"):
        RuntimeConfig.split({"gradient_accumulation_steps": 0}, "zafar.attribute_classifier")


def test_resnet_study_accumulates_to_the_configured_steps():
    from cxrgen.classify.resnet_study import ResNetStudyConfig, train_and_evaluate

    x = np.random.default_rng(0).integers(0, 255, (8, 20, 20), dtype=np.uint8)
    y = np.arange(8) % 2
    cfg = ResNetStudyConfig(steps=3, batch_size=4, eval_every=1, image_size=16)
    res = train_and_evaluate(x, y, x, y, x, y, cfg, seed=0, runtime=RuntimeConfig(gradient_accumulation_steps=2))
    assert len(res["losses"]) == 3 and res["best_step"] in (1, 2, 3)


def test_textual_projection_takes_runtime_from_its_settings(foundation, tmp_path, monkeypatch):
    import cxrgen.adapt.textual_projection as tp

    seen = []
    real = tp.Engine

    def engine(runtime=None):
        seen.append(runtime)
        return real(runtime)

    monkeypatch.setattr(tp, "Engine", engine)
    settings = {"variant": "token", "steps": 2, "batch_size": 2, "eval_prompts": 2, "gradient_accumulation_steps": 2}
    summary = tp.train_from_config(foundation, settings, tmp_path / "proj", seed=0, progress=False)
    assert seen == [RuntimeConfig(gradient_accumulation_steps=2)]
    assert summary["steps"] == 2
