"""Full fine-tuning of the U-Net and the text encoder jointly (RoentGen-style; Zafar et al. 2023, IV.A, IV.E, V.A).

Every U-Net and text-encoder weight is trained on the images with their prompts (Zafar's full fine-tuning runs
used the simple prompt "Chest X-ray", i.e. ``prompt_level="modality"``; the level is configurable). The VAE stays
frozen, so latents are cached; the text encoder is trained, so prompts are re-encoded every step. The adapter
folder holds ``unet/`` and ``text_encoder/`` (``save_pretrained`` folders) that replace the foundation's at
sampling time (:func:`cxrgen.adapt.pipeline.load_adapted_pipeline`, method ``"full"``), plus step samples.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cxrgen.adapt.config import FullFinetuneConfig
from cxrgen.adapt.dreambooth_lora import (
    STEP_DIR,
    StepSampler,
    count_trainable,
    prompt_token_stats,
    zafar_sample_training_set,
)
from cxrgen.adapt.methods import TEXT_ENCODER_DIR, UNET_DIR
from cxrgen.adapt.trainer import (
    BatchStream,
    LatentCache,
    TrainTask,
    finish_output,
    partial_dir,
    prepare_prompted_training,
    run_training,
    summarise,
    tokenize,
    train_scheduler_from,
)
from cxrgen.adapt.unet_finetune import load_unet
from cxrgen.diffusion import diffusion_loss
from cxrgen.errors import InputError


def train_full(foundation, images, prompts, cfg: FullFinetuneConfig, out_dir, progress: bool = True,
               extra_adapter: dict | None = None) -> dict:
    """Fine-tune the U-Net (and the text encoder) on ``images`` with per-image ``prompts``; write ``out_dir``.

    ``out_dir`` gets ``unet/``, ``text_encoder/`` (when trained), ``adapter.json`` (method "full", foundation,
    trainable / total parameters, ...), ``step_samples/``, ``training_log.csv``, ``loss_curve.png/.pdf`` and
    ``train_config.json``. Returns a summary dict.
    """
    pixels, prompts, engine, pipe = prepare_prompted_training(foundation, images, prompts, cfg, FullFinetuneConfig)
    out_dir = Path(out_dir)
    device = engine.device
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    tokens = prompt_token_stats(tokenizer, prompts)
    sampler = StepSampler(pipe, cfg, list(cfg.sample_prompts) or prompts[:1], partial_dir(out_dir) / STEP_DIR)
    if engine.is_main:  # the step samples are written once, by the main process
        sampler.maybe_sample(0)

    vae.requires_grad_(False)
    unet.requires_grad_(True)
    text_encoder.requires_grad_(bool(cfg.train_text_encoder))
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if cfg.train_text_encoder:
            text_encoder.gradient_checkpointing_enable()
    if device.type == "cuda" and cfg.mixed_precision != "no":
        vae.to(dtype=torch.float16 if cfg.mixed_precision == "fp16" else torch.bfloat16)
    vae.eval()
    unet.train()
    text_encoder.train(bool(cfg.train_text_encoder))
    trainable = count_trainable(unet, text_encoder)
    total_params = sum(p.numel() for m in (unet, text_encoder) for p in m.parameters())

    distinct = sorted(set(prompts))
    prompt_idx = torch.tensor([distinct.index(p) for p in prompts], dtype=torch.long, device=device)
    ids = tokenize(tokenizer, distinct).to(device)
    latents = LatentCache(vae, pixels, device, progress=progress)
    stream = BatchStream(len(latents), cfg.batch_size, cfg.seed)
    scheduler = train_scheduler_from(pipe)
    state = {"step": 0}
    if not cfg.train_text_encoder:
        with torch.no_grad():
            frozen_table = text_encoder(ids)[0].float()

    def loss_fn(micro: int, gen: torch.Generator):
        state["step"] = micro // cfg.gradient_accumulation_steps + 1
        idx = stream.batch(micro).to(device)
        lat = latents.sample(idx, gen)
        rows = engine.local_rows(len(idx))
        mine = prompt_idx[idx[rows]]
        emb = text_encoder(ids[mine])[0] if cfg.train_text_encoder else frozen_table[mine]
        return diffusion_loss(unet, scheduler, lat, emb, gen, snr_gamma=cfg.snr_gamma,
                              noise_offset=float(cfg.noise_offset), rows=rows), {}

    def after_step():
        if engine.is_main:
            sampler.maybe_sample(state["step"], modules=(unet, text_encoder))

    params = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
    modules = {"unet": unet, **({"text_encoder": text_encoder} if cfg.train_text_encoder else {})}
    task = TrainTask(params=params, state_modules=modules, loss_fn=loss_fn, after_step=after_step,
                     desc="full fine-tuning")
    result = run_training(cfg, task, partial_dir(out_dir) / "checkpoint", engine, progress)
    if not result.finished:
        return summarise(result, out_dir, "full", {"checkpoint": str(partial_dir(out_dir))})
    unet.eval()
    text_encoder.eval()

    adapter = {
        "method": "full",
        "foundation": str(foundation),
        "train_text_encoder": bool(cfg.train_text_encoder),
        "prompt_level": cfg.prompt_level, "normal_only": bool(cfg.normal_only),
        "n_images": int(len(pixels)), "n_distinct_prompts": len(distinct), "prompt_example": prompts[0],
        "trainable_params": trainable, "total_params": int(total_params), **tokens,
        "seed": int(cfg.seed), "steps": int(cfg.steps), "ema": bool(cfg.use_ema), **(extra_adapter or {}),
    }
    train_config = {**cfg.to_dict(), "effective_lr": cfg.effective_lr, "foundation": str(foundation),
                    "n_images": int(len(pixels)), "device": str(device), "train_seconds": result.seconds,
                    "resumed_from": result.resumed_from, **tokens}

    def write(d: Path) -> None:
        unet.save_pretrained(d / UNET_DIR, safe_serialization=True)
        if cfg.train_text_encoder:
            text_encoder.save_pretrained(d / TEXT_ENCODER_DIR, safe_serialization=True)
        sampler.write(d)

    finish_output(out_dir, write, result.rows, train_config, adapter, engine)
    return summarise(result, out_dir, "full", {"trainable_params": trainable, **tokens})


def train_from_sample(foundation, sample_dir, cfg: FullFinetuneConfig, out_dir, class_images_dir=None,
                      progress: bool = True) -> dict:
    """:func:`train_full` on a materialised sample folder (rows and fitted prompts by
    :func:`zafar_sample_training_set`; ``class_images_dir``: unused, no prior loss)."""
    images, prompts, extra = zafar_sample_training_set(foundation, sample_dir, cfg)
    return train_full(foundation, images, prompts, cfg, out_dir, progress=progress, extra_adapter=extra)


def apply_to_pipeline(pipe, folder: Path, adapter: dict, weight=None) -> None:
    """Replace ``pipe``'s U-Net and (when it was trained) text encoder by the adapter folder's."""
    load_unet(pipe, folder, "full fine-tuning")
    modules = {"unet": pipe.unet}
    if (Path(folder) / TEXT_ENCODER_DIR / "config.json").is_file():
        te = type(pipe.text_encoder).from_pretrained(Path(folder) / TEXT_ENCODER_DIR, local_files_only=True)
        pipe.text_encoder = te.to(pipe.text_encoder.dtype)
        modules["text_encoder"] = pipe.text_encoder
    elif adapter.get("train_text_encoder"):
        raise InputError(f"full fine-tuning adapter {folder}: adapter.json says the text encoder was trained but "
                         f"{Path(folder) / TEXT_ENCODER_DIR} is missing")
    pipe.register_modules(**modules)

__all__ = ["FullFinetuneConfig", "apply_to_pipeline", "train_from_sample", "train_full"]
