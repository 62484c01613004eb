"""Prompts for tail and head queries, entity token sequences (eq. 8), and model batches.

Tokenisation runs once per KG, tokenizer, template, K and anchor cap, and is cached on disk under a
key of the KG's file digest and the tokenizer's own contents. It runs in chunks of ``CHUNK`` texts,
so its memory is the arrays it returns (O(entities + triples)), not Python lists of every prompt.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from kon_ray.config import ConfigError, DataConfig
from kon_ray.data.cache import cache_key, cached_dir
from kon_ray.data.kg import KnowledgeGraph
from kon_ray.data.queries import HEAD, TAIL, Queries

# {entity} is the query's known entity, {relation} its relation; the answer follows the prompt.
TEMPLATES: dict[str, dict[int, str]] = {
    # Modelled on the published code's instruction, for chat LLMs.
    "instruction": {
        TAIL: "Predict the tail entity of the given triplet ({entity}; {relation}; ?). The answer is:",
        HEAD: "Predict the head entity of the given triplet (?; {relation}; {entity}). The answer is:",
    },
    # Short markers for the small embedded backbone: fewer tokens, same information.
    "compact": {
        TAIL: "tail: {entity} | {relation} =",
        HEAD: "head: {entity} | {relation} =",
    },
}


def template_words(template: str) -> list[str]:
    """The template's own text, for training a tokenizer that covers it."""
    return [TEMPLATES[template][d].format(entity="", relation="") for d in (TAIL, HEAD)]


CHUNK = 65536
"""Texts tokenised per call."""


def _tokenize(
    tokenizer: PreTrainedTokenizerBase, texts: Iterator[str], special: bool
) -> Iterator[list[list[int]]]:
    """Token ids of ``texts``, ``CHUNK`` at a time; a fast tokenizer's backend directly (the same ids
    without the wrapper's per-text conversion, half the time)."""
    while chunk := list(itertools.islice(texts, CHUNK)):
        if tokenizer.is_fast:
            yield [e.ids for e in tokenizer.backend_tokenizer.encode_batch(chunk, add_special_tokens=special)]
        else:
            yield tokenizer(chunk, add_special_tokens=special)["input_ids"]


def _answer_ids(tokenizer: PreTrainedTokenizerBase, names: list[str], template: str) -> Iterator[list[int]]:
    """Token ids of each name as the backbone reads it after the prompt, without BOS/EOS.

    A name is tokenised after the prompt's last word and that word's own ids are cut off: a name
    alone, even after a space, can split otherwise (SentencePiece's '▁▁' + 'Name' for ' Name',
    where the prompt is followed by '▁Name').
    """
    last = TEMPLATES[template][TAIL].rsplit(" ", 1)[-1]
    context = tokenizer([last], add_special_tokens=False)["input_ids"][0]
    start = 0
    for chunk in _tokenize(tokenizer, (f"{last} {name}" for name in names), special=False):
        for i, ids in enumerate(chunk, start):
            if ids[: len(context)] != context:
                raise ConfigError(
                    f"model.backbone={tokenizer.name_or_path}: its tokenizer merges the entity name "
                    f"{names[i]!r} with the prompt's last word {last!r} (data.prompt={template}), so eq. 8's "
                    "tokens are not the name's"
                )
            yield ids[len(context) :]
        start += len(chunk)


def check_answer_tokens(kg: KnowledgeGraph, tokenizer: PreTrainedTokenizerBase, template: str) -> None:
    """Raise ConfigError where ``encode_kg`` would: a name that ``tokenizer`` merges with the prompt.

    For a check before any worker starts: it tokenises the names only (O(entities), not the
    prompts), once per KG, tokenizer and template (the verdict is cached).
    """
    key = cache_key(
        kind="answers", digest=kg.digest, tokenizer=tokenizer_digest(tokenizer), template=TEMPLATES[template]
    )

    def build(folder: Path) -> None:
        for _ in _answer_ids(tokenizer, list(kg.entity_names), template):
            pass

    cached_dir("answers", key, build)


