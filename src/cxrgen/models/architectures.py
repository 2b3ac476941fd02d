"""The papers' Stable Diffusion architectures, built locally from their published configs with random weights.

``reference/architectures/`` holds the published ``config.json`` files (U-Net, VAE, CLIP text encoder, scheduler;
sources in its ``sources.yaml``) as data. :func:`build_pipeline_folder` instantiates them at full size with seeded
random weights, adds a CLIP-format tokenizer with the published 77-token context, and saves a
``StableDiffusionPipeline`` folder, so a paper config can point ``foundation.model`` at it and every rule loads it
through the same ``from_pretrained`` path as the real weights. :func:`count_parameters` counts on the ``meta`` device
(nothing allocated). Used by the full-size rehearsal (``make rehearse``) and ``bench/gpu_estimate.py``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cxrgen.errors import InputError
from cxrgen.io import atomic_path

log = logging.getLogger(__name__)

#: ``reference/architectures/`` at the repository root (src/cxrgen/models/architectures.py -> parents[3])
ARCHITECTURE_DIR = Path(__file__).resolve().parents[3] / "reference" / "architectures"
#: architecture name -> the published config file of each component
ARCHITECTURES = {
    "sd-v1": {"unet": "sd-v1_unet.json", "vae": "sd-vae.json", "text_encoder": "sd-v1_text_encoder.json",
              "scheduler": "sd_scheduler.json"},
    "sd-2-base": {"unet": "sd-2-base_unet.json", "vae": "sd-vae.json",
                  "text_encoder": "sd-2-base_text_encoder.json", "scheduler": "sd_scheduler.json"},
}
#: registry names / hub ids of the foundations the paper configs name -> their architecture (v1.4 and v1.5 share one)
FOUNDATION_ARCHITECTURE = {
    "sd-v1-4": "sd-v1", "sd-v1-5": "sd-v1", "CompVis/stable-diffusion-v1-4": "sd-v1",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd-v1", "runwayml/stable-diffusion-v1-5": "sd-v1",
    "sd-2-base": "sd-2-base", "stabilityai/stable-diffusion-2-base": "sd-2-base",
}
#: words the rehearsal tokenizer is trained on (its merges only shorten common words; any text still tokenizes)
TOKENIZER_TEXT = (
    "a photo of an image picture chest lung xray x-ray radiograph scan with and the left right normal age male "
    "female view projection modality diagnosis pa ap dx no finding enlarged cardiomediastinum cardiomegaly lung "
    "opacity lesion edema consolidation pneumonia atelectasis pneumothorax pleural effusion other fracture support "
    "devices healthy bird sitting on a tree car red green blue circle square triangle"
)


def architecture_config(name: str) -> dict[str, dict]:
    """The published configs of ``name``'s components (``unet``, ``vae``, ``text_encoder``, ``scheduler``)."""
    if name not in ARCHITECTURES:
        raise InputError(f"unknown architecture {name!r}; expected one of {sorted(ARCHITECTURES)}")
    return {part: {k: v for k, v in json.loads((ARCHITECTURE_DIR / file).read_text()).items() if k != "architectures"}
            for part, file in ARCHITECTURES[name].items()}


def foundation_architecture(model: str) -> str:
    """The architecture of a foundation the configs name (``sd-v1-4`` -> ``sd-v1``)."""
    if model in ARCHITECTURES:
        return model
    if model not in FOUNDATION_ARCHITECTURE:
        raise InputError(f"no published architecture for foundation {model!r}; expected one of "
                         f"{sorted(FOUNDATION_ARCHITECTURE)}")
    return FOUNDATION_ARCHITECTURE[model]


def build_components(name: str, native_size: int | None = None) -> dict:
    """``unet``, ``vae``, ``text_encoder`` of ``name`` with fresh random weights on the current default device
    (wrap in ``with torch.device("meta"):`` to allocate nothing). ``native_size`` (pixels) replaces the published
    ``sample_size`` (512 px), the size pipelines sample at by default; it changes no weight."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = architecture_config(name)
    unet_cfg = {k: v for k, v in cfg["unet"].items() if not k.startswith("_")}
    vae_cfg = {k: v for k, v in cfg["vae"].items() if not k.startswith("_")}
    if native_size is not None:
        factor = 2 ** (len(vae_cfg["block_out_channels"]) - 1)
        if native_size % factor:
            raise InputError(f"native_size={native_size}; expected a multiple of the VAE factor {factor}")
        unet_cfg["sample_size"], vae_cfg["sample_size"] = native_size // factor, native_size
    return {"unet": UNet2DConditionModel(**unet_cfg), "vae": AutoencoderKL(**vae_cfg),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))}


def count_parameters(name: str) -> dict[str, int]:
    """Parameters per component of ``name``, counted on the meta device (no weights allocated)."""
    import torch

    with torch.device("meta"):
        parts = build_components(name)
    return {part: sum(p.numel() for p in module.parameters()) for part, module in parts.items()}


def build_tokenizer(name: str):
    """A CLIP-format BPE tokenizer with ``name``'s context length (77): the published vocabulary cannot be
    downloaded here, so a small one is trained on :data:`TOKENIZER_TEXT` (ids stay below the text encoder's
    vocabulary; the end-of-text id is the largest, as the published configs' ``eos_token_id: 2`` pooling expects)."""
    from cxrgen.models.tokenizer import train_clip_tokenizer

    context = architecture_config(name)["text_encoder"]["max_position_embeddings"]
    return train_clip_tokenizer([TOKENIZER_TEXT] * 4, vocab_size=1024, model_max_length=context)


def build_pipeline_folder(name: str, out_dir: str | os.PathLike, seed: int = 0,
                          native_size: int | None = None) -> dict[str, int]:
    """Save a full-size random-weight ``StableDiffusionPipeline`` of ``name`` to ``out_dir`` (atomically; fp32,
    safetensors) and return its parameter counts. ``native_size``: see :func:`build_components`."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    cfg = architecture_config(name)
    torch.manual_seed(seed)
    parts = build_components(name, native_size)
    scheduler = PNDMScheduler.from_config({k: v for k, v in cfg["scheduler"].items() if not k.startswith("_")})
    pipe = StableDiffusionPipeline(**parts, tokenizer=build_tokenizer(name), scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    counts = {part: sum(p.numel() for p in module.parameters()) for part, module in parts.items()}
    with atomic_path(out_dir) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "architecture.json").write_text(json.dumps(
            {"architecture": name, "seed": seed, "weights": "random", "native_size": native_size or "published",
             "parameters": counts}, indent=2))
    log.info("wrote %s (%s, random weights): %s", out_dir, name, counts)
    return counts
