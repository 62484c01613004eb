"""Filtered link-prediction ranking over all entities, explicit about ties and filtering.

A query's target is ranked against every entity that is not a known answer: known
answers are *excluded* from the comparison (never given a score such as -inf, which
could tie with or outrank the target). Ties are reported three ways, as in PyKEEN and
LibKGE: optimistic (the target ranks first among equals), pessimistic (last) and
realistic (their mean, the expected rank under a random order of tied entities).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch

from kon_ray.results import atomic_file

if TYPE_CHECKING:
    from kon_ray.data.queries import AnswerIndex, Queries

Ties = Literal["realistic", "optimistic", "pessimistic"]
TIES: tuple[Ties, ...] = ("optimistic", "pessimistic", "realistic")
HITS_AT = (1, 3, 10)
DIRECTIONS = {"tail": 0, "head": 1}
"""Metric prefix -> query direction (kon_ray.data.queries TAIL, HEAD)."""
QUERY_COLUMNS = ("anchor", "relation", "direction", "target")


@dataclass(frozen=True)
class Ranks:
    """1-based filtered ranks of each query's target, shape (B,), float64."""

    optimistic: torch.Tensor
    """1 + #{valid e: s_e > s_t}."""
    pessimistic: torch.Tensor
    """1 + #{valid e != t: s_e >= s_t}."""
    realistic: torch.Tensor
    """(optimistic + pessimistic) / 2."""


def filtered_ranks(scores: torch.Tensor, targets: torch.Tensor, known: torch.Tensor) -> Ranks:
    """Rank ``scores[i, targets[i]]`` among the entities of row i that ``known`` does not mark.

    scores: (B, E) float; targets: (B,) int64; known: (B, E) bool, True for known answers.
    The target is counted exactly once whether or not ``known`` marks it.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores.shape={tuple(scores.shape)}: expected (queries, entities)")
    if targets.shape != scores.shape[:1]:
        raise ValueError(f"targets.shape={tuple(targets.shape)}: expected ({scores.shape[0]},)")
    if known.shape != scores.shape or known.dtype != torch.bool:
        raise ValueError(
            f"known: shape {tuple(known.shape)}, dtype {known.dtype}: expected bool {tuple(scores.shape)}"
        )
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN: a NaN target would compare false with all and rank first")
    targets = targets.unsqueeze(1)
    target_scores = scores.gather(1, targets)
    # Compare against unfiltered entities only; the target enters the rank as the leading 1.
    valid = (~known).scatter(1, targets, False)
    better = ((scores > target_scores) & valid).sum(1)
    tied = ((scores == target_scores) & valid).sum(1)
    optimistic = (1 + better).double()
    pessimistic = (1 + better + tied).double()
    return Ranks(optimistic, pessimistic, (optimistic + pessimistic) / 2)


def _summary(ranks: np.ndarray) -> dict[str, float]:
    if len(ranks) == 0:
        return {"queries": 0.0, "mrr": float("nan")} | {f"hits@{k}": float("nan") for k in HITS_AT}
    return {"queries": float(len(ranks)), "mrr": float(np.mean(1.0 / ranks))} | {
        f"hits@{k}": float(np.mean(ranks <= k)) for k in HITS_AT
    }


def summarize(ranks: torch.Tensor | np.ndarray, directions: torch.Tensor | np.ndarray) -> dict[str, float]:
    """MRR and Hits@{1,3,10} as fractions, over all queries and per direction.

    Keys: ``queries, mrr, hits@1, hits@3, hits@10`` and the same prefixed ``tail.``
    (direction 0) and ``head.`` (direction 1). A direction without queries gets NaN metrics.
    """
    ranks = np.asarray(ranks, dtype=np.float64)
    directions = np.asarray(directions)
    if ranks.shape != directions.shape or ranks.ndim != 1:
        raise ValueError(f"ranks.shape={ranks.shape}, directions.shape={directions.shape}: expected equal (n,)")
    unknown = set(np.unique(directions).tolist()) - set(DIRECTIONS.values())
    if unknown:
        raise ValueError(f"directions contain {sorted(unknown)}: expected only 0 (tail) or 1 (head)")
    metrics = _summary(ranks)
    for prefix, direction in DIRECTIONS.items():
        part = _summary(ranks[directions == direction])
        metrics |= {f"{prefix}.{key}": value for key, value in part.items()}
    return metrics


@torch.no_grad()
def rank_queries(
    score_fn: Callable[[Queries], torch.Tensor], queries: Queries, index: AnswerIndex, chunk: int
) -> pd.DataFrame:
    """Score and rank ``queries`` ``chunk`` at a time, so memory stays at chunk x entities.

    ``score_fn`` maps b queries to (b, E) scores over all entities. Returns one row per query:
    ``anchor, relation, direction, target, optimistic, pessimistic, realistic, target_score``.
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk}: must be >= 1")
    # Filled in place: a small array kept per chunk would split the heap block that the chunk's
    # (chunk, E) temporaries freed (glibc), and the process would grow with every chunk.
    ranked = {name: np.empty(len(queries)) for name in (*TIES, "target_score")}
    for start in range(0, len(queries), chunk):
        batch = queries.take(slice(start, start + chunk))
        scores = score_fn(batch)
        if scores.shape[0] != len(batch):
            raise ValueError(f"score_fn returned {scores.shape[0]} rows for {len(batch)} queries")
        targets = torch.as_tensor(batch.target, device=scores.device)
        ranks = filtered_ranks(scores, targets, index.mask(batch).to(scores.device))
        rows = slice(start, start + len(batch))
        for name in TIES:
            ranked[name][rows] = getattr(ranks, name).cpu().numpy()
        ranked["target_score"][rows] = scores.gather(1, targets.unsqueeze(1)).squeeze(1).double().cpu().numpy()
    columns = {name: np.asarray(getattr(queries, name), dtype=np.int64) for name in QUERY_COLUMNS}
    return pd.DataFrame(columns | ranked)


def metrics_from_table(table: pd.DataFrame, ties: Ties = "realistic") -> dict[str, float]:
    """``summarize`` a ``rank_queries`` table on the rank column chosen by ``ties``."""
    if ties not in TIES:
        raise ValueError(f"ties={ties!r}: must be one of {', '.join(TIES)}")
    return summarize(table[ties].to_numpy(), table["direction"].to_numpy())


def write_rank_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``table`` as parquet atomically (``results.atomic_file``)."""
    with atomic_file(Path(path)) as tmp:
        table.to_parquet(tmp, index=False)
