"""Strict negative sampling for a training batch: the vectorised sampler vs the per-row set difference.

Both draw ``loss.negatives`` entities per query, none a known training answer nor the target.
Their support (the entities each can give a query) must be identical: each sampler is asked,
row by row, for all of a row's allowed entities, and the two sets are compared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from kon_ray.bench.common import Check, Report, announce, hardware, interleaved, median, show
from kon_ray.config import RunConfig
from kon_ray.data import AnswerIndex, Queries, both_directions, load_kg, sample_negatives, sample_negatives_reference

BASE: dict[str, str] = {}
TARGET = 50.0

Sampler = Callable[[Queries, int], torch.Tensor]
"""(queries, n) -> int64 (len(queries), n) negatives."""


@dataclass(frozen=True)
class Settings:
    queries: int = 192
    """Training queries in the batch, the default's (a seeded draw of both directions of the train
    split)."""
    repeats: int = 20
    """Timed rounds, each drawing once with both samplers (after one warm-up round); medians reported."""


def support(draw: Sampler, index: AnswerIndex, queries: Queries) -> torch.Tensor:
    """bool (B, E): the entities ``draw`` can give each query. Rows with the same number of allowed
    entities are asked for all of them at once; a sampler that draws an excluded entity (or repeats
    one) then misses an allowed one, so a wrong support shows whatever the rows' draws."""
    excluded = index.mask(queries)
    rows = torch.arange(len(queries))
    excluded[rows, torch.from_numpy(queries.target)] = True
    allowed = index.num_entities - excluded.sum(1)
    out = torch.zeros_like(excluded)
    for count in allowed.unique().tolist():
        group = torch.nonzero(allowed == count).squeeze(1)
        drawn = draw(queries.take(group.numpy()), count)
        out[group[:, None], drawn] = True
    return out


def samplers(index: AnswerIndex, seed: int = 0) -> dict[str, Sampler]:
    """The vectorised sampler and the per-row reference, each with its own seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    return {
        "vectorised": lambda q, n: sample_negatives(index, q, n, generator),
        "reference": lambda q, n: sample_negatives_reference(index, q, n, rng),
    }


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    kg = load_kg(config.data.dataset).slice(config.data.train_limit)
    index = AnswerIndex.build([kg.train], kg.num_entities, kg.num_relations)
    queries = both_directions(kg.train)
    queries = queries.take(np.random.default_rng(config.train.seed).permutation(len(queries))[: settings.queries])
    n = config.loss.negatives
    cpu = torch.device("cpu")
    setup = announce(
        {"dataset": f"{kg.name} ({kg.num_entities} entities)", "queries": len(queries), "|N|": n, **hardware(cpu)}
    )
    draw = samplers(index, config.train.seed)
    times = interleaved({name: lambda d=d: d(queries, n) for name, d in draw.items()}, settings.repeats, 1, cpu)
    fast, reference = median(times["vectorised"]), median(times["reference"])
    show(f"vectorised: {fast * 1e3:.2f} ms, per-row set difference: {reference * 1e3:.1f} ms (medians of {settings.repeats})")
    allowed = support(draw["reference"], index, queries)
    differ = int((support(draw["vectorised"], index, queries) != allowed).any(1).sum())
    outside = int((~allowed.gather(1, draw["vectorised"](queries, n))).sum())
    show(f"support: {differ} of {len(queries)} rows differ; timed-size draw outside the reference support: {outside}")
    return Report(
        setup=setup,
        figures={"vectorised_s": fast, "reference_s": reference, "rows_with_other_support": differ, "draws_outside": outside},
        checks=[
            Check("vectorised speed-up over the set difference", reference / fast, ">=", TARGET, "x"),
            Check("rows whose support differs", differ, "<=", 0),
        ],
    )
