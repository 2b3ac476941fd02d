"""Foundation model (miniature Stable Diffusion), tokenizer, corpus, registry, checkpoints, diffusion helpers."""

import json
import random

import numpy as np
import pytest
import torch

from cxrgen.checkpoint import load_checkpoint, save_checkpoint
from cxrgen.diffusion import add_noise_and_target, diffusion_loss, make_train_scheduler
from cxrgen.errors import InputError, WeightsUnavailableError
from cxrgen.models.corpus import make_corpus
from cxrgen.models.foundation import (
    FoundationConfig,
    build_foundation,
    make_vae,
    standardise_latents_in_vae,
)
from cxrgen.models.registry import MODEL_REGISTRY, load_pipeline, resolve_model
from cxrgen.models.tokenizer import train_clip_tokenizer
from threads import TEST_THREADS

FINDINGS = ("effusion", "pneumonia", "cardiomegaly", "edema", "atelectasis", "nodule", "finding", "opacity")


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory):
    torch.set_num_threads(TEST_THREADS)
    out = tmp_path_factory.mktemp("foundation") / "model"
    summary = build_foundation(FoundationConfig.preset("smoke"), out, progress=False)
    return out, summary


@pytest.mark.slow
def test_build_writes_standard_pipeline_folder(smoke_build):
    folder, summary = smoke_build
    for sub in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler",
                "training_log.csv", "loss_curve.png", "foundation_config.json"):
        assert (folder / sub).exists(), sub
    assert not folder.with_name("model.ckpt").exists()  # checkpoints removed on success
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "DDIMScheduler"
    assert sched["prediction_type"] == "v_prediction"
    assert sched["rescale_betas_zero_snr"] is True
    assert sched["timestep_spacing"] == "trailing"
    import pandas as pd

    log = pd.read_csv(folder / "training_log.csv")
    assert list(log.columns) == ["phase", "step", "loss", "seconds"]
    assert set(log.phase) == {"vae", "unet"}
    assert np.isfinite(log.loss).all()
    # latents per-channel standardised (folded into the VAE)
    assert np.allclose(summary["latent_mean_after"], 0, atol=1e-3)
    assert np.allclose(summary["latent_std_after"], 1, atol=1e-3)


def test_pipeline_reloads_and_samples_deterministically(smoke_build):
    from diffusers import StableDiffusionPipeline

    folder, _ = smoke_build
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)

    def draw():
        g = torch.Generator().manual_seed(3)
        return pipe("a photo of a lung xray", num_inference_steps=3, guidance_scale=3.0, generator=g,
                    output_type="np").images

    a, b = draw(), draw()
    assert a.shape == (1, 64, 64, 3)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    # the registry loader takes the same local folder
    pipe2 = load_pipeline(folder)
    assert pipe2.unet.config.sample_size == 16


def test_tokenizer_roundtrip_and_reload(smoke_build, tmp_path):
    from transformers import CLIPTokenizer

    folder, _ = smoke_build
    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text = "a photo of a pleural effusion"  # unseen words
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.unk_token_id not in ids[1:-1]
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.model_max_length == 32
    tok.add_tokens(["<lung-xray>"])
    assert "<lung-xray>" in tok.tokenize("a photo of a <lung-xray>")
    tok.save_pretrained(tmp_path / "t")
    again = CLIPTokenizer.from_pretrained(tmp_path / "t")
    assert again(text).input_ids == ids
    assert again.convert_tokens_to_ids("<lung-xray>") == tok.convert_tokens_to_ids("<lung-xray>")


def test_train_tokenizer_small_vocab():
    tok = train_clip_tokenizer(["a photo of a red circle", "a photo of a lung xray"] * 20, vocab_size=700)
    assert 514 < len(tok) <= 700
    assert tok.tokenize("a photo of a lung xray") == ["a</w>", "photo</w>", "of</w>", "a</w>", "lung</w>", "xray</w>"]
    assert tok.decode(tok("Zebra 42!").input_ids, skip_special_tokens=True) == "zebra 4 2 !"


