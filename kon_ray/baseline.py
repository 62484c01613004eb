"""Model-free references: rank each query's answers by what its relation alone says, in training.

Relation frequency: entity e's score for a query (direction d, relation r) is the number of
training triples in which e answers (d, r), plus a tie-breaker below 1: how often e answers
direction d at all. Relation token prior: the same counts per token and step, scored through
eq. 11 (the sum of step probabilities, uniform weights): a K-ON whose step distributions are
the relation's own token shares. Scored with the same filtered ranking as K-ON, they
tell how much of an MRR comes from learning which entities a relation tends to point at, rather
than from the query's own entity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from kon_ray.data.kg import KnowledgeGraph
from kon_ray.data.queries import AnswerIndex, Queries, both_directions
from kon_ray.evaluation import rank_queries, summarize

Score = Callable[[Queries], torch.Tensor]


def relation_frequency_scores(kg: KnowledgeGraph) -> torch.Tensor:
    """(2, R, E) float64 scores: counts of e answering (direction, relation) in train, ties broken by direction counts."""
    train = both_directions(kg.train)
    counts = np.zeros((2, kg.num_relations, kg.num_entities))
    np.add.at(counts, (train.direction, train.relation, train.target), 1.0)
    overall = counts.sum(1)
    counts += overall[:, None, :] / (overall.max() + 1.0)
    return torch.from_numpy(counts)


def relation_token_prior(kg: KnowledgeGraph, tokens: torch.Tensor, mask: torch.Tensor) -> Score:
    """Scores (B, E) by eq. 11 from each (direction, relation)'s training answers' token frequencies.

    tokens, mask: the entities' eq. 8 token ids and real-token mask (E, K). Step k's distribution
    is the share of the relation's training answers whose token k is t; an entity's score is the
    mean of its real tokens' shares (eq. 11's sum with the weights' initial, uniform value).
    """
    train = both_directions(kg.train)
    e, k = tokens.shape
    vocab = int(tokens.max()) + 1
    counts = torch.zeros(2, kg.num_relations, k, vocab)
    answers = torch.as_tensor(train.target)
    where = (torch.as_tensor(train.direction)[:, None], torch.as_tensor(train.relation)[:, None], torch.arange(k))
    counts.index_put_((*where, tokens[answers]), mask[answers].float(), accumulate=True)
    shares = counts / counts.sum(-1, keepdim=True).clamp(min=1)
    weights = mask / mask.sum(1, keepdim=True)
    steps = torch.arange(k).expand(e, k)

    def score(batch: Queries) -> torch.Tensor:
        step = shares[torch.as_tensor(batch.direction), torch.as_tensor(batch.relation)]  # (B, K, V)
        return (step[:, steps, tokens] * weights).sum(-1)  # eq. 10-11: (B, E)

    return score


def relation_frequency(kg: KnowledgeGraph) -> Score:
    """Scores (B, E) by ``relation_frequency_scores``."""
    scores = relation_frequency_scores(kg)

    def score(batch: Queries) -> torch.Tensor:
        return scores[torch.as_tensor(batch.direction), torch.as_tensor(batch.relation)]

    return score


def baseline_metrics(kg: KnowledgeGraph, score: Score, chunk: int = 256) -> dict[str, float]:
    """Filtered, realistic test metrics (both directions) of ranking by ``score``."""
    index = AnswerIndex.build([kg.train, kg.valid, kg.test], kg.num_entities, kg.num_relations)
    table = rank_queries(score, both_directions(kg.test), index, chunk)
    return summarize(table["realistic"].to_numpy(), table["direction"].to_numpy())
