from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from kon_ray.baseline import baseline_metrics, relation_frequency, relation_token_prior
from kon_ray.data.kg import KnowledgeGraph
from kon_ray.data.queries import HEAD, TAIL, Queries
from kon_ray.evaluation import (
    filtered_ranks,
    metrics_from_table,
    rank_queries,
    summarize,
    write_rank_table,
)

INF = math.inf

# Worked cases over 5 entities: (scores, target, known, optimistic, pessimistic, realistic).
# "valid" = not known and not the target; opt = 1 + #valid above, pess = opt + #valid tied.
WORKED = [
    # Filtered 0 (0.9) is ignored; valid {2,3,4}: 3 above (0.7), 2 and 4 tie -> 1+1, 1+1+2.
    ([0.9, 0.5, 0.5, 0.7, 0.5], 1, {0, 1}, 2.0, 4.0, 3.0),
    # All equal; valid {0,1,3,4} all tie -> 1+0, 1+0+4.
    ([0.3, 0.3, 0.3, 0.3, 0.3], 2, {2}, 1.0, 5.0, 3.0),
    # Target strictly best; valid {0,2,3} all below -> 1, 1.
    ([0.1, 0.9, 0.2, 0.3, 0.0], 1, {1}, 1.0, 1.0, 1.0),
    # Target lowest, but 0,1,2 are filtered; valid {3}: 0.6 above -> 2, 2.
    ([0.9, 0.8, 0.7, 0.6, 0.5], 4, {0, 1, 2, 4}, 2.0, 2.0, 2.0),
    # -inf non-targets; valid {0,2,3,4}: 3 above, 4 ties, the -inf ones below -> 2, 3.
    ([-INF, 0.2, -INF, 0.5, 0.2], 1, {1}, 2.0, 3.0, 2.5),
    # -inf target; filtered 1,2 are -inf too and must not tie; valid {3,4}: 3 above, 4 ties -> 2, 3.
    # (Filtering by setting known scores to -inf would make 1 and 2 tie: pessimistic 5.)
    ([-INF, -INF, -INF, 0.0, -INF], 0, {0, 1, 2}, 2.0, 3.0, 2.5),
    # As the first case, but `known` does not mark the target: it is still counted once.
    ([0.9, 0.5, 0.5, 0.7, 0.5], 1, {0}, 2.0, 4.0, 3.0),
]


def _mask(rows: list[set[int]], num_entities: int) -> torch.Tensor:
    known = torch.zeros(len(rows), num_entities, dtype=torch.bool)
    for i, row in enumerate(rows):
        known[i, list(row)] = True
    return known


def test_worked_cases_one_batch() -> None:
    scores = torch.tensor([case[0] for case in WORKED])
    targets = torch.tensor([case[1] for case in WORKED])
    known = _mask([case[2] for case in WORKED], 5)
    ranks = filtered_ranks(scores, targets, known)
    assert ranks.optimistic.tolist() == [case[3] for case in WORKED]
    assert ranks.pessimistic.tolist() == [case[4] for case in WORKED]
    assert ranks.realistic.tolist() == [case[5] for case in WORKED]


