"""Textual inversion (Gal et al. 2022; Chambon et al. 2022, section 2.6; de Wilde et al. 2023).

New placeholder token(s) such as ``<lung-xray>`` are added to the tokenizer; with ``num_vectors`` > 1 the
tokens are ``<lung-xray>``, ``<lung-xray>_1``, ... (diffusers' multi-vector convention, which its
``load_textual_inversion`` expands again). Their embedding rows start from the embedding of an initializer
word ("radiology" or "lung" in Chambon et al.). Only those rows are trained: a gradient hook zeroes the
gradient of every other row of the token-embedding matrix, and after each optimizer step the other rows are
restored from a copy (as diffusers' example does), because AdamW's weight decay would otherwise still move
them. VAE, U-Net and the rest of the text encoder are frozen.

Training prompts are the object templates ("a photo of a {}", ...) or the style templates ("a painting in
the style of {}", ...) of diffusers' ``textual_inversion.py`` example, a random one per image and step, or
prompts supplied per image (containing ``{}`` or the token). The result is ``learned_embeds.safetensors``
(``{token: (num_vectors, dim)}``), the file ``StableDiffusionPipeline.load_textual_inversion(path,
token=...)`` reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cxrgen.adapt.config import (
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    TEMPLATES,
    TextualInversionConfig,
)
from cxrgen.adapt.methods import ADAPTER_FILE, EMBEDS_FILE
from cxrgen.adapt.trainer import (
    BatchStream,
    LatentCache,
    TrainTask,
    check_resolution,
    few_shot_sample,
    finish_output,
    images_to_tensor,
    make_engine,
    partial_dir,
    run_training,
    summarise,
    tokenize,
    train_scheduler_from,
)
from cxrgen.diffusion import diffusion_loss
from cxrgen.errors import InputError


def placeholder_tokens(token: str, num_vectors: int) -> list[str]:
    """``<t>``, ``<t>_1``, ... ``<t>_{n-1}``: the names diffusers' ``load_textual_inversion`` gives them."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def add_placeholder_tokens(tokenizer, text_encoder, token: str, num_vectors: int, initializer: str,
                           per_vector: bool = False) -> dict:
    """Add the placeholder tokens, grow the embedding matrix, initialise the new rows.

    Returns ``{"tokens", "ids", "initializer_ids", "initializer_tokens"}``. An initializer word that the
    BPE splits into several tokens initialises every new row with the mean of those tokens' embeddings
    (diffusers' example refuses such words; the mean keeps the start inside the span of the word's pieces).
    ``per_vector``: the rows start from the initializer's tokens in order instead, row i from the mean of its
    share ``[i * n // v, (i + 1) * n // v)`` of the n tokens (at least the one at ``i * n // v``): with at least as
    many rows as tokens each token spans its rows (the webui's "initialization text"), with fewer each row
    averages a run of the phrase, and one row is the mean of all of it.
    """
    tokens = placeholder_tokens(token, num_vectors)
    vocab = tokenizer.get_vocab()
    clash = [t for t in tokens if t in vocab]
    if clash:
        raise InputError(f"placeholder token(s) {clash} already in the tokenizer; expected a new token name")
    added = tokenizer.add_tokens(tokens)
    if added != len(tokens):
        raise InputError(f"could only add {added} of the placeholder tokens {tokens}; expected new, distinct names")
    init_ids = tokenizer.encode(initializer, add_special_tokens=False)
    if not init_ids:
        raise InputError(f"initializer {initializer!r} tokenizes to nothing; expected a word such as 'radiology'")
    ids = tokenizer.convert_tokens_to_ids(tokens)
    # mean_resizing=False: the new rows are overwritten below, skip the covariance fit over the vocabulary
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = text_encoder.get_input_embeddings().weight
    n, v = len(init_ids), num_vectors
    # the run of initializer tokens each new row averages: all of them, or the row's share of the phrase
    spans = [(i * n // v, max((i + 1) * n // v, i * n // v + 1)) for i in range(v)] if per_vector else [(0, n)] * v
    with torch.no_grad():
        for row, (first, end) in zip(ids, spans):
            emb[row] = emb[init_ids[first:end]].mean(dim=0)
    return {"tokens": tokens, "ids": ids, "initializer_ids": init_ids,
            "initializer_tokens": tokenizer.convert_ids_to_tokens(init_ids)}


def training_prompts(prompts_or_none, n_images: int, token_string: str, token: str) -> list[str] | None:
    """Validate per-image prompts: each holds ``{}`` or the token, which become the placeholder string."""
    if prompts_or_none is None:
        return None
    prompts = list(prompts_or_none)
    if len(prompts) != n_images:
        raise InputError(f"{len(prompts)} prompts for {n_images} images; expected one prompt per image or None")
    out = []
    for p in prompts:
        if not isinstance(p, str) or ("{}" not in p and token not in p.split()):
            raise InputError(f"prompt {p!r} has neither '{{}}' nor the token {token!r}; expected e.g. "
                             f"'a photo of a {{}}'")
        out.append(p.replace("{}", token_string) if "{}" in p else
                   " ".join(token_string if w == token else w for w in p.split()))
    return out


def save_learned_embeds(text_encoder, ids: list[int], token: str, path: str | os.PathLike) -> None:
    """``{token: (num_vectors, dim)}`` in safetensors: the diffusers textual-inversion format."""
    from safetensors.torch import save_file

    w = text_encoder.get_input_embeddings().weight.detach()[ids].float().cpu().contiguous()
    save_file({token: w}, str(path))


def train_textual_inversion(foundation, images, prompts_or_none, cfg: TextualInversionConfig, out_dir,
                            progress: bool = True) -> dict:
    """Learn the embedding(s) of ``cfg.token`` on ``images`` and write the adapter folder ``out_dir``.

    foundation: local diffusers folder or registry name. images: uint8 (N,H,W) grayscale (or (N,H,W,3)).
    prompts_or_none: None = ``cfg.template`` templates; else one prompt per image with ``{}`` or the token.
    ``out_dir`` gets ``learned_embeds.safetensors``, ``adapter.json`` (method, foundation, token,
    num_vectors, template, initializer, ...), ``training_log.csv``, ``loss_curve.png/.pdf`` and
    ``train_config.json``; checkpoints go to ``<out_dir>.partial`` and a rerun resumes from them.
    Returns a summary dict (``finished`` is False when ``cfg.stop_after`` ended the run early).
    """
    from cxrgen.models.registry import load_pipeline

    if not isinstance(cfg, TextualInversionConfig):
        raise InputError(f"cfg is a {type(cfg).__name__}; expected a TextualInversionConfig")
    cfg.validate()
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    if cfg.max_images is not None:
        if cfg.max_images > len(images):
            raise InputError(f"TextualInversionConfig.max_images={cfg.max_images} but only {len(images)} images were "
                             "given; expected at most that many training cases")
        import numpy as np

        pick = np.sort(np.random.default_rng(cfg.seed).permutation(len(images))[: cfg.max_images])
        images = np.asarray(images)[pick]
        if prompts_or_none is not None:
            prompts_or_none = [list(prompts_or_none)[i] for i in pick]
    pixels = images_to_tensor(images, cfg.resolution)
    engine = make_engine(cfg)
    device = engine.device

    pipe = load_pipeline(foundation)
    check_resolution(pipe, cfg.resolution)
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    info = add_placeholder_tokens(tokenizer, text_encoder, cfg.token, cfg.num_vectors, cfg.initializer,
                                  cfg.init_per_vector)
    token_string = " ".join(info["tokens"])
    prompts = training_prompts(prompts_or_none, len(pixels), token_string, cfg.token)

    # everything frozen except the token-embedding matrix (whose other rows are masked below)
    for m in (vae, unet, text_encoder):
        m.requires_grad_(False)
    embedding = text_encoder.get_input_embeddings()
    embedding.weight.requires_grad_(True)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        text_encoder.gradient_checkpointing_enable()
    if device.type == "cuda" and cfg.mixed_precision != "no":
        dtype = torch.float16 if cfg.mixed_precision == "fp16" else torch.bfloat16
        vae.to(dtype=dtype)
        unet.to(dtype=dtype)
    vae.to(device), unet.to(device), text_encoder.to(device)
    vae.eval(), unet.eval(), text_encoder.train()

    latents = LatentCache(vae, pixels, device, progress=progress)
    scheduler = train_scheduler_from(pipe)
    if prompts is None:
        templates = TEMPLATES[cfg.template]
        choices = tokenize(tokenizer, [t.format(token_string) for t in templates])
    else:
        choices = tokenize(tokenizer, prompts)

    ids = torch.tensor(info["ids"], dtype=torch.long)
    keep = torch.ones(embedding.weight.shape[0], dtype=torch.bool)
    keep[ids] = False
    keep = keep.to(device)
    frozen_rows = embedding.weight.detach()[keep].clone()
    # zero the gradient of every pre-existing token (Chambon 2.6 / Gal et al.)
    embedding.weight.register_hook(lambda g: g.masked_fill(keep[:, None], 0.0))

    def restore_rows() -> None:
        with torch.no_grad():
            embedding.weight[keep] = frozen_rows

    stream = BatchStream(len(latents), cfg.batch_size, cfg.seed)

    def loss_fn(micro: int, gen: torch.Generator):
        idx = stream.batch(micro)
        lat = latents.sample(idx.to(latents.mean.device), gen)
        if prompts is None:  # a random template per image, as the diffusers example does
            pick = torch.randint(len(choices), (len(idx),), generator=gen)
        else:
            pick = idx
        rows = engine.local_rows(len(idx))
        emb = text_encoder(choices[pick[rows]].to(device))[0]
        loss = diffusion_loss(unet, scheduler, lat, emb.to(lat.dtype), gen, snr_gamma=cfg.snr_gamma,
                              noise_offset=float(cfg.noise_offset), rows=rows)
        return loss, {}

    task = TrainTask(params=[embedding.weight], state_modules={"token_embedding": embedding},
                     loss_fn=loss_fn, after_step=restore_rows, desc="textual inversion")
    out_dir = Path(out_dir)
    result = run_training(cfg, task, partial_dir(out_dir) / "checkpoint", engine, progress)
    if not result.finished:
        return summarise(result, out_dir, "textual_inversion", {"checkpoint": str(partial_dir(out_dir))})

    adapter = {
        "method": "textual_inversion",
        "foundation": str(foundation),
        "token": cfg.token,
        "num_vectors": cfg.num_vectors,
        "template": cfg.template,
        "prompt_source": "templates" if prompts is None else "given",
        "initializer": cfg.initializer,
        "init_per_vector": cfg.init_per_vector,
        "tokens": info["tokens"],
        "initializer_tokens": info["initializer_tokens"],
        "embeds_file": EMBEDS_FILE,
        "classes": list(cfg.classes) if cfg.classes else None,
        "n_images": int(len(pixels)),
        "seed": int(cfg.seed),
        "steps": int(cfg.steps),
    }
    train_config = {**cfg.to_dict(), "effective_lr": cfg.effective_lr, "foundation": str(foundation),
                    "n_images": int(len(pixels)), "prompts": prompts, "device": str(device),
                    "train_seconds": result.seconds, "resumed_from": result.resumed_from}
    finish_output(out_dir, lambda d: save_learned_embeds(text_encoder, info["ids"], cfg.token, d / EMBEDS_FILE),
                  result.rows, train_config, adapter, engine)
    return summarise(result, out_dir, "textual_inversion", {"token": cfg.token, "tokens": info["tokens"]})


def train_from_sample(foundation, sample_dir, cfg: TextualInversionConfig, out_dir, class_images_dir=None,
                      progress: bool = True) -> dict:
    """:func:`train_textual_inversion` on a materialised sample folder, restricted to ``cfg.classes``, with the
    templates as prompts (``class_images_dir``: unused, no prior loss)."""
    images, _, _ = few_shot_sample(sample_dir, cfg.classes)
    return train_textual_inversion(foundation, images, None, cfg, out_dir, progress=progress)


def apply_to_pipeline(pipe, folder: Path, adapter: dict, weight=None) -> None:
    """Load the learned embedding(s) of an adapter folder into ``pipe``'s tokenizer and text encoder."""
    token = adapter.get("token")
    emb = Path(folder) / EMBEDS_FILE
    if not token or not emb.is_file():
        raise InputError(f"textual-inversion adapter {folder}: expected 'token' in {ADAPTER_FILE} and {EMBEDS_FILE}")
    pipe.load_textual_inversion(str(emb), token=token)


__all__ = [
    "OBJECT_TEMPLATES", "STYLE_TEMPLATES", "TEMPLATES", "TextualInversionConfig",
    "add_placeholder_tokens", "apply_to_pipeline", "placeholder_tokens", "save_learned_embeds",
    "train_from_sample", "train_textual_inversion",
]
