"""Negative sampling on batches that mix rows drawn by redrawing and rows drawn by permutation.

test_negatives.py pins the distribution on uniform batches; strict sampling (training answers
only) is pinned on a whole run in test_fidelity_protocol.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kon_ray.data import AnswerIndex, Queries, sample_negatives


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
