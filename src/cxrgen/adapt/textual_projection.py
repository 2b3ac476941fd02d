"""Textual projection (Chambon et al. 2022, section 2.5): swap the foundation's CLIP text encoder for a frozen
in-domain encoder plus a trained projection into the CLIP text-embedding space.

The projection is ``Linear -> ReLU -> LayerNorm -> Linear`` (the paper's ``Linear o ReLU o LayerNorm o Linear``
read left to right, as in the brief; ``norm_first=True`` gives the strict right-to-left composition reading,
``Linear -> LayerNorm -> ReLU -> Linear``). It is trained on a caption corpus (paper: 1M LAION-400M captions;
default: the foundation corpus captions) put into object ("a photo of a {}") and style ("a photo in the style of
a {}") prompt templates with lexical variants. The paper says only "MLE loss"; we use the Gaussian MLE, i.e. the
mean squared error between the projected conditioning and the frozen CLIP text encoder's output for the same
prompt. Only the projection trains: the in-domain encoder and CLIP are frozen.

Variants (``L`` = the CLIP tokenizer's length, 77 for SD v1; ``D`` = the U-Net's ``cross_attention_dim``):

* ``document``: the in-domain pooled embedding (``pooling``: cls / mean / pooler / model_specific, as in the
  text-encoder study) is projected to one ``D`` vector, repeated at all ``L`` positions. The paper does not say
  how a document vector conditions the U-Net; repetition is the simplest reading, and the loss compares the
  repeated vector with CLIP's whole ``(L, D)`` sequence, i.e. exactly what the U-Net will see.
* ``token``: the in-domain last hidden states, padded/truncated to ``L`` tokens, projected token by token and
  matched position by position with CLIP's ``(L, D)`` hidden states (tokenizers differ, so positions align only
  approximately -- as they must have in the paper).
* ``none``: the in-domain last hidden states fed directly (paper's "No Projection" row). Where the hidden size
  differs from ``D`` (the miniature: MiniLM 384 vs CLIP 64) a fixed, seeded, *untrained* semi-orthogonal linear
  map matches the sizes (it keeps per-coordinate scale); with equal sizes it is the identity (paper: 768 -> 768).

Artefact (a folder, written atomically)::

    adapter.json              {"method": "textual_projection", "foundation", "encoder", "variant", ...}
    model.safetensors         projection weights    } huggingface_hub's PyTorchModelHubMixin:
    config.json               its constructor args  } TextualProjection.from_pretrained(folder)
    training_log.csv          phase (train/eval), step, loss, seconds
    loss_curve.png / .pdf
    README.md                 model card (cxrgen.models.card)

Folders written before the mixin (``projection.safetensors`` + ``projection_config.json``) still load.

:func:`load_prompt_encoder` turns the folder into a :class:`PromptEncoder` whose ``encode(prompts)`` gives the
``(B, L, D)`` ``prompt_embeds`` for ``StableDiffusionPipeline``; ``encode([""])`` is the unconditional embedding
(the projection is trained on a share of empty prompts so that it lands near CLIP's own unconditional embedding).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from cxrgen.adapt.config import VARIANTS, ProjectionConfig, expand_templates
from cxrgen.adapt.methods import (
    ADAPTER_FILE,
    LOSS_CURVE_STEM,
    LEGACY_PROJECTION_CONFIG_FILE,
    LEGACY_PROJECTION_WEIGHTS_FILE,
    PROJECTION_CONFIG_FILE,
    PROJECTION_WEIGHTS_FILE,
    TRAIN_LOG_FILE,
)
from cxrgen.engine import Engine, RuntimeConfig, default_device
from cxrgen.errors import InputError
from cxrgen.io import atomic_path

log = logging.getLogger(__name__)

METHOD = "textual_projection"

# ------------------------------------------------------------------------------------------------
# captions

_PREFIX = re.compile(r"^\s*(an?\s+)?(photo|picture|image)\s+of\s+(an?|the)\s+", re.IGNORECASE)
CAPTION_COLUMNS = ("caption", "TEXT", "text")


def caption_subject(caption: str) -> str:
    """Strip a leading "a photo of a" so that templating does not give "a photo of a a photo of a ..."."""
    return _PREFIX.sub("", str(caption).strip())


def load_captions(path: str | os.PathLike, column: str | None = None) -> list[str]:
    """Captions from a ``.txt`` (one per line) or a ``.parquet``/``.csv`` with a ``caption``/``TEXT`` column."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"captions file {p} does not exist; expected a .txt (one caption per line) or .parquet")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        caps = p.read_text(encoding="utf-8", errors="replace").splitlines()
    elif suffix in (".parquet", ".csv"):
        import pandas as pd

        try:
            frame = pd.read_parquet(p) if suffix == ".parquet" else pd.read_csv(p)
        except ImportError as exc:  # no parquet engine in this environment
            raise InputError(f"captions file {p}: reading .parquet needs pyarrow or fastparquet ({exc}); "
                             f"install one, or give the captions as .txt (one per line) or .csv") from exc
        wanted = (column,) if column else CAPTION_COLUMNS
        col = next((c for c in wanted if c in frame.columns), None)
        if col is None:
            raise InputError(
                f"captions file {p} has no caption column; expected one of {list(wanted)}, found {list(frame.columns)}"
            )
        caps = frame[col].dropna().astype(str).tolist()
    else:
        raise InputError(f"captions file {p}: unknown format {suffix!r}; expected .txt, .parquet or .csv")
    caps = [c.strip() for c in caps if c and c.strip()]
    if not caps:
        raise InputError(f"captions file {p} holds no non-empty caption; expected at least one")
    return caps


