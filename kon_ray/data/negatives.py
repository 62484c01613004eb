"""Negative entities for training: uniform over the entities that are not a known answer.

Vectorised with the rank-shift trick. With a row's excluded entities sorted,
``a_0 < a_1 < ...``, the u-th allowed entity is ``u + #{j : a_j - j <= u}``: one
searchsorted for all rows at once, each row's shifted values offset by ``row * E``.
Duplicate draws within a row are redrawn (checked against a bitmap of the row's kept
draws) until none remain; rows asking for more
than half their allowed entities draw a random permutation instead, where redrawing
would converge slowly.
"""

from __future__ import annotations

import numpy as np
import torch

from kon_ray.data.queries import AnswerIndex, Queries

_MAX_REDRAWS = 64


def sample_negatives(index: AnswerIndex, queries: Queries, n: int, generator: torch.Generator) -> torch.Tensor:
    """int64 (len(queries), n): per query n distinct entities, none a known answer nor the target."""
    shifted, row_start, allowed = _excluded(index, queries, n)
    ranks = _draw_ranks(allowed, n, generator)
    rows = np.arange(len(queries), dtype=np.int64)[:, None]
    below = np.searchsorted(shifted, rows * index.num_entities + ranks, side="right") - row_start[:, None]
    return torch.from_numpy(ranks + below)


def sample_negatives_reference(
    index: AnswerIndex, queries: Queries, n: int, rng: np.random.Generator
) -> torch.Tensor:
    """The naive per-row set difference, for tests and benchmarks: same distribution, slower."""
    _check_n(n)
    offsets, values = (t.numpy() for t in index.answers(queries))
    rows = []
    for q in range(len(queries)):
        excluded = np.append(values[offsets[q] : offsets[q + 1]], queries.target[q])
        allowed = np.setdiff1d(np.arange(index.num_entities), excluded)
        if len(allowed) < n:
            raise _too_few(queries, q, n, len(allowed))
        rows.append(rng.choice(allowed, n, replace=False))
    return torch.from_numpy(np.array(rows, dtype=np.int64).reshape(len(queries), n))


def _excluded(index: AnswerIndex, queries: Queries, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's excluded entities (known answers and target), shifted: sorted ``row * E + a_j - j``;
    the start of each row in it; and each row's number of allowed entities. Checks ``n``."""
    _check_n(n)
    num = index.num_entities
    offsets, values = (t.numpy() for t in index.answers(queries))
    rows = np.arange(len(queries), dtype=np.int64)
    pairs = np.sort(np.concatenate([np.repeat(rows, np.diff(offsets)) * num + values, rows * num + queries.target]))
    fresh = np.ones(len(pairs), dtype=bool)
    fresh[1:] = pairs[1:] != pairs[:-1]
    pairs = pairs[fresh]
    counts = np.bincount(pairs // num, minlength=len(queries))
    row_start = np.zeros(len(queries), dtype=np.int64)
    np.cumsum(counts[:-1], out=row_start[1:])
    allowed = num - counts
    short = np.flatnonzero(allowed < n)
    if len(short):
        raise _too_few(queries, int(short[0]), n, int(allowed[short[0]]))
    shifted = pairs - (np.arange(len(pairs)) - np.repeat(row_start, counts))
    return shifted, row_start, allowed


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"|N|={n}: the number of negatives must be >= 1")


def _too_few(queries: Queries, q: int, n: int, available: int) -> ValueError:
    return ValueError(
        f"|N|={n} negatives requested but query {q} (anchor={queries.anchor[q]}, relation={queries.relation[q]}, "
        f"direction={('tail', 'head')[queries.direction[q]]}) has only {available} non-answers"
    )


def _uniform(allowed: np.ndarray, shape: tuple[int, int], generator: torch.Generator) -> np.ndarray:
    """Integers uniform in [0, allowed[row]) per row."""
    u = torch.rand(shape, dtype=torch.float64, generator=generator).numpy()
    return np.minimum((u * allowed[:, None]).astype(np.int64), allowed[:, None] - 1)


def _draw_ranks(allowed: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """(rows, n) distinct ranks per row, uniform in [0, allowed[row])."""
    ranks = _uniform(allowed, (len(allowed), n), generator)
    dense = np.flatnonzero(2 * n > allowed)
    repeat = _repeats(ranks)  # one sort; later rounds check only the redrawn slots, against a bitmap
    repeat[dense] = False
    taken = np.zeros((len(allowed), int(allowed.max())), dtype=bool)
    kept_rows, kept_slots = np.nonzero(~repeat)
    taken[kept_rows, ranks[kept_rows, kept_slots]] = True
    rows, slots = np.nonzero(repeat)
    for _ in range(_MAX_REDRAWS):
        if not len(rows):
            break
        draws = _uniform(allowed[rows], (len(rows), 1), generator)[:, 0]
        _, first = np.unique(rows * taken.shape[1] + draws, return_index=True)
        accept = np.zeros(len(rows), dtype=bool)
        accept[first] = ~taken[rows[first], draws[first]]
        ranks[rows[accept], slots[accept]] = draws[accept]
        taken[rows[accept], draws[accept]] = True
        rows, slots = rows[~accept], slots[~accept]
    else:  # not converged (vanishingly rare): permute the rows still repeating
        dense = np.union1d(dense, rows)
    if len(dense):
        keys = torch.rand((len(dense), int(allowed[dense].max())), dtype=torch.float64, generator=generator)
        keys[torch.arange(keys.shape[1]) >= torch.from_numpy(allowed[dense])[:, None]] = 2.0
        ranks[dense] = torch.argsort(keys, dim=1)[:, :n].numpy()
    return ranks


def _repeats(ranks: np.ndarray) -> np.ndarray:
    """bool like ``ranks``: True on every slot whose value an earlier slot of its row (in sort order) holds."""
    order = np.argsort(ranks, axis=1, kind="stable")
    ordered = np.take_along_axis(ranks, order, axis=1)
    repeat = np.zeros_like(ranks, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    return repeat