def _ragged(chunks: Iterator[list[list[int]]]) -> tuple[np.ndarray, np.ndarray]:
    """(flat int64 tokens, offsets (n + 1,)) of rows that arrive in chunks."""
    flats, lengths = [], []
    for rows in chunks:
        length = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        tokens = itertools.chain.from_iterable(rows)
        flats.append(np.fromiter(tokens, dtype=np.int64, count=int(length.sum())))
        lengths.append(length)
    offsets = np.zeros(sum(map(len, lengths)) + 1, dtype=np.int64)
    np.cumsum(np.concatenate(lengths) if lengths else np.empty(0, dtype=np.int64), out=offsets[1:])
    return (np.concatenate(flats) if flats else np.empty(0, dtype=np.int64)), offsets


def tokenizer_digest(tokenizer: PreTrainedTokenizerBase) -> str:
    """sha256 of what the tokenizer does: a fast tokenizer's full JSON (vocabulary, merges, normaliser,
    special tokens, post-processor), else its class and vocabulary; never only its name or path."""
    if tokenizer.is_fast:
        contents = tokenizer.backend_tokenizer.to_str()
    else:
        contents = json.dumps([type(tokenizer).__name__, sorted(tokenizer.get_vocab().items())])
    extra = json.dumps([tokenizer.all_special_tokens, tokenizer.pad_token_id, tokenizer.padding_side])
    return hashlib.sha256(f"{contents}\0{extra}".encode()).hexdigest()


def capped_names(
    tokenizer: PreTrainedTokenizerBase, names: tuple[str, ...], ids: list[list[int]], cap: int | None
) -> list[str]:
    """Each name as the prompt shows it: its first ``cap`` tokens (all when None or shorter)."""
    if cap is None:
        return list(names)
    pairs = zip(names, ids, strict=True)
    return [name if len(t) <= cap else tokenizer.decode(t[:cap]).strip() for name, t in pairs]


@dataclass(frozen=True)
class Batch:
    """Token ids for a batch of queries, right-padded, optionally followed by the target's tokens."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    last: torch.Tensor  # (B,) position of the prompt's last token: its hidden state is h_0^m (eq. 1)
    target_tokens: torch.Tensor | None = None  # (B, K) eq. 8 tokens of the target entity
    target_mask: torch.Tensor | None = None  # (B, K) True on the target's real (non-padding) tokens

    def to(self, device: torch.device | str) -> Batch:
        move = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        return Batch(**move)


@dataclass(frozen=True)
class EncodedKG:
    """A KG tokenised for K-ON: entity token table (eq. 8) and one prompt per query key."""

    entity_tokens: torch.Tensor  # (E, K) int64, right-padded with pad_id, truncated at K
    entity_mask: torch.Tensor  # (E, K) bool, True on real tokens
    name_lengths: np.ndarray  # (E,) untruncated token counts
    prompt_keys: np.ndarray  # sorted int64 query keys (direction, relation, anchor)
    prompt_flat: np.ndarray  # int32 token ids of every prompt, concatenated
    prompt_offsets: np.ndarray
    num_entities: int
    num_relations: int
    pad_id: int

    @property
    def k(self) -> int:
        return self.entity_tokens.shape[1]

    def _key(self, queries: Queries) -> np.ndarray:
        return (queries.direction * self.num_relations + queries.relation) * self.num_entities + queries.anchor

    def prompt_rows(self, queries: Queries) -> np.ndarray:
        """Each query's row in the prompt table: queries with equal rows share one prompt."""
        return np.searchsorted(self.prompt_keys, self._key(queries))

    def prompt_lengths(self, rows: np.ndarray) -> np.ndarray:
        """Token counts of the prompts at ``rows`` (from ``prompt_rows``)."""
        return self.prompt_offsets[rows + 1] - self.prompt_offsets[rows]

    def capped_prompts(self, anchor_tokens: int | None) -> int:
        """How many prompts ``data.anchor_tokens`` shortens: those whose anchor's name is longer."""
        if anchor_tokens is None:
            return 0
        return int((self.name_lengths[self.prompt_keys % self.num_entities] > anchor_tokens).sum())

    def training_lengths(self, queries: Queries) -> np.ndarray:
        """Token counts of each query's prompt followed by its target (its row in a training batch)."""
        return self.prompt_lengths(self.prompt_rows(queries)) + self.entity_mask[queries.target].sum(1).numpy()

    def batch(self, queries: Queries, with_targets: bool) -> Batch:
        """Prompts of ``queries``; with targets, the target tokens are appended (teacher forcing, eq. 13)."""
        rows = self.prompt_rows(queries)
        starts, ends = self.prompt_offsets[rows], self.prompt_offsets[rows + 1]
        prompt_len = ends - starts
        targets = torch.as_tensor(queries.target)
        extra = self.entity_mask[targets].sum(1).numpy() if with_targets else np.zeros_like(prompt_len)
        total = prompt_len + extra
        width = int(total.max())
        # Vectorised ragged copy: position j of row b takes prompt token starts[b] + j.
        pos = np.arange(width)[None, :]
        in_prompt = pos < prompt_len[:, None]
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        ids[in_prompt] = self.prompt_flat[(starts[:, None] + pos)[in_prompt]]
        if with_targets:
            tokens = self.entity_tokens[targets].numpy()
            in_target = (pos >= prompt_len[:, None]) & (pos < total[:, None])
            k_index = (pos - prompt_len[:, None])[in_target]
            ids[in_target] = tokens[np.nonzero(in_target)[0], k_index]
        mask = pos < total[:, None]
        return Batch(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask).long(),
            last=torch.from_numpy(prompt_len - 1),
            target_tokens=self.entity_tokens[targets] if with_targets else None,
            target_mask=self.entity_mask[targets] if with_targets else None,
        )


