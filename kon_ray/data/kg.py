"""Load a knowledge graph: the shipped DB15K and MKG-W, or a folder of your own.

Two folder formats are read:

- id format (the shipped KGs): ``entity2id.txt`` and ``relation2id.txt`` with lines
  ``<label> id`` or ``id label id``, and ``train2id.txt``, ``valid2id.txt``,
  ``test2id.txt`` with lines ``head tail relation`` (ids, whitespace-separated);
- TSV format: ``train.tsv``, ``valid.tsv``, ``test.tsv`` with lines
  ``head<TAB>relation<TAB>tail`` (labels); ids follow first appearance over
  train, valid, test.

Every problem raises KGFormatError naming the file, the 1-based line and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kon_ray.data.names import entity_name, relation_name

logger = logging.getLogger(__name__)

DATASETS_DIR = Path(__file__).parents[1] / "datasets"
SHIPPED = ("DB15K", "MKG-W")
SPLITS = ("train", "valid", "test")
ID_FILES = ("entity2id.txt", "relation2id.txt", *(f"{split}2id.txt" for split in SPLITS))
TSV_FILES = tuple(f"{split}.tsv" for split in SPLITS)


class KGFormatError(ValueError):
    """A KG file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True, eq=False)
class KnowledgeGraph:
    name: str
    entity_names: tuple[str, ...] = field(repr=False)
    """Normalised display names; the index is the entity id."""
    relation_names: tuple[str, ...] = field(repr=False)
    train: np.ndarray = field(repr=False)
    """int64 (n, 3), columns (head, relation, tail)."""
    valid: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    digest: str
    """sha256 over the source files (name, size and bytes, sorted by name) and any slice."""

    @property
    def num_entities(self) -> int:
        return len(self.entity_names)

    @property
    def num_relations(self) -> int:
        return len(self.relation_names)

    def unseen(self, split: str) -> np.ndarray:
        """The triples of ``split`` that are not training triples, in the split's order."""

        def keys(triples: np.ndarray) -> np.ndarray:
            return (triples[:, 0] * self.num_relations + triples[:, 1]) * self.num_entities + triples[:, 2]

        triples = getattr(self, split)
        return triples[~np.isin(keys(triples), keys(self.train))]

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
        entities, relations, splits = _load_ids(folder, sources)
    elif (folder / "train.tsv").is_file():
        entities, relations, splits = _load_tsv(folder, sources)
    else:
        raise KGFormatError(
            f"dataset={dataset!r}: not a shipped KG ({', '.join(SHIPPED)}) nor a folder holding "
            f"{', '.join(ID_FILES)} (id format) or {', '.join(TSV_FILES)} (TSV format)"
        )
    kg = KnowledgeGraph(name, entities, relations, *splits, digest=_digest(sources))
    logger.info(
        "loaded %s: %d entities, %d relations, %d/%d/%d train/valid/test triples",
        kg.name, kg.num_entities, kg.num_relations, len(kg.train), len(kg.valid), len(kg.test),
    )
    return kg


