"""The embedded backbone's tokenizer: a byte-level BPE trained offline on the KG's own words."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from kon_ray.data.cache import cache_key, cached_dir

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (no unknown characters) with ``<pad>`` as id 0."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )


def kg_tokenizer(corpus: list[str], digest: str, vocab_size: int) -> PreTrainedTokenizerFast:
    """The tokenizer for a KG, trained once on ``corpus`` and cached by the KG's digest and the corpus."""
    corpus_digest = hashlib.sha256("\n".join(corpus).encode()).hexdigest()
    key = cache_key(kind="bpe", digest=digest, vocab_size=vocab_size, corpus=corpus_digest)

    def build(folder: Path) -> None:
        train_tokenizer(corpus, vocab_size).save_pretrained(folder)

    return PreTrainedTokenizerFast.from_pretrained(cached_dir("tokenizer", key, build))
