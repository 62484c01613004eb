"""Settings that only the data can validate, checked before Ray or any worker starts."""

from __future__ import annotations

import logging

import numpy as np

from kon_ray.config import ConfigError, RunConfig
from kon_ray.data.kg import KnowledgeGraph
from kon_ray.data.queries import AnswerIndex, both_directions

log = logging.getLogger(__name__)


def check_data(config: RunConfig, kg: KnowledgeGraph) -> None:
    """Raise ConfigError naming the field and the fix for a setting that ``kg`` rules out.

    ``kg`` is the KG as training sees it (after ``data.train_limit``). Memory O(entities + triples).
    """
    negatives = config.loss.negatives
    if negatives >= kg.num_entities:
        raise ConfigError(
            f"loss.negatives={negatives}: |N| must be below the number of entities of {kg.name} "
            f"({kg.num_entities}); set loss.negatives={max(1, kg.num_entities // 4)} or lower"
        )
    if config.data.valid_unseen and not len(kg.unseen("valid")):
        raise ConfigError(
            f"data.valid_unseen=True: every valid triple of {kg.name} is a training triple, so none is left "
            "to validate on; set data.valid_unseen=false to validate on them anyway"
        )
    _check_non_answers(config, kg)


def _check_non_answers(config: RunConfig, kg: KnowledgeGraph) -> None:
    """Every training query needs a non-answer to contrast with; fewer than |N| is allowed (repeats)."""
    queries = both_directions(kg.train)
    index = AnswerIndex.build([kg.train], kg.num_entities, kg.num_relations)
    non_answers = kg.num_entities - index.counts(queries)
    if config.loss.nce_weight > 0 and non_answers.min() < 1:
        q = int(np.argmin(non_answers))
        direction = ("tail", "head")[queries.direction[q]]
        raise ConfigError(
            f"loss.nce_weight={config.loss.nce_weight}: the {direction} query of {kg.name}'s training triple "
            f"{q // 2} ({kg.entity_names[queries.anchor[q]]!r}, {kg.relation_names[queries.relation[q]]!r}) "
            "has every entity as an answer, so no negative exists; remove those triples or set "
            "loss.nce_weight=0"
        )
    short = int((non_answers < config.loss.negatives).sum())
    if short:
        log.info(
            "%d of %d training queries have fewer than loss.negatives=%d non-answers (fewest %d): "
            "they get all of them, then uniform repeats",
            short, len(queries), config.loss.negatives, int(non_answers.min()),
        )