def foundation_captions(foundation: str | os.PathLike) -> list[str]:
    """The captions of the miniature foundation's pretraining corpus, regenerated from its ``foundation_config.json``."""
    from cxrgen.models.corpus import foundation_corpus
    from cxrgen.models.foundation import CONFIG_FILE, FoundationConfig

    cfg_file = Path(str(foundation)) / CONFIG_FILE
    if not cfg_file.is_file():
        raise InputError(
            f"foundation {foundation!s} has no {CONFIG_FILE} (not a foundation built here); expected a captions "
            f"file (.txt or .parquet with a 'caption'/'TEXT' column, e.g. LAION-400M) as captions_path"
        )
    summary = json.loads(cfg_file.read_text())
    fc = FoundationConfig.from_dict(summary.get("config", summary))
    _, caps = foundation_corpus(fc)
    return caps


def _prepare_corpus(captions, max_captions: int | None, seed: int) -> list[str]:
    if isinstance(captions, (str, bytes)):
        raise InputError("captions: expected a list of strings, got one string (use load_captions for a file)")
    subjects = [caption_subject(c) for c in (captions or []) if str(c).strip()]
    subjects = list(dict.fromkeys(s for s in subjects if s))  # distinct, first-seen order (deterministic)
    if not subjects:
        raise InputError("textual projection: the caption corpus is empty; expected at least one non-empty caption")
    if max_captions and len(subjects) > max_captions:
        idx = np.sort(np.random.default_rng(seed).choice(len(subjects), int(max_captions), replace=False))
        subjects = [subjects[i] for i in idx]
    return subjects


# ------------------------------------------------------------------------------------------------
# the projection module