def encode_kg(
    kg: KnowledgeGraph,
    tokenizer: PreTrainedTokenizerBase,
    template: str,
    k: int,
    anchor_tokens: int | None = DataConfig().anchor_tokens,
) -> EncodedKG:
    """Tokenise entity names (eq. 8) and every query's prompt once, cached on disk.

    The anchor's name in a prompt keeps its first ``anchor_tokens`` tokens (``data.anchor_tokens``).
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    key = cache_key(
        kind="encoded",
        digest=kg.digest,
        tokenizer=tokenizer_digest(tokenizer),
        template=TEMPLATES[template],
        k=k,
        anchor_tokens=anchor_tokens,
        answers="after the prompt's last word",  # how eq. 8's tokens are cut from the text
    )

    def build(folder: Path) -> None:
        answer = list(_answer_ids(tokenizer, list(kg.entity_names), template))
        lengths = np.fromiter(map(len, answer), dtype=np.int64, count=len(answer))
        table = np.full((kg.num_entities, k), pad_id, dtype=np.int64)
        for e, ids in enumerate(answer):
            table[e, : min(len(ids), k)] = ids[:k]
        shown = capped_names(tokenizer, kg.entity_names, answer, anchor_tokens)
        del answer
        triples = np.concatenate([kg.train, kg.valid, kg.test])
        keys = np.unique(
            np.concatenate(
                [
                    (TAIL * kg.num_relations + triples[:, 1]) * kg.num_entities + triples[:, 0],
                    (HEAD * kg.num_relations + triples[:, 1]) * kg.num_entities + triples[:, 2],
                ]
            )
        )
        del triples

        def texts() -> Iterator[str]:
            for start in range(0, len(keys), CHUNK):
                part = keys[start : start + CHUNK]
                anchor = (part % kg.num_entities).tolist()
                relation = ((part // kg.num_entities) % kg.num_relations).tolist()
                direction = (part // (kg.num_entities * kg.num_relations)).tolist()
                for a, r, d in zip(anchor, relation, direction, strict=True):
                    yield TEMPLATES[template][d].format(entity=shown[a], relation=kg.relation_names[r])

        flat, offsets = _ragged(_tokenize(tokenizer, texts(), special=True))
        flat = flat.astype(np.int32)
        np.savez(folder / "encoded.npz", table=table, lengths=lengths, keys=keys, flat=flat, offsets=offsets)

    data = np.load(cached_dir("encoded", key, build) / "encoded.npz")
    table = torch.from_numpy(data["table"])
    lengths = data["lengths"]
    return EncodedKG(
        entity_tokens=table,
        entity_mask=torch.arange(k)[None, :] < torch.from_numpy(np.minimum(lengths, k))[:, None],
        name_lengths=lengths,
        prompt_keys=data["keys"],
        prompt_flat=data["flat"],
        prompt_offsets=data["offsets"],
        num_entities=kg.num_entities,
        num_relations=kg.num_relations,
        pad_id=pad_id,
    )
