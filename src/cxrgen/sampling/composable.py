"""Composable diffusion (Liu et al. 2022, "Compositional Visual Generation with Composable Diffusion Models"), as
de Wilde et al. 2023 (3.1, 4.3) use it to interpolate healthy -> diseased and to combine pathologies.

**Prompt syntax.**  A prompt is one or more *terms* joined by the keyword ``AND`` (upper case, a word of its own);
each term may start with a weight and ``*``::

    0.25*<healthy> AND 0.75*<cardiomegaly>
    <pleural-effusion> AND 0.5 * <pneumonia>          (a term without a weight has weight 1)

Weights are decimal numbers (``1``, ``0.5``, ``.5``, ``-0.5``, ``2e-1``); spaces around ``*`` and ``AND`` are free.
Text that must contain the word ``AND`` or an asterisk escapes it: ``\\AND``, ``\\*``; ``\\\\`` is a backslash.
Anything else (an empty term, a dangling ``AND``, ``*`` without a number before it, a weight without text, a
non-finite weight, an unknown escape, an unpaired surrogate) is an :class:`~cxrgen.errors.InputError` naming the
prompt and the term.
A term longer than the tokenizer's context is truncated, as in the pipeline, and counted in a logged warning.

**Guidance.**  With the unconditional prediction ``e_u`` and one prediction ``e_i`` per term,
``e = e_u + sum_i w_i * g * (e_i - e_u)`` (Liu et al. eq. 9 with classifier-free guidance scale ``g``).  One term
of weight 1 is exactly the ordinary ``StableDiffusionPipeline`` classifier-free guidance step; the sampler repeats
that pipeline's loop (same latents from the same generators, same ``scale_model_input`` / ``step`` calls, the
unconditional batch first), so it reproduces the pipeline's images for such prompts.  As in diffusers, ``g <= 1``
switches guidance off (``g`` is taken as 1): weights summing to 1 then need no unconditional pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrgen.errors import InputError
from cxrgen.models.tokenizer import count_truncated, require_unicode

_ESC_AND, _ESC_STAR, _ESC_BS = "\ue000", "\ue001", "\ue002"
_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_WEIGHTED = re.compile(rf"^\s*({_NUMBER})\s*\*(.*)$", re.DOTALL)
_AND = re.compile(r"(?<!\S)AND(?!\S)")


@dataclass(frozen=True)
class Term:
    """One term of a composable prompt: the text sent to the text encoder and its weight."""

    text: str
    weight: float = 1.0


def _unescape(text: str) -> str:
    return text.replace(_ESC_AND, "AND").replace(_ESC_STAR, "*").replace(_ESC_BS, "\\")


def _protect(prompt: str) -> str:
    """Replace the escapes ``\\AND``, ``\\*``, ``\\\\`` by private-use characters; refuse unknown escapes."""
    out, i = [], 0
    while i < len(prompt):
        ch = prompt[i]
        if ch in (_ESC_AND, _ESC_STAR, _ESC_BS):
            raise InputError(f"prompt {prompt!r} contains the reserved character U+{ord(ch):04X}; expected plain text")
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        rest = prompt[i + 1:]
        if rest.startswith("AND"):
            out.append(_ESC_AND)
            i += 4
        elif rest.startswith("*"):
            out.append(_ESC_STAR)
            i += 2
        elif rest.startswith("\\"):
            out.append(_ESC_BS)
            i += 2
        else:
            what = repr(rest[:1]) if rest else "the end of the prompt"
            raise InputError(f"prompt {prompt!r}: backslash before {what} at position {i}; expected one of the escapes "
                             r"\AND, \*, \\")
    return "".join(out)


def parse_prompt(prompt: str) -> list[Term]:
    """Split a weighted-AND prompt into :class:`Term` s (see the module docstring for the syntax and the errors)."""
    if not isinstance(prompt, str):
        raise InputError(f"prompt={prompt!r}; expected a string such as '0.25*<healthy> AND 0.75*<cardiomegaly>'")
    if not prompt.strip():
        raise InputError("prompt is empty; expected text such as '<healthy>' or '0.5*<healthy> AND 0.5*<pneumonia>'")
    require_unicode([prompt], "prompt")
    protected = _protect(prompt)
    pieces = _AND.split(protected)
    terms = []
    for k, piece in enumerate(pieces, start=1):
        where = f"prompt {prompt!r}, term {k} of {len(pieces)}"
        if not piece.strip():
            raise InputError(f"{where} is empty (a dangling or doubled AND?); expected text between the ANDs")
        m = _WEIGHTED.match(piece)
        weight, text = 1.0, piece
        if m:
            weight, text = float(m.group(1)), m.group(2)
            if not math.isfinite(weight):
                raise InputError(f"{where}: weight {m.group(1)!r} is not finite; expected a number")
            if not text.strip():
                raise InputError(f"{where}: weight {m.group(1)} has no text after '*'; expected e.g. "
                                 f"'{m.group(1)}*<healthy>'")
        if "*" in text:
            bad = text.split("*")[0].strip().split()[-1:] or ["(nothing)"]
            raise InputError(f"{where}: '*' after {bad[0]!r}, which is not a leading number weight; expected "
                             r"'<weight>*<text>' at the start of a term, or \* for a literal asterisk")
        terms.append(Term(" ".join(_unescape(text).split()), weight))
    return terms


def _escape(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("*", "\\*")
    return _AND.sub(lambda _: "\\AND", text)


def format_prompt(terms: Sequence[Term] | Sequence[tuple[str, float]]) -> str:
    """The prompt text of ``terms`` (inverse of :func:`parse_prompt`): ``'0.25*<healthy> AND 0.75*<cardiomegaly>'``."""
    parts = []
    for t in terms:
        text, weight = (t.text, t.weight) if isinstance(t, Term) else t
        if not str(text).strip():
            raise InputError(f"term {t!r} has no text; expected a non-empty string")
        parts.append(f"{float(weight):g}*{_escape(str(text))}")
    if not parts:
        raise InputError("format_prompt: no terms; expected at least one (text, weight)")
    return " AND ".join(parts)


def as_terms(prompt) -> list[Term]:
    """A prompt string (parsed) or a sequence of :class:`Term` / ``(text, weight)``."""
    if isinstance(prompt, str):
        return parse_prompt(prompt)
    terms = [t if isinstance(t, Term) else Term(str(t[0]), float(t[1])) for t in prompt]
    if not terms:
        raise InputError("no prompt terms given; expected a prompt string or at least one (text, weight)")
    return terms


# ------------------------------------------------------------------------------------------------ pipelines
def load_embeddings_pipeline(foundation, adapter_dirs: Sequence, device=None, scheduler: str | None = None):
    """The foundation with several textual-inversion adapters loaded into one pipeline (for composition).

    Returns an :class:`~cxrgen.adapt.pipeline.AdaptedPipeline` (method ``"none"``: prompts go in unchanged, so
    they name the tokens themselves, e.g. ``<healthy> AND <cardiomegaly>``). Every folder must be a
    textual-inversion adapter with a distinct token.
    """
    from cxrgen.adapt.pipeline import load_adapted_pipeline, read_adapter
    from cxrgen.adapt.textual_inversion import apply_to_pipeline as load_embeddings

    base = load_adapted_pipeline(foundation, None, device=device, scheduler=scheduler)
    tokens = {}
    for folder in adapter_dirs:
        folder = Path(folder)
        adapter = read_adapter(folder)
        if adapter["method"] != "textual_inversion":
            raise InputError(f"{folder}: method {adapter['method']!r}; expected a textual_inversion adapter to compose")
        token = adapter.get("token")
        if token in tokens:
            raise InputError(f"token {token!r} of {folder} is also the token of {tokens[token]}; expected distinct tokens")
        load_embeddings(base.pipe, folder, adapter)
        tokens[token] = folder
    base.adapter = {"method": "none", "tokens": list(tokens), "adapters": [str(f) for f in tokens.values()]}
    return base


def _pipe_of(pipeline):
    return getattr(pipeline, "pipe", pipeline)


@torch.no_grad()
def encode_terms(pipe, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Text embeddings (K, L, D) of the term texts and the unconditional embedding (1, L, D), as the pipeline
    computes them (textual-inversion tokens expanded by its ``maybe_convert_prompt``). Terms longer than the
    tokenizer's context are truncated, as the pipeline does; they are counted in one warning."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is not None:
        convert = getattr(pipe, "maybe_convert_prompt", None)
        count_truncated(tokenizer, [convert(t, tokenizer) if convert else t for t in texts], what="prompt term")
    device = pipe.unet.device
    cond, uncond = pipe.encode_prompt(list(texts), device, 1, True, None)
    return cond, uncond[:1]


def to_uint8_gray(images: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] (B, H, W[, C]) -> uint8 grayscale (channels averaged), like AdaptedPipeline."""
    imgs = np.asarray(images, dtype=np.float32)
    gray = imgs.mean(axis=-1) if imgs.ndim == 4 else imgs
    return (np.clip(gray, 0.0, 1.0) * 255.0).round().astype(np.uint8)


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, generators=None) -> np.ndarray:
    """Latents -> uint8 grayscale images, as the pipeline decodes them (``output_type="np"``)."""
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generators)[0]
    image = pipe.image_processor.postprocess(image, output_type="np", do_denormalize=[True] * image.shape[0])
    return to_uint8_gray(image)


