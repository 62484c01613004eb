"""Load a knowledge graph: the shipped DB15K and MKG-W, or a folder of your own.

A folder holds one of two formats, each read by its module: the id format (the shipped KGs',
OpenKE's layout; ``kon_ray.data.id_format``) or TSV with optional names files
(``kon_ray.data.tsv_format``). How a file's lines are cleaned and how a problem is reported is in
``kon_ray.data.lines``; docs/data.md shows both formats. Duplicate training triples are dropped (a
repeat would weigh the loss twice); valid and test stay as published (DB15K's valid split repeats
lines and the paper's counts include them); both are counted in ``KnowledgeGraph.duplicates``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kon_ray.data.id_format import ID_FILES, load_ids
from kon_ray.data.lines import SPLITS, KGFormatError
from kon_ray.data.tsv_format import TSV_FILES, load_tsv

logger = logging.getLogger(__name__)

DATASETS_DIR = Path(__file__).parents[1] / "datasets"
SHIPPED = ("DB15K", "MKG-W")


@dataclass(frozen=True, eq=False)
class KnowledgeGraph:
    name: str
    entity_names: tuple[str, ...] = field(repr=False)
    """What the LLM reads of each entity, by its index in the triples; names may repeat."""
    relation_names: tuple[str, ...] = field(repr=False)
    train: np.ndarray = field(repr=False)
    """int64 (n, 3), columns (head, relation, tail); unique rows."""
    valid: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    digest: str
    """sha256 over the source files (name, size and bytes, sorted by name) and any slice."""
    duplicates: dict[str, int] = field(default_factory=dict, repr=False)
    """Per split, the repeated triples of the files: dropped from train, kept in valid and test."""
    entity_ids: tuple[str, ...] = field(default=(), repr=False)
    """Each entity's id in the source files, as written: an id of ``entities.tsv``, else its TSV
    label, or its ``entity2id.txt`` label. Empty for a KG built in code."""
    relation_ids: tuple[str, ...] = field(default=(), repr=False)
    """Each relation's id in the source files, as ``entity_ids``."""

    def __post_init__(self) -> None:
        for ids, names in ((self.entity_ids, self.entity_names), (self.relation_ids, self.relation_names)):
            if ids and len(ids) != len(names):
                raise ValueError(f"{len(ids)} ids for {len(names)} names: one id per name, or none")

    @property
    def num_entities(self) -> int:
        return len(self.entity_names)

    @property
    def num_relations(self) -> int:
        return len(self.relation_names)

    def _keys(self, triples: np.ndarray) -> np.ndarray:
        return (triples[:, 0] * self.num_relations + triples[:, 1]) * self.num_entities + triples[:, 2]

    def unseen(self, split: str) -> np.ndarray:
        """The triples of ``split`` that are not training triples, in the split's order."""
        triples = getattr(self, split)
        return triples[~np.isin(self._keys(triples), self._keys(self.train))]

    def only_in(self, split: str) -> np.ndarray:
        """Sorted ids of the entities that occur in ``split`` but in no training triple."""
        triples = getattr(self, split)
        return np.setdiff1d(triples[:, [0, 2]], self.train[:, [0, 2]])

    def slice(self, train_limit: int | None) -> KnowledgeGraph:
        """The first ``train_limit`` training triples (all when None); valid and test unchanged.

        The digest changes with the slice, so caches keyed on it never mix the two.
        """
        if train_limit is None:
            return self
        if train_limit < 1:
            raise ValueError(f"train_limit={train_limit}: must be >= 1 or None")
        digest = hashlib.sha256(f"{self.digest}:train_limit={train_limit}".encode()).hexdigest()
        return dataclasses.replace(self, train=self.train[:train_limit], digest=digest)


def load_kg(dataset: str) -> KnowledgeGraph:
    """Load a shipped KG by name ('DB15K', 'MKG-W') or a folder in the id or TSV format."""
    folder = DATASETS_DIR / dataset if dataset in SHIPPED else Path(dataset)
    name = dataset if dataset in SHIPPED else folder.resolve().name
    sources: dict[str, bytes] = {}
    if (folder / "entity2id.txt").is_file():
        (entities, entity_ids), (relations, relation_ids), splits = load_ids(folder, sources)
    elif (folder / "train.tsv").is_file():
        (entities, entity_ids), (relations, relation_ids), splits = load_tsv(folder, sources)
    else:
        raise KGFormatError(
            f"dataset={dataset!r}: not a shipped KG ({', '.join(SHIPPED)}) nor a folder holding "
            f"{', '.join(ID_FILES)} (id format) or {', '.join(TSV_FILES)} (TSV format)"
        )
    repeated = {s: _repeats(t, len(entities), len(relations)) for s, t in zip(SPLITS, splits, strict=True)}
    splits[0] = splits[0][~repeated["train"]]
    counts = {split: int(mask.sum()) for split, mask in repeated.items()}
    if counts["train"]:
        logger.warning("%s: %d duplicate training triples dropped", name, counts["train"])
    kg = KnowledgeGraph(name, entities, relations, *splits, digest=_digest(sources), duplicates=counts,
                        entity_ids=entity_ids, relation_ids=relation_ids)  # fmt: skip
    logger.info(
        "loaded %s: %d entities, %d relations, %d/%d/%d train/valid/test triples",
        kg.name, kg.num_entities, kg.num_relations, len(kg.train), len(kg.valid), len(kg.test),
    )
    return kg


def _repeats(triples: np.ndarray, entities: int, relations: int) -> np.ndarray:
    """bool (n,): True on every triple that an earlier row repeats."""
    keys = (triples[:, 0] * relations + triples[:, 1]) * entities + triples[:, 2]
    _, first = np.unique(keys, return_index=True)
    repeated = np.ones(len(keys), dtype=bool)
    repeated[first] = False
    return repeated


def _digest(sources: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(f"{name}\0{len(sources[name])}\0".encode())
        h.update(sources[name])
    return h.hexdigest()
