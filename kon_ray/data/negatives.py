"""Negative entities for training: uniform over the entities that are not a known training answer.

Vectorised with the rank-shift trick. With a row's excluded entities sorted,
``a_0 < a_1 < ...``, the u-th allowed entity is ``u + #{j : a_j - j <= u}``: one
searchsorted for all rows at once, each row's shifted values offset by ``row * E``.
Duplicate draws within a row are redrawn until none remain, each redraw checked against the
row's kept draws (sorted ``row * width + rank`` keys, searched); rows asking for more than half their allowed
entities draw a random permutation instead, where redrawing would converge slowly.
Memory stays O(rows x |N| + the rows' known answers): nothing is rows x entities.

A query with fewer allowed entities than |N| (a small KG, or a hub query) gets all of them in
random order, then uniform draws from them with replacement for the remaining slots: every slot
stays uniform over the query's allowed entities. A query with none raises ValueError
(``kon_ray.data.checks.check_data`` finds it before training starts).
"""

from __future__ import annotations

import numpy as np
import torch

from kon_ray.data.queries import AnswerIndex, Queries


def sample_negatives(index: AnswerIndex, queries: Queries, n: int, generator: torch.Generator) -> torch.Tensor:
    """int64 (len(queries), n): per query n entities, none a known answer nor the target, distinct
    where the query has at least n such entities (else all of them, then uniform repeats)."""
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
        if not len(allowed):
            raise _none_left(queries, q, n)
        if len(allowed) >= n:
            rows.append(rng.choice(allowed, n, replace=False))
        else:
            rows.append(np.concatenate([rng.permutation(allowed), rng.choice(allowed, n - len(allowed))]))
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
    empty = np.flatnonzero(allowed < 1)
    if len(empty):
        raise _none_left(queries, int(empty[0]), n)
    shifted = pairs - (np.arange(len(pairs)) - np.repeat(row_start, counts))
    return shifted, row_start, allowed


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"|N|={n}: the number of negatives must be >= 1")


def _none_left(queries: Queries, q: int, n: int) -> ValueError:
    return ValueError(
        f"|N|={n} negatives requested but query {q} (anchor={queries.anchor[q]}, relation={queries.relation[q]}, "
        f"direction={('tail', 'head')[queries.direction[q]]}) has no non-answer: every entity answers it"
    )


def _uniform(allowed: np.ndarray, shape: tuple[int, int], generator: torch.Generator) -> np.ndarray:
    """Integers uniform in [0, allowed[row]) per row (u < 1, and float64 rounds u * a below a for a < 2^53)."""
    u = torch.rand(shape, dtype=torch.float64, generator=generator).numpy()
    return (u * allowed[:, None]).astype(np.int64)


def _draw_ranks(allowed: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """(rows, n) ranks per row, uniform in [0, allowed[row]): distinct where allowed[row] >= n."""
    ranks = _uniform(allowed, (len(allowed), n), generator)
    dense = np.flatnonzero(2 * n > allowed)
    repeat = _repeats(ranks)
    repeat[dense] = False
    width = int(allowed.max())
    kept_rows, kept_slots = np.nonzero(~repeat)
    taken = [np.sort(kept_rows * width + ranks[kept_rows, kept_slots])]  # sorted row * width + rank
    rows, slots = np.nonzero(repeat)
    while len(rows):  # each redraw is accepted with probability >= 1/2 on these rows
        draws = _uniform(allowed[rows], (len(rows), 1), generator)[:, 0]
        keys = rows * width + draws
        _, first = np.unique(keys, return_index=True)
        first = first[~np.any([_member(t, keys[first]) for t in taken], axis=0)]
        accept = np.zeros(len(rows), dtype=bool)
        accept[first] = True
        ranks[rows[accept], slots[accept]] = draws[accept]
        taken.append(np.sort(keys[accept]))
        rows, slots = rows[~accept], slots[~accept]
    if len(dense):
        ranks[dense] = _permuted(allowed[dense], n, generator)
    return ranks


def _member(ordered: np.ndarray, values: np.ndarray) -> np.ndarray:
    """bool like ``values``: whether each is in the sorted array ``ordered``."""
    pos = np.minimum(np.searchsorted(ordered, values), max(len(ordered) - 1, 0))
    return ordered[pos] == values if len(ordered) else np.zeros(len(values), dtype=bool)


def _permuted(allowed: np.ndarray, n: int, generator: torch.Generator) -> np.ndarray:
    """(rows, n): the first n of a random permutation of [0, allowed[row]); slots beyond
    allowed[row] uniform draws from it. Memory rows x max(allowed), allowed < 2n here."""
    width = int(allowed.max())
    keys = torch.rand((len(allowed), width), dtype=torch.float64, generator=generator)
    keys[torch.arange(width) >= torch.from_numpy(allowed)[:, None]] = 2.0
    order = torch.argsort(keys, dim=1)[:, :n].numpy()
    short = np.flatnonzero(allowed < n)
    if not len(short):
        return order
    out = np.zeros((len(allowed), n), dtype=np.int64)
    out[:, : order.shape[1]] = order
    repeats = _uniform(allowed[short], (len(short), n), generator)
    beyond = np.arange(n)[None, :] >= allowed[short, None]
    out[short[:, None].repeat(n, 1)[beyond], np.nonzero(beyond)[1]] = repeats[beyond]
    return out


def _repeats(ranks: np.ndarray) -> np.ndarray:
    """bool like ``ranks``: True on every slot whose value an earlier slot of its row (in sort order) holds."""
    order = np.argsort(ranks, axis=1, kind="stable")
    ordered = np.take_along_axis(ranks, order, axis=1)
    repeat = np.zeros_like(ranks, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    return repeat
