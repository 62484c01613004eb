"""A model-free reference: rank each query's answers by how often they answer its relation in training.

Entity e's score for a query (direction d, relation r) is the number of training triples in
which e answers (d, r), plus a tie-breaker below 1: how often e answers direction d at all.
Scored with the same filtered ranking as K-ON, it tells how much of an MRR comes from learning
which entities a relation tends to point at, rather than from the query's own entity.
"""

from __future__ import annotations

import numpy as np
import torch

from kon_ray.data.kg import KnowledgeGraph
from kon_ray.data.queries import AnswerIndex, Queries, both_directions
from kon_ray.evaluation import rank_queries, summarize


def relation_frequency_scores(kg: KnowledgeGraph) -> torch.Tensor:
    """(2, R, E) float64 scores: counts of e answering (direction, relation) in train, ties broken by direction counts."""
    train = both_directions(kg.train)
    counts = np.zeros((2, kg.num_relations, kg.num_entities))
    np.add.at(counts, (train.direction, train.relation, train.target), 1.0)
    overall = counts.sum(1)
    counts += overall[:, None, :] / (overall.max() + 1.0)
    return torch.from_numpy(counts)


def relation_frequency_metrics(kg: KnowledgeGraph, chunk: int = 1024) -> dict[str, float]:
    """Filtered, realistic test metrics (both directions) of ranking by ``relation_frequency_scores``."""
    scores = relation_frequency_scores(kg)
    index = AnswerIndex.build([kg.train, kg.valid, kg.test], kg.num_entities, kg.num_relations)
    queries = both_directions(kg.test)

    def score(batch: Queries) -> torch.Tensor:
        return scores[torch.as_tensor(batch.direction), torch.as_tensor(batch.relation)]

    table = rank_queries(score, queries, index, chunk)
    return summarize(table["realistic"].to_numpy(), table["direction"].to_numpy())
