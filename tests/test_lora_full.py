"""DreamBooth + LoRA and full fine-tuning (Zafar et al.): diffusers-loadable LoRA, stacking, frozen weights, resume."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrgen.adapt.dreambooth_lora import (
    LORA_FILE,
    DreamBoothLoRAConfig,
    artefact_bytes,
    load_step_samples,
    load_tokenizer,
    n_tokens,
    train_lora,
    zafar_training_set,
)
from cxrgen.adapt.full_finetune import FullFinetuneConfig, train_full
from cxrgen.adapt.pipeline import load_adapted_pipeline
from cxrgen.adapt.methods import train_from_sample
from cxrgen.data.prompts import zafar_prompt
from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError
from cxrgen.models.registry import load_pipeline
from threads import TEST_THREADS

TINY = dict(resolution=32, batch_size=2, checkpoint_every=2, num_threads=TEST_THREADS, sample_inference_steps=2)
PROMPTS = ["chest x-ray, male PA, normal"] * 3 + ["chest x-ray, female AP, pleural effusion"] * 3


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    out = [(30 + 150 * (((yy - 20) ** 2 + (xx - 20) ** 2) < (10 + i) ** 2) + rng.integers(0, 40, (40, 40)))
           .clip(0, 255).astype(np.uint8) for i in range(6)]
    return np.stack(out)


@pytest.fixture(scope="module")
def lora_dir(foundation, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "adapter"
    cfg = DreamBoothLoRAConfig(steps=4, lr=5e-2, rank=2, alpha=4.0, prior_preservation=True, num_class_images=2,
                               class_sample_steps=2, class_batch_size=2, sample_steps=(0, 2, 4), sample_n=1, **TINY)
    summary = train_lora(foundation, images, PROMPTS, cfg, out, progress=False)
    assert summary["finished"] and summary["step"] == 4
    return out


def _gen(pipe, prompt="chest x-ray, male PA, normal", seed=3):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=2, guidance_scale=2.0, generator=g, output_type="np",
                height=32, width=32).images[0]


def test_lora_loads_with_diffusers_and_changes_outputs_only_when_enabled(foundation, lora_dir):
    adapter = json.loads((lora_dir / "adapter.json").read_text())
    assert adapter["method"] == "lora" and adapter["rank"] == 2 and adapter["prior_preservation"]
    assert (lora_dir / LORA_FILE).is_file() and artefact_bytes(lora_dir) == (lora_dir / LORA_FILE).stat().st_size
    assert 0 < adapter["trainable_params"] < adapter["total_params"] / 5
    base = _gen(load_pipeline(foundation))
    pipe = load_pipeline(foundation)
    pipe.load_lora_weights(str(lora_dir), adapter_name="cxr")  # diffusers' own loader
    on = _gen(pipe)
    assert np.abs(on - base).max() > 1e-3
    pipe.disable_lora()
    np.testing.assert_allclose(_gen(pipe), base, atol=1e-5)
    pipe.enable_lora()
    np.testing.assert_allclose(_gen(pipe), on, atol=1e-5)
    pipe.set_adapters(["cxr"], adapter_weights=[0.0])  # weight 0 = the foundation
    np.testing.assert_allclose(_gen(pipe), base, atol=1e-5)
    # our loader gives the same images as diffusers' directly
    ours = load_adapted_pipeline(foundation, lora_dir, device="cpu")
    assert ours.method == "lora"
    np.testing.assert_allclose(_gen(ours.pipe), on, atol=1e-5)


def test_lora_stacking_weights(foundation, lora_dir, images, tmp_path):
    cfg = DreamBoothLoRAConfig(steps=2, lr=5e-2, rank=2, prior_preservation=False, seed=1, **TINY)
    second = tmp_path / "second"
    train_lora(foundation, images, PROMPTS, cfg, second, progress=False)
    only_first = load_adapted_pipeline(foundation, [lora_dir, second], adapter_weights=[1.0, 0.0], device="cpu")
    single = load_adapted_pipeline(foundation, lora_dir, device="cpu")
    np.testing.assert_allclose(_gen(only_first.pipe), _gen(single.pipe), atol=1e-5)
    both = load_adapted_pipeline(foundation, [lora_dir, second], adapter_weights=[1.0, 1.0], device="cpu")
    assert np.abs(_gen(both.pipe) - _gen(single.pipe)).max() > 1e-4
    assert both.adapter["weights"] == [1.0, 1.0]
    with pytest.raises(InputError, match="one weight each"):
        load_adapted_pipeline(foundation, [lora_dir, second], adapter_weights=[1.0])


def test_lora_keeps_frozen_weights_bit_identical(foundation, lora_dir):
    base = load_pipeline(foundation)
    pipe = load_pipeline(foundation)
    pipe.load_lora_weights(str(lora_dir))
    base_unet = base.unet.state_dict()
    for name, value in pipe.unet.state_dict().items():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(value, base_unet[key]), name
    for a, b in zip(base.text_encoder.state_dict().values(), pipe.text_encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_step_samples_and_prior_class_images(lora_dir):
    imgs, man = load_step_samples(lora_dir)
    assert sorted(man["step"].unique()) == [0, 2, 4] and imgs.shape == (3, 32, 32)
    assert (man["prompt"] == PROMPTS[0]).all()
    log = pd.read_csv(lora_dir / "training_log.csv")
    assert {"instance_loss", "prior_loss"} <= set(log.columns) and len(log) == 4


def test_full_finetune_trains_unet_and_text_encoder_keeps_vae(foundation, images, tmp_path):
    out = tmp_path / "full"
    cfg = FullFinetuneConfig(steps=3, lr=1e-2, sample_steps=(0, 3), sample_n=1, **TINY)
    summary = train_full(foundation, images, PROMPTS, cfg, out, progress=False)
    adapter = json.loads((out / "adapter.json").read_text())
    assert adapter["method"] == "full" and adapter["trainable_params"] == adapter["total_params"]
    assert summary["trainable_params"] == adapter["trainable_params"]
    base = load_pipeline(foundation)
    ours = load_adapted_pipeline(foundation, out, device="cpu")
    assert ours.method == "full"
    for part in ("unet", "text_encoder"):
        a, b = getattr(base, part).state_dict(), getattr(ours.pipe, part).state_dict()
        assert any(not torch.equal(a[k], b[k]) for k in a), f"{part} did not change"
    for k, v in base.vae.state_dict().items():
        assert torch.equal(v, ours.pipe.vae.state_dict()[k])
    assert artefact_bytes(out) > 0
    # full artefact > LoRA artefact is checked in test_zafar's method table; here: the samples exist
    assert len(load_step_samples(out)[1]) == 2


def test_full_finetune_resumes_to_the_same_weights(foundation, images, tmp_path):
    cfg = dict(steps=4, lr=1e-2, train_text_encoder=True, **TINY)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_full(foundation, images, PROMPTS, FullFinetuneConfig(**cfg), straight, progress=False)
    first = train_full(foundation, images, PROMPTS, FullFinetuneConfig(**cfg, stop_after=2), resumed, progress=False)
    assert not first["finished"] and not resumed.exists()
    second = train_full(foundation, images, PROMPTS, FullFinetuneConfig(**cfg), resumed, progress=False)
    assert second["finished"] and second["resumed_from"] == 2
    a = load_adapted_pipeline(foundation, straight, device="cpu").pipe.unet.state_dict()
    b = load_adapted_pipeline(foundation, resumed, device="cpu").pipe.unet.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_training_set_selection_and_dispatch(foundation, images, tmp_path):
    sample = tmp_path / "sample"
    (sample / "images").mkdir(parents=True)
    rows = []
    for i, img in enumerate(images):
        Image.fromarray(img).save(sample / "images" / f"{i}.png")
        normal = i < 3
        rows.append({"image_id": str(i), "file": f"images/{i}.png", "sex": "M" if i % 2 else "F", "age": 50 + i,
                     "view": "PA", **{label: np.nan for label in CHEXPERT_LABELS},
                     "No Finding": 1.0 if normal else np.nan, "Pleural Effusion": np.nan if normal else 1.0})
    rows[5].update({label: 1.0 for label in ("Atelectasis", "Cardiomegaly", "Edema", "Lung Opacity")})
    pd.DataFrame(rows).to_csv(sample / "manifest.csv", index=False)
    man = pd.read_csv(sample / "manifest.csv")
    _, sub, prompts = zafar_training_set(images, man, FullFinetuneConfig(normal_only=True, prompt_level="compact"))
    assert list(sub["image_id"].astype(str)) == ["0", "1", "2"]
    assert prompts == ["chest x-ray, female PA, normal", "chest x-ray, male PA, normal",
                       "chest x-ray, female PA, normal"]
    _, sub, _ = zafar_training_set(images, man, FullFinetuneConfig(max_images=4, seed=1))
    assert len(sub) == 4 and list(sub.index) == [0, 1, 2, 3]
    # the compact prompt of the five-finding image overflows the tokenizer's context; fitted, it lists fewer
    tok = load_tokenizer(foundation)
    assert n_tokens(tok, zafar_prompt(man.iloc[5], "compact")) > tok.model_max_length
    _, sub, prompts = zafar_training_set(images, man, FullFinetuneConfig(prompt_level="compact"), tokenizer=tok)
    assert all(n_tokens(tok, p) <= tok.model_max_length for p in prompts)
    assert sub["findings_dropped"].iloc[5] > 0 and (sub["findings_dropped"].drop(5) == 0).all()
    assert prompts[5].startswith("chest x-ray, male PA, atelectasis") and prompts[4].endswith("pleural effusion")
    summary = train_from_sample("lora", foundation, sample, {"steps": 1, "prior_preservation": False,
                                                             "prompt_level": "compact", **TINY},
                                tmp_path / "lora", seed=0, progress=False)
    assert summary["method"] == "lora" and summary["finished"]
    adapter = json.loads((tmp_path / "lora" / "adapter.json").read_text())
    assert adapter["findings_dropped_share"] == 1 / 6 and adapter["max_tokens"] <= adapter["context_length"]
    with pytest.raises(InputError, match="prompt_level"):
        DreamBoothLoRAConfig.from_dict({"prompt_level": "fancy"})
    with pytest.raises(InputError, match="sample_steps"):
        FullFinetuneConfig.from_dict({"steps": 5, "sample_steps": [10]})
    with pytest.raises(InputError, match="unknown DreamBoothLoRAConfig keys"):
        DreamBoothLoRAConfig.from_dict({"rnak": 4})
