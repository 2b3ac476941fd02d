"""A CLIP-format byte-level BPE tokenizer trained on the workflow's own caption text.

The result is a standard :class:`transformers.CLIPTokenizer` (fast) whose ``save_pretrained``
folder reloads with ``CLIPTokenizer.from_pretrained`` and plugs into ``StableDiffusionPipeline``.
Every byte and every byte + ``</w>`` is in the vocabulary (as in OpenAI's CLIP), so any text,
including words never seen in training ("pleural effusion"), tokenizes without ``unk``; new
placeholder tokens ("<lung-xray>") can be added later with ``add_tokens``.
"""

from __future__ import annotations

import json
from typing import Iterable

from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

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
