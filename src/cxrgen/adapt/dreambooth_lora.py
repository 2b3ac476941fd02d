"""DreamBooth + LoRA (Zafar et al. 2023, III.B-C, IV.E, V.B; Ruiz et al. 2022; Hu et al. 2021).

PEFT LoRA adapters (rank ``rank``, scale ``alpha / rank``) are added to the U-Net's attention projections
(``target_modules``; diffusers' DreamBooth-LoRA default ``to_q, to_k, to_v, to_out.0``) and optionally to the
text encoder's (``q_proj, k_proj, v_proj, out_proj``); every pretrained weight stays frozen. Each training image
is paired with its structured PadChest-style prompt (:func:`cxrgen.data.prompts.zafar_prompt` at
``prompt_level``); with ``prior_preservation`` the DreamBooth class-prior loss on foundation samples of
``class_prompt`` is added, as in :mod:`cxrgen.adapt.unet_finetune` (whose class-image cache and loss are reused).

The adapter folder holds ``pytorch_lora_weights.safetensors`` written by diffusers'
``StableDiffusionPipeline.save_lora_weights`` (with the LoRA configs as metadata), so
``pipe.load_lora_weights(folder)`` reads it, and several such folders can be stacked with weights at sampling
time (``pipe.set_adapters``; :func:`cxrgen.adapt.pipeline.load_adapted_pipeline` with a list of folders).

Shared with :mod:`cxrgen.adapt.full_finetune`: :class:`ZafarTrainConfig` (which rows of a sample are trained on,
at which prompt level, and the *step samples*: images of fixed prompts and seeds drawn at chosen training steps,
Zafar Figs. 4-7), :func:`zafar_training_set` and :class:`StepSampler`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.adapt.config import DreamBoothLoRAConfig, ZafarTrainConfig
from cxrgen.adapt.methods import ADAPTER_FILE, LORA_FILE, TEXT_ENCODER_DIR, UNET_DIR
from cxrgen.adapt.trainer import (
    BatchStream,
    LatentCache,
    TrainTask,
    encode_prompts,
    finish_output,
    images_to_tensor,
    partial_dir,
    prepare_prompted_training,
    run_training,
    summarise,
    tokenize,
    train_scheduler_from,
)
from cxrgen.data.prompts import ZAFAR_COMPACT, zafar_findings, zafar_prompt
from cxrgen.diffusion import diffusion_loss
from cxrgen.errors import InputError
from cxrgen.io import atomic_path, write_csv_atomic

STEP_DIR = "step_samples"
STEP_MANIFEST = "manifest.csv"

# ------------------------------------------------------------------------------------------------ data


def zafar_training_set(images: np.ndarray, manifest: pd.DataFrame, cfg: ZafarTrainConfig,
                       where: str = "sample", tokenizer=None) -> tuple[np.ndarray, pd.DataFrame, list[str]]:
    """The rows a Zafar trainer uses and their prompts at ``cfg.prompt_level``.

    ``normal_only`` keeps rows with No Finding == 1 and no positive/uncertain pathology; ``max_images`` takes a
    ``cfg.seed``-seeded random subset (kept in manifest order). With a ``tokenizer`` the compact prompts are fitted
    to its context (:func:`fit_zafar_prompts`; the returned manifest gets a ``findings_dropped`` column). Returns
    (images, manifest, prompts).
    """
    from cxrgen.data.sampling import sole_finding

    if len(images) != len(manifest):
        raise InputError(f"{where}: {len(images)} images but {len(manifest)} manifest rows; expected one row each")
    keep = np.ones(len(manifest), dtype=bool)
    if cfg.normal_only:
        if "No Finding" not in manifest.columns:
            raise InputError(f"{where}: manifest has no 'No Finding' column; expected CheXpert label columns for "
                             "normal_only")
        keep &= sole_finding(manifest, "No Finding").to_numpy()
    idx = np.flatnonzero(keep)
    if cfg.max_images is not None and len(idx) > cfg.max_images:
        rng = np.random.default_rng(int(cfg.seed))
        idx = np.sort(rng.choice(idx, int(cfg.max_images), replace=False))
    if len(idx) == 0:
        raise InputError(f"{where}: no images left after normal_only={cfg.normal_only}; expected at least one")
    sub = manifest.iloc[idx].reset_index(drop=True)
    if tokenizer is None:
        prompts = [zafar_prompt(row, cfg.prompt_level) for _, row in sub.iterrows()]
    else:
        prompts, dropped = fit_zafar_prompts(sub, cfg.prompt_level, tokenizer)
        sub["findings_dropped"] = dropped
    return images[idx], sub, prompts


def n_tokens(tokenizer, prompt: str) -> int:
    """Tokens of ``prompt`` under ``tokenizer``, start and end tokens included (untruncated)."""
    return len(tokenizer(prompt).input_ids)


def fit_zafar_prompts(manifest: pd.DataFrame, level: str, tokenizer) -> tuple[list[str], list[int]]:
    """Each row's prompt at ``level``; at the compact level (:data:`cxrgen.data.prompts.ZAFAR_COMPACT`) with as
    many of its findings (in the builder's order) as fit the tokenizer's context, at least one. Returns (prompts,
    findings dropped per row). Other levels are the paper's prompts and stay whole (the text encoder truncates
    them; :func:`prompt_token_stats` counts how often). A compact prompt whose first finding alone overflows
    stays over the context, and is counted there too."""
    limit = int(tokenizer.model_max_length)
    prompts, dropped = [], []
    for _, row in manifest.iterrows():
        text = zafar_prompt(row, level)
        k = len(zafar_findings(row))
        if level == ZAFAR_COMPACT:
            while k > 1 and n_tokens(tokenizer, text) > limit:
                k -= 1
                text = zafar_prompt(row, level, max_findings=k)
        prompts.append(text)
        dropped.append(len(zafar_findings(row)) - k if level == ZAFAR_COMPACT else 0)
    return prompts, dropped


def prompt_token_stats(tokenizer, prompts: list[str], findings_dropped: list[int] | None = None) -> dict:
    """Token counts of ``prompts`` (with start/end tokens) against the tokenizer's context length; with
    ``findings_dropped`` (per prompt, :func:`fit_zafar_prompts`) also the share of prompts that list fewer findings
    than their image has."""
    lengths = [n_tokens(tokenizer, p) for p in prompts]
    limit = int(tokenizer.model_max_length)
    out = {"max_tokens": int(max(lengths)) if lengths else 0, "context_length": limit,
           "truncated_share": float(np.mean([n > limit for n in lengths])) if lengths else 0.0}
    if findings_dropped is not None:
        out["findings_dropped_share"] = float(np.mean([d > 0 for d in findings_dropped])) if prompts else 0.0
    return out


def load_tokenizer(foundation):
    """The foundation's tokenizer alone (no model weights), for counting and fitting prompts."""
    from transformers import CLIPTokenizer

    from cxrgen.models.registry import resolve_model

    target = resolve_model(foundation)
    return CLIPTokenizer.from_pretrained(target, subfolder="tokenizer", local_files_only=Path(target).is_dir())


