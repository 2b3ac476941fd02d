"""Every inference path puts its modules and its batches on the device :func:`cxrgen.engine.default_device` picks.

No GPU here, so the chosen device is ``meta`` (set through ``CXRGEN_DEVICE``, the override a user has): a module
left on the CPU, or a batch not moved, shows up as a CPU device in the spy below, which stops the forward pass
before any (impossible) computation on meta tensors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrgen import engine as devices  # the device helper lives in the engine module
from cxrgen.errors import InputError

META = torch.device("meta")


class Reached(Exception):
    """Raised by the spy once the first forward call of the watched module has been recorded."""


def spy(module: torch.nn.Module) -> dict:
    """Record the device of the first tensor input and of the parameters at the module's first forward call."""
    seen: dict = {}

    def hook(mod, args, kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        seen["input"] = tensors[0].device
        seen["params"] = {p.device for p in mod.parameters()}
        raise Reached

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def reached_meta(seen: dict) -> bool:
    return seen.get("input") == META and seen.get("params") == {META}


@pytest.fixture
def on_meta(monkeypatch):
    monkeypatch.setenv(devices.DEVICE_ENV, "meta")


# ---------------------------------------------------------------------------------------------- the helper
def test_default_device_precedence(monkeypatch):
    monkeypatch.delenv(devices.DEVICE_ENV, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.default_device() == torch.device("cpu")
    assert devices.default_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.default_device() == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert devices.default_device() == torch.device("cuda", 1)  # one GPU per process under a launcher
    monkeypatch.setenv(devices.DEVICE_ENV, "cpu")
    assert devices.default_device() == torch.device("cpu")  # the environment overrides auto
    assert devices.default_device("meta") == META  # an explicit request overrides the environment


def test_default_device_refuses_bad_values(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(devices.DEVICE_ENV, "gpu0")
    with pytest.raises(InputError, match="CXRGEN_DEVICE='gpu0'"):
        devices.default_device()
    with pytest.raises(InputError, match="no CUDA device"):
        devices.default_device("cuda")


# ---------------------------------------------------------------------------------------------- feature extraction
class _TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch.nn.Conv2d(1, 4, 3)


def test_feature_extractor_runs_on_chosen_device(on_meta):
    from cxrgen.metrics.features import ReferenceExtractor

    ext = ReferenceExtractor(model=_TinyNet(), dim=4, size=16, normalize="unit")
    assert ext.device == META
    seen = spy(ext.model.features)
    with pytest.raises(Reached):
        ext(np.zeros((2, 16, 16), np.uint8))
    assert reached_meta(seen)


def _save_reference_classifier(folder):
    from safetensors.torch import save_file

    from cxrgen.classify.reference import ARCHITECTURE, DENSENET121, _build_densenet

    folder.mkdir()
    labels = ["Pleural Effusion", "No Finding"]
    small = {**DENSENET121, "growth_rate": 4, "block_config": [1, 1, 1, 1], "num_init_features": 8}  # fast to build
    save_file(_build_densenet(len(labels), small).state_dict(), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "labels": labels, "thresholds": {l: 0.5 for l in labels}, "image_size": 32,
        "architecture": {"name": ARCHITECTURE, **small, "num_classes": len(labels)}}))
    return folder


def test_reference_classifier_runs_on_chosen_device(on_meta, tmp_path):
    from cxrgen.classify.reference import load_reference_classifier

    clf = load_reference_classifier(_save_reference_classifier(tmp_path / "clf"))
    for call in (clf.predict_proba, clf.features):
        seen = spy(clf.model.features)
        with pytest.raises(Reached):
            call(np.zeros((3, 40, 40), np.uint8))
        assert reached_meta(seen)
        clf.model.features._forward_pre_hooks.clear()
    cpu = load_reference_classifier(tmp_path / "clf", device="cpu")  # an explicit device wins
    assert {p.device for p in cpu.model.parameters()} == {torch.device("cpu")}
    assert cpu.predict_proba(np.zeros((2, 32, 32), np.uint8)).shape == (2, 2)


def test_zafar_head_classifier_runs_on_chosen_device(on_meta, tmp_path):
    from cxrgen.classify.head_classifiers import HeadClassifier, SmallCNN, load_head_classifier

    HeadClassifier(SmallCNN(1, {"sex": 1}, width=4), {"heads": {"sex": 1}, "channels": 1, "image_size": 16, "width": 4}).save(
        tmp_path / "clf")
    clf = load_head_classifier(tmp_path / "clf")
    seen = spy(clf.model)
    with pytest.raises(Reached):
        clf.predict([np.zeros((20, 20), np.uint8)] * 2)
    assert reached_meta(seen)


def test_resnet_study_predict_uses_model_device():
    from cxrgen.classify.resnet_study import build_resnet18, predict

    model = build_resnet18().to(META)
    seen = spy(model)
    with pytest.raises(Reached):
        predict(model, torch.zeros(2, 3, 16, 16))
    assert reached_meta(seen)


def test_text_encoder_runs_on_chosen_device(on_meta):
    from cxrgen.text.encoders import embed, load_encoder

    enc = load_encoder("minilm")
    seen = spy(enc.model)
    with pytest.raises(Reached):
        embed(["no acute findings", "small effusion"], enc, "mean", progress=False)
    assert reached_meta(seen)


# ---------------------------------------------------------------------------------------------- VAE study, sampling
def test_vae_study_and_adapted_pipeline_on_chosen_device(on_meta, foundation):
    from cxrgen.adapt.pipeline import load_adapted_pipeline
    from cxrgen.studies.vae_reconstruction import load_vae, reconstruct

    vae = load_vae(foundation)
    seen = spy(vae.encoder)
    with pytest.raises(Reached):
        reconstruct(vae, np.zeros((2, 32, 32), np.uint8), 32, generator=torch.Generator().manual_seed(0), progress=False)
    assert reached_meta(seen)

    pipeline = load_adapted_pipeline(foundation)
    assert pipeline.device == META and pipeline.pipe.text_encoder.device == META
    seen = spy(pipeline.pipe.text_encoder)
    with pytest.raises(Reached):
        pipeline.generate("a photo of a lung xray", n=1, seed=0, steps=1, progress=False)
    assert reached_meta(seen)


# ---------------------------------------------------------------------------------------------- Cheff inference
def _tiny_cheff(tmp_path):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel

    from cxrgen.cheff.autoencoder import load_autoencoder
    from cxrgen.cheff.diffusion import SDM
    from cxrgen.cheff.super_resolution import META_FILE as SR_META, SuperResolution

    torch.manual_seed(0)
    AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8), layers_per_block=1,
                  latent_channels=2, norm_num_groups=4, sample_size=16).save_pretrained(tmp_path / "ae")
    unet = dict(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4,
                down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
    sdm = SDM(UNet2DModel(sample_size=8, in_channels=2, out_channels=2, **unet), DDIMScheduler(), 1.0, ddim_steps=2)
    sdm.save(tmp_path / "sdm")
    sr_dir = tmp_path / "sr"
    sr_dir.mkdir()
    UNet2DModel(sample_size=16, in_channels=2, out_channels=1, **unet).save_pretrained(sr_dir / "unet")
    DDIMScheduler().save_pretrained(sr_dir / "scheduler")
    (sr_dir / SR_META).write_text(json.dumps({"config": {"ddim_steps": 2}}))
    return load_autoencoder(tmp_path / "ae"), SDM.load(tmp_path / "sdm"), SuperResolution.load(sr_dir)


def test_cheff_inference_on_chosen_device(monkeypatch, tmp_path):
    from cxrgen.cheff.autoencoder import decode, encode
    from cxrgen.cheff.cascade import sample_cascade
    from cxrgen.cheff.inpainting import inpaint

    monkeypatch.setenv(devices.DEVICE_ENV, "cpu")
    vae_cpu, sdm_cpu, _ = _tiny_cheff(tmp_path)
    images = np.zeros((2, 16, 16), np.uint8)
    z_cpu = encode(vae_cpu, images)
    monkeypatch.setenv(devices.DEVICE_ENV, "meta")
    vae, sdm, sr = _tiny_cheff(tmp_path / "meta")
    assert {p.device for m in (vae, sdm.unet, sr.unet) for p in m.parameters()} == {META}
    for call, module in ((lambda: encode(vae, images), vae.encoder), (lambda: decode(vae, z_cpu), vae.decoder),
                         (lambda: sample_cascade(sdm, vae, sr, 2, progress=False), sdm.unet),
                         (lambda: sr.upscale(np.zeros((2, 8, 8), np.uint8), progress=False), sr.unet),
                         (lambda: inpaint(sdm, vae_cpu, images, np.ones((16, 16), bool)), sdm.unet)):
        module._forward_pre_hooks.clear()
        seen = spy(module)
        with pytest.raises(Reached):
            call()
        assert reached_meta(seen), module
