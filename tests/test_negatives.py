"""Negative sampling: never a known answer, distinct per row, uniform, deterministic."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from kon_ray.data import AnswerIndex, Queries, both_directions, load_kg, sample_negatives, sample_negatives_reference
from kon_ray.data.queries import TAIL

# E=6, R=1: the tail query (0, r0, ?) has known answers {1, 3}.
TINY = AnswerIndex.build([np.array([[0, 0, 1], [0, 0, 3], [2, 0, 4]])], num_entities=6, num_relations=1)


def _repeat(anchor: int, target: int, times: int) -> Queries:
    full = np.full(times, 0, dtype=np.int64)
    return Queries(anchor=full + anchor, relation=full, direction=full + TAIL, target=full + target)


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_db15k_batch_excludes_answers_and_has_no_repeats() -> None:
    kg = load_kg("DB15K")
    index = AnswerIndex.build([kg.train], kg.num_entities, kg.num_relations)
    queries = both_directions(kg.train)
    batch = queries.take(np.random.default_rng(0).permutation(len(queries))[:512])
    negatives = sample_negatives(index, batch, 128, _generator())
    assert negatives.shape == (512, 128) and negatives.dtype == torch.int64
    assert not index.mask(batch).gather(1, negatives).any()
    assert not (negatives == torch.from_numpy(batch.target)[:, None]).any()
    ordered = negatives.sort(dim=1).values
    assert (ordered[:, 1:] != ordered[:, :-1]).all()
    assert ordered.min() >= 0 and ordered.max() < kg.num_entities


@pytest.mark.parametrize("n", [1, 2, 3, 4])  # 1, 2: redraw repeats; 3, 4: over half the allowed, permute
def test_uniform_over_allowed(n: int) -> None:
    draws = sample_negatives(TINY, _repeat(0, 1, 40000 // n), n, _generator())
    for slot in range(n):
        frequency = torch.bincount(draws[:, slot], minlength=6).double() / len(draws)
        assert frequency[[1, 3]].tolist() == [0.0, 0.0]
        assert torch.allclose(frequency[[0, 2, 4, 5]], torch.full((4,), 0.25, dtype=torch.float64), atol=0.02)


def test_uniform_without_replacement() -> None:
    # n=2 of the 4 allowed: each of the 12 ordered pairs is equally likely.
    draws = sample_negatives(TINY, _repeat(0, 1, 24000), 2, _generator(1))
    pairs = torch.bincount(draws[:, 0] * 6 + draws[:, 1], minlength=36).double() / len(draws)
    allowed = [a * 6 + b for a in (0, 2, 4, 5) for b in (0, 2, 4, 5) if a != b]
    assert torch.allclose(pairs[allowed], torch.full((12,), 1 / 12, dtype=torch.float64), atol=0.01)
    assert pairs.sum().item() == pytest.approx(pairs[allowed].sum().item())


def test_target_is_excluded_even_when_not_indexed() -> None:
    # Query (5, r0, ?) has no known answers; its target 2 must still never be drawn.
    draws = sample_negatives(TINY, _repeat(5, 2, 500), 5, _generator())
    assert sorted(set(draws.flatten().tolist())) == [0, 1, 3, 4, 5]


def test_all_allowed() -> None:
    draws = sample_negatives(TINY, _repeat(0, 1, 50), 4, _generator())
    assert (draws.sort(dim=1).values == torch.tensor([0, 2, 4, 5])).all()


@pytest.mark.parametrize("sampler", ["vectorised", "reference"])
def test_fewer_allowed_than_n_gives_all_then_uniform_repeats(sampler: str) -> None:
    # (0, r0, ?) allows {0, 2, 4, 5}; |N|=7: the first 4 slots hold all four, slots 4-6 repeat them.
    queries = _repeat(0, 1, 8000)
    if sampler == "vectorised":
        draws = sample_negatives(TINY, queries, 7, _generator())
    else:
        draws = sample_negatives_reference(TINY, queries, 7, np.random.default_rng(0))
    assert draws.shape == (8000, 7)
    assert (draws[:, :4].sort(dim=1).values == torch.tensor([0, 2, 4, 5])).all()
    for slot in range(7):  # every slot uniform over the allowed entities, never a known answer
        frequency = torch.bincount(draws[:, slot], minlength=6).double() / len(draws)
        assert frequency[[1, 3]].tolist() == [0.0, 0.0]
        assert torch.allclose(frequency[[0, 2, 4, 5]], torch.full((4,), 0.25, dtype=torch.float64), atol=0.02)


def test_mixed_rows_short_and_long() -> None:
    # One batch with a short row (4 allowed) and a long one (5 allowed: target 2 only): |N|=5.
    queries = Queries(*(np.array(v, dtype=np.int64) for v in ([0, 5], [0, 0], [TAIL, TAIL], [1, 2])))
    draws = sample_negatives(TINY, queries, 5, _generator())
    assert sorted(draws[1].tolist()) == [0, 1, 3, 4, 5]
    assert set(draws[0].tolist()) == {0, 2, 4, 5}


def test_no_non_answer_is_refused() -> None:
    every = AnswerIndex.build([np.array([[0, 0, 0], [0, 0, 1], [0, 0, 2]])], num_entities=3, num_relations=1)
    with pytest.raises(ValueError, match=r"\|N\|=2 negatives requested but query 0 .* has no non-answer"):
        sample_negatives(every, _repeat(0, 1, 3), 2, _generator())
    with pytest.raises(ValueError, match=r"has no non-answer"):
        sample_negatives_reference(every, _repeat(0, 1, 3), 2, np.random.default_rng(0))


def test_memory_does_not_grow_with_queries_times_entities() -> None:
    """192 queries x 50,000 entities: a bitmap or key matrix over the entities would take 9.6 MB or more."""
    rng = np.random.default_rng(0)
    entities = 50_000
    triples = np.stack([rng.integers(0, n, 20_000) for n in (entities, 5, entities)], axis=1)
    index = AnswerIndex.build([triples], entities, 5)
    queries = both_directions(triples[:96])
    sample_negatives(index, queries, 128, _generator())  # warm-up: lazy imports and caches
    tracemalloc.start()
    try:
        sample_negatives(index, queries, 128, _generator())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000


def test_deterministic() -> None:
    queries = both_directions(np.array([[0, 0, 1], [2, 0, 4], [5, 0, 0]]))
    first = sample_negatives(TINY, queries, 3, _generator(7))
    assert torch.equal(first, sample_negatives(TINY, queries, 3, _generator(7)))
    assert not torch.equal(
        sample_negatives(TINY, _repeat(0, 1, 100), 2, _generator(7)),
        sample_negatives(TINY, _repeat(0, 1, 100), 2, _generator(8)),
    )


def test_parity_with_reference() -> None:
    # Both samplers draw exactly the allowed entities, each with frequency 1/|allowed|.
    rng = np.random.default_rng(0)
    entities, relations, draws = 40, 3, 500
    triples = np.stack([rng.integers(0, n, 300) for n in (entities, relations, entities)], axis=1)
    index = AnswerIndex.build([triples], entities, relations)
    queries = both_directions(triples[:5]).take(np.repeat(np.arange(10), draws))
    allowed = ~index.mask(queries)
    allowed[torch.arange(len(queries)), torch.from_numpy(queries.target)] = False
    samples = (sample_negatives(index, queries, 8, _generator()), sample_negatives_reference(index, queries, 8, rng))
    for q in range(0, len(queries), draws):
        expected = allowed[q].double() / allowed[q].sum()
        for sample in samples:
            frequency = torch.bincount(sample[q : q + draws].flatten(), minlength=entities).double() / (8 * draws)
            assert torch.equal(frequency > 0, allowed[q])
            assert (frequency - expected).abs().max() < 0.012