class StepSampler:
    """Images of fixed prompts and seeds at chosen training steps (Zafar Figs. 4-7), cached in ``folder``.

    Image ``i`` of every prompt at every step starts from the noise of seed ``seed + i``, so rows of the grid
    differ only by training. Files already in ``folder`` (a resumed run) are kept.
    """

    def __init__(self, pipe, cfg: ZafarTrainConfig, prompts: list[str], folder: Path):
        self.pipe, self.cfg, self.folder = pipe, cfg, Path(folder)
        self.steps = sorted(set(int(s) for s in (cfg.sample_steps or ())))
        self.prompts = list(prompts)

    def _files(self, step: int) -> list[tuple[int, int, Path]]:
        return [(p, i, self.folder / f"step_{step:06d}_p{p}_i{i}.png")
                for p in range(len(self.prompts)) for i in range(self.cfg.sample_n)]

    @torch.no_grad()
    def maybe_sample(self, step: int, modules=()) -> None:
        from PIL import Image

        if step not in self.steps or all(f.is_file() for _, _, f in self._files(step)):
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        was = [(m, m.training) for m in modules]
        for m, _ in was:
            m.eval()
        n, cfg = self.cfg.sample_n, self.cfg
        prompts = [p for p in self.prompts for _ in range(n)]
        gens = [torch.Generator("cpu").manual_seed(int(cfg.seed) + i) for _ in self.prompts for i in range(n)]
        self.pipe.set_progress_bar_config(disable=True)
        out = self.pipe(prompts, num_inference_steps=cfg.sample_inference_steps, guidance_scale=cfg.sample_guidance,
                        height=cfg.resolution, width=cfg.resolution, generator=gens, output_type="np").images
        gray = (np.clip(np.asarray(out, np.float32).mean(-1), 0, 1) * 255).round().astype(np.uint8)
        for (_, _, f), img in zip(self._files(step), gray):
            with atomic_path(f) as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
        for m, training in was:
            m.train(training)

    def write(self, out: Path) -> None:
        """Copy the images into ``out/step_samples`` with ``manifest.csv`` (step, prompt, index, seed, file)."""
        import shutil

        if not self.steps:
            return
        (out / STEP_DIR).mkdir(parents=True, exist_ok=True)
        rows = []
        for step in self.steps:
            for p, i, f in self._files(step):
                if not f.is_file():
                    raise InputError(f"step sample {f} missing; expected it drawn at step {step}")
                shutil.copyfile(f, out / STEP_DIR / f.name)
                rows.append({"step": step, "prompt_index": p, "prompt": self.prompts[p], "index": i,
                             "seed": int(self.cfg.seed) + i, "file": f"{STEP_DIR}/{f.name}"})
        write_csv_atomic(pd.DataFrame(rows), out / STEP_DIR / STEP_MANIFEST)