def _digest(sources: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(f"{name}\0{len(sources[name])}\0".encode())
        h.update(sources[name])
    return h.hexdigest()


def _lines(path: Path, sources: dict[str, bytes]) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line; the file's bytes go to ``sources``."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise KGFormatError(f"{path}, line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save it as UTF-8") from None
    sources[path.name] = data
    return [(no, line.rstrip("\r")) for no, line in enumerate(text.split("\n"), 1) if line.strip()]


def _require(folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if not (folder / name).is_file():
            raise KGFormatError(f"{folder / name}: missing file; this format needs {', '.join(names)}")


def _int(path: Path, no: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise KGFormatError(f"{path}, line {no}: expected an integer id, got {text!r}") from None


def _check_id(path: Path, no: int, what: str, value: int, count: int) -> None:
    if not 0 <= value < count:
        raise KGFormatError(f"{path}, line {no}: {what} id {value} out of range; expected 0..{count - 1}")


def _read_names(path: Path, sources: dict[str, bytes]) -> list[str]:
    """Labels of ``entity2id.txt`` / ``relation2id.txt`` in id order: ``<label> id`` or ``id label id`` lines."""
    lines = _lines(path, sources)
    if not lines:
        raise KGFormatError(f"{path}: empty file; expected one '<label> id' line per id")
    first = lines[0][1].split()
    numbered = len(first) >= 3 and first[0] == first[-1]
    form = "'id label id'" if numbered else "'<label> id'"
    labels: list[str] = [""] * len(lines)
    seen: dict[int, int] = {}
    for no, line in lines:
        parts = line.split()
        if len(parts) < (3 if numbered else 2):
            raise KGFormatError(f"{path}, line {no}: expected {form} (whitespace-separated), got {line!r}")
        index = _int(path, no, parts[-1])
        label = line.strip().rsplit(None, 1)[0]
        if numbered:
            lead, label = label.split(None, 1)
            if _int(path, no, lead) != index:
                raise KGFormatError(f"{path}, line {no}: expected {form} with the same id twice, got {line!r}")
        if not 0 <= index < len(lines):
            raise KGFormatError(
                f"{path}, line {no}: id {index} out of range; the file has {len(lines)} entries, "
                f"so ids must be 0..{len(lines) - 1}"
            )
        if index in seen:
            raise KGFormatError(f"{path}, line {no}: duplicate id {index}, already given on line {seen[index]}")
        seen[index] = no
        labels[index] = label
    return labels


def _read_id_triples(path: Path, sources: dict[str, bytes], entities: int, relations: int) -> np.ndarray:
    rows = []
    for no, line in _lines(path, sources):
        parts = line.split()
        if len(parts) != 3:
            raise KGFormatError(
                f"{path}, line {no}: expected 3 whitespace-separated ids 'head tail relation', "
                f"got {len(parts)} field(s): {line!r}"
            )
        head, tail, relation = (_int(path, no, p) for p in parts)
        _check_id(path, no, "head entity", head, entities)
        _check_id(path, no, "tail entity", tail, entities)
        _check_id(path, no, "relation", relation, relations)
        rows.append((head, relation, tail))
    if not rows:
        raise KGFormatError(f"{path}: empty split; expected 'head tail relation' lines")
    return np.array(rows, dtype=np.int64)


def _load_ids(folder: Path, sources: dict[str, bytes]) -> tuple[tuple[str, ...], tuple[str, ...], list[np.ndarray]]:
    _require(folder, ID_FILES)
    entities = _read_names(folder / "entity2id.txt", sources)
    relations = _read_names(folder / "relation2id.txt", sources)
    splits = [
        _read_id_triples(folder / f"{split}2id.txt", sources, len(entities), len(relations)) for split in SPLITS
    ]
    return tuple(map(entity_name, entities)), tuple(map(relation_name, relations)), splits


def _read_tsv(path: Path, sources: dict[str, bytes], entities: dict[str, int], relations: dict[str, int]) -> np.ndarray:
    rows = []
    for no, line in _lines(path, sources):
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 3 or not all(fields):
            hint = " (fields must be separated by tabs)" if len(fields) == 1 and (" " in line or "," in line) else ""
            raise KGFormatError(
                f"{path}, line {no}: expected 3 non-empty tab-separated fields 'head<TAB>relation<TAB>tail', "
                f"got {len(fields)} field(s){hint}: {line!r}"
            )
        head, relation, tail = fields
        h = entities.setdefault(head, len(entities))
        r = relations.setdefault(relation, len(relations))
        rows.append((h, r, entities.setdefault(tail, len(entities))))
    if not rows:
        raise KGFormatError(f"{path}: empty split; expected 'head<TAB>relation<TAB>tail' lines")
    return np.array(rows, dtype=np.int64)


def _load_tsv(folder: Path, sources: dict[str, bytes]) -> tuple[tuple[str, ...], tuple[str, ...], list[np.ndarray]]:
    _require(folder, TSV_FILES)
    entities: dict[str, int] = {}
    relations: dict[str, int] = {}
    splits = [_read_tsv(folder / f"{split}.tsv", sources, entities, relations) for split in SPLITS]
    return tuple(map(entity_name, entities)), tuple(map(relation_name, relations)), splits
