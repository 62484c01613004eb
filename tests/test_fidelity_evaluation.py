"""Ranking to metrics end to end against naive loops, and the checks on bad input.

test_evaluation.py pins the parts on worked cases; these check the whole path (scores ->
filtered ranks under each tie rule -> MRR and Hits@k per direction) and the checks that turn
bad input into a clear error rather than a wrong metric.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kon_ray.data import AnswerIndex, Queries
from kon_ray.evaluation import filtered_ranks, metrics_from_table, rank_queries, summarize, write_rank_table

ENTITIES, RELATIONS = 15, 2


def random_case(seed: int) -> tuple[Queries, AnswerIndex, torch.Tensor]:
    """Queries of both directions, their known answers, and scores over all entities with many ties."""
    rng = np.random.default_rng(seed)
    triples = np.stack([rng.integers(0, n, 60) for n in (ENTITIES, RELATIONS, ENTITIES)], axis=1)
    index = AnswerIndex.build([triples], ENTITIES, RELATIONS)
    n = 40
    rows = rng.integers(0, len(triples), n)
    direction = rng.integers(0, 2, n)
    h, r, t = triples[rows].T
    queries = Queries(np.where(direction == 0, h, t), r, direction, np.where(direction == 0, t, h))
    scores = torch.from_numpy(rng.integers(0, 5, (n, ENTITIES)) / 4.0)
    return queries, index, scores


def naive_metrics(queries: Queries, index: AnswerIndex, scores: torch.Tensor, ties: str) -> dict[str, float]:
    known = index.mask(queries)
    ranks = []
    for q in range(len(queries)):
        target = int(queries.target[q])
        row = scores[q].tolist()
        others = [e for e in range(ENTITIES) if e != target and not known[q, e]]
        above = sum(row[e] > row[target] for e in others)
        tied = sum(row[e] == row[target] for e in others)
        rank = {"optimistic": 1 + above, "pessimistic": 1 + above + tied, "realistic": 1 + above + tied / 2}
        ranks.append(rank[ties])
    out: dict[str, float] = {}
    for prefix, chosen in (("", range(len(queries))), ("tail.", np.flatnonzero(queries.direction == 0)),
                           ("head.", np.flatnonzero(queries.direction == 1))):  # fmt: skip
        part = [ranks[i] for i in chosen]
        out[f"{prefix}queries"] = len(part)
        out[f"{prefix}mrr"] = sum(1 / x for x in part) / len(part)
        for k in (1, 3, 10):
            out[f"{prefix}hits@{k}"] = sum(x <= k for x in part) / len(part)
    return out


@pytest.mark.parametrize("ties", ["optimistic", "pessimistic", "realistic"])
@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_naive_loops(ties: str, seed: int) -> None:
    queries, index, scores = random_case(seed)
    served = [0]

    def score_fn(chunk: Queries) -> torch.Tensor:
        """The precomputed scores of ``chunk``, the next rows in order."""
        start = served[0]
        served[0] += len(chunk)
        return scores[start : start + len(chunk)]

    table = rank_queries(score_fn, queries, index, chunk=7)
    assert metrics_from_table(table, ties) == pytest.approx(naive_metrics(queries, index, scores, ties))


def test_filtered_ranks_rejects_bad_shapes() -> None:
    scores = torch.zeros(2, 3)
    known = torch.zeros(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"scores.shape=\(3,\)"):
        filtered_ranks(torch.zeros(3), torch.zeros(2, dtype=torch.long), known)
    with pytest.raises(ValueError, match=r"targets.shape=\(3,\): expected \(2,\)"):
        filtered_ranks(scores, torch.zeros(3, dtype=torch.long), known)
    with pytest.raises(ValueError, match="known: shape"):
        filtered_ranks(scores, torch.zeros(2, dtype=torch.long), known.long())
    with pytest.raises(ValueError, match="known: shape"):
        filtered_ranks(scores, torch.zeros(2, dtype=torch.long), known[:, :2])


def test_summarize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="expected equal"):
        summarize(np.ones(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"directions contain \[2\]"):
        summarize(np.ones(2), np.array([0, 2]))
    empty = summarize(np.empty(0), np.empty(0, dtype=np.int64))
    assert empty["queries"] == 0 and all(math.isnan(empty[k]) for k in ("mrr", "hits@1", "head.hits@10"))


def test_rank_queries_rejects_bad_chunks_and_rows() -> None:
    queries, index, scores = random_case(0)
    with pytest.raises(ValueError, match="chunk=0"):
        rank_queries(lambda q: scores[: len(q)], queries, index, chunk=0)
    with pytest.raises(ValueError, match="score_fn returned 1 rows for 4 queries"):
        rank_queries(lambda q: scores[:1], queries, index, chunk=4)


def test_write_rank_table_leaves_nothing_on_failure(tmp_path: Path) -> None:
    table = pd.DataFrame({"bad": [object()]})  # parquet cannot store it
    with pytest.raises(Exception):  # noqa: B017 (pyarrow's own error type)
        write_rank_table(table, tmp_path / "ranks.parquet")
    assert list(tmp_path.iterdir()) == []