def load_step_samples(adapter_dir) -> tuple[np.ndarray, pd.DataFrame]:
    """The step samples of an adapter folder: uint8 (N,H,W) and the manifest (empty when none were drawn)."""
    from PIL import Image

    path = Path(adapter_dir) / STEP_DIR / STEP_MANIFEST
    if not path.is_file():
        return np.zeros((0, 1, 1), np.uint8), pd.DataFrame(columns=["step", "prompt_index", "prompt", "index", "seed",
                                                                    "file"])
    man = pd.read_csv(path, keep_default_na=False, na_values=[""])
    imgs = np.stack([np.asarray(Image.open(Path(adapter_dir) / f).convert("L")) for f in man["file"]])
    return imgs, man


class TrainableState:
    """A ``state_dict`` / ``load_state_dict`` view of only the trained parameters of a module (so a checkpoint
    holds the LoRA matrices, not the frozen foundation)."""

    def __init__(self, module: torch.nn.Module):
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict:
        return {n: p.detach() for n, p in self.params.items()}

    def load_state_dict(self, sd: dict) -> None:
        missing = sorted(set(self.params) - set(sd))
        if missing:
            raise InputError(f"checkpoint lacks trained parameters {missing[:3]}...; expected the same LoRA setup")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(sd[n].to(p.device, p.dtype))


def count_trainable(*modules) -> int:
    return int(sum(p.numel() for m in modules if m is not None for p in m.parameters() if p.requires_grad))


def _lora_config(rank, alpha, targets, dropout):
    from peft import LoraConfig

    return LoraConfig(r=int(rank), lora_alpha=float(alpha), init_lora_weights="gaussian",
                      target_modules=list(targets), lora_dropout=float(dropout))


# ------------------------------------------------------------------------------------------------ training


