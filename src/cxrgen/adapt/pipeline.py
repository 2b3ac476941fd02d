"""Load a foundation pipeline with one adaptation applied, and generate grayscale images from it.

An adapted model is a folder with ``adapter.json`` = ``{"method": ..., "foundation": ...}`` plus the method's
weights (the contract every trainer in :mod:`cxrgen.adapt` writes; ``foundation`` is a hub id, or a local folder
relative to the adapter folder itself, see :mod:`cxrgen.adapt.adapter_file`; each method's entry in
:data:`cxrgen.adapt.methods.METHODS` names its artefacts and the function that applies them to the foundation):

* ``"none"``: the foundation as is (Chambon et al.'s "Original model" baseline);
* ``"textual_inversion"``: ``learned_embeds.safetensors`` (diffusers format) and ``token``; loaded with
  ``pipe.load_textual_inversion``.  Multi-vector embeddings (de Wilde et al.) become ``token``, ``token_1``, ...
  and diffusers expands ``token`` in a prompt to all of them;
* ``"unet"``: ``unet/`` (a ``UNet2DConditionModel`` folder) replaces the foundation's U-Net;
* ``"textual_projection"``: a prompt encoder from :func:`cxrgen.adapt.textual_projection.load_prompt_encoder`
  whose ``encode(list_of_prompts) -> (B, L, D)`` replaces the CLIP text encoder; ``encode([""])`` is the
  unconditional embedding for classifier-free guidance;
* ``"lora"``: ``pytorch_lora_weights.safetensors`` (diffusers/PEFT format), loaded with ``pipe.load_lora_weights``.
  ``adapter_dir`` may be a list of LoRA folders, stacked with ``adapter_weights`` (default 1 each) through
  ``pipe.set_adapters`` (Zafar et al.: "LoRA layers can be stacked on top of each other");
* ``"full"``: ``unet/`` and ``text_encoder/`` (fully fine-tuned) replace the foundation's.

**Prompts under textual inversion.**  The learned token stands for the phrase the Chambon prompts use for the
domain, "lung xray" (``TI_PHRASE``; ``adapter.json`` may name another one under ``"replaces"``): its first
occurrence, case-insensitive, is replaced by the token, so

* ``"a photo of a lung xray"`` -> ``"a photo of a <token>"``,
* ``"a photo of a lung xray with a visible pleural effusion"`` -> ``"a photo of a <token> with a visible pleural effusion"``,
* ``"a photo in the style of a lung xray"`` -> ``"a photo in the style of a <token>"``,

which are the trainer's object / style templates filled with the token.  A prompt that already contains the
token is used unchanged (de Wilde et al.'s "<pleural-effusion>" prompts); a prompt with neither the token nor the
phrase is also used unchanged, with a warning (e.g. an out-of-domain prompt for a forgetting check).
:meth:`AdaptedPipeline.prompt_text` returns the text actually sent to the model; sample manifests record it.

**Determinism.**  Image ``i`` of a call starts from latent noise drawn by its own CPU ``torch.Generator`` seeded
``seed + i``, so it is the same whatever ``batch_size`` is (up to float rounding of batched kernels) and whichever
device runs the U-Net.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrgen.adapt.adapter_file import resolve_foundation
from cxrgen.adapt.methods import ADAPTER_FILE, METHODS
from cxrgen.engine import default_device
from cxrgen.errors import InputError
from cxrgen.progress import progress_bar

log = logging.getLogger(__name__)

#: The phrase the textual-inversion token replaces in a prompt (see the module docstring).
TI_PHRASE = "lung xray"

#: Sampler names accepted by ``scheduler=`` -> diffusers class; ``None`` keeps the foundation's own (DDIM).
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
}


def read_adapter(adapter_dir) -> dict:
    """``adapter.json`` of an adapted-model folder, checked: a dict with a known ``method``."""
    folder = Path(adapter_dir)
    path = folder / ADAPTER_FILE
    if not folder.is_dir():
        raise InputError(f"adapter folder {folder} does not exist; expected a folder written by an adaptation trainer "
                         f"with {ADAPTER_FILE}")
    if not path.is_file():
        raise InputError(f"{path} missing; expected an adapted-model folder with {ADAPTER_FILE} = "
                         '{"method": ..., "foundation": ...}')
    try:
        adapter = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); expected {{\"method\": ..., \"foundation\": ...}}") from exc
    if not isinstance(adapter, dict) or "method" not in adapter:
        raise InputError(f"{path} has no 'method' field; expected one of {list(METHODS)}")
    if adapter["method"] not in METHODS:
        raise InputError(f"{path}: unknown method {adapter['method']!r}; expected one of {list(METHODS)}")
    return adapter


def substitute_token(prompt: str, token: str, phrase: str = TI_PHRASE) -> str:
    """Replace the first ``phrase`` (case-insensitive, whole words) of ``prompt`` by ``token``; see module docstring."""
    if token in prompt:
        return prompt
    new, n = re.subn(r"\b" + re.escape(phrase) + r"\b", token, prompt, count=1, flags=re.IGNORECASE)
    if n == 0:
        log.warning("prompt %r contains neither the learned token %r nor %r; used unchanged", prompt, token, phrase)
    return new


def set_scheduler(pipe, name: str | None) -> str:
    """Swap the pipeline's sampler for ``name`` (config carried over: betas, prediction type, zero-SNR, spacing).

    ``None`` keeps the foundation's own. Returns the class name in use."""
    if name is not None:
        key = str(name).lower()
        if key not in SCHEDULERS:
            raise InputError(f"unknown scheduler {name!r}; expected one of {sorted(SCHEDULERS)} (or null for the "
                             "foundation's own)")
        import diffusers

        pipe.scheduler = getattr(diffusers, SCHEDULERS[key]).from_config(pipe.scheduler.config)
    return type(pipe.scheduler).__name__


