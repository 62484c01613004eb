"""``evaluate``: filtered ranking of a split against every entity, queries sharded over ranks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from kon_ray.data import Queries, both_directions
from kon_ray.evaluation import metrics_from_table, rank_queries
from kon_ray.training.setup import Setup
from kon_ray.training.world import World


def evaluate(s: Setup, split: str, limit: int | None, world: World = World()) -> tuple[dict[str, float], pd.DataFrame]:
    """Filtered ranking of ``split`` (both directions) against all entities, in eval mode.

    The valid split holds only its triples unseen in training when ``data.valid_unseen``.
    """
    triples = s.kg.unseen(split) if split == "valid" and s.config.data.valid_unseen else getattr(s.kg, split)
    queries = both_directions(triples[:limit])
    shard = world.shard(len(queries))
    model = s.model
    was_training = model.training
    model.eval()

    def score(chunk: Queries) -> torch.Tensor:
        rows = s.encoded.prompt_rows(chunk)
        _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        batch = s.encoded.batch(chunk.take(first), with_targets=False).to(s.device)
        scores = model.scores_all(batch, s.entity_tokens, s.entity_mask).float()
        return scores[torch.as_tensor(inverse, device=s.device)]  # a repeated prompt is scored once

    local_queries = queries.take(np.maximum(shard, 0))
    rows = s.encoded.prompt_rows(local_queries)
    order = np.lexsort((rows, s.encoded.prompt_lengths(rows)))  # chunks of like length pad less
    local = rank_queries(score, local_queries.take(order), s.filter_index, s.config.eval.chunk(s.kg.num_entities))
    local["query"] = shard[order]
    model.train(was_training)
    table = pd.concat(world.gather(local[local["query"] >= 0]), ignore_index=True).sort_values("query")
    table = table.drop(columns="query").reset_index(drop=True)
    return metrics_from_table(table, s.config.eval.ties), table
