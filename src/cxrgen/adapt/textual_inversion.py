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
from dataclasses import dataclass
from pathlib import Path

import torch

from cxrgen.adapt.trainer import (
    BatchStream,
    LatentCache,
    TrainConfig,
    TrainTask,
    check_resolution,
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

EMBEDS_FILE = "learned_embeds.safetensors"

#: diffusers examples/textual_inversion/textual_inversion.py, ``imagenet_templates_small``.
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}",
    "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}",
    "a photo of the weird {}", "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
#: diffusers examples/textual_inversion/textual_inversion.py, ``imagenet_style_templates_small``.
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}",
    "a dirty painting in the style of {}", "a dark painting in the style of {}",
    "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}",
    "a nice painting in the style of {}", "a small painting in the style of {}",
    "a weird painting in the style of {}", "a large painting in the style of {}",
)
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}

#: Paper-scale settings. Chambon et al. give only the step count (3k steps, 1 h on a V100) and the base
#: model (SD v1.4, 512 px); the rest is the diffusers textual-inversion README command that the 3000 steps
#: match: lr 5e-4 scaled by batch 1 x gradient accumulation 4 (effective 2e-3), constant schedule, no
#: warm-up, AdamW weight decay 1e-2, one vector, token <lung-xray>.
PAPER = {
    "steps": 3000, "batch_size": 1, "gradient_accumulation_steps": 4, "lr": 5e-4, "scale_lr": True,
    "lr_scheduler": "constant", "warmup": 0, "adam_weight_decay": 1e-2, "resolution": 512,
    "mixed_precision": "no", "checkpoint_every": 500, "token": "<lung-xray>", "num_vectors": 1,
    "max_grad_norm": None,
}


@dataclass
class TextualInversionConfig(TrainConfig):
    """Textual inversion settings (shared loop fields: see :class:`TrainConfig`).

    token: placeholder, e.g. ``<lung-xray>``. num_vectors: embedding vectors for it (de Wilde et al. sweep
    8-64). template: "object" or "style" prompt templates. initializer: word whose embedding starts every
    vector ("radiology" or "lung" in Chambon et al.; a word of several BPE tokens starts from the mean of their
    embeddings). classes: few-shot class labels to train on (``train_from_sample`` filters the manifest by
    them; None = all images).

    Miniature defaults (the embedded workflow; ~1-2 min on 2 CPU cores with the default foundation): 400
    steps, batch 8, lr 5e-3 constant; the miniature foundation's embeddings are small (width 64), so a
    larger step than SD's 2e-3 effective lr moves them within the budget. Paper scale: :data:`PAPER`.
    """

    steps: int = 400
    batch_size: int = 8
    lr: float = 5e-3
    checkpoint_every: int = 100
    token: str = "<lung-xray>"
    num_vectors: int = 1
    template: str = "object"
    initializer: str = "radiology"
    classes: tuple[str, ...] | None = None
    #: train on this many of the given images (de Wilde et al.'s training-case sweep, 5-100); a seeded permutation's
    #: prefix, so smaller subsets are nested in larger ones. None = all images.
    max_images: int | None = None

    @classmethod
    def paper(cls, **overrides) -> TextualInversionConfig:
        return cls.from_dict({**PAPER, **overrides})

    def validate(self) -> None:
        super().validate()
        if self.template not in TEMPLATES:
            raise InputError(f"TextualInversionConfig.template={self.template!r}; expected one of {list(TEMPLATES)}")
        if not (isinstance(self.num_vectors, int) and self.num_vectors >= 1):
            raise InputError(f"TextualInversionConfig.num_vectors={self.num_vectors!r}; expected an integer >= 1")
        if not isinstance(self.token, str) or not self.token.strip() or any(c.isspace() for c in self.token):
            raise InputError(f"TextualInversionConfig.token={self.token!r}; expected one word such as '<lung-xray>'")
        if not isinstance(self.initializer, str) or not self.initializer.strip():
            raise InputError(f"TextualInversionConfig.initializer={self.initializer!r}; expected a word such as "
                             f"'radiology' or 'lung'")
        if self.max_images is not None and not (isinstance(self.max_images, int) and self.max_images >= 1):
            raise InputError(f"TextualInversionConfig.max_images={self.max_images!r}; expected an integer >= 1 or None")


def placeholder_tokens(token: str, num_vectors: int) -> list[str]:
    """``<t>``, ``<t>_1``, ... ``<t>_{n-1}``: the names diffusers' ``load_textual_inversion`` gives them."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def add_placeholder_tokens(tokenizer, text_encoder, token: str, num_vectors: int, initializer: str) -> dict:
    """Add the placeholder tokens, grow the embedding matrix, initialise the new rows.

    Returns ``{"tokens", "ids", "initializer_ids", "initializer_tokens"}``. An initializer word that the
    BPE splits into several tokens initialises every new row with the mean of those tokens' embeddings
    (diffusers' example refuses such words; the mean keeps the start inside the span of the word's pieces).
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
    with torch.no_grad():
        start = emb[init_ids].mean(dim=0)
        for i in ids:
            emb[i] = start
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
    info = add_placeholder_tokens(tokenizer, text_encoder, cfg.token, cfg.num_vectors, cfg.initializer)
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


__all__ = [
    "EMBEDS_FILE", "OBJECT_TEMPLATES", "PAPER", "STYLE_TEMPLATES", "TEMPLATES", "TextualInversionConfig",
    "add_placeholder_tokens", "placeholder_tokens", "save_learned_embeds", "train_textual_inversion",
]