class TextualProjection(nn.Module, PyTorchModelHubMixin, library_name="cxrgen",
                        tags=["cxrgen", "textual-projection", "chest-x-ray"]):
    """In-domain features -> CLIP text-embedding space, for one variant.

    ``kind``: ``mlp`` (document/token), ``linear`` (none, sizes differ; fixed), ``identity`` (none, same sizes).
    ``save_pretrained`` / ``from_pretrained`` come from huggingface_hub's ``PyTorchModelHubMixin`` (config.json holds
    the constructor arguments, model.safetensors the weights).
    """

    def __init__(self, variant: str, in_dim: int, out_dim: int, hidden_dim: int | None = None,
                 norm_first: bool = False, seed: int = 0):
        super().__init__()
        if variant not in VARIANTS:
            raise InputError(f"textual projection variant {variant!r}; expected one of {list(VARIANTS)}")
        self.variant, self.in_dim, self.out_dim = variant, int(in_dim), int(out_dim)
        self.norm_first = bool(norm_first)
        if variant == "none":
            self.hidden_dim = None
            if self.in_dim == self.out_dim:
                self.kind, self.net = "identity", nn.Identity()
            else:
                self.kind = "linear"
                self.net = nn.Linear(self.in_dim, self.out_dim, bias=False)
                g = torch.Generator().manual_seed(int(seed))
                a = torch.randn(max(self.in_dim, self.out_dim), min(self.in_dim, self.out_dim), generator=g)
                q, _ = torch.linalg.qr(a)  # orthonormal columns: a fixed map that keeps per-coordinate scale
                with torch.no_grad():
                    self.net.weight.copy_(q if self.out_dim > self.in_dim else q.T)
                self.net.weight.requires_grad_(False)  # "no projection": never trained
        else:
            self.kind = "mlp"
            self.hidden_dim = int(hidden_dim or out_dim)
            h = self.hidden_dim
            mid = [nn.LayerNorm(h), nn.ReLU()] if self.norm_first else [nn.ReLU(), nn.LayerNorm(h)]
            self.net = nn.Sequential(nn.Linear(self.in_dim, h), *mid, nn.Linear(h, self.out_dim))

    @property
    def trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def config(self) -> dict:
        return {"variant": self.variant, "kind": self.kind, "in_dim": self.in_dim, "hidden_dim": self.hidden_dim,
                "out_dim": self.out_dim, "norm_first": self.norm_first, "trained": self.trainable,
                "layers": [m.__class__.__name__ for m in self.net] if isinstance(self.net, nn.Sequential)
                else [self.net.__class__.__name__]}

    @classmethod
    def from_config(cls, cfg: dict) -> TextualProjection:
        return cls(cfg["variant"], cfg["in_dim"], cfg["out_dim"], cfg.get("hidden_dim"), cfg.get("norm_first", False))

    def forward(self, features: torch.Tensor, seq_len: int | None = None) -> torch.Tensor:
        """(B, Din) [document; repeated to (B, seq_len, D)] or (B, L, Din) -> (B, L, D)."""
        out = self.net(features)
        if out.dim() == 2:
            if seq_len is None:
                raise InputError("document-level projection needs seq_len to build the (B, L, D) sequence")
            out = out.unsqueeze(1).expand(-1, int(seq_len), -1)
        return out


# ------------------------------------------------------------------------------------------------
# features and targets


def in_domain_features(encoder, prompts: list[str], variant: str, pooling: str, seq_len: int) -> torch.Tensor:
    """Frozen in-domain features: (B, Din) pooled for ``document``, (B, seq_len, Din) hidden states otherwise."""
    from cxrgen.text.encoders import _accepted_inputs, _extract, method_available

    model = encoder.model
    device = next(model.parameters()).device
    accepted = _accepted_inputs(model)
    with torch.no_grad():
        if variant == "document":
            if not method_available(encoder, pooling):
                raise InputError(f"encoder {encoder.name} has no {pooling!r} embedding; choose another pooling")
            batch = encoder.tokenizer(list(prompts), padding=True, truncation=True, max_length=encoder.max_length,
                                      return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items() if k in accepted}
            return _extract(encoder, pooling, batch).float()
        n = min(int(seq_len), int(encoder.max_length))
        batch = encoder.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=n,
                                  return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items() if k in accepted}
        hidden = model(**batch).last_hidden_state.float()
        if hidden.shape[1] < seq_len:  # encoder shorter than CLIP's length: repeat its last (padding) state
            hidden = torch.cat([hidden, hidden[:, -1:].expand(-1, seq_len - hidden.shape[1], -1)], dim=1)
        return hidden