def _check_common(n, steps, batch_size):
    for name, value in (("n", n), ("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, (int, np.integer)) or int(value) < 1:
            raise InputError(f"{name}={value!r}; expected an integer >= 1")


@torch.no_grad()
def denoise(pipe, latents: torch.Tensor, terms: Sequence[Term], guidance: float, steps: int, generators,
            after_step: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
            embeds: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Run the sampler from ``latents`` (already scaled by ``init_noise_sigma``) with composed guidance.

    ``after_step(i, t, latents) -> latents`` is called after every scheduler step (inpainting blends there).
    The scheduler's timesteps are set here (``steps``)."""
    sched = pipe.scheduler
    device = pipe.unet.device
    weights = [float(t.weight) for t in terms]
    g = float(guidance)
    use_cfg = g > 1.0
    if not use_cfg:
        g = 1.0
    need_uncond = use_cfg or not math.isclose(sum(weights), 1.0, rel_tol=0, abs_tol=1e-12)
    cond, uncond = embeds if embeds is not None else encode_terms(pipe, [t.text for t in terms])
    b = latents.shape[0]
    k = len(terms)
    blocks = ([uncond.expand(b, -1, -1)] if need_uncond else []) + [cond[i:i + 1].expand(b, -1, -1) for i in range(k)]
    hidden = torch.cat(blocks).to(device=device, dtype=pipe.unet.dtype)
    n_blocks = len(blocks)
    sched.set_timesteps(int(steps), device=device)
    extra = pipe.prepare_extra_step_kwargs(generators, 0.0)
    for i, t in enumerate(sched.timesteps):
        model_in = torch.cat([latents] * n_blocks) if n_blocks > 1 else latents
        if hasattr(sched, "scale_model_input"):
            model_in = sched.scale_model_input(model_in, t)
        pred = pipe.unet(model_in, t, encoder_hidden_states=hidden, return_dict=False)[0]
        chunks = pred.chunk(n_blocks)
        if need_uncond:
            e_u, e_terms = chunks[0], chunks[1:]
            if k == 1:  # the pipeline's own expression, term for term
                eps = e_u + (weights[0] * g) * (e_terms[0] - e_u)
            else:
                eps = e_u + sum((w * g) * (e_i - e_u) for w, e_i in zip(weights, e_terms))
        else:  # no guidance, weights summing to 1: the weighted mean of the conditional predictions
            eps = chunks[0] if (k == 1 and weights[0] == 1.0) else sum(w * e for w, e in zip(weights, chunks))
        latents = sched.step(eps, t, latents, **extra, return_dict=False)[0]
        if after_step is not None:
            latents = after_step(i, t, latents)
    return latents


def initial_latents(pipe, n: int, seed: int, size: int, steps: int, generators=None) -> tuple[torch.Tensor, list]:
    """Starting noise for ``n`` images, image ``i`` from a CPU generator seeded ``seed + i`` (the pipeline's
    ``prepare_latents`` after ``set_timesteps(steps)``, so the same noise as ``AdaptedPipeline.generate``)."""
    gens = generators or [torch.Generator("cpu").manual_seed(int(seed) + j) for j in range(n)]
    pipe.scheduler.set_timesteps(int(steps), device=pipe.unet.device)  # Euler-type init_noise_sigma depends on it
    lat = pipe.prepare_latents(n, pipe.unet.config.in_channels, size, size, pipe.unet.dtype, pipe.unet.device, gens)
    return lat, gens


def _size(pipe, height) -> int:
    scale = int(pipe.vae_scale_factor)
    size = int(height) if height is not None else int(pipe.unet.config.sample_size) * scale
    if size < 8 or size % scale:
        raise InputError(f"height={height!r}; expected a multiple of the VAE's downsampling factor {scale}")
    return size


@torch.no_grad()
def composable_generate(pipeline, prompt, n: int, seed: int, steps: int = 20, guidance: float = 4.0,
                        batch_size: int = 8, height: int | None = None, return_latents: bool = False):
    """``n`` uint8 grayscale images (n, H, W) for a weighted-AND ``prompt`` (string or terms).

    ``pipeline``: an :class:`~cxrgen.adapt.pipeline.AdaptedPipeline` (e.g. from :func:`load_embeddings_pipeline`)
    or a ``StableDiffusionPipeline``. Image ``i`` starts from the noise of seed ``seed + i`` (its own CPU generator
    also drives an ancestral sampler's noise), as in ``AdaptedPipeline.generate``. With ``return_latents`` the
    final latents (n, C, h, w) come back too (inpainting starts from them).
    """
    _check_common(n, steps, batch_size)
    pipe = _pipe_of(pipeline)
    terms = as_terms(prompt)
    size = _size(pipe, height)
    embeds = encode_terms(pipe, [t.text for t in terms])
    out, lats = [], []
    for start in range(0, int(n), int(batch_size)):
        b = min(int(batch_size), int(n) - start)
        latents, gens = initial_latents(pipe, b, int(seed) + start, size, steps)
        latents = denoise(pipe, latents, terms, guidance, steps, gens, embeds=embeds)
        out.append(decode_latents(pipe, latents, gens))
        lats.append(latents.cpu())
    images = np.concatenate(out)
    return (images, torch.cat(lats)) if return_latents else images


class ComposingPipeline:
    """An :class:`~cxrgen.adapt.pipeline.AdaptedPipeline` whose ``generate`` also takes weighted-AND prompts; every
    other attribute is the adapted pipeline's. A plain prompt is the adapted pipeline's own call (same images); a
    composed one goes through :func:`composable_generate`, each term as the adapter sends it (``prompt_text``:
    the textual-inversion token substituted), so ``generate_set`` and its manifest work for both."""

    def __init__(self, adapted):
        self.adapted = adapted

    def __getattr__(self, name):
        return getattr(self.adapted, name)

    def terms(self, prompt: str) -> list[Term] | None:
        """The prompt's terms as sent to the model, or None for a plain prompt (one term, no weight)."""
        terms = parse_prompt(prompt)
        if len(terms) == 1 and not _WEIGHTED.match(_protect(prompt)):
            return None
        return [Term(self.adapted.prompt_text(t.text), t.weight) for t in terms]

    def prompt_text(self, prompt: str) -> str:
        terms = self.terms(prompt)
        return self.adapted.prompt_text(prompt) if terms is None else format_prompt(terms)

    def generate(self, prompt: str, n: int, seed: int, steps: int = 20, guidance: float = 4.0, batch_size: int = 8,
                 height: int | None = None, progress: bool = True, guidance_rescale: float = 0.0) -> np.ndarray:
        terms = self.terms(prompt)
        if terms is None:
            return self.adapted.generate(prompt, n, seed, steps=steps, guidance=guidance, batch_size=batch_size,
                                         height=height, progress=progress, guidance_rescale=guidance_rescale)
        if getattr(self.adapted, "prompt_encoder", None) is not None:
            raise InputError(f"prompt {prompt!r} composes terms, but a {self.adapted.method} adapter encodes prompts "
                             "with its own encoder; expected a plain prompt for it (composition uses the CLIP encoder)")
        if guidance_rescale:
            raise InputError(f"guidance_rescale={guidance_rescale} with the composed prompt {prompt!r}; expected 0")
        return composable_generate(self.adapted, terms, int(n), int(seed), steps, guidance, int(batch_size), height)


__all__ = ["ComposingPipeline", "Term", "parse_prompt", "format_prompt", "as_terms", "load_embeddings_pipeline", "encode_terms",
           "decode_latents", "denoise", "initial_latents", "composable_generate", "to_uint8_gray"]
