"""The trainers converted to the engine by issue 16 (reference classifier, Zafar classifiers, ResNet-18 study,
textual projection): runtime settings from the config reach the engine, and gradient accumulation keeps the
optimizer-step count."""

from __future__ import annotations


import numpy as np
import pytest
import torch

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


# ---------------------------------------------------------------------------------------------- trainers
# Each trainer runs with the engine's device set to meta until its first backward pass
# (engine_harness.check_on_engine_device): every module it calls and every batch must be on that device. Losses
# that mask rows by their (NaN) targets need values, which meta tensors lack: a plain mean stands in for them.
def _meta_safe_loss(logits, *args):
    return logits.float().mean()


def test_reference_classifier_trains_on_engine_device(tmp_path, monkeypatch):
    from engine_harness import check_on_engine_device
    from test_reference_classifier import LABELS, SIZE, _write_folder

    from cxrgen.classify import reference
    from cxrgen.classify.reference import ReferenceClassifierConfig, train_reference_classifier

    monkeypatch.setattr(reference, "masked_bce", _meta_safe_loss)
    train, val = _write_folder(tmp_path / "train", 8, 0), _write_folder(tmp_path / "validate", 4, 1)
    cfg = ReferenceClassifierConfig(labels=LABELS, image_size=SIZE, epochs=1, batch_size=4)
    check_on_engine_device(monkeypatch, lambda: train_reference_classifier(train, val, cfg, tmp_path / "clf",
                                                                           progress=False))


def test_zafar_classifiers_train_on_engine_device(tmp_path, monkeypatch):
    from engine_harness import check_on_engine_device
    from test_zafar import _write_sample

    from cxrgen.classify import head_classifiers as heads

    monkeypatch.setattr(heads, "_head_loss", _meta_safe_loss)
    train, val = _write_sample(tmp_path / "train", 8, 0), _write_sample(tmp_path / "val", 4, 1)
    check_on_engine_device(monkeypatch, lambda: heads.train_attribute_classifier(train, val, tmp_path / "attr",
                                                                                 epochs=1, batch_size=4))
    check_on_engine_device(monkeypatch, lambda: heads.train_corpus_classifier(
        tmp_path / "corpus", n_images=40, epochs=1, batch_size=8, augment_copies=0))


def test_resnet_study_trains_on_engine_device(monkeypatch):
    from engine_harness import check_on_engine_device

    from cxrgen.classify.resnet_study import ResNetStudyConfig, train_and_evaluate

    x = np.random.default_rng(0).integers(0, 255, (6, 20, 20), dtype=np.uint8)
    y = np.arange(6) % 2
    cfg = ResNetStudyConfig(steps=1, batch_size=4, image_size=16)
    check_on_engine_device(monkeypatch, lambda: train_and_evaluate(x, y, x, y, x, y, cfg, seed=0))


def test_textual_projection_trains_on_engine_device(foundation, tmp_path, monkeypatch):
    """The frozen encoders and the projection are built on the engine's device (the meta run of the harness cannot
    reach the first backward here: transformers' attention mask inspects values)."""
    import cxrgen.adapt.textual_projection as tp
    import cxrgen.engine as engine_module

    make = engine_module.make_accelerator

    def on_meta(*args, **kwargs):
        accelerator = make(*args, **kwargs)
        accelerator.state.device = torch.device("meta")
        return accelerator

    class Reached(Exception):
        pass

    def prepare(foundation, cfg, device=None, pipe=None):
        raise Reached(device)

    monkeypatch.setattr(engine_module, "make_accelerator", on_meta)
    monkeypatch.setattr(tp, "prepare", prepare)
    with pytest.raises(Reached) as reached:
        tp.train_from_config(foundation, {"variant": "token", "steps": 1}, tmp_path / "proj", seed=0, progress=False)
    assert reached.value.args[0] == torch.device("meta")