def clip_targets(tokenizer, text_encoder, prompts: list[str], seq_len: int) -> torch.Tensor:
    """CLIP's (B, L, D) conditioning for ``prompts``, computed as ``StableDiffusionPipeline.encode_prompt`` does."""
    device = next(text_encoder.parameters()).device
    tok = tokenizer(list(prompts), padding="max_length", max_length=seq_len, truncation=True, return_tensors="pt")
    mask = tok.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        return text_encoder(tok.input_ids.to(device), attention_mask=mask)[0].float()


@dataclass
class PromptEncoder:
    """In-domain encoder + projection: ``encode(prompts)`` -> ``(B, L, D)`` ``prompt_embeds`` for the pipeline."""

    encoder: object  # cxrgen.text.encoders.TextEncoder
    projection: TextualProjection
    variant: str
    pooling: str
    seq_len: int
    info: dict = field(default_factory=dict)

    @property
    def cross_attention_dim(self) -> int:
        return self.projection.out_dim

    @property
    def device(self) -> torch.device:
        return next(self.encoder.model.parameters()).device

    def encode(self, prompts: list[str] | str, grad: bool = False) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        feats = in_domain_features(self.encoder, list(prompts), self.variant, self.pooling, self.seq_len)
        with torch.set_grad_enabled(grad):
            return self.projection(feats, self.seq_len)

    __call__ = encode

    def encode_pair(self, prompts: list[str], negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds, negative_prompt_embeds) of matching batch size, for classifier-free guidance."""
        pos = self.encode(prompts)
        neg = self.encode([negative_prompt]).expand(pos.shape[0], -1, -1).contiguous()
        return pos, neg


# ------------------------------------------------------------------------------------------------
# setup / training


@dataclass
class ProjectionSetup:
    """Everything a training step needs: the frozen in-domain encoder and CLIP, and the projection."""

    prompt_encoder: PromptEncoder
    clip_tokenizer: object
    clip_text_encoder: nn.Module
    foundation: str
    cross_attention_dim: int

    @property
    def projection(self) -> TextualProjection:
        return self.prompt_encoder.projection

    def loss(self, prompts: list[str], targets: torch.Tensor | None = None) -> torch.Tensor:
        """MSE between the projected conditioning and CLIP's for the same prompts (paper: "MLE loss")."""
        if targets is None:
            targets = clip_targets(self.clip_tokenizer, self.clip_text_encoder, prompts, self.prompt_encoder.seq_len)
        pred = self.prompt_encoder.encode(prompts, grad=True)
        return torch.nn.functional.mse_loss(pred, targets)


def prepare(foundation, cfg: ProjectionConfig, device: str | torch.device | None = None, pipe=None) -> ProjectionSetup:
    """Load the foundation's CLIP text encoder (frozen) and the in-domain encoder (frozen); build the projection."""
    from cxrgen.models.registry import load_pipeline
    from cxrgen.text.encoders import load_encoder

    cfg.validate()
    pipe = pipe if pipe is not None else load_pipeline(foundation)
    clip, tokenizer = pipe.text_encoder, pipe.tokenizer
    d = int(pipe.unet.config.cross_attention_dim)
    if int(clip.config.hidden_size) != d:
        raise InputError(f"foundation {foundation}: CLIP hidden size {clip.config.hidden_size} != U-Net "
                         f"cross_attention_dim {d}; expected a Stable-Diffusion-layout pipeline")
    clip_max = int(clip.config.max_position_embeddings)
    seq_len = int(cfg.max_length or min(int(getattr(tokenizer, "model_max_length", clip_max) or clip_max), clip_max))
    if not 2 <= seq_len <= clip_max:
        raise InputError(f"textual_projection.max_length={cfg.max_length}; expected 2..{clip_max} (CLIP positions)")
    device = default_device(device)
    clip = clip.to(device).eval().requires_grad_(False)
    enc = load_encoder(cfg.encoder, cfg.encoder_path, trust_remote_code=cfg.trust_remote_code, device=device)
    enc.model.requires_grad_(False)
    in_dim = int(enc.model.config.hidden_size)
    if cfg.variant == "document":  # a model-specific head may change the size (CXR-BERT: 128)
        in_dim = int(in_domain_features(enc, ["a"], "document", cfg.pooling, seq_len).shape[-1])
    torch.manual_seed(cfg.seed)
    proj = TextualProjection(cfg.variant, in_dim, d, cfg.hidden_size, cfg.norm_first, seed=cfg.seed).to(device)
    pe = PromptEncoder(enc, proj, cfg.variant, cfg.pooling, seq_len)
    return ProjectionSetup(pe, tokenizer, clip, str(foundation), d)