@dataclass
class AdaptedPipeline:
    """A ``StableDiffusionPipeline`` with one adaptation applied; :meth:`generate` gives uint8 grayscale arrays."""

    pipe: object
    method: str
    foundation: str
    adapter_dir: str | None = None
    adapter: dict = field(default_factory=dict)
    prompt_encoder: object | None = None

    @property
    def token(self) -> str | None:
        return self.adapter.get("token") if self.method == "textual_inversion" else None

    @property
    def scheduler_name(self) -> str:
        return type(self.pipe.scheduler).__name__

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def default_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def prompt_text(self, prompt: str) -> str:
        """The text sent to the model for ``prompt`` (the learned token substituted under textual inversion)."""
        if self.method == "textual_inversion":
            return substitute_token(prompt, self.token, self.adapter.get("replaces", TI_PHRASE))
        return prompt

    def _embeds(self, prompt: str, n: int) -> dict:
        """Pipeline keyword arguments carrying the prompt for a batch of ``n``."""
        if self.prompt_encoder is None:
            return {"prompt": [self.prompt_text(prompt)] * n}
        # textual projection: the in-domain encoder + projection replaces CLIP for prompt and unconditional input
        with torch.no_grad():
            cond = torch.as_tensor(self.prompt_encoder.encode([prompt]))
            uncond = torch.as_tensor(self.prompt_encoder.encode([""]))
        dtype = self.pipe.unet.dtype
        expected = int(self.pipe.unet.config.cross_attention_dim)
        if cond.ndim != 3 or cond.shape[-1] != expected:
            raise InputError(f"prompt encoder of {self.adapter_dir} returned shape {tuple(cond.shape)}; expected "
                             f"(1, L, {expected}) to condition this U-Net")
        return {
            "prompt_embeds": cond.to(self.device, dtype).expand(n, -1, -1).contiguous(),
            "negative_prompt_embeds": uncond.to(self.device, dtype).expand(n, -1, -1).contiguous(),
        }

    @torch.no_grad()
    def generate(self, prompt: str, n: int, seed: int, steps: int = 20, guidance: float = 4.0,
                 batch_size: int = 8, height: int | None = None, progress: bool = True,
                 guidance_rescale: float = 0.0) -> np.ndarray:
        """``n`` images for ``prompt`` as uint8 grayscale (n, H, W) (RGB output averaged over channels).

        Image ``i`` uses a CPU generator seeded ``seed + i`` (independent of ``batch_size``). ``height`` (square)
        defaults to the U-Net's native size. ``guidance`` is the classifier-free guidance scale (<= 1: none).
        """
        for name, value, low in (("n", n, 1), ("steps", steps, 1), ("batch_size", batch_size, 1)):
            if int(value) < low:
                raise InputError(f"{name}={value!r}; expected an integer >= {low}")
        if not isinstance(prompt, str):
            raise InputError(f"prompt={prompt!r}; expected a string")
        size = int(height) if height is not None else self.default_size()
        if size < 8 or size % int(self.pipe.vae_scale_factor):
            raise InputError(f"height={height!r}; expected a multiple of the VAE's downsampling factor "
                             f"{self.pipe.vae_scale_factor}")
        out = []
        bar = progress_bar(range(0, int(n), int(batch_size)), desc=f"generate [{self.method}] {prompt[:40]!r}",
                   disable=not progress, leave=False)
        for start in bar:
            b = min(int(batch_size), int(n) - start)
            gens = [torch.Generator("cpu").manual_seed(int(seed) + start + j) for j in range(b)]
            res = self.pipe(**self._embeds(prompt, b), num_inference_steps=int(steps), guidance_scale=float(guidance),
                            guidance_rescale=float(guidance_rescale), generator=gens, height=size, width=size,
                            output_type="np")
            imgs = np.asarray(res.images, dtype=np.float32)
            gray = imgs.mean(axis=-1) if imgs.ndim == 4 else imgs
            out.append((np.clip(gray, 0.0, 1.0) * 255.0).round().astype(np.uint8))
        return np.concatenate(out)


