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

    def score(batch: Queries) -> torch.Tensor:
        step = shares[torch.as_tensor(batch.direction), torch.as_tensor(batch.relation)]  # (B, K, V)
        # eq. 10-11, one step at a time: (B, E) memory, never (B, E, K)
        return sum((step[:, j, tokens[:, j]] * weights[:, j] for j in range(k)), torch.zeros(len(batch), e))

    return score


def relation_frequency(kg: KnowledgeGraph) -> Score:
    """Scores (B, E) float64: how often e answers (direction, relation) in train, ties broken by how
    often e answers the direction at all. The counts are kept sparse: memory O(E + triples + B x E)."""
    train = both_directions(kg.train)
    e = kg.num_entities
    overall = np.zeros((2, e))
    np.add.at(overall, (train.direction, train.target), 1.0)
    tie = overall / (overall.max() + 1.0)
    pairs, counts = np.unique((train.direction * kg.num_relations + train.relation) * e + train.target,
                              return_counts=True)  # fmt: skip

    def score(batch: Queries) -> torch.Tensor:
        out = tie[batch.direction].copy()
        group = (batch.direction * kg.num_relations + batch.relation) * e
        start = np.searchsorted(pairs, group)
        length = np.searchsorted(pairs, group + e) - start
        rows = np.repeat(np.arange(len(batch)), length)
        at = np.repeat(start - (np.cumsum(length) - length), length) + np.arange(int(length.sum()))
        out[rows, pairs[at] % e] += counts[at]
        return torch.from_numpy(out)

    return score


def baseline_metrics(kg: KnowledgeGraph, score: Score, chunk: int = 256) -> dict[str, float]:
    """Filtered, realistic test metrics (both directions) of ranking by ``score``."""
    index = AnswerIndex.build([kg.train, kg.valid, kg.test], kg.num_entities, kg.num_relations)
    table = rank_queries(score, both_directions(kg.test), index, chunk)
    return summarize(table["realistic"].to_numpy(), table["direction"].to_numpy())
