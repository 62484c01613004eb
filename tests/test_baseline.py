"""The relation baselines keep memory O(entities + triples + batch x entities)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from kon_ray.baseline import relation_frequency
from kon_ray.data import KnowledgeGraph, both_directions


def test_relation_frequency_never_holds_relations_x_entities() -> None:
    rng = np.random.default_rng(0)
    entities, relations = 50_000, 300  # dense (2, R, E) float64 counts: 240 MB
    train = np.stack([rng.integers(0, n, 100_000) for n in (entities, relations, entities)], axis=1)
    kg = KnowledgeGraph("big", ("e",) * entities, ("r",) * relations, train, train[:10], train[:10], digest="")
    tracemalloc.start()
    try:
        score = relation_frequency(kg)
        scores = score(both_directions(train[:8]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scores.shape == (16, entities) and peak < 40_000_000
    head, relation, tail = train[0]
    expected = ((train[:, 0] == head) & (train[:, 1] == relation) & (train[:, 2] == tail)).sum()
    assert int(scores[0, tail]) == expected  # the count, below it the direction tie-breaker
