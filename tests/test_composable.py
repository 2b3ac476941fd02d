"""Composable diffusion (weighted AND prompts, Liu et al. 2022) and latent-mask inpainting (de Wilde et al. 4.3,
4.4): the parser, equality with the ordinary pipeline for one weight-1 term, and unchanged unmasked latents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cxrgen.errors import InputError
from cxrgen.models.foundation import FoundationConfig, build_foundation
from cxrgen.sampling.composable import Term, composable_generate, format_prompt, load_embeddings_pipeline, parse_prompt
from cxrgen.sampling.inpainting import box_mask, inpaint, latent_mask
from threads import TEST_THREADS

SIZE = 32


# ------------------------------------------------------------------------------------------------ parser
@pytest.mark.parametrize("prompt, expected", [
    ("<healthy>", [Term("<healthy>", 1.0)]),
    ("0.25*<healthy> AND 0.75*<cardiomegaly>", [Term("<healthy>", 0.25), Term("<cardiomegaly>", 0.75)]),
    ("  0.25 *  <healthy>   AND\t.75*   <cardiomegaly> ", [Term("<healthy>", 0.25), Term("<cardiomegaly>", 0.75)]),
    ("<a> AND -0.5*<b> AND 2e-1*<c>", [Term("<a>", 1.0), Term("<b>", -0.5), Term("<c>", 0.2)]),
    ("a photo of a lung xray", [Term("a photo of a lung xray", 1.0)]),
    ("cats and dogs", [Term("cats and dogs", 1.0)]),  # lower-case 'and' is text
    ("BRAND ANDES", [Term("BRAND ANDES", 1.0)]),  # AND inside a word is text
    (r"salt \AND pepper AND 2*x \* y", [Term("salt AND pepper", 1.0), Term("x * y", 2.0)]),
    (r"back\\slash", [Term("back\\slash", 1.0)]),
    ("0*<pneumonia>", [Term("<pneumonia>", 0.0)]),
])
def test_parse_weights_spacing_and_escapes(prompt, expected):
    assert parse_prompt(prompt) == expected


@pytest.mark.parametrize("prompt, message", [
    ("", "empty"),
    ("   ", "empty"),
    ("<a> AND", r"term 2 of 2 is empty"),
    ("AND <a>", r"term 1 of 2 is empty"),
    ("<a> AND AND <b>", r"term 2 of 3 is empty"),
    ("0.5*", "has no text"),
    ("0.5*  AND <b>", "has no text"),
    ("abc*<x>", "not a leading number weight"),
    ("<a> 0.5*<b>", "not a leading number weight"),
    ("nan*<a>", "not a leading number weight"),
    ("1e999*<a>", "not finite"),
    ("trailing \\", "backslash before the end"),
    (r"bad \q escape", r"backslash before 'q'"),
])
def test_malformed_prompts_raise_clear_errors(prompt, message):
    with pytest.raises(InputError, match=message) as info:
        parse_prompt(prompt)
    assert repr(prompt) in str(info.value) or not prompt.strip()


def test_format_prompt_round_trips():
    terms = [Term("<healthy>", 0.25), Term("x AND y * z", 0.75)]
    text = format_prompt(terms)
    assert text == r"0.25*<healthy> AND 0.75*x \AND y \* z"
    assert parse_prompt(text) == terms
    assert format_prompt([("<a>", 1)]) == "1*<a>"
    with pytest.raises(InputError, match="no terms"):
        format_prompt([])
    with pytest.raises(InputError, match="string"):
        parse_prompt(None)


# ------------------------------------------------------------------------------------------------ sampling
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from safetensors.torch import save_file

    torch.set_num_threads(TEST_THREADS)
    root = tmp_path_factory.mktemp("composable")
    fnd = root / "foundation"
    cfg = FoundationConfig.preset("smoke", image_size=SIZE, n_images=32, vae_steps=2, unet_steps=2, vae_crop=0,
                                  checkpoint_every=1000, preview_per_prompt=0)
    build_foundation(cfg, fnd, progress=False)
    adapters = []
    for k, token in enumerate(("<healthy>", "<cardiomegaly>")):
        folder = root / token.strip("<>")
        folder.mkdir()
        (folder / "adapter.json").write_text(json.dumps({"method": "textual_inversion", "foundation": str(fnd),
                                                         "token": token, "num_vectors": 2}))
        vec = torch.randn(2, cfg.text_hidden, generator=torch.Generator().manual_seed(k)) * 3.0
        save_file({token: vec}, str(folder / "learned_embeds.safetensors"))
        adapters.append(folder)
    return fnd, adapters


GEN = dict(steps=3, batch_size=3, height=SIZE)


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_single_weight_one_term_equals_the_pipeline(setup, guidance):
    from cxrgen.adapt.pipeline import load_adapted_pipeline

    fnd, adapters = setup
    ordinary = load_adapted_pipeline(fnd, adapters[1])  # the plain StableDiffusionPipeline CFG path
    ref = ordinary.generate("<cardiomegaly>", 3, seed=5, guidance=guidance, progress=False, **GEN)
    composed = load_embeddings_pipeline(fnd, adapters)
    for prompt in ("<cardiomegaly>", "1*<cardiomegaly>", [("<cardiomegaly>", 1.0)]):
        out = composable_generate(composed, prompt, 3, seed=5, guidance=guidance, **GEN)
        assert out.shape == ref.shape and out.dtype == np.uint8
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1, prompt
    # a real composition differs from either single term, and weights matter
    mix = composable_generate(composed, "0.5*<healthy> AND 0.5*<cardiomegaly>", 3, seed=5, guidance=guidance, **GEN)
    healthy = composable_generate(composed, "<healthy>", 3, seed=5, guidance=guidance, **GEN)
    assert not np.array_equal(mix, ref) and not np.array_equal(mix, healthy)


def test_composition_is_the_weighted_guidance_formula(setup):
    """eps = eps_u + sum_i w_i g (eps_i - eps_u): 0.3*A AND 0.7*A equals 1*A (the guidance is linear in w)."""
    fnd, adapters = setup
    composed = load_embeddings_pipeline(fnd, adapters)
    one = composable_generate(composed, "<healthy>", 2, seed=1, guidance=2.5, **GEN)
    split = composable_generate(composed, "0.3*<healthy> AND 0.7*<healthy>", 2, seed=1, guidance=2.5, **GEN)
    assert np.abs(one.astype(int) - split.astype(int)).max() <= 1
    with pytest.raises(InputError, match="distinct tokens"):
        load_embeddings_pipeline(fnd, [adapters[0], adapters[0]])


def test_inpainting_leaves_unmasked_latents_unchanged(setup):
    fnd, adapters = setup
    composed = load_embeddings_pipeline(fnd, adapters)
    images, latents = composable_generate(composed, "<healthy>", 2, seed=3, guidance=2.0, return_latents=True, **GEN)
    mask = box_mask(SIZE, [0.5, 1.0, 0.5, 1.0])
    out, new_lat, lm = inpaint(composed, latents, mask, "<cardiomegaly>", seed=3, steps=3, guidance=2.0)
    assert out.shape == images.shape and lm.shape == (1, 1) + tuple(latents.shape[-2:])
    keep = ~lm.bool().expand_as(new_lat)
    assert torch.equal(new_lat[keep], latents[keep])  # exactly the original outside the mask
    assert not torch.equal(new_lat[~keep], latents[~keep])  # the masked region was repainted
    assert lm.sum() == lm.numel() / 4  # a quarter of the latent grid
    assert latent_mask(mask, (4, 4)).sum() == 4
    with pytest.raises(InputError, match="empty"):
        inpaint(composed, latents, np.zeros((SIZE, SIZE), bool), "<cardiomegaly>", seed=3, steps=2)
    with pytest.raises(InputError, match="top < bottom"):
        box_mask(SIZE, [0.6, 0.5, 0.0, 1.0])
