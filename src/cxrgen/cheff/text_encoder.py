"""Cheff's report encoder tau_phi (Weber et al. 2023, 7.3.2): a BERT-style encoder-only transformer trained from
scratch jointly with the report-conditioned U-Net, fed by a BERT WordPiece tokenizer (max length 150).

No pretrained BERT vocabulary can be downloaded here, so the WordPiece vocabulary is learned offline from the
training reports (:func:`train_wordpiece_tokenizer`); the result is a standard ``BertTokenizerFast`` and a ``transformers``
``BertModel`` (both ``save_pretrained`` folders).  Paper: depth 32, width 1280 (LDM's BERTEmbedder).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import torch

from cxrgen.engine import module_device
from cxrgen.errors import InputError

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@dataclass
class ReportEncoderConfig:
    vocab_size: int = 1000
    max_length: int = 64
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> ReportEncoderConfig:
        presets = {
            "default": {},
            "smoke": dict(vocab_size=200, max_length=24, hidden_size=16, num_layers=1, num_heads=2),
            "paper": dict(vocab_size=30522, max_length=150, hidden_size=1280, num_layers=32, num_heads=20),
        }
        if name not in presets:
            raise InputError(f"report encoder preset {name!r}; expected one of {sorted(presets)}")
        bad = [k for k in overrides if k not in cls.__dataclass_fields__]
        if bad:
            raise InputError(f"ReportEncoderConfig: unknown setting(s) {bad}; expected some of {sorted(cls.__dataclass_fields__)}")
        return replace(replace(cls(), **presets[name]), **overrides)


def train_wordpiece_tokenizer(texts: Iterable[str], vocab_size: int = 1000, max_length: int = 150):
    """A lower-casing BERT WordPiece tokenizer with a vocabulary learned from ``texts`` ->
    ``transformers.BertTokenizerFast``: the special tokens, every character seen (word-initial and ``##``
    continuation), then whole words by falling frequency (ties alphabetical) up to ``vocab_size``; a word outside
    the vocabulary is split by WordPiece's longest match.

    Not ``tokenizers.trainers.WordPieceTrainer``: it breaks ties between equally frequent merges in the order of a
    randomly seeded hash map, so the same reports gave different vocabularies (16 in 100 calls on two reports), and
    a report-conditioned SDM trained twice, or resumed from a checkpoint, differed."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertTokenizerFast

    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise InputError("train_wordpiece_tokenizer got no non-empty report text; expected at least one report")
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    counts = Counter(w for t in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(t)))
    alphabet = sorted({c for w in counts for c in w})
    pieces = SPECIAL + alphabet + ["##" + c for c in alphabet]
    if len(pieces) > vocab_size:
        raise InputError(f"vocab_size={vocab_size} is below the {len(pieces)} special tokens and characters of the "
                         "reports; expected a larger vocab_size")
    words = [w for w, _ in sorted(counts.items(), key=lambda wc: (-wc[1], wc[0])) if w not in alphabet]
    vocab = pieces + words[: vocab_size - len(pieces)]
    tok = Tokenizer(WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return BertTokenizerFast(tokenizer_object=tok, model_max_length=max_length, do_lower_case=True)


def build_report_encoder(cfg: ReportEncoderConfig, vocab_size: int):
    """A randomly initialised ``BertModel`` (no pooler: the U-Net attends to every token)."""
    from transformers import BertConfig, BertModel

    if cfg.hidden_size % cfg.num_heads:
        raise InputError(f"hidden_size={cfg.hidden_size} is not divisible by num_heads={cfg.num_heads}")
    conf = BertConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
                      num_attention_heads=cfg.num_heads, intermediate_size=4 * cfg.hidden_size,
                      max_position_embeddings=cfg.max_length, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(conf, add_pooling_layer=False)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> dict:
    """Pad to ``max_length`` and truncate (7.3.2: tokenized reports limited to 150)."""
    return tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")


def embed(encoder, tokens: dict) -> torch.Tensor:
    """tau_phi(y): the encoder's last hidden states (B, L, D), the keys/values of the U-Net's cross-attention
    (computed on the encoder's device)."""
    device = module_device(encoder)
    return encoder(input_ids=tokens["input_ids"].to(device),
                   attention_mask=tokens["attention_mask"].to(device)).last_hidden_state