def load_adapted_pipeline(foundation=None, adapter_dir=None, device=None, scheduler: str | None = None,
                          progress_bar: bool = False, adapter_weights=None) -> AdaptedPipeline:
    """The foundation (registry name, hub id or local folder) with the adaptation in ``adapter_dir`` applied.

    ``adapter_dir=None`` gives the foundation as is (method ``"none"``). ``foundation=None`` takes the one named in
    ``adapter.json``. ``scheduler`` swaps the sampler (see :data:`SCHEDULERS`); by default the foundation's own
    (DDIM with its training betas) is kept. A list of LoRA folders in ``adapter_dir`` stacks them, weighted by
    ``adapter_weights`` (one number per folder; default 1.0 each).
    """
    from cxrgen.models.registry import load_pipeline, resolve_model

    if isinstance(adapter_dir, (list, tuple)):
        return _load_lora_stack(foundation, list(adapter_dir), adapter_weights, device, scheduler, progress_bar)
    if adapter_weights is not None:
        adapter_weights = list(adapter_weights) if isinstance(adapter_weights, (list, tuple)) else [adapter_weights]
        if len(adapter_weights) != 1:
            raise InputError(f"adapter_weights={adapter_weights!r} for one adapter folder; expected one weight")
    adapter: dict = {"method": "none"}
    folder = None
    if adapter_dir is not None:
        folder = Path(adapter_dir)
        adapter = read_adapter(folder)
    if foundation is None:
        foundation = adapter.get("foundation")
        if not foundation:
            raise InputError(f"no foundation given and {folder / ADAPTER_FILE if folder else 'no adapter'} names none; "
                             "expected a registry name, hub id or local pipeline folder")
        foundation = resolve_foundation(foundation, folder)
    elif adapter.get("foundation"):
        try:
            same = resolve_foundation(adapter["foundation"], folder) == resolve_model(foundation)
        except InputError:
            same = False
        if not same:
            # paths legitimately differ between machines; a real mismatch shows up as bad samples or shape errors
            log.warning("adapter %s was trained on foundation %r but is applied to %r", folder, adapter["foundation"],
                        foundation)
    dev = default_device(device)
    pipe = load_pipeline(foundation)
    method = adapter["method"]
    spec = METHODS[method]
    if adapter_weights is not None and not spec.stackable:
        raise InputError(f"adapter_weights={adapter_weights!r} for a {method!r} adapter; expected none, only "
                         f"stackable methods ({_stackable()}) take a weight")
    if spec.apply:
        spec.apply_function()(pipe, folder, adapter, None if adapter_weights is None else float(adapter_weights[0]))
    encoder = spec.prompt_encoder_function()(folder, device=dev) if spec.prompt_encoder else None
    pipe = pipe.to(dev)
    set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=not progress_bar)
    return AdaptedPipeline(pipe=pipe, method=method, foundation=str(foundation),
                           adapter_dir=str(folder) if folder else None, adapter=adapter, prompt_encoder=encoder)


def _stackable() -> list[str]:
    return [name for name, spec in METHODS.items() if spec.stackable]


def _load_lora_stack(foundation, folders: list, weights, device, scheduler, progress_bar) -> AdaptedPipeline:
    """Several LoRA adapters on one foundation, weighted (``pipe.set_adapters``)."""
    from cxrgen.adapt.dreambooth_lora import load_lora
    from cxrgen.models.registry import load_pipeline

    if not folders:
        raise InputError("adapter_dir is an empty list; expected one or more LoRA adapter folders")
    weights = [1.0] * len(folders) if weights is None else [float(w) for w in weights]
    if len(weights) != len(folders):
        raise InputError(f"{len(weights)} adapter_weights for {len(folders)} LoRA folders; expected one weight each")
    adapters = [read_adapter(f) for f in folders]
    bad = [str(f) for f, a in zip(folders, adapters) if not METHODS[a["method"]].stackable]
    if bad:
        raise InputError(f"adapters {bad} are not LoRA adapters; only stackable methods ({_stackable()}) can be "
                         "stacked")
    if not foundation:
        if not adapters[0].get("foundation"):
            raise InputError(f"no foundation given and {Path(folders[0]) / ADAPTER_FILE} names none")
        foundation = resolve_foundation(adapters[0]["foundation"], folders[0])
    pipe = load_pipeline(foundation)
    names = [f"lora_{i}" for i in range(len(folders))]
    for f, a, name in zip(folders, adapters, names):
        load_lora(pipe, Path(f), a, name)
    pipe.set_adapters(names, adapter_weights=weights)
    pipe = pipe.to(default_device(device))
    set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=not progress_bar)
    merged = {"method": "lora", "foundation": str(foundation), "stack": [str(f) for f in folders], "weights": weights}
    return AdaptedPipeline(pipe=pipe, method="lora", foundation=str(foundation),
                           adapter_dir=";".join(str(f) for f in folders), adapter=merged)