def train_lora(foundation, images, prompts, cfg: DreamBoothLoRAConfig, out_dir, class_images_dir=None,
               progress: bool = True, extra_adapter: dict | None = None) -> dict:
    """Train LoRA adapters on ``images`` (uint8 (N,H,W)) with per-image ``prompts``; write ``out_dir``.

    ``out_dir`` gets ``pytorch_lora_weights.safetensors`` (diffusers format), ``adapter.json`` (method "lora",
    foundation, rank, alpha, targets, trainable / total parameters, token statistics of the prompts, ...),
    ``step_samples/``, ``training_log.csv``, ``loss_curve.png/.pdf`` and ``train_config.json``. Returns a summary.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    from cxrgen.adapt.unet_finetune import ensure_class_images, prior_preservation_loss
    pixels, prompts, engine, pipe = prepare_prompted_training(foundation, images, prompts, cfg, DreamBoothLoRAConfig)
    out_dir = Path(out_dir)
    device = engine.device
    tokenizer, text_encoder, vae, unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
    total_params = sum(p.numel() for m in (unet, text_encoder) for p in m.parameters())
    tokens = prompt_token_stats(tokenizer, prompts)

    class_pixels = None
    if cfg.prior_preservation:  # sampled from the untouched foundation, before any adapter exists
        cdir = Path(class_images_dir) if class_images_dir else partial_dir(out_dir) / "class_images"
        with engine.accelerator.main_process_first():  # the main process fills the cache, the others read it
            class_pixels = images_to_tensor(ensure_class_images(pipe, cfg, cdir, str(foundation), progress),
                                            cfg.resolution, what="class images")
    sampler = StepSampler(pipe, cfg, list(cfg.sample_prompts) or prompts[:1], partial_dir(out_dir) / STEP_DIR)
    if engine.is_main:  # the step samples are written once, by the main process
        sampler.maybe_sample(0)

    for m in (vae, text_encoder, unet):
        m.requires_grad_(False)
    unet_lora = _lora_config(cfg.rank, cfg.alpha, cfg.target_modules, cfg.lora_dropout)
    unet.add_adapter(unet_lora)
    text_lora = None
    if cfg.train_text_encoder:
        text_lora = _lora_config(cfg.rank, cfg.alpha, cfg.text_target_modules, cfg.lora_dropout)
        text_encoder.add_adapter(text_lora)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    vae.eval()
    unet.train()
    text_encoder.train(cfg.train_text_encoder)
    trainable = count_trainable(unet, text_encoder)

    distinct = sorted(set(prompts))
    prompt_idx = torch.tensor([distinct.index(p) for p in prompts], dtype=torch.long, device=device)
    ids = tokenize(tokenizer, distinct).to(device)
    table = None if cfg.train_text_encoder else encode_prompts(tokenizer, text_encoder, distinct, device)
    class_ids = tokenize(tokenizer, [cfg.class_prompt]).to(device)
    latents = LatentCache(vae, pixels, device, progress=progress)
    stream = BatchStream(len(latents), cfg.batch_size, cfg.seed)
    if class_pixels is not None:
        class_latents = LatentCache(vae, class_pixels, device, progress=progress)
        class_stream = BatchStream(len(class_latents), cfg.batch_size, cfg.seed + 1)
        class_table = None if cfg.train_text_encoder else encode_prompts(tokenizer, text_encoder, [cfg.class_prompt],
                                                                         device)
    scheduler = train_scheduler_from(pipe)
    state = {"step": 0}

    def loss_fn(micro: int, gen: torch.Generator):
        state["step"] = micro // cfg.gradient_accumulation_steps + 1
        idx = stream.batch(micro).to(device)
        lat = latents.sample(idx, gen)
        rows = engine.local_rows(len(idx))
        mine = prompt_idx[idx[rows]]
        emb = table[mine] if table is not None else text_encoder(ids[mine])[0]
        if class_pixels is None:
            loss = diffusion_loss(unet, scheduler, lat, emb, gen, snr_gamma=cfg.snr_gamma,
                                  noise_offset=float(cfg.noise_offset), rows=rows)
            return loss, {}
        cidx = class_stream.batch(micro).to(device)
        clat = class_latents.sample(cidx, gen)
        cemb = class_table if class_table is not None else text_encoder(class_ids)[0]
        loss, inst, prior = prior_preservation_loss(
            unet, scheduler, lat, emb, clat, cemb.expand(len(emb), -1, -1), cfg.prior_loss_weight, gen,
            snr_gamma=cfg.snr_gamma, noise_offset=float(cfg.noise_offset), rows=rows)
        return loss, {"instance_loss": float(inst.detach()), "prior_loss": float(prior.detach())}

    def after_step():
        if engine.is_main:
            sampler.maybe_sample(state["step"], modules=(unet, text_encoder))

    params = [p for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad]
    modules = {"unet_lora": TrainableState(unet)}
    if cfg.train_text_encoder:
        modules["text_encoder_lora"] = TrainableState(text_encoder)
    task = TrainTask(params=params, state_modules=modules, loss_fn=loss_fn, after_step=after_step,
                     desc="dreambooth lora")
    result = run_training(cfg, task, partial_dir(out_dir) / "checkpoint", engine, progress)
    if not result.finished:
        return summarise(result, out_dir, "lora", {"checkpoint": str(partial_dir(out_dir))})
    unet.eval()
    text_encoder.eval()

    adapter = {
        "method": "lora",
        "foundation": str(foundation),
        "weight_name": LORA_FILE,
        "rank": int(cfg.rank), "alpha": float(cfg.alpha), "target_modules": list(cfg.target_modules),
        "train_text_encoder": bool(cfg.train_text_encoder),
        "text_target_modules": list(cfg.text_target_modules) if cfg.train_text_encoder else [],
        "prior_preservation": bool(cfg.prior_preservation),
        "class_prompt": cfg.class_prompt if cfg.prior_preservation else None,
        "num_class_images": int(cfg.num_class_images) if cfg.prior_preservation else 0,
        "prompt_level": cfg.prompt_level, "normal_only": bool(cfg.normal_only),
        "n_images": int(len(pixels)), "n_distinct_prompts": len(distinct), "prompt_example": prompts[0],
        "trainable_params": trainable, "total_params": int(total_params), **tokens,
        "seed": int(cfg.seed), "steps": int(cfg.steps), **(extra_adapter or {}),
    }
    train_config = {**cfg.to_dict(), "effective_lr": cfg.effective_lr, "foundation": str(foundation),
                    "n_images": int(len(pixels)), "device": str(device), "train_seconds": result.seconds,
                    "resumed_from": result.resumed_from, **tokens}

    def write(d: Path) -> None:
        unet_sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
        te_sd = convert_state_dict_to_diffusers(get_peft_model_state_dict(text_encoder)) if text_lora else None
        StableDiffusionPipeline.save_lora_weights(
            save_directory=str(d), unet_lora_layers=unet_sd, text_encoder_lora_layers=te_sd,
            safe_serialization=True, weight_name=LORA_FILE,
            unet_lora_adapter_metadata=unet_lora.to_dict(),
            text_encoder_lora_adapter_metadata=text_lora.to_dict() if text_lora else None)
        sampler.write(d)

    finish_output(out_dir, write, result.rows, train_config, adapter, engine)
    return summarise(result, out_dir, "lora", {"trainable_params": trainable, **tokens})


def train_from_sample(foundation, sample_dir, cfg: DreamBoothLoRAConfig, out_dir, class_images_dir=None,
                      progress: bool = True) -> dict:
    """:func:`train_lora` on a materialised sample folder (rows and fitted prompts by
    :func:`zafar_sample_training_set`)."""
    images, prompts, extra = zafar_sample_training_set(foundation, sample_dir, cfg)
    return train_lora(foundation, images, prompts, cfg, out_dir, class_images_dir=class_images_dir,
                      progress=progress, extra_adapter=extra)


def load_lora(pipe, folder: Path, adapter: dict, name: str) -> None:
    """Load a LoRA adapter folder into ``pipe`` under the PEFT adapter name ``name``."""
    weight = adapter.get("weight_name", LORA_FILE)
    if not (Path(folder) / weight).is_file():
        raise InputError(f"lora adapter {folder}: expected {weight} (written by save_lora_weights)")
    pipe.load_lora_weights(str(folder), weight_name=weight, adapter_name=name)


def apply_to_pipeline(pipe, folder: Path, adapter: dict, weight: float | None = None) -> None:
    """Load one LoRA adapter folder into ``pipe``, weighted ``weight`` when given (``pipe.set_adapters``)."""
    load_lora(pipe, folder, adapter, "lora_0")
    if weight is not None:
        pipe.set_adapters(["lora_0"], adapter_weights=[float(weight)])


def zafar_sample_training_set(foundation, sample_dir, cfg: ZafarTrainConfig) -> tuple[np.ndarray, list[str], dict]:
    """:func:`zafar_training_set` of a materialised sample folder with the prompts fitted to the foundation's
    tokenizer; returns (images, prompts, adapter.json extras: the sample and the share of prompts that dropped
    findings to fit the context)."""
    from cxrgen.data.sampling import FolderImages

    images = FolderImages(sample_dir)  # a whole split at paper scale: only the rows the trainer keeps are read
    images, manifest, prompts = zafar_training_set(images, images.manifest, cfg, where=str(sample_dir),
                                                   tokenizer=load_tokenizer(foundation))
    dropped = manifest["findings_dropped"].to_numpy()
    return images, prompts, {"sample": str(sample_dir), "findings_dropped_share": float(np.mean(dropped > 0)),
                             "max_findings_dropped": int(dropped.max()) if len(dropped) else 0}


def artefact_bytes(adapter_dir) -> int:
    """Bytes of the weights an adapter folder adds to the foundation (LoRA file, or the full model folders)."""
    folder = Path(adapter_dir)
    files = [folder / LORA_FILE] if (folder / LORA_FILE).is_file() else [
        f for sub in (UNET_DIR, TEXT_ENCODER_DIR) for f in (folder / sub).glob("*") if f.is_file()]
    if not files:
        raise InputError(f"{folder}: no {LORA_FILE} and no {UNET_DIR}/ or {TEXT_ENCODER_DIR}/ weights; expected a "
                         "Zafar adapter")
    return int(sum(os.path.getsize(f) for f in files))


def read_adapter_json(adapter_dir) -> dict:
    return json.loads((Path(adapter_dir) / ADAPTER_FILE).read_text())


__all__ = ["ZafarTrainConfig", "DreamBoothLoRAConfig", "zafar_training_set",
           "zafar_sample_training_set", "fit_zafar_prompts", "n_tokens", "load_tokenizer", "prompt_token_stats",
           "StepSampler", "load_step_samples", "TrainableState", "count_trainable",
           "train_lora", "train_from_sample", "load_lora", "apply_to_pipeline", "artefact_bytes"]
