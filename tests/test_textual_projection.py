"""Textual projection (Chambon et al. 2022, 2.5): projection module, training, artefact, reload, sampling, errors."""

import json
import os

import numpy as np
import pytest
import torch

import cxrgen.adapt.textual_projection as tp
from cxrgen.adapt.textual_projection import (
    ProjectionConfig,
    TextualProjection,
    clip_targets,
    load_captions,
    load_prompt_encoder,
    prepare,
    save_adapter,
    train_from_config,
    train_textual_projection,
)
from cxrgen.errors import InputError
from cxrgen.models.foundation import FoundationConfig, build_foundation
from cxrgen.models.registry import load_pipeline
from threads import TEST_THREADS

PROMPTS = ["a photo of a lung xray", "a photo in the style of a red circle", "a photo of a blue square", ""]
TINY = {"steps": 3, "batch_size": 3, "eval_prompts": 3, "eval_every": 1, "checkpoint_every": 1, "warmup_steps": 1}


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    torch.set_num_threads(TEST_THREADS)
    out = tmp_path_factory.mktemp("tp_foundation") / "model"
    # the projection only needs a Stable-Diffusion-layout pipeline: keep the foundation's training minimal
    cfg = FoundationConfig.preset("smoke", n_images=48, vae_steps=2, unet_steps=2, preview_prompts=())
    build_foundation(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def trained(foundation, tmp_path_factory):
    out = tmp_path_factory.mktemp("tp_token") / "adapter"
    summary = train_from_config(foundation, {"variant": "token", **TINY}, out, seed=0, progress=False)
    return out, summary


# --- module --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["document", "token"])
def test_mlp_layer_order_and_shapes(variant):
    proj = TextualProjection(variant, in_dim=24, out_dim=16)
    assert [m.__class__.__name__ for m in proj.net] == ["Linear", "ReLU", "LayerNorm", "Linear"]
    assert proj.net[0].in_features == 24 and proj.net[0].out_features == 16  # hidden defaults to the output size
    assert proj.net[3].out_features == 16 and proj.trainable
    x = torch.randn(3, 24) if variant == "document" else torch.randn(3, 7, 24)
    out = proj(x, seq_len=7)
    assert out.shape == (3, 7, 16)
    if variant == "document":  # one document vector repeated at every position
        assert torch.equal(out[:, 0], out[:, -1])
    strict = TextualProjection(variant, 24, 16, hidden_dim=32, norm_first=True)
    assert [m.__class__.__name__ for m in strict.net] == ["Linear", "LayerNorm", "ReLU", "Linear"]
    assert strict.net[0].out_features == 32


def test_none_variant_is_untrained_map():
    proj = TextualProjection("none", in_dim=24, out_dim=16, seed=3)
    assert proj.kind == "linear" and not proj.trainable
    w = proj.net.weight
    assert torch.allclose(w @ w.T, torch.eye(16), atol=1e-5)  # semi-orthogonal: keeps per-coordinate scale
    assert proj(torch.randn(2, 5, 24)).shape == (2, 5, 16)
    same = TextualProjection("none", in_dim=16, out_dim=16)
    assert same.kind == "identity" and len(list(same.parameters())) == 0


# --- training --------------------------------------------------------------------------------------


def test_clip_targets_match_pipeline_encode_prompt(foundation):
    pipe = load_pipeline(foundation)
    ours = clip_targets(pipe.tokenizer, pipe.text_encoder, PROMPTS, pipe.tokenizer.model_max_length)
    theirs = pipe.encode_prompt(PROMPTS, "cpu", 1, False)[0]
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("variant", ["document", "token"])
def test_one_step_lowers_loss_and_only_projection_changes(foundation, variant):
    setup = prepare(foundation, ProjectionConfig(variant=variant))
    frozen = {
        "encoder": {k: v.clone() for k, v in setup.prompt_encoder.encoder.model.state_dict().items()},
        "clip": {k: v.clone() for k, v in setup.clip_text_encoder.state_dict().items()},
    }
    before = {k: v.clone() for k, v in setup.projection.state_dict().items()}
    opt = torch.optim.AdamW([p for p in setup.projection.parameters() if p.requires_grad], lr=1e-2)
    loss0 = setup.loss(PROMPTS)
    opt.zero_grad()
    loss0.backward()
    assert all(p.grad is None for p in setup.clip_text_encoder.parameters())
    assert all(p.grad is None for p in setup.prompt_encoder.encoder.model.parameters())
    opt.step()
    with torch.no_grad():
        loss1 = setup.loss(PROMPTS)
    assert float(loss1) < float(loss0.detach())
    after = setup.projection.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    for k, v in setup.prompt_encoder.encoder.model.state_dict().items():
        assert torch.equal(v, frozen["encoder"][k]), k
    for k, v in setup.clip_text_encoder.state_dict().items():
        assert torch.equal(v, frozen["clip"][k]), k


def test_training_writes_artefact(trained, foundation):
    out, summary = trained
    for name in ("adapter.json", "model.safetensors", "config.json", "training_log.csv", "loss_curve.png",
                 "loss_curve.pdf", "README.md"):
        assert (out / name).is_file(), name
    assert not out.with_name(out.name + ".partial").exists()
    meta = json.loads((out / "adapter.json").read_text())
    assert meta["method"] == "textual_projection" and meta["variant"] == "token"
    assert meta["foundation"] == os.path.relpath(foundation, out) and meta["encoder"] == "minilm"
    assert meta["seq_len"] == 32 and meta["cross_attention_dim"] == 32
    import pandas as pd

    log = pd.read_csv(out / "training_log.csv")
    assert list(log.columns) == ["phase", "step", "loss", "seconds"]
    assert (log.phase == "train").sum() == TINY["steps"] and np.isfinite(log.loss).all()
    assert summary["eval_loss_final"] < summary["eval_loss_initial"]
    from cxrgen.models.card import read_model_card

    card = read_model_card(out)  # the model card: what it was trained from, on what, and how well
    assert card["base_model"] == str(foundation) and card["method"] == "textual_projection"
    assert card["training_config"]["variant"] == "token" and card["data"]["n_captions"] == summary["n_captions"]
    assert card["metrics"]["eval_loss_final"] == pytest.approx(summary["eval_loss_final"])
    assert card["license_name"] == "research-only" and card["intended_use"] == "research use, not for clinical use"


def test_projection_round_trips_through_the_hub_mixin(trained, tmp_path):
    import shutil

    from huggingface_hub import PyTorchModelHubMixin
    from safetensors.torch import save_file

    out, _ = trained
    loaded = TextualProjection.from_pretrained(out)  # no project loader needed: config.json + model.safetensors
    assert isinstance(loaded, PyTorchModelHubMixin) and loaded.config()["variant"] == "token"
    x = torch.randn(2, 32, loaded.in_dim)
    assert torch.equal(loaded(x), load_prompt_encoder(out, device="cpu").projection(x))
    loaded.save_pretrained(tmp_path / "again")
    assert torch.equal(TextualProjection.from_pretrained(tmp_path / "again")(x), loaded(x))
    # a folder written before the mixin (projection.safetensors + projection_config.json) still loads
    legacy = shutil.copytree(out, tmp_path / "legacy")
    (legacy / "model.safetensors").unlink()
    (legacy / "config.json").unlink()
    save_file(dict(loaded.state_dict()), str(legacy / "projection.safetensors"))
    (legacy / "projection_config.json").write_text(json.dumps(loaded.config()))
    assert torch.equal(load_prompt_encoder(legacy, device="cpu").projection(x), loaded(x))
    (legacy / "projection.safetensors").unlink()
    with pytest.raises(InputError, match="no model.safetensors"):
        load_prompt_encoder(legacy)


def test_reload_gives_identical_embeddings_and_pipeline_samples(trained, foundation):
    out, _ = trained
    a = load_prompt_encoder(out)
    b = load_prompt_encoder(out)
    ea = a.encode(PROMPTS)
    assert ea.shape == (len(PROMPTS), 32, 32)
    assert torch.equal(ea, b.encode(PROMPTS))
    # alone or inside a padded batch: the same embedding up to batched-kernel rounding
    assert torch.allclose(a.encode([""]), ea[-1:], atol=1e-5)
    pipe = load_pipeline(foundation)
    pipe.set_progress_bar_config(disable=True)
    pos, neg = a.encode_pair(PROMPTS[:2])
    images = pipe(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=2, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()


def test_save_adapter_roundtrip_in_memory(foundation, tmp_path):
    cfg = ProjectionConfig(variant="document", pooling="cls", hidden_size=48)
    setup = prepare(foundation, cfg)
    with torch.no_grad():  # non-default weights, so that a reload that silently re-initialises would fail
        for p in setup.projection.parameters():
            p.add_(0.1 * torch.randn_like(p))
    want = setup.prompt_encoder.encode(PROMPTS)
    save_adapter(setup, cfg, tmp_path / "doc")
    got = load_prompt_encoder(tmp_path / "doc").encode(PROMPTS)
    assert torch.equal(want, got)


def test_none_variant_trains_nothing_and_reloads(foundation, tmp_path):
    summary = train_from_config(foundation, {"variant": "none", **TINY}, tmp_path / "none", seed=1, progress=False)
    assert summary["steps"] == 0 and not summary["trained"] and summary["n_trainable_params"] == 0
    pe = load_prompt_encoder(tmp_path / "none")
    assert pe.projection.kind == "linear"
    assert pe.encode(PROMPTS[:1]).shape == (1, 32, 32)


def test_resume_after_interruption_matches_uninterrupted(trained, foundation, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from cxrgen import engine

    out = tmp_path / "adapter"
    real_save = engine.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt("simulated preemption")

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_from_config(foundation, {"variant": "token", **TINY}, out, seed=0, progress=False)
    assert (tmp_path / "adapter.partial" / "checkpoint" / "state.pt").is_file() and not out.exists()
    monkeypatch.setattr(engine, "save_checkpoint", real_save)
    # a checkpoint written under other settings is refused, naming them (the engine's one resume policy)
    with pytest.raises(InputError, match=r"different settings \(lr: .*adapter\.partial to start over"):
        train_from_config(foundation, {"variant": "token", **TINY, "lr": 0.5}, out, seed=0, progress=False)
    train_from_config(foundation, {"variant": "token", **TINY}, out, seed=0, progress=False)
    want = load_file(str(trained[0] / tp.PROJECTION_WEIGHTS_FILE))
    got = load_file(str(out / tp.PROJECTION_WEIGHTS_FILE))
    assert all(torch.equal(want[k], got[k]) for k in want)


# --- bad inputs ------------------------------------------------------------------------------------


def test_bad_inputs_raise_input_error(foundation, tmp_path):
    with pytest.raises(InputError, match="variant.*document.*token.*none"):
        ProjectionConfig(variant="sentence").validate()
    with pytest.raises(InputError, match="unknown config keys"):
        ProjectionConfig.from_dict({"varient": "token"})
    with pytest.raises(InputError, match="variants"):
        train_from_config(foundation, {"variants": ["document", "token"]}, tmp_path / "v", seed=0)
    with pytest.raises(InputError, match="templates"):
        ProjectionConfig(templates=("a photo",)).validate()
    with pytest.raises(InputError, match="empty"):
        train_textual_projection(foundation, ["", "  "], ProjectionConfig(), tmp_path / "x", progress=False)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="no non-empty caption"):
        load_captions(empty)
    bad = tmp_path / "captions.csv"
    bad.write_text("url,width\nhttp://x,3\n")
    with pytest.raises(InputError, match="caption.*TEXT"):
        load_captions(bad)
    with pytest.raises(InputError, match="captions file"):
        load_captions(tmp_path / "missing.parquet")
    no_corpus = tmp_path / "not_built_here"
    no_corpus.mkdir()
    with pytest.raises(InputError, match="captions_path"):
        train_from_config(no_corpus, {}, tmp_path / "y", seed=0)


def test_captions_files(tmp_path):
    txt = tmp_path / "c.txt"
    txt.write_text("a photo of a red circle\n\nA dog on a beach\n")
    assert load_captions(txt) == ["a photo of a red circle", "A dog on a beach"]
    csv = tmp_path / "c.csv"
    csv.write_text("TEXT,url\nsome caption,u\n")
    assert load_captions(csv) == ["some caption"]
    assert tp.caption_subject("a photo of a red circle") == "red circle"
    assert tp.caption_subject("A dog on a beach") == "A dog on a beach"
