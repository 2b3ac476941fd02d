"""Shared adaptation trainer, textual inversion, U-Net fine-tuning (with / without prior preservation)."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from cxrgen.adapt.config import TrainConfig, class_embedding_settings
from cxrgen.adapt.methods import train_from_sample
from cxrgen.adapt.textual_inversion import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    TextualInversionConfig,
    add_placeholder_tokens,
    train_textual_inversion,
)
from cxrgen.adapt.trainer import BatchStream, images_to_tensor, train_scheduler_from
from cxrgen.adapt.unet_finetune import UNetFinetuneConfig, prior_preservation_loss, train_unet
from cxrgen.data.prompts import CHAMBON_PROMPTS
from cxrgen.diffusion import diffusion_loss
from cxrgen.errors import InputError
from cxrgen.models.registry import load_pipeline
from threads import TEST_THREADS

TINY = dict(resolution=32, batch_size=2, checkpoint_every=2, num_threads=TEST_THREADS)


@pytest.fixture(scope="module")
def images():
    # a bright "lung field" on a dark background, with per-image variation (uint8, grayscale, 40 px)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:40, :40]
    out = []
    for i in range(6):
        r = 10 + i
        img = 30 + 150 * (((yy - 20) ** 2 + (xx - 20) ** 2) < r * r) + rng.integers(0, 40, (40, 40))
        out.append(img.clip(0, 255).astype(np.uint8))
    return np.stack(out)


PROMPTS = [CHAMBON_PROMPTS["normal"]] * 3 + [CHAMBON_PROMPTS["effusion"]] * 3


def _embedding_rows(folder):
    pipe = load_pipeline(folder)
    return pipe.text_encoder.get_input_embeddings().weight.detach().clone()


# ---------------------------------------------------------------------------------------------------
# data helpers and the loss extension


def test_images_to_tensor_and_batch_stream():
    img = np.zeros((2, 16, 24), np.uint8)
    img[:, :, 4:20] = 255  # the centre 16 columns are white: the centre crop keeps exactly them
    x = images_to_tensor(img, 16)
    assert x.shape == (2, 3, 16, 16) and torch.equal(x, torch.ones_like(x))
    y = images_to_tensor(np.full((1, 40, 60), 64, np.uint8), 32)  # shortest side resized, then cropped
    assert y.shape == (1, 3, 32, 32) and torch.allclose(y, torch.full_like(y, 64 / 127.5 - 1), atol=1e-5)
    assert images_to_tensor(np.full((1, 8, 8, 3), 0, np.uint8), 8).eq(-1).all()
    with pytest.raises(InputError, match="uint8"):
        images_to_tensor(np.zeros((1, 8, 8), np.float32), 8)
    with pytest.raises(InputError, match=r"\(N, H, W\)"):
        images_to_tensor(np.zeros((8, 8), np.uint8), 8)
    s = BatchStream(5, 2, seed=3)
    first_epoch = torch.cat([s.batch(k) for k in range(5)])  # 10 draws = two epochs of 5
    assert sorted(first_epoch[:5].tolist()) == list(range(5))
    assert sorted(first_epoch[5:].tolist()) == list(range(5))
    assert torch.equal(BatchStream(5, 2, seed=3).batch(4), s.batch(4))  # stateless: resumable


def test_diffusion_loss_reduction_and_noise_offset(foundation):
    pipe = load_pipeline(foundation)
    sched = train_scheduler_from(pipe)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(3, 4, 8, 8, generator=g)
    emb = torch.randn(3, pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size, generator=g)
    with torch.no_grad():
        mean = diffusion_loss(pipe.unet, sched, lat, emb, torch.Generator().manual_seed(1))
        per = diffusion_loss(pipe.unet, sched, lat, emb, torch.Generator().manual_seed(1), reduction="none")
        off = diffusion_loss(pipe.unet, sched, lat, emb, torch.Generator().manual_seed(1), noise_offset=0.5)
    assert per.shape == (3,)
    assert torch.allclose(per.mean(), mean, rtol=1e-5)
    assert not torch.allclose(off, mean)  # the offset changes the noise


# ---------------------------------------------------------------------------------------------------
# textual inversion


def test_multi_token_initializer_uses_mean_of_pieces(foundation):
    pipe = load_pipeline(foundation)
    tok, te = pipe.tokenizer, pipe.text_encoder
    pieces = tok.encode("radiology", add_special_tokens=False)
    assert len(pieces) > 1  # the miniature BPE never saw the word: several tokens
    before = te.get_input_embeddings().weight.detach().clone()
    info = add_placeholder_tokens(tok, te, "<lung-xray>", 3, "radiology")
    assert info["tokens"] == ["<lung-xray>", "<lung-xray>_1", "<lung-xray>_2"]
    after = te.get_input_embeddings().weight.detach()
    assert after.shape[0] == before.shape[0] + 3
    for i in info["ids"]:
        assert torch.allclose(after[i], before[pieces].mean(0))
    assert torch.equal(after[: before.shape[0]], before)
    with pytest.raises(InputError, match="already in the tokenizer"):
        add_placeholder_tokens(tok, te, "<lung-xray>", 1, "lung")


def test_per_vector_initializer_spreads_the_phrase_over_the_rows(foundation):
    pipe = load_pipeline(foundation)
    tok, te = pipe.tokenizer, pipe.text_encoder
    phrase = "lung xray with effusion"
    pieces = tok.encode(phrase, add_special_tokens=False)
    before = te.get_input_embeddings().weight.detach().clone()
    n = 2 * len(pieces) + 1
    info = add_placeholder_tokens(tok, te, "<effusion>", n, phrase, per_vector=True)
    after = te.get_input_embeddings().weight.detach()
    starts = [pieces[i * len(pieces) // n] for i in range(n)]
    assert starts[0] == pieces[0] and starts[-1] == pieces[-1] and set(starts) == set(pieces)  # in order, none lost
    for row, piece in zip(info["ids"], starts):
        assert torch.equal(after[row], before[piece])
    # fewer rows than tokens: each row averages its run of the phrase, one row the whole phrase
    info = add_placeholder_tokens(tok, te, "<one>", 1, phrase, per_vector=True)
    assert torch.allclose(te.get_input_embeddings().weight.detach()[info["ids"][0]], before[pieces].mean(0))
    info = add_placeholder_tokens(tok, te, "<two>", 2, phrase, per_vector=True)
    half = len(pieces) // 2
    rows = te.get_input_embeddings().weight.detach()[info["ids"]]
    assert torch.allclose(rows[0], before[pieces[:half]].mean(0))
    assert torch.allclose(rows[1], before[pieces[half:]].mean(0))


def test_class_embedding_settings_pick_each_class_initializer():
    settings = {"steps": 2, "initializer": {"No Finding": "lung", "Pleural Effusion": "lung xray with effusion"}}
    assert class_embedding_settings(settings, "Pleural Effusion", 8, 5)["initializer"] == "lung xray with effusion"
    assert class_embedding_settings({"initializer": "lung"}, "Cardiomegaly", 8, 5)["initializer"] == "lung"
    with pytest.raises(InputError, match="no text for class 'Cardiomegaly'"):
        class_embedding_settings(settings, "Cardiomegaly", 8, 5)
    with pytest.raises(InputError, match="init_per_vector"):
        TextualInversionConfig.from_dict({"init_per_vector": "yes"}).validate()


def test_templates_are_diffusers_lists():
    assert OBJECT_TEMPLATES[:2] == ("a photo of a {}", "a rendering of a {}") and len(OBJECT_TEMPLATES) == 27
    assert STYLE_TEMPLATES[0] == "a painting in the style of {}" and len(STYLE_TEMPLATES) == 19


def test_textual_inversion_only_new_rows_resume_and_diffusers_load(foundation, images, tmp_path):
    from diffusers import StableDiffusionPipeline

    original = _embedding_rows(foundation)
    n_vocab = original.shape[0]
    cfg = dict(TINY, steps=4, num_vectors=2, template="style", initializer="lung", lr=5e-2)

    # uninterrupted run
    full = train_textual_inversion(foundation, images, None, TextualInversionConfig(**cfg), tmp_path / "a",
                                   progress=False)
    assert full["finished"] and full["step"] == 4

    # interrupted after 3 steps (a checkpoint is written at the stop), then resumed
    out_b = tmp_path / "b"
    part = train_textual_inversion(foundation, images, None, TextualInversionConfig(**cfg, stop_after=3), out_b,
                                   progress=False)
    assert not part["finished"] and part["step"] == 3 and not out_b.exists()
    ckpt = tmp_path / "b.partial" / "checkpoint"
    mid = load_file(str(ckpt / "token_embedding.safetensors"))["weight"]
    # every pre-existing row is bit-identical after 3 AdamW steps (weight decay included); the new ones moved
    assert torch.equal(mid[:n_vocab], original)
    init = original[load_pipeline(foundation).tokenizer.encode("lung", add_special_tokens=False)].mean(0)
    assert mid.shape[0] == n_vocab + 2 and not torch.allclose(mid[n_vocab:], init.expand(2, -1))
    resumed = train_textual_inversion(foundation, images, None, TextualInversionConfig(**cfg), out_b,
                                      progress=False)
    assert resumed["finished"] and resumed["resumed_from"] == 3
    assert not (tmp_path / "b.partial").exists()  # checkpoints removed at the end
    ea = load_file(str(tmp_path / "a" / "learned_embeds.safetensors"))
    eb = load_file(str(out_b / "learned_embeds.safetensors"))
    assert list(ea) == ["<lung-xray>"] and ea["<lung-xray>"].shape == (2, original.shape[1])
    assert torch.equal(ea["<lung-xray>"], eb["<lung-xray>"])
    log_a = pd.read_csv(tmp_path / "a" / "training_log.csv")
    log_b = pd.read_csv(out_b / "training_log.csv")
    assert list(log_a.step) == [1, 2, 3, 4] and np.array_equal(log_a.loss.values, log_b.loss.values)

    # the artefact contract
    a = tmp_path / "a"
    for name in ("adapter.json", "training_log.csv", "loss_curve.png", "loss_curve.pdf", "train_config.json"):
        assert (a / name).is_file(), name
    meta = json.loads((a / "adapter.json").read_text())
    # the foundation is named relative to the adapter folder, so the two can move together
    assert meta["method"] == "textual_inversion" and meta["foundation"] == os.path.relpath(foundation, a)
    assert (meta["token"], meta["num_vectors"], meta["template"], meta["initializer"]) == (
        "<lung-xray>", 2, "style", "lung")
    from cxrgen.models.card import read_model_card

    card = read_model_card(a)
    assert card["library_name"] == "diffusers" and card["base_model"] == str(foundation)
    assert card["data"]["n_images"] == len(images) and card["training_config"]["num_vectors"] == 2
    assert card["metrics"]["final_loss"] == pytest.approx(float(np.mean(log_a.loss.values[-1:])))

    # diffusers loads the multi-vector embedding and samples with it
    pipe = StableDiffusionPipeline.from_pretrained(foundation, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_textual_inversion(str(a / "learned_embeds.safetensors"), token="<lung-xray>")
    ids = pipe.tokenizer.convert_tokens_to_ids(["<lung-xray>", "<lung-xray>_1"])
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[ids].detach(), ea["<lung-xray>"])
    out = pipe("a photo in the style of <lung-xray>", num_inference_steps=2, height=32, width=32,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_textual_inversion_input_errors(foundation, images, tmp_path):
    with pytest.raises(InputError, match="template"):
        TextualInversionConfig.from_dict({"template": "painting"})
    with pytest.raises(InputError, match="unknown TextualInversionConfig keys"):
        TextualInversionConfig.from_dict({"step": 3})
    with pytest.raises(InputError, match="classes"):
        TextualInversionConfig.from_dict({"classes": "No Finding"})
    with pytest.raises(InputError, match="mixed_precision"):
        TextualInversionConfig.from_dict({"mixed_precision": "fp8"})
    with pytest.raises(InputError, match="neither"):
        train_textual_inversion(foundation, images, ["a photo of a lung"] * len(images),
                                TextualInversionConfig(**TINY, steps=1), tmp_path / "x", progress=False)
    with pytest.raises(InputError, match="resolution=36"):
        train_textual_inversion(foundation, images, None, TextualInversionConfig(**{**TINY, "resolution": 36}),
                                tmp_path / "y", progress=False)
    assert TextualInversionConfig.paper().steps == 3000 and TextualInversionConfig.paper().effective_lr == 2e-3


# ---------------------------------------------------------------------------------------------------
# U-Net fine-tuning


def test_prior_preservation_loss_matches_hand_computation(foundation):
    pipe = load_pipeline(foundation)
    unet, sched = pipe.unet, train_scheduler_from(pipe)
    g = torch.Generator().manual_seed(0)
    inst, cls = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    d = (pipe.tokenizer.model_max_length, pipe.text_encoder.config.hidden_size)
    e_inst, e_cls = torch.randn(2, *d, generator=g), torch.randn(1, *d, generator=g).expand(2, -1, -1)
    noise = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([10, 500, 250, 990])
    with torch.no_grad():
        total, li, lp = prior_preservation_loss(unet, sched, inst, e_inst, cls, e_cls, 0.7, noise=noise, timesteps=t)

        def half(lat, emb, nz, tt):  # by hand: the v-prediction target and plain MSE
            a = sched.alphas_cumprod[tt].view(-1, 1, 1, 1)
            noisy = a.sqrt() * lat + (1 - a).sqrt() * nz
            target = a.sqrt() * nz - (1 - a).sqrt() * lat
            return F.mse_loss(unet(noisy, tt, encoder_hidden_states=emb).sample, target)

        hi = half(inst, e_inst, noise[:2], t[:2])
        hp = half(cls, e_cls, noise[2:], t[2:])
    assert sched.config.prediction_type == "v_prediction"
    assert torch.allclose(li, hi, rtol=1e-4) and torch.allclose(lp, hp, rtol=1e-4)
    assert torch.allclose(total, hi + 0.7 * hp, rtol=1e-4)
    assert not torch.allclose(li, lp)  # the two halves really are separated


def test_unet_prior_preservation_resume_ema_and_class_cache(foundation, images, tmp_path):
    from diffusers import UNet2DConditionModel

    cls_dir = tmp_path / "class_images"
    cfg = dict(TINY, steps=4, prior_preservation=True, num_class_images=3, class_sample_steps=2,
               class_batch_size=3, prior_loss_weight=0.5, use_ema=True, ema_decay=0.9)
    full = train_unet(foundation, images, PROMPTS, UNetFinetuneConfig(**cfg), tmp_path / "a", cls_dir,
                      progress=False)
    assert full["finished"]
    pngs = sorted(cls_dir.glob("class_*.png"))
    assert len(pngs) == 3 and np.asarray(Image.open(pngs[0])).shape == (32, 32, 3)
    stamps = [p.stat().st_mtime_ns for p in pngs]

    out_b = tmp_path / "b"
    part = train_unet(foundation, images, PROMPTS, UNetFinetuneConfig(**cfg, stop_after=2), out_b, cls_dir,
                      progress=False)
    assert not part["finished"] and not out_b.exists()
    resumed = train_unet(foundation, images, PROMPTS, UNetFinetuneConfig(**cfg), out_b, cls_dir, progress=False)
    assert resumed["resumed_from"] == 2 and resumed["finished"]
    assert [p.stat().st_mtime_ns for p in pngs] == stamps  # cached class images reused, not regenerated

    wa = load_file(str(tmp_path / "a" / "unet" / "diffusion_pytorch_model.safetensors"))
    wb = load_file(str(out_b / "unet" / "diffusion_pytorch_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    base = load_pipeline(foundation).unet.state_dict()
    assert any(not torch.equal(wa[k], base[k]) for k in wa)  # the U-Net was trained
    UNet2DConditionModel.from_pretrained(tmp_path / "a" / "unet")  # a standard diffusers folder

    meta = json.loads((tmp_path / "a" / "adapter.json").read_text())
    assert meta["method"] == "unet" and meta["prior_preservation"] is True
    assert meta["classes"] == sorted(set(PROMPTS)) and meta["prior_loss_weight"] == 0.5
    log = pd.read_csv(tmp_path / "a" / "training_log.csv")
    assert np.allclose(log.loss, log.instance_loss + 0.5 * log.prior_loss, rtol=1e-5)


def test_train_from_sample_unet_without_prior_and_switches(foundation, images, tmp_path):
    sample = tmp_path / "fewshot"
    (sample / "images").mkdir(parents=True)
    rows = []
    for i, img in enumerate(images):
        label = "No Finding" if i < 3 else "Pleural Effusion"
        Image.fromarray(img).save(sample / "images" / f"{i}.png")
        rows.append({"image_id": str(i), "file": f"images/{i}.png", "class_label": label,
                     "prompt": CHAMBON_PROMPTS["normal" if i < 3 else "effusion"]})
    pd.DataFrame(rows).to_csv(sample / "manifest.csv", index=False)
    cfg = dict(TINY, steps=2, classes=["No Finding"], mixed_precision="bf16", gradient_checkpointing=True,
               snr_gamma=5.0, noise_offset=0.05, lr_scheduler="cosine", warmup=1)
    out = tmp_path / "unet_nf"
    summary = train_from_sample("unet", foundation, sample, cfg, out, seed=1)
    assert summary["finished"] and np.isfinite(summary["final_loss"])
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["classes"] == ["No Finding"] and meta["n_images"] == 3 and meta["prior_preservation"] is False
    assert meta["prompts"] == [CHAMBON_PROMPTS["normal"]] and meta["seed"] == 1
    tc = json.loads((out / "train_config.json").read_text())
    assert tc["mixed_precision"] == "bf16" and tc["seed"] == 1
    from cxrgen.models.card import read_model_card

    card = read_model_card(out)  # the model card names the sample it was trained on
    assert card["data"] == {"n_images": 3, "sample": "fewshot"} and card["method"] == "unet"
    assert card["base_model"] == str(foundation) and card["training_config"]["classes"] == ["No Finding"]
    with pytest.raises(InputError, match="Cardiomegaly"):
        train_from_sample("unet", foundation, sample, {"classes": ["Cardiomegaly"]}, tmp_path / "z", seed=0)
    with pytest.raises(InputError, match="dora"):
        train_from_sample("dora", foundation, sample, {}, tmp_path / "z", seed=0)
    with pytest.raises(InputError, match="one non-empty prompt"):
        train_unet(foundation, images, PROMPTS[:2], UNetFinetuneConfig(**TINY), tmp_path / "z", progress=False)
    assert UNetFinetuneConfig.paper().lr == 5e-6 and UNetFinetuneConfig.paper().steps == 400
    assert TrainConfig.from_dict({"steps": 3}).steps == 3
