"""A CLIP-format byte-level BPE tokenizer trained on the workflow's own caption text.

The result is a standard :class:`transformers.CLIPTokenizer` (fast) whose ``save_pretrained``
folder reloads with ``CLIPTokenizer.from_pretrained`` and plugs into ``StableDiffusionPipeline``.
Every byte and every byte + ``</w>`` is in the vocabulary (as in OpenAI's CLIP), so any text,
including words never seen in training ("pleural effusion"), tokenizes without ``unk``; new
placeholder tokens ("<lung-xray>") can be added later with ``add_tokens``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

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
    words = Counter(piece for text in texts
                    for piece, _ in raw.pre_tokenizer.pre_tokenize_str(raw.normalizer.normalize_str(text)))
    merges = learn_bpe_merges(words, max(vocab_size - n_base, 1), min_frequency=2)

    vocab: dict[str, int] = {}
    for tok in alphabet + [c + EOW for c in alphabet]:
        vocab.setdefault(tok, len(vocab))
    for a, b in merges:  # merge products, in merge order (CLIP's layout)
        vocab.setdefault(a + b, len(vocab))
    vocab.setdefault(BOS, len(vocab))
    vocab.setdefault(EOS, len(vocab))
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    return tok


def learn_bpe_merges(word_counts: Counter, n_merges: int, min_frequency: int = 2) -> list[tuple[str, str]]:
    """BPE merges of pre-tokenized words (byte-level symbols, ``</w>`` on each word's last one): the most frequent
    pair first; ties go to the pair of smaller symbol ids, as in ``tokenizers``' trainer, where a symbol's id is its
    byte's rank, then for ``</w>`` symbols 256 + that rank, then for merge products their merge's order.

    Written here rather than with ``tokenizers``' ``BpeTrainer`` because that trainer numbers the ``</w>`` symbols
    in the order of a randomly seeded hash map: on the smoke corpus it gave two different vocabularies in 20 calls,
    so two runs of the same config built different foundations."""
    alphabet = _byte_alphabet()
    ids = {c: i for i, c in enumerate(alphabet)}
    ids.update({c + EOW: len(alphabet) + i for i, c in enumerate(alphabet)})
    words = [[*w[:-1], w[-1] + EOW] for w in word_counts]
    counts = list(word_counts.values())
    merges: list[tuple[str, str]] = []
    while len(merges) < n_merges:
        pairs: Counter = Counter()
        for symbols, n in zip(words, counts):
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], ids[p[0]], ids[p[1]]))
        if pairs[best] < min_frequency:
            break
        merges.append(best)
        a, b = best
        ids.setdefault(a + b, len(ids))
        for symbols in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == a and symbols[i + 1] == b:
                    symbols[i : i + 2] = [a + b]
                i += 1
    return merges


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