class _PromptSampler:
    """Draws templated prompts (and a share of empty ones) from the corpus with its own seeded generator."""

    def __init__(self, subjects: list[str], templates: list[str], uncond_share: float, seed: int):
        self.subjects, self.templates, self.uncond_share = subjects, templates, float(uncond_share)
        self.generator = torch.Generator().manual_seed(int(seed))

    def draw(self, n: int) -> list[str]:
        g = self.generator
        si = torch.randint(len(self.subjects), (n,), generator=g).tolist()
        ti = torch.randint(len(self.templates), (n,), generator=g).tolist()
        empty = (torch.rand(n, generator=g) < self.uncond_share).tolist()
        return ["" if e else self.templates[t].format(self.subjects[s]) for s, t, e in zip(si, ti, empty)]


def _lr_lambda(cfg: ProjectionConfig):
    warm, total, kind = int(cfg.warmup_steps), max(int(cfg.steps), 1), cfg.lr_schedule

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * t))

    return f


def _eval_loss(setup: ProjectionSetup, features: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():  # features precomputed once: both encoders are frozen
        pred = setup.projection(features, setup.prompt_encoder.seq_len)
        return float(torch.nn.functional.mse_loss(pred, targets))


def _probe(setup: ProjectionSetup) -> dict:
    """Per-prompt MSE and mean token cosine vs CLIP on the paper's evaluation prompts (3.4)."""
    from cxrgen.data.prompts import CHAMBON_PROMPTS

    prompts = list(CHAMBON_PROMPTS.values()) + [""]
    tgt = clip_targets(setup.clip_tokenizer, setup.clip_text_encoder, prompts, setup.prompt_encoder.seq_len)
    with torch.no_grad():
        pred = setup.prompt_encoder.encode(prompts)
    mse = ((pred - tgt) ** 2).mean(dim=(1, 2))
    cos = torch.nn.functional.cosine_similarity(pred, tgt, dim=-1).mean(dim=1)
    return {p: {"mse": float(m), "cosine": float(c)} for p, m, c in zip(prompts, mse, cos)}


def _write_log(rows: list, folder: Path) -> None:
    import matplotlib.pyplot as plt
    import pandas as pd

    from cxrgen.plotting import save_figure, set_style

    frame = pd.DataFrame(rows, columns=["phase", "step", "loss", "seconds"])
    frame.to_csv(folder / TRAIN_LOG_FILE, index=False)
    set_style()
    fig, ax = plt.subplots(figsize=(4.5, 3))
    tr = frame[frame.phase == "train"]
    if len(tr):
        ax.plot(tr.step, tr.loss, lw=0.6, alpha=0.4, label="train (batch)")
        ax.plot(tr.step, tr.loss.rolling(max(1, len(tr) // 20), min_periods=1).mean(), lw=1.2, label="train (smoothed)")
    ev = frame[frame.phase == "eval"]
    if len(ev):
        ax.plot(ev.step, ev.loss, "o-", ms=3, label="held-out prompts")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE to CLIP embeddings")
    if (frame.loss > 0).all() and len(frame):
        ax.set_yscale("log")
    ax.set_title("Textual projection")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    save_figure(fig, folder / LOSS_CURVE_STEM)


def save_adapter(setup: ProjectionSetup, cfg: ProjectionConfig, out_dir: str | os.PathLike,
                 rows: list | None = None, summary: dict | None = None) -> Path:
    """Write the adapter folder (``adapter.json``, the projection through ``save_pretrained``, log, loss curve,
    model card) atomically."""
    from cxrgen.adapt.adapter_file import foundation_reference
    from cxrgen.models.card import write_model_card

    proj, pe = setup.projection, setup.prompt_encoder
    out_dir = Path(out_dir)
    adapter = {
        "method": METHOD,
        "foundation": foundation_reference(setup.foundation, out_dir),
        "encoder": cfg.encoder_path or cfg.encoder,  # registry name, or the local folder when one was given
        "encoder_name": cfg.encoder,
        "encoder_path": cfg.encoder_path,
        "encoder_source": pe.encoder.source,
        "trust_remote_code": bool(cfg.trust_remote_code),
        "variant": cfg.variant,
        "pooling": cfg.pooling if cfg.variant == "document" else None,
        "seq_len": pe.seq_len,
        "cross_attention_dim": setup.cross_attention_dim,
        "weights": PROJECTION_WEIGHTS_FILE,
        "projection_config": PROJECTION_CONFIG_FILE,
        "config": cfg.to_dict(),
        "training": summary or {},
    }
    summary = summary or {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        proj.save_pretrained(tmp)
        _write_log(rows or [], tmp)
        (tmp / ADAPTER_FILE).write_text(json.dumps(adapter, indent=2))
        write_model_card(tmp, base_model=setup.foundation, training_config=cfg.to_dict(),
                         data={"n_captions": summary.get("n_captions")},
                         metrics={k: summary.get(k) for k in ("eval_loss_initial", "eval_loss_final",
                                                              "train_loss_final") if k in summary})
    return out_dir


def train_textual_projection(foundation, captions, cfg: ProjectionConfig | None = None,
                             out_dir: str | os.PathLike = "textual_projection", progress: bool = True,
                             runtime: RuntimeConfig | None = None) -> dict:
    """Train the projection for ``cfg.variant`` and write the adapter folder ``out_dir`` atomically.

    ``foundation``: a diffusers folder or registry name; ``captions``: a list of caption strings.
    Runs through the engine (:mod:`cxrgen.engine`, ``runtime``): ``cfg.batch_size`` is the global batch of
    prompts, drawn from one seeded generator and split over the processes.
    Resumable: checkpoints (projection, optimizer, scheduler, step, RNG) go to ``<out_dir>.partial/``,
    removed on success; one written under other settings is refused (the engine's resume policy).
    Returns a summary dict (also stored under ``training`` in ``adapter.json``).
    """
    cfg = cfg or ProjectionConfig()
    cfg.validate()
    out_dir = Path(out_dir)
    subjects = _prepare_corpus(captions, cfg.max_captions, cfg.seed)
    templates = expand_templates(cfg.templates)
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    runtime = runtime or RuntimeConfig()
    if cfg.device not in (None, "auto") and default_device(cfg.device).type == "cpu":
        runtime = dataclasses.replace(runtime, cpu=True)  # the config asks for the CPU explicitly
    engine = Engine(runtime)
    device = engine.device
    t_start = time.perf_counter()
    setup = prepare(foundation, cfg, device)
    proj = setup.projection
    t_load = time.perf_counter() - t_start

    # fixed held-out prompts from their own generator, so the eval curve is comparable across steps and runs
    eval_prompts = _PromptSampler(subjects, templates, 0.0, cfg.seed + 1).draw(cfg.eval_prompts - 1) + [""]
    pe = setup.prompt_encoder
    eval_targets = clip_targets(setup.clip_tokenizer, setup.clip_text_encoder, eval_prompts, pe.seq_len)
    eval_feats = in_domain_features(pe.encoder, eval_prompts, pe.variant, pe.pooling, pe.seq_len)
    sampler = _PromptSampler(subjects, templates, cfg.uncond_share, cfg.seed)
    steps = int(cfg.steps) if proj.trainable else 0  # "none": nothing to train
    params = [p for p in proj.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay) if params else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg)) if optimizer else None
    micro = engine.micro_batch(cfg.batch_size)  # prompts per micro-step over all processes
    if optimizer is not None:
        # the prepared projection (DDP in a distributed run) encodes during training; saved unwrapped
        pe.projection, optimizer, scheduler = engine.prepare(proj, optimizer, scheduler)

    partial = out_dir.with_name(out_dir.name + ".partial")
    ckpt = partial / "checkpoint"
    rows: list = []
    step, t_offset = 0, 0.0
    settings = {**json.loads(json.dumps(cfg.to_dict())), "foundation": str(foundation)}
    state = engine.resume(ckpt, settings, {"projection": proj}, optimizer, scheduler, {"sampler": sampler.generator})
    if state is not None:
        step, rows = int(state["step"]), [tuple(r) for r in json.loads(state["extra"]["rows"])]
        t_offset = float(state["extra"].get("seconds", 0.0))
        if progress and engine.is_main:
            log.info("resuming from %s at step %d", ckpt, step)

    def elapsed() -> float:
        return t_offset + time.perf_counter() - t_train

    t_train = time.perf_counter()
    if step == 0:
        rows.append(("eval", 0, _eval_loss(setup, eval_feats, eval_targets), 0.0))
    bar = None
    if progress and steps > step and engine.is_main:
        from cxrgen.progress import progress_bar

        bar = progress_bar(total=steps, initial=step, desc=f"textual projection ({cfg.variant})", unit="step")
    accelerator = engine.accelerator
    proj.train()
    while step < steps:
        loss_value = 0.0
        for _ in range(engine.gradient_accumulation_steps):
            # prompts drawn for all processes from one generator seeded alike; each encodes its own slice
            prompts = engine.shard(sampler.draw(micro))
            with accelerator.accumulate(pe.projection):
                loss = setup.loss(prompts)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loss_value += engine.mean(loss.detach()) / engine.gradient_accumulation_steps
        step += 1
        rows.append(("train", step, loss_value, elapsed()))
        if step % cfg.eval_every == 0 or step == steps:
            proj.eval()
            rows.append(("eval", step, _eval_loss(setup, eval_feats, eval_targets), elapsed()))
            proj.train()
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_value:.4f}")
        if step % cfg.checkpoint_every == 0 and step < steps:
            engine.save(ckpt, settings, {"projection": proj}, optimizer, scheduler, step, {"sampler": sampler.generator},
                        extra={"rows": json.dumps(rows), "seconds": elapsed()})
    if bar is not None:
        bar.close()
    pe.projection = proj
    proj.eval()
    train_s = elapsed()

    evals = [r for r in rows if r[0] == "eval"]
    summary = {
        "steps": steps,
        "trained": proj.trainable,
        "n_captions": len(subjects),
        "n_templates": len(templates),
        "seq_len": setup.prompt_encoder.seq_len,
        "cross_attention_dim": setup.cross_attention_dim,
        "in_dim": proj.in_dim,
        "n_params": int(sum(p.numel() for p in proj.parameters())),
        "n_trainable_params": int(sum(p.numel() for p in proj.parameters() if p.requires_grad)),
        "eval_loss_initial": evals[0][2],
        "eval_loss_final": evals[-1][2],
        "train_loss_final": float(np.mean([r[2] for r in rows if r[0] == "train"][-20:])) if steps else None,
        "probe": _probe(setup),
        "load_s": t_load,
        "train_s": train_s,
        "device": str(device),
    }
    if engine.is_main:
        save_adapter(setup, cfg, out_dir, rows, summary)
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    summary["total_s"] = time.perf_counter() - t_start
    if progress:
        log.info("%s: eval MSE %.4g -> %.4g in %.0fs; wrote %s", cfg.variant, summary["eval_loss_initial"],
                 summary["eval_loss_final"], train_s, out_dir)
    return summary


def train_from_config(foundation, cfg_dict: dict | None, out_dir, seed: int | None = None,
                      captions_path: str | os.PathLike | None = None, progress: bool = True,
                      variant: str | None = None) -> dict:
    """Snakemake entry point: the config block (+ the run seed) -> adapter folder.

    ``captions_path``: a ``.txt`` (one caption per line) or ``.parquet`` with a ``caption``/``TEXT`` column
    (paper: LAION-400M captions); None falls back to the block's ``captions`` key, then to the foundation
    corpus captions (miniature). The block's workflow-level ``variants`` list is dropped; the variant of this run
    comes from ``variant`` (e.g. a rule wildcard) or the block's ``variant``. The runtime keys (mixed_precision,
    gradient_accumulation_steps, ...; :class:`~cxrgen.engine.RuntimeConfig`) set how the engine runs.
    """
    parsed = ProjectionConfig.from_settings(cfg_dict, seed=seed, variant=variant)
    cfg, runtime = parsed.config, parsed.runtime
    captions_path = captions_path or parsed.captions
    captions = load_captions(captions_path) if captions_path else foundation_captions(foundation)
    return train_textual_projection(foundation, captions, cfg, out_dir, progress=progress, runtime=runtime)


def load_prompt_encoder(adapter_dir: str | os.PathLike, device: str | torch.device | None = None) -> PromptEncoder:
    """Rebuild the :class:`PromptEncoder` of a textual-projection adapter folder (in eval mode, frozen) on ``device``
    (default :func:`cxrgen.engine.default_device`)."""
    from safetensors.torch import load_file

    from cxrgen.text.encoders import load_encoder

    adapter_dir = Path(adapter_dir)
    meta_file = adapter_dir / ADAPTER_FILE
    if not meta_file.is_file():
        raise InputError(f"{adapter_dir}: no {ADAPTER_FILE}; expected a folder written by train_textual_projection")
    meta = json.loads(meta_file.read_text())
    if meta.get("method") != METHOD:
        raise InputError(f"{meta_file}: method {meta.get('method')!r}; expected {METHOD!r}")
    if (adapter_dir / LEGACY_PROJECTION_WEIGHTS_FILE).is_file():  # written before PyTorchModelHubMixin
        proj = TextualProjection.from_config(json.loads((adapter_dir / LEGACY_PROJECTION_CONFIG_FILE).read_text()))
        proj.load_state_dict(load_file(str(adapter_dir / LEGACY_PROJECTION_WEIGHTS_FILE)))
    elif (adapter_dir / PROJECTION_WEIGHTS_FILE).is_file() and (adapter_dir / PROJECTION_CONFIG_FILE).is_file():
        proj = TextualProjection.from_pretrained(adapter_dir)
    else:
        raise InputError(f"{adapter_dir}: no {PROJECTION_WEIGHTS_FILE} + {PROJECTION_CONFIG_FILE} (nor the older {LEGACY_PROJECTION_WEIGHTS_FILE} + "
                         f"{LEGACY_PROJECTION_CONFIG_FILE}); expected a folder written by train_textual_projection")
    device = default_device(device)
    proj.to(device).eval().requires_grad_(False)
    enc = load_encoder(meta.get("encoder_name", meta["encoder"]), meta.get("encoder_path"),
                       trust_remote_code=bool(meta.get("trust_remote_code")), device=device)
    enc.model.requires_grad_(False)
    return PromptEncoder(enc, proj, meta["variant"], meta.get("pooling") or "mean", int(meta["seq_len"]),
                         info={"foundation": meta.get("foundation"), "adapter_dir": str(adapter_dir)})