def test_tokenizer_is_the_same_on_every_call_and_merges_by_frequency():
    from collections import Counter

    from cxrgen.models.corpus import corpus_text
    from cxrgen.models.tokenizer import learn_bpe_merges

    _, caps = make_corpus(96, 32, seed=0, xray_share=0.25)  # the smoke corpus's captions
    # the library's BPE trainer gave 2 vocabularies in 20 calls on these (so two smoke runs built two foundations)
    vocabs = {tuple(sorted(train_clip_tokenizer(corpus_text(caps), 600).get_vocab().items())) for _ in range(10)}
    assert len(vocabs) == 1
    # most frequent pair first; on a tie the pair of smaller symbol ids (bytes by rank, then '</w>' symbols)
    merges = learn_bpe_merges(Counter({"ab": 3, "cd": 3, "bd": 1, "xy": 1}), 10)
    assert merges == [("a", "b</w>"), ("c", "d</w>")]  # counts below 2 are never merged


def test_corpus_captions_generic():
    images, caps = make_corpus(300, 32, seed=1, xray_share=0.1)
    assert images.shape == (300, 32, 32, 3) and images.dtype == np.uint8
    xr = [c for c in caps if "xray" in c]
    assert 20 <= len(xr) <= 40
    assert all(not any(f in c for f in FINDINGS) for c in caps)
    assert any(c == "a photo of a lung xray" for c in xr)
    images2, caps2 = make_corpus(300, 32, seed=1, xray_share=0.1)
    assert caps == caps2 and np.array_equal(images, images2)


def test_corpus_finding_share_captions_findings_on_negatives_and_leaves_the_rest():
    from cxrgen.data.phantom import FINDINGS as PHANTOM_FINDINGS, generic_chest_studies
    from cxrgen.models.corpus import _chest_source

    base_images, base_caps = make_corpus(300, 32, seed=1, xray_share=0.2)
    images, caps = make_corpus(300, 32, seed=1, xray_share=0.2, finding_share=0.5)
    changed = [i for i, (a, b) in enumerate(zip(base_caps, caps)) if a != b]
    same = np.setdiff1d(np.arange(300), changed)
    assert 15 <= len(changed) <= 45 and all(caps[i].startswith("a negative of a lung xray with ") for i in changed)
    assert np.array_equal(images[same], base_images[same])
    assert any("pleural effusion" in caps[i] for i in changed) and any(caps[i].endswith("no findings") for i in changed)
    # film negatives of the full-size image (a base image shrunk into a corner is drawn full size instead)
    full = [i for i in changed if "small" not in base_caps[i]]
    assert full and all(np.abs(images[i].astype(int) + base_images[i] - 255).max() <= 1 for i in full)
    # each phrase names exactly the study's positive findings
    _, phrases = _chest_source(30, 32, seed=3)
    for study, phrase in zip(generic_chest_studies(30, seed=3), phrases):
        named = set(phrase.split(" and ")) if phrase not in (None, "no findings") else set()
        assert named == {f.lower() for f in PHANTOM_FINDINGS if study.labels[f] == 1.0}
        assert (phrase == "no findings") == (study.labels["No Finding"] == 1.0)
    # the dataset look: the same images, their captions extended by the findings
    images, caps = make_corpus(300, 32, seed=1, xray_share=0.2, finding_share=0.5, finding_look="dataset")
    assert np.array_equal(images, base_images)
    assert all(caps[i].startswith(base_caps[i] + " with ") for i in changed)
    with pytest.raises(InputError, match="finding_share"):
        make_corpus(10, 32, finding_share=1.5)
    with pytest.raises(InputError, match="finding_look"):
        make_corpus(10, 32, finding_look="sepia")


def test_registry_resolves(tmp_path):
    assert resolve_model("sd-v1-4") == "CompVis/stable-diffusion-v1-4"
    assert resolve_model("sd-v1-5") == MODEL_REGISTRY["sd-v1-5"]
    assert resolve_model("stabilityai/stable-diffusion-2-base") == "stabilityai/stable-diffusion-2-base"
    assert resolve_model(tmp_path) == str(tmp_path.resolve())
    with pytest.raises(InputError, match="sd-v1-4"):
        resolve_model("no-such-model")
    with pytest.raises(InputError, match="model_index.json"):
        load_pipeline(tmp_path)


