"""Negative sampling on batches that mix rows drawn by redrawing and rows drawn by permutation.

test_negatives.py pins the distribution on uniform batches; strict sampling (training answers
only) is pinned on a whole run in test_fidelity_protocol.py.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from kon_ray.data import AnswerIndex, Queries, sample_negatives, sample_negatives_reference
from kon_ray.data.negatives import _member

MIXED_DIGEST = "cd2b45248a1335c6"
"""sha256 (first 16 hex digits) of the mixed batch's negatives for seed 3, as this sampler draws them."""


def test_sampler_mixed_batch_of_dense_and_sparse_rows() -> None:
    """Rows needing redraws and rows drawn by permutation in one batch: each exact, distinct, allowed."""
    rng = np.random.default_rng(0)
    hub = [(0, 0, t) for t in range(1, 12)]  # (0, r0, ?) has 11 answers among 20 entities: 9 non-answers
    triples = np.array(hub + [(h, 0, int(rng.integers(0, 20))) for h in range(1, 20)])
    index = AnswerIndex.build([triples], 20, 1)
    zeros = np.zeros(200, dtype=np.int64)
    targets = np.array([1, int(triples[11, 2]), 5, int(triples[12, 2])] * 50)
    queries = Queries(np.array([0, 1, 0, 2] * 50), zeros, zeros, targets)
    negatives = sample_negatives(index, queries, 6, torch.Generator().manual_seed(0))
    allowed = ~index.mask(queries)
    allowed[torch.arange(200), torch.from_numpy(queries.target)] = False
    assert allowed[0].sum() == 9 and allowed[1].sum() > 12  # dense (2 x 6 > 9) and sparse rows
    assert allowed.gather(1, negatives).all()
    ordered = negatives.sort(1).values
    assert (ordered[:, 1:] != ordered[:, :-1]).all()
    seen = torch.zeros(20, dtype=torch.bool)
    seen[negatives[::4].flatten()] = True
    assert torch.equal(seen, allowed[0])  # the dense rows reach every allowed entity


def test_sampler_rejects_no_negatives() -> None:
    index = AnswerIndex.build([np.array([[0, 0, 1]])], 4, 1)
    queries = Queries(*(np.zeros(1, dtype=np.int64) for _ in range(4)))
    with pytest.raises(ValueError, match=r"\|N\|=0"):
        sample_negatives(index, queries, 0, torch.Generator())


def _mixed_batch() -> tuple[AnswerIndex, Queries]:
    """40 entities, |N|=8: rows drawn by redrawing repeats (anchors 2-9, about 37 allowed; anchor 10,
    20 allowed), by permutation (anchor 1: 10 allowed; anchor 11: 16, just over half), and short
    ones (anchor 0: 6 allowed, then repeats)."""
    rng = np.random.default_rng(0)
    answers = {0: range(1, 34), 1: range(2, 31), 10: range(1, 20), 11: range(1, 24)}
    triples = [(h, 0, t) for h, tails in answers.items() for t in tails]
    triples += [(h, 0, int(rng.integers(0, 40))) for h in range(2, 10) for _ in range(2)]
    index = AnswerIndex.build([np.array(triples)], 40, 1)
    anchors = np.tile(np.arange(12), 20)
    zeros = np.zeros(len(anchors), dtype=np.int64)
    return index, Queries(anchors, zeros, zeros, np.where(anchors == 0, 34, 35))


def test_same_seed_same_negatives_on_a_mixed_batch() -> None:
    """Every path draws from the generator it is given, and nothing else: a seed gives the same
    negatives in every run (what exact resume needs), and the digest pins the stream, so that a change
    to it (the draw's dtype, how many numbers a redraw takes, which rows permute) is deliberate."""
    index, queries = _mixed_batch()
    allowed = (~index.mask(queries)).sum(1) - 1
    assert allowed[0] == 6 and allowed[1] == 10 and allowed[11] == 16  # short, permuted
    assert (allowed[2:10] > 24).all() and allowed[10] == 20  # redrawn: 2 x 8 < allowed
    draws = [sample_negatives(index, queries, 8, torch.Generator().manual_seed(s)) for s in (3, 3, 4)]
    torch.manual_seed(0)  # the global generator must not matter
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2])
    assert hashlib.sha256(draws[0].numpy().tobytes()).hexdigest()[:16] == MIXED_DIGEST


def test_a_query_with_one_non_answer_gets_it_in_every_slot() -> None:
    index = AnswerIndex.build([np.array([[0, 0, t] for t in range(1, 4)])], 5, 1)
    queries = Queries(*(np.array([v]) for v in (0, 0, 0, 4)))  # answers 1-3, target 4: only 0 is left
    assert sample_negatives(index, queries, 3, torch.Generator().manual_seed(0)).tolist() == [[0, 0, 0]]


@pytest.mark.parametrize("direction", [0, 1])
def test_no_non_answer_names_the_query(direction: int) -> None:
    index = AnswerIndex.build([np.array([[0, 0, 0], [0, 0, 1], [1, 0, 0]])], 2, 1)
    queries = Queries(*(np.array([v]) for v in (0, 0, direction, 1)))  # 0 and 1 answer either way
    expected = f"|N|=2 negatives requested but query 0 (anchor=0, relation=0, direction={('tail', 'head')[direction]})"
    for sample in (
        lambda: sample_negatives(index, queries, 2, torch.Generator()),
        lambda: sample_negatives_reference(index, queries, 2, np.random.default_rng(0)),
    ):
        with pytest.raises(ValueError) as refused:
            sample()
        assert str(refused.value) == f"{expected} has no non-answer: every entity answers it"


def test_membership_in_a_sorted_array() -> None:
    ordered = np.array([1, 3, 5])
    assert _member(ordered, np.array([5, 4, 0, 6, 1])).tolist() == [True, False, False, False, True]
    empty = _member(np.array([], dtype=np.int64), np.array([2, 7]))
    assert empty.dtype == bool and empty.tolist() == [False, False]


def test_reference_draws_without_replacement_where_it_can() -> None:
    index, queries = _mixed_batch()
    rows = sample_negatives_reference(index, queries, 8, np.random.default_rng(0))
    ordered = rows[queries.anchor != 0].sort(1).values  # every row but the short ones
    assert (ordered[:, 1:] != ordered[:, :-1]).all()
