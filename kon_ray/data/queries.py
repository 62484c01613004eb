"""Link-prediction queries and the known true answers of each, for filtering and negatives."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

TAIL, HEAD = 0, 1
"""TAIL: predict t of (h, r, ?); HEAD: predict h of (?, r, t)."""


@dataclass(frozen=True, eq=False)
class Queries:
    anchor: np.ndarray
    """int64 (n,): the given entity."""
    relation: np.ndarray
    direction: np.ndarray
    """int64 (n,): TAIL or HEAD."""
    target: np.ndarray
    """int64 (n,): the entity to predict."""

    def __len__(self) -> int:
        return len(self.anchor)

    def take(self, index: np.ndarray | slice) -> Queries:
        return Queries(self.anchor[index], self.relation[index], self.direction[index], self.target[index])


def both_directions(triples: np.ndarray) -> Queries:
    """Each (h, r, t) triple twice: row 2i asks (h, r, ?), row 2i+1 asks (?, r, t)."""
    head, relation, tail = np.asarray(triples, dtype=np.int64).reshape(-1, 3).T

    def interleave(tail_query: np.ndarray, head_query: np.ndarray) -> np.ndarray:
        return np.stack([tail_query, head_query], axis=1).reshape(-1)

    return Queries(
        anchor=interleave(head, tail),
        relation=interleave(relation, relation),
        direction=np.tile(np.array([TAIL, HEAD], dtype=np.int64), len(head)),
        target=interleave(tail, head),
    )


@dataclass(frozen=True, eq=False)
class AnswerIndex:
    """Known true answers of every query key (anchor, relation, direction), stored CSR.

    ``keys`` are sorted unique ``(direction * R + relation) * E + anchor``; the answers of
    ``keys[i]`` are ``values[offsets[i]:offsets[i + 1]]``, sorted ascending and unique.
    """

    num_entities: int
    num_relations: int
    keys: np.ndarray
    offsets: np.ndarray
    values: np.ndarray

    @classmethod
    def build(cls, splits: Sequence[np.ndarray], num_entities: int, num_relations: int) -> AnswerIndex:
        """Index both directions of every (h, r, t) triple in ``splits``."""
        queries = both_directions(np.concatenate([np.asarray(s, dtype=np.int64).reshape(-1, 3) for s in splits]))
        keys = _keys(queries, num_entities, num_relations)
        order = np.lexsort((queries.target, keys))
        keys, values = keys[order], queries.target[order]
        fresh = np.ones(len(keys), dtype=bool)
        fresh[1:] = (keys[1:] != keys[:-1]) | (values[1:] != values[:-1])
        keys, values = keys[fresh], values[fresh]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        starts = np.flatnonzero(first)
        offsets = np.append(starts, len(keys)).astype(np.int64)
        return cls(num_entities, num_relations, keys[starts], offsets, values)

    def _lookup(self, queries: Queries) -> tuple[np.ndarray, np.ndarray]:
        """Start in ``values`` and number of known answers of each query."""
        keys = _keys(queries, self.num_entities, self.num_relations)
        pos = np.searchsorted(self.keys, keys)
        found = np.zeros(len(keys), dtype=bool)
        inside = pos < len(self.keys)
        found[inside] = self.keys[pos[inside]] == keys[inside]
        starts = self.offsets[pos]
        ends = self.offsets[np.minimum(pos + 1, len(self.keys))]
        return starts, np.where(found, ends - starts, 0)

    def counts(self, queries: Queries) -> np.ndarray:
        """Number of known answers of each query."""
        return self._lookup(queries)[1]

    def answers(self, queries: Queries) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR (offsets int64 (n + 1,), values int64) of each query's known answers, sorted ascending."""
        starts, counts = self._lookup(queries)
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        gather = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
        return torch.from_numpy(offsets), torch.from_numpy(self.values[gather])

    def mask(self, queries: Queries) -> torch.Tensor:
        """bool (n, num_entities): True where the entity is a known answer of that query."""
        offsets, values = self.answers(queries)
        rows = torch.repeat_interleave(torch.arange(len(queries)), offsets.diff())
        mask = torch.zeros(len(queries), self.num_entities, dtype=torch.bool)
        mask[rows, values] = True
        return mask


def _keys(queries: Queries, num_entities: int, num_relations: int) -> np.ndarray:
    """``(direction * R + relation) * E + anchor``, after checking every id is in range."""
    columns = {"anchor": num_entities, "relation": num_relations, "direction": 2}
    anchor, relation, direction = (np.asarray(getattr(queries, name), dtype=np.int64) for name in columns)
    for (name, bound), values in zip(columns.items(), (anchor, relation, direction), strict=True):
        if len(values) and (values.min() < 0 or values.max() >= bound):
            raise ValueError(f"query {name} ids must be in 0..{bound - 1}, got {values.min()}..{values.max()}")
    return (direction * num_relations + relation) * num_entities + anchor
