"""Ranking all entities for a batch of queries: K-ON's one pass vs autoregressive scoring (Fig. 1a).

The baseline scores each entity as the backbone generates it, token by token: per query the
prompt runs once and its KV cache is reused for every batch of entities, which are fed
teacher-forced (names truncated at K tokens as K-ON's, eq. 8), batched by name length; an
entity's score is the sum of its tokens' log-probabilities. When ``entities`` is set, the baseline
scores a seeded random subset and its time is extrapolated linearly to all entities.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from kon_ray.bench.common import Check, Report, announce, describe, hardware, interleaved, load, median, seconds, show
from kon_ray.config import RunConfig
from kon_ray.data import Queries, both_directions
from kon_ray.data.prompts import EncodedKG
from kon_ray.training import Setup

BASE: dict[str, str] = {}
TARGET = 1000.0


@dataclass(frozen=True)
class Settings:
    queries: int = 32
    """Test queries in the batch (both directions of the first queries / 2 test triples)."""
    entities: int | None = None
    """Entities the baseline scores (a seeded random subset, time extrapolated); None: all."""
    entity_batch: int = 1024
    """Entities per forward pass of the baseline, over one query's cached prompt."""
    repeats: int = 5
    """Timed K-ON passes (after one warm-up); the median is reported."""


def kon_scores(s: Setup, queries: Queries) -> torch.Tensor:
    """K-ON: (B, E) scores of every entity in one forward pass."""
    batch = s.encoded.batch(queries, with_targets=False).to(s.device)
    return s.model.scores_all(batch, s.entity_tokens, s.entity_mask)


@torch.no_grad()
def autoregressive_scores(
    backbone: PreTrainedModel, encoded: EncodedKG, queries: Queries, entities: torch.Tensor, entity_batch: int
) -> torch.Tensor:
    """(B, n) log p(name of entity | prompt of query) under ``backbone``, generated token by token.

    Each query's prompt runs once; its last position gives every entity's first token, and its KV
    cache, repeated over a batch of entities, conditions their remaining tokens (teacher-forced).
    Entities are batched by name length, so no batch runs steps past its longest name.
    """
    device = backbone.device
    tokens = encoded.entity_tokens[entities].to(device)
    mask = encoded.entity_mask[entities].to(device)
    lengths = mask.sum(1)
    order = torch.argsort(lengths, stable=True)
    out = torch.empty(len(queries), len(entities), device=device)
    for q in range(len(queries)):
        batch = encoded.batch(queries.take(slice(q, q + 1)), with_targets=False).to(device)
        prompt = backbone(input_ids=batch.input_ids, use_cache=True)
        first = F.log_softmax(prompt.logits[0, -1].float(), dim=-1)
        for rows in order.split(entity_batch):
            score = first[tokens[rows, 0]]
            width = int(lengths[rows].max())
            if width > 1:
                cache = copy.deepcopy(prompt.past_key_values)
                cache.batch_repeat_interleave(len(rows))
                logits = backbone(input_ids=tokens[rows, : width - 1], past_key_values=cache, use_cache=True).logits
                steps = F.log_softmax(logits.float(), dim=-1).gather(-1, tokens[rows, 1:width, None]).squeeze(-1)
                score = score + torch.where(mask[rows, 1:width], steps, 0.0).sum(1)
            out[q, rows] = score
    return out


def entity_subset(num_entities: int, size: int | None, seed: int = 0) -> torch.Tensor:
    """All entities, or ``size`` of them drawn without replacement (seeded), in id order."""
    if size is None or size >= num_entities:
        return torch.arange(num_entities)
    chosen = np.random.default_rng(seed).choice(num_entities, size, replace=False)
    return torch.from_numpy(np.sort(chosen))


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    s = load(config, device)
    s.model.eval()
    queries = both_directions(s.kg.test).take(slice(0, settings.queries))
    entities = entity_subset(s.kg.num_entities, settings.entities)
    share = len(entities) / s.kg.num_entities
    setup = announce(
        {
            **describe(s),
            "queries": len(queries),
            "baseline entities": f"{len(entities)}" + ("" if share == 1 else f" ({share:.1%}, time extrapolated)"),
            "entity batch": settings.entity_batch,
            **hardware(device),
        }
    )
    backbone = s.model.backbone
    with torch.no_grad():
        kon = median(interleaved({"kon": lambda: kon_scores(s, queries)}, settings.repeats, 1, device)["kon"])
        show(f"K-ON: {kon * 1e3:.1f} ms for {len(queries)} queries x {s.kg.num_entities} entities (median of {settings.repeats})")
        autoregressive_scores(backbone, s.encoded, queries.take(slice(0, 1)), entities[: settings.entity_batch], settings.entity_batch)
        measured = seconds(
            lambda: autoregressive_scores(backbone, s.encoded, queries, entities, settings.entity_batch), device
        )
    baseline = measured / share
    steps = int(s.encoded.entity_mask[entities].sum())
    show(
        f"autoregressive: {measured:.1f} s for {len(queries)} queries x {len(entities)} entities "
        f"({steps} name tokens per query)"
        + ("" if share == 1 else f"; {baseline:.1f} s for all {s.kg.num_entities} entities (extrapolated)")
    )
    speedup = baseline / kon
    return Report(
        setup=setup,
        figures={
            "kon_s": kon,
            "autoregressive_measured_s": measured,
            "autoregressive_s": baseline,
            "autoregressive_entities": len(entities),
            "extrapolated": share < 1,
            "kon_queries_per_s": len(queries) / kon,
            "autoregressive_queries_per_s": len(queries) / baseline,
        },
        checks=[Check("K-ON speed-up over autoregressive", speedup, ">=", TARGET, "x")],
    )
