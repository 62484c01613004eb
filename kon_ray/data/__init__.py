"""Knowledge graphs, link-prediction queries, known answers and negative sampling."""

from kon_ray.data.checks import check_data
from kon_ray.data.kg import SHIPPED, KnowledgeGraph, load_kg
from kon_ray.data.lines import KGFormatError
from kon_ray.data.names import entity_name, relation_name
from kon_ray.data.negatives import sample_negatives, sample_negatives_reference
from kon_ray.data.queries import HEAD, TAIL, AnswerIndex, Queries, both_directions

__all__ = [
    "HEAD",
    "SHIPPED",
    "TAIL",
    "AnswerIndex",
    "KGFormatError",
    "KnowledgeGraph",
    "Queries",
    "both_directions",
    "check_data",
    "entity_name",
    "load_kg",
    "relation_name",
    "sample_negatives",
    "sample_negatives_reference",
]