def _naive(scores: list[float], target: int, known: list[bool]) -> tuple[float, float, float]:
    above = tied = 0
    for entity, score in enumerate(scores):
        if entity == target or known[entity]:
            continue
        above += score > scores[target]
        tied += score == scores[target]
    return 1 + above, 1 + above + tied, 1 + above + tied / 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parity_with_naive_loop(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    batch, entities = 64, 40
    scores = torch.randint(0, 10, (batch, entities), generator=generator) / 10  # many ties
    scores[torch.rand(batch, entities, generator=generator) < 0.05] = -INF
    targets = torch.randint(0, entities, (batch,), generator=generator)
    known = torch.rand(batch, entities, generator=generator) < 0.3
    known[torch.arange(batch), targets] = True
    ranks = filtered_ranks(scores, targets, known)
    for i in range(batch):
        expected = _naive(scores[i].tolist(), int(targets[i]), known[i].tolist())
        assert (ranks.optimistic[i].item(), ranks.pessimistic[i].item(), ranks.realistic[i].item()) == expected


@pytest.mark.parametrize("where", ["target", "other"])
def test_nan_scores_raise(where: str) -> None:
    scores = torch.tensor([[0.1, 0.2, 0.3]])
    scores[0, 1 if where == "target" else 2] = math.nan
    with pytest.raises(ValueError, match="^scores contain NaN: a NaN target would compare false with all and rank first$"):
        filtered_ranks(scores, torch.tensor([1]), torch.zeros(1, 3, dtype=torch.bool))


def test_summarize_hand_computed() -> None:
    ranks = torch.tensor([1.0, 2.0, 4.0, 1.5, 10.0, 20.0])
    directions = np.array([0, 0, 0, 1, 1, 1])
    # tail ranks 1, 2, 4: MRR (1 + 1/2 + 1/4) / 3; hits@1 1/3, @3 2/3, @10 3/3.
    # head ranks 1.5, 10, 20: MRR (2/3 + 1/10 + 1/20) / 3; hits@1 0 (1.5 > 1), @3 1/3, @10 2/3.
    tail_rr, head_rr = 1 + 1 / 2 + 1 / 4, 2 / 3 + 1 / 10 + 1 / 20
    expected = {
        "queries": 6, "mrr": (tail_rr + head_rr) / 6, "hits@1": 1 / 6, "hits@3": 3 / 6, "hits@10": 5 / 6,
        "tail.queries": 3, "tail.mrr": tail_rr / 3, "tail.hits@1": 1 / 3, "tail.hits@3": 2 / 3, "tail.hits@10": 1,
        "head.queries": 3, "head.mrr": head_rr / 3, "head.hits@1": 0, "head.hits@3": 1 / 3, "head.hits@10": 2 / 3,
    }  # fmt: skip
    assert summarize(ranks, directions) == pytest.approx(expected)


def test_summarize_missing_direction_is_nan() -> None:
    metrics = summarize(np.array([1.0, 3.0]), np.array([0, 0]))
    assert metrics["head.queries"] == 0 and math.isnan(metrics["head.mrr"])
    assert metrics["mrr"] == pytest.approx(metrics["tail.mrr"]) == pytest.approx(2 / 3)


@dataclass(frozen=True)
class FakeIndex:
    """Known answers per (anchor, relation, direction), as kon_ray.data.queries.AnswerIndex."""

    answers: dict[tuple[int, int, int], set[int]]
    num_entities: int

    def mask(self, queries: Queries) -> torch.Tensor:
        keys = zip(queries.anchor.tolist(), queries.relation.tolist(), queries.direction.tolist())
        return _mask([self.answers[key] for key in keys], self.num_entities)


ENTITIES = 12


def _queries() -> tuple[Queries, FakeIndex]:
    rng = np.random.default_rng(0)
    n = 10
    queries = Queries(
        anchor=rng.integers(0, ENTITIES, n),
        relation=rng.integers(0, 3, n),
        direction=np.arange(n) % 2,
        target=rng.integers(0, ENTITIES, n),
    )
    answers: dict[tuple[int, int, int], set[int]] = {}
    for a, r, d, t in zip(*(q.tolist() for q in (queries.anchor, queries.relation, queries.direction, queries.target))):
        answers.setdefault((a, r, d), set()).update({t, (a + r + 1) % ENTITIES})
    return queries, FakeIndex(answers, ENTITIES)


def _score(queries: Queries) -> torch.Tensor:
    """Deterministic per-query scores over all entities, with ties (4 distinct values)."""
    key = torch.as_tensor(queries.anchor * 7 + queries.relation * 3 + queries.direction).unsqueeze(1)
    return ((key + 5 * torch.arange(ENTITIES)) % 4).float() / 4


@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_rank_queries_chunking_is_invisible(chunk: int) -> None:
    queries, index = _queries()
    batches: list[int] = []

    def score_fn(batch: Queries) -> torch.Tensor:
        batches.append(len(batch))
        return _score(batch)

    table = rank_queries(score_fn, queries, index, chunk)  # type: ignore[arg-type]
    assert max(batches) == min(chunk, len(queries)) and sum(batches) == len(queries)
    assert list(table.columns) == [
        "anchor", "relation", "direction", "target", "optimistic", "pessimistic", "realistic", "target_score",
    ]  # fmt: skip
    scores = _score(queries)
    targets = torch.as_tensor(queries.target)
    ranks = filtered_ranks(scores, targets, index.mask(queries))
    expected = pd.DataFrame(
        {
            "anchor": queries.anchor, "relation": queries.relation,
            "direction": queries.direction, "target": queries.target,
            "optimistic": ranks.optimistic.numpy(), "pessimistic": ranks.pessimistic.numpy(),
            "realistic": ranks.realistic.numpy(), "target_score": scores[torch.arange(len(queries)), targets].double(),
        }
    )  # fmt: skip
    pd.testing.assert_frame_equal(table, expected)


def test_rank_queries_empty() -> None:
    queries, index = _queries()
    table = rank_queries(_score, queries.take(slice(0, 0)), index, 4)  # type: ignore[arg-type]
    assert len(table) == 0 and "realistic" in table.columns


def test_metrics_from_table_uses_chosen_ties() -> None:
    table = pd.DataFrame(
        {"direction": [0, 1], "optimistic": [1.0, 2.0], "pessimistic": [3.0, 4.0], "realistic": [2.0, 3.0]}
    )
    assert metrics_from_table(table)["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert metrics_from_table(table, ties="optimistic")["hits@1"] == 0.5
    assert metrics_from_table(table, ties="pessimistic")["head.hits@3"] == 0.0
    with pytest.raises(ValueError, match="^ties='best': must be one of optimistic, pessimistic, realistic$"):
        metrics_from_table(table, ties="best")  # type: ignore[arg-type]


def test_write_rank_table_round_trip(tmp_path: Path) -> None:
    queries, index = _queries()
    table = rank_queries(_score, queries, index, 4)  # type: ignore[arg-type]
    path = tmp_path / "ranks" / "test.parquet"
    write_rank_table(table, path)
    write_rank_table(table, path)  # overwrites in place
    pd.testing.assert_frame_equal(pd.read_parquet(path), table)
    assert pq.read_schema(path).names == list(table.columns)  # no index column for other readers
    assert [p.name for p in path.parent.iterdir()] == ["test.parquet"]


def _hand_kg() -> KnowledgeGraph:
    def triples(rows: list[tuple[int, int, int]]) -> np.ndarray:
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    return KnowledgeGraph(
        "hand", ("a", "b", "c", "d"), ("r",), train=triples([(0, 0, 1), (2, 0, 1), (3, 0, 2)]),
        valid=triples([]), test=triples([(3, 0, 1), (1, 0, 0)]), digest="",
    )  # fmt: skip


def test_relation_frequency_baseline_hand_worked() -> None:
    """Counts per (direction, relation) in train, filtered realistic ranks over both directions."""
    metrics = baseline_metrics(_hand_kg(), relation_frequency(_hand_kg()), chunk=1)
    # (3, r, ?) -> 1: b answers r twice, c (known) filtered: rank 1. (1, r, ?) -> 0: b, c better, d tied: 3.5.
    assert metrics["tail.mrr"] == pytest.approx((1 + 1 / 3.5) / 2)
    # (?, r, 1) -> 3: a, c filtered, b never a head: rank 1. (?, r, 0) -> 1: a, c, d better: 4.
    assert metrics["head.mrr"] == pytest.approx((1 + 1 / 4) / 2)


def test_relation_token_prior_hand_worked() -> None:
    """Step k's distribution is the share of the relation's training answers with token t at k;
    an entity scores the mean of its real tokens' shares (eq. 11, uniform weights)."""
    # Entity names as tokens (K=2, 0 padding): a = [1, 2], b = [1, 3], c = [4, -], d = [4, 2].
    tokens = torch.tensor([[1, 2], [1, 3], [4, 0], [4, 2]])
    mask = torch.tensor([[True, True], [True, True], [True, False], [True, True]])
    score = relation_token_prior(_hand_kg(), tokens, mask)
    # Tail answers of r in train: b, b, c. Step 1: token 1 2/3, token 4 1/3. Step 2: token 3 2/2.
    one = {name: np.array([0]) for name in ("anchor", "relation", "target")}
    tail = score(Queries(**one, direction=np.array([TAIL])))
    expected = [(2 / 3 + 0) / 2, (2 / 3 + 1) / 2, 1 / 3, (1 / 3 + 0) / 2]
    np.testing.assert_allclose(tail[0].numpy(), expected, rtol=1e-6)
    # Head answers of r in train: a, c, d. Step 1: token 1 1/3, token 4 2/3. Step 2: token 2 2/2.
    head = score(Queries(**one, direction=np.array([HEAD])))
    np.testing.assert_allclose(head[0].numpy(), [(1 / 3 + 1) / 2, 1 / 3 / 2, 2 / 3, (2 / 3 + 1) / 2], rtol=1e-6)


def test_a_memory_budget_bounds_the_ranking_chunk() -> None:
    from kon_ray.config import ConfigError, EvalConfig

    assert EvalConfig(query_chunk=256).chunk(10**6) == 256  # no budget: the chunk as set
    assert EvalConfig(query_chunk=256, chunk_mb=1024).chunk(10**6) == 67  # 1 GiB / (16 B x 1M)
    assert EvalConfig(query_chunk=256, chunk_mb=1024).chunk(10**4) == 256  # at most query_chunk
    assert EvalConfig(query_chunk=256, chunk_mb=1).chunk(10**7) == 1  # at least one query
    with pytest.raises(ConfigError, match=r"eval\.chunk_mb=0: must be >= 1 or none"):
        EvalConfig(chunk_mb=0)