def test_load_pipeline_offline_says_how_to_supply_weights(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as err:
        load_pipeline("sd-v1-4")
    msg = str(err.value)
    assert "CompVis/stable-diffusion-v1-4" in msg
    assert "no network" in msg
    assert "--local-dir" in msg and "foundation.model" in msg


def test_checkpoint_restores_step_optimizer_and_rng(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        model(torch.randn(2, 4, generator=gen)).sum().backward()
        opt.step()
        sched.step()
    save_checkpoint(tmp_path / "ck", {"model": model}, opt, sched, step=3, generators={"data": gen},
                    extra={"log": [["unet", 1, 0.5, 0.1]]})
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen).item())
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}
    ref_opt = opt.state_dict()

    model2 = torch.nn.Linear(4, 3)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    gen2 = torch.Generator().manual_seed(999)
    random.random(), np.random.rand(), torch.rand(3)
    st = load_checkpoint(tmp_path / "ck", {"model": model2}, opt2, sched2, generators={"data": gen2})
    assert st["step"] == 3 and st["extra"]["log"] == [["unet", 1, 0.5, 0.1]]
    got = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=gen2).item())
    assert got == expected
    for k, v in model2.state_dict().items():
        assert torch.equal(v, ref_state[k])
    s2 = opt2.state_dict()
    for pid, s in ref_opt["state"].items():
        for key, val in s.items():
            assert torch.equal(torch.as_tensor(s2["state"][pid][key]), torch.as_tensor(val))
    assert sched2.state_dict() == sched.state_dict()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_v_prediction_target_matches_scheduler():
    sch = make_train_scheduler("v_prediction", zero_terminal_snr=True)
    assert float(sch.alphas_cumprod[-1]) < 1e-6  # zero terminal SNR
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(3, 4, 8, 8, generator=g)
    noise = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([0, 500, 999])
    noisy, target = add_noise_and_target(sch, lat, noise, t)
    torch.testing.assert_close(target, sch.get_velocity(lat, noise, t))
    torch.testing.assert_close(noisy, sch.add_noise(lat, noise, t))
    _, eps_target = add_noise_and_target(make_train_scheduler("epsilon", False), lat, noise, t)
    torch.testing.assert_close(eps_target, noise)

    class Zero(torch.nn.Module):
        def forward(self, x, t, encoder_hidden_states=None):
            return type("O", (), {"sample": torch.zeros_like(x)})()

    for gamma in (None, 5.0):
        loss = diffusion_loss(Zero(), sch, lat, None, torch.Generator().manual_seed(1), snr_gamma=gamma)
        assert loss.ndim == 0 and torch.isfinite(loss)


def test_latent_standardisation_is_exact():
    torch.manual_seed(0)
    cfg = FoundationConfig.preset("smoke")
    vae = make_vae(cfg).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        mean, std = torch.tensor([0.3, -1.0, 0.0, 2.0]), torch.tensor([0.5, 2.0, 1.0, 3.0])
        standardise_latents_in_vae(vae, mean, std)
        z2 = vae.encode(x).latent_dist.mean
        torch.testing.assert_close(z2, (z - mean.view(1, 4, 1, 1)) / std.view(1, 4, 1, 1), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(vae.decode(z2).sample, rec, atol=1e-5, rtol=1e-5)


def test_corpus_washed_xray_look_lowers_the_contrast_of_the_xrays_only():
    base_images, base_caps = make_corpus(300, 32, seed=1, xray_share=0.2)
    images, caps = make_corpus(300, 32, seed=1, xray_share=0.2, xray_look="washed")
    assert caps == base_caps
    xray = np.array(["lung xray" in c for c in caps])
    assert np.array_equal(images[~xray], base_images[~xray])
    full = np.array(["lung xray" in c and "small" not in c for c in caps])
    # 0.35 + 0.4 x before the captioned gamma: a narrower range and no black in every full-size x-ray
    assert (images[full].min(axis=(1, 2, 3)) > 20).all()
    assert np.ptp(images[full].astype(int), axis=(1, 2, 3)).max() < np.ptp(base_images[full].astype(int), axis=(1, 2, 3)).min()
    with pytest.raises(InputError, match="xray_look"):
        make_corpus(10, 32, xray_look="sepia")
