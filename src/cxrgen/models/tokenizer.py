"""A CLIP-format byte-level BPE tokenizer trained on the workflow's own caption text.

The result is a standard :class:`transformers.CLIPTokenizer` (fast) whose ``save_pretrained``
folder reloads with ``CLIPTokenizer.from_pretrained`` and plugs into ``StableDiffusionPipeline``.
Every byte and every byte + ``</w>`` is in the vocabulary (as in OpenAI's CLIP), so any text,
including words never seen in training ("pleural effusion"), tokenizes without ``unk``; new
placeholder tokens ("<lung-xray>") can be added later with ``add_tokens``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from cxrgen.errors import InputError

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"
# the same split pattern that transformers' CLIPTokenizer uses
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _byte_alphabet() -> list[str]:
    return sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda c: ord(c))


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int = 1024, model_max_length: int = 32):
    """Train a byte-level BPE on ``texts`` and wrap it as a ``transformers.CLIPTokenizer``.

    ``vocab_size`` counts the 512 byte symbols (with and without ``</w>``) plus merges and the
    two special tokens; ``model_max_length`` must equal the text encoder's position count.
    """
    from transformers import CLIPTokenizer

    texts = list(texts)
    if not texts:
        raise ValueError("train_clip_tokenizer needs at least one text")
    alphabet = _byte_alphabet()
    n_base = 2 * len(alphabet) + 2
    raw = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix=EOW, unk_token=None))
    raw.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    raw.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=max(vocab_size, n_base + 1),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=alphabet,
        end_of_word_suffix=EOW,
        special_tokens=[],
    )
    raw.train_from_iterator(texts, trainer=trainer)
    model = json.loads(raw.to_str())["model"]
    trained_vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]

    vocab: dict[str, int] = {}
    for tok in alphabet + [c + EOW for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    for a, b in merges:  # merge products, in merge order (CLIP's layout)
        vocab.setdefault(a + b, len(vocab))
    for tok, _ in trained_vocab:
        vocab.setdefault(tok, len(vocab))
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    return tok


def count_truncated(tokenizer, texts: Iterable[str], max_length: int | None = None, what: str = "text",
                    logger: logging.Logger | None = None) -> int:
    """How many ``texts`` are longer than ``max_length`` tokens (default: the tokenizer's ``model_max_length``),
    special tokens included, and so lose their end to truncation.

    Truncation is how every text encoder here handles them (CLIP's context, BERT's 512; Zafar et al. study what
    it costs), so a long prompt or report is not an error: it is counted, and one warning names the count, the
    limit and the longest text. A tokenizer without a finite limit truncates nothing.
    """
    texts = [str(t) for t in texts]
    require_unicode(texts, what)
    limit = max_length if max_length is not None else getattr(tokenizer, "model_max_length", None)
    if not texts or not isinstance(limit, int) or not 0 < limit < 1_000_000:
        return 0
    lengths = [len(ids) for ids in tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    over = [i for i, n in enumerate(lengths) if n > limit]
    if over:
        longest = max(over, key=lengths.__getitem__)
        (logger or logging.getLogger(__name__)).warning(
            "%d of %d %s(s) exceed the tokenizer limit of %d tokens and are truncated to it (longest: %d tokens, %r)",
            len(over), len(texts), what, limit, lengths[longest], texts[longest][:80])
    return len(over)


_SURROGATE = re.compile("[\ud800-\udfff]")


def require_unicode(texts: Iterable[str], what: str = "text") -> None:
    """Refuse text holding an unpaired surrogate (bytes that were not UTF-8, decoded with ``surrogateescape``):
    tokenizers fail on it deep inside with a ``TypeError``; here the message names the text and the position."""
    for text in texts:
        m = _SURROGATE.search(str(text))
        if m:
            raise InputError(f"{what} {text!r} holds the unpaired surrogate U+{ord(m.group()):04X} at position "
                             f"{m.start()} (bytes that were not UTF-8?); expected valid Unicode text")
