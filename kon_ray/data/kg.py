"""Load a knowledge graph: the shipped DB15K and MKG-W, or a folder of your own.

Two folder formats are read (docs/data.md shows five lines of each):

- id format (the shipped KGs, OpenKE's layout): ``entity2id.txt`` and ``relation2id.txt`` with
  lines ``<label> id`` or ``id label id``, and ``train2id.txt``, ``valid2id.txt``, ``test2id.txt``
  with lines ``head tail relation`` (ids, whitespace-separated); a first line holding only the
  number of lines that follow (OpenKE's count line) is skipped;
- TSV format: ``train.tsv``, ``valid.tsv``, ``test.tsv`` with lines ``head<TAB>relation<TAB>tail``.
  Beside them, optional ``entities.tsv`` and ``relations.tsv`` with lines ``id<TAB>name``: the
  triples then hold ids (opaque strings such as ``Q42`` or ``00001740``), the names are what the LLM
  reads and may repeat. Without a names file, labels are identities (normalised to names) and ids
  follow first appearance over train, valid, test.

Cleaning: a UTF-8 BOM is dropped; CR or CRLF line ends are read as LF; a header line
(``head<TAB>relation<TAB>tail``, ``id<TAB>name``) is skipped with a warning; a NUL byte is refused.
Duplicate training triples are dropped (a repeat would weigh the loss twice); valid and test stay as
published (DB15K's valid split repeats lines and the paper's counts include them); both are counted
in ``KnowledgeGraph.duplicates``. Every problem raises KGFormatError naming the file, the 1-based line
and what was expected, quoting at most ``QUOTE`` characters of the line.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kon_ray.data.names import entity_name, relation_name

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

DATASETS_DIR = Path(__file__).parents[1] / "datasets"
SHIPPED = ("DB15K", "MKG-W")
SPLITS = ("train", "valid", "test")
ID_FILES = ("entity2id.txt", "relation2id.txt", *(f"{split}2id.txt" for split in SPLITS))
TSV_FILES = tuple(f"{split}.tsv" for split in SPLITS)
NAME_FILES = ("entities.tsv", "relations.tsv")
QUOTE = 200
"""Characters of a bad line that an error message quotes at most."""
TRIPLE_HEADER = frozenset({"head", "relation", "tail", "subject", "predicate", "object", "h", "r", "t",
                           "head_id", "relation_id", "tail_id", "source", "target", "rel"})  # fmt: skip
NAME_HEADER = (frozenset({"id", "entity", "relation", "entity_id", "relation_id"}),
               frozenset({"name", "label", "text", "title"}))  # fmt: skip


Loaded = tuple[tuple[str, ...], tuple[str, ...], list[np.ndarray]]
"""Entity names, relation names, and the train, valid, test triples."""


class KGFormatError(ValueError):
    """A KG file is missing or malformed; the message names the file and line."""


@dataclass(frozen=True, eq=False)
class KnowledgeGraph:
    name: str
    entity_names: tuple[str, ...] = field(repr=False)
    """What the LLM reads of each entity, the index being the entity id; names may repeat."""
    relation_names: tuple[str, ...] = field(repr=False)
    train: np.ndarray = field(repr=False)
    """int64 (n, 3), columns (head, relation, tail); unique rows."""
    valid: np.ndarray = field(repr=False)
    test: np.ndarray = field(repr=False)
    digest: str
    """sha256 over the source files (name, size and bytes, sorted by name) and any slice."""
    duplicates: dict[str, int] = field(default_factory=dict, repr=False)
    """Per split, the repeated triples of the files: dropped from train, kept in valid and test."""

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
        entities, relations, splits = _load_ids(folder, sources)
    elif (folder / "train.tsv").is_file():
        entities, relations, splits = _load_tsv(folder, sources)
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
    kg = KnowledgeGraph(name, entities, relations, *splits, digest=_digest(sources), duplicates=counts)
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


def _quote(line: str) -> str:
    """``repr(line)``, cut to about ``QUOTE`` characters."""
    return repr(line) if len(line) <= QUOTE else f"{line[:QUOTE]!r}... ({len(line)} characters)"


def _lines(path: Path, sources: dict[str, bytes]) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line; the file's bytes go to ``sources``."""
    return [(no, line) for no, line in enumerate(_text(path, sources).split("\n"), 1) if line.strip()]


def _text(path: Path, sources: dict[str, bytes]) -> str:
    """The file's text, its bytes put in ``sources``: the BOM dropped, CR and CRLF line ends read as
    LF, and a NUL byte refused."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise KGFormatError(
            f"{path}, line {line}: not UTF-8 (byte 0x{data[e.start]:02x}); save it as UTF-8"
        ) from None
    sources[path.name] = data
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    nul = text.find("\0")
    if nul >= 0:
        raise KGFormatError(f"{path}, line {text.count(chr(10), 0, nul) + 1}: NUL byte; a KG file holds text")
    return text


def _skip_header(path: Path, lines: list[tuple[int, str]], header: bool) -> list[tuple[int, str]]:
    if lines and header:
        logger.warning("%s, line %d: header %s skipped", path, lines[0][0], _quote(lines[0][1]))
        return lines[1:]
    return lines


def _skip_count(path: Path, lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Drop OpenKE's first line, the number of lines that follow."""
    first = lines[0][1].strip() if lines else ""
    return _skip_header(path, lines, first.isdigit() and int(first) == len(lines) - 1)


def _require(folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if not (folder / name).is_file():
            raise KGFormatError(f"{folder / name}: missing file; this format needs {', '.join(names)}")


def _int(path: Path, no: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise KGFormatError(f"{path}, line {no}: expected an integer id, got {_quote(text)}") from None


def _check_id(path: Path, no: int, what: str, value: int, count: int) -> None:
    if not 0 <= value < count:
        raise KGFormatError(f"{path}, line {no}: {what} id {value} out of range; expected 0..{count - 1}")


def _read_names(path: Path, sources: dict[str, bytes]) -> list[str]:
    """Labels of ``entity2id.txt`` / ``relation2id.txt`` in id order, from ``<label> id`` or ``id label id``
    lines."""
    lines = _skip_count(path, _lines(path, sources))
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
            raise KGFormatError(
                f"{path}, line {no}: expected {form} (whitespace-separated), got {_quote(line)}"
            )
        index = _int(path, no, parts[-1])
        label = line.strip().rsplit(None, 1)[0]
        if numbered:
            lead, label = label.split(None, 1)
            if _int(path, no, lead) != index:
                raise KGFormatError(
                    f"{path}, line {no}: expected {form} with the same id twice, got {_quote(line)}"
                )
        if not 0 <= index < len(lines):
            raise KGFormatError(
                f"{path}, line {no}: id {index} out of range; the file has {len(lines)} entries, "
                f"so ids must be 0..{len(lines) - 1}"
            )
        if index in seen:
            raise KGFormatError(
                f"{path}, line {no}: duplicate id {index}, already given on line {seen[index]}"
            )
        seen[index] = no
        labels[index] = label
    return labels


def _read_id_triples(path: Path, sources: dict[str, bytes], entities: int, relations: int) -> np.ndarray:
    rows = array("q")
    for no, line in _skip_count(path, _lines(path, sources)):
        parts = line.split()
        if len(parts) != 3:
            raise KGFormatError(
                f"{path}, line {no}: expected 3 whitespace-separated ids 'head tail relation', "
                f"got {len(parts)} field(s): {_quote(line)}"
            )
        head, tail, relation = (_int(path, no, p) for p in parts)
        _check_id(path, no, "head entity", head, entities)
        _check_id(path, no, "tail entity", tail, entities)
        _check_id(path, no, "relation", relation, relations)
        rows.extend((head, relation, tail))
    if not rows:
        raise KGFormatError(f"{path}: empty split; expected 'head tail relation' lines")
    return np.frombuffer(rows, dtype=np.int64).reshape(-1, 3).copy()


def _load_ids(folder: Path, sources: dict[str, bytes]) -> Loaded:
    _require(folder, ID_FILES)
    entities = _read_names(folder / "entity2id.txt", sources)
    relations = _read_names(folder / "relation2id.txt", sources)
    splits = [
        _read_id_triples(folder / f"{split}2id.txt", sources, len(entities), len(relations))
        for split in SPLITS
    ]
    return tuple(map(entity_name, entities)), tuple(map(relation_name, relations)), splits


def _read_name_file(path: Path, sources: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    """``id<TAB>name`` lines: id -> (index in file order, name with its whitespace collapsed)."""
    lines = _lines(path, sources)
    if lines:
        first = [f.strip().lower() for f in lines[0][1].split("\t")]
        header = len(first) == 2 and first[0] in NAME_HEADER[0] and first[1] in NAME_HEADER[1]
        lines = _skip_header(path, lines, header)
    names: dict[str, tuple[int, str]] = {}
    seen: dict[str, int] = {}
    for no, line in lines:
        key, tab, name = line.partition("\t")
        key, name = key.strip(), " ".join(name.split())
        if not tab or not key or not name:
            raise KGFormatError(
                f"{path}, line {no}: expected 'id<TAB>name' with both non-empty, got {_quote(line)}"
            )
        if key in seen:
            raise KGFormatError(
                f"{path}, line {no}: duplicate id {_quote(key)}, already given on line {seen[key]}"
            )
        seen[key] = no
        names[key] = (len(names), name)
    if not names:
        raise KGFormatError(f"{path}: empty file; expected one 'id<TAB>name' line per id")
    return names


class _Ids:
    """Ids of one kind (entities or relations): from a names file, else by first appearance."""

    def __init__(
        self, folder: Path, filename: str, sources: dict[str, bytes], normalise: Callable[[str], str]
    ) -> None:
        self.path = folder / filename
        self.fixed = self.path.is_file()
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        if self.fixed:
            for key, (i, name) in _read_name_file(self.path, sources).items():
                self.index[key] = i
                self.names.append(name)
        self.normalise = normalise

    def get(self, key: str, path: Path, no: int, line: str) -> int:
        found = self.index.get(key)
        if found is not None:
            return found
        if self.fixed:
            raise KGFormatError(
                f"{path}, line {no}: id {_quote(key)} is not in {self.path.name}: {_quote(line)}"
            )
        self.index[key] = len(self.names)
        self.names.append(self.normalise(key))
        return self.index[key]


def _read_tsv(path: Path, sources: dict[str, bytes], entities: _Ids, relations: _Ids) -> np.ndarray:
    lines = _lines(path, sources)
    if lines:
        first = [f.strip().lower() for f in lines[0][1].split("\t")]
        lines = _skip_header(path, lines, len(first) == 3 and set(first) <= TRIPLE_HEADER)
    rows = array("q")
    for no, line in lines:
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 3 or not all(fields):
            hint = " (fields must be separated by tabs)" if len(fields) == 1 and (" " in line or "," in line) else ""
            raise KGFormatError(
                f"{path}, line {no}: expected 3 non-empty tab-separated fields 'head<TAB>relation<TAB>tail', "
                f"got {len(fields)} field(s){hint}: {_quote(line)}"
            )
        head, relation, tail = fields
        h, r = entities.get(head, path, no, line), relations.get(relation, path, no, line)
        rows.extend((h, r, entities.get(tail, path, no, line)))
    if not rows:
        raise KGFormatError(f"{path}: empty split; expected 'head<TAB>relation<TAB>tail' lines")
    return np.frombuffer(rows, dtype=np.int64).reshape(-1, 3).copy()


def _columns(path: Path, sources: dict[str, bytes], count: int) -> list[pd.Series] | None:
    """The file's ``count`` tab-separated columns of str, parsed in C, or None when a line is
    irregular (a header, an empty or padded field, another field count): the line-by-line reader
    then reads the file and names the line."""
    import pandas as pd

    try:
        frame = pd.read_csv(
            io.StringIO(_text(path, sources)), sep="\t", header=None, dtype=str, quoting=csv.QUOTE_NONE,
            engine="c", keep_default_na=False, na_filter=False, skip_blank_lines=True,
        )  # fmt: skip
    except (pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    if frame.shape[1] != count or frame.isna().to_numpy().any():
        return None
    columns = [frame[c] for c in frame.columns]
    first = [str(c.iloc[0]).lower() for c in columns]
    if set(first) <= TRIPLE_HEADER or (count == 2 and first[0] in NAME_HEADER[0] and first[1] in NAME_HEADER[1]):
        return None
    for column in columns:
        length = column.str.len()
        if (length == 0).any() or (column.str.strip().str.len() != length).any():
            return None
    return columns


def _named(folder: Path, filename: str, sources: dict[str, bytes], values: pd.Series,
           normalise: Callable[[str], str]) -> tuple[np.ndarray, tuple[str, ...]] | None:  # fmt: skip
    """Ids of ``values`` and the names: from ``filename`` when present, else by first appearance."""
    import pandas as pd

    path = folder / filename
    if not path.is_file():
        codes, uniques = pd.factorize(values)
        return codes.astype(np.int64), tuple(map(normalise, uniques.tolist()))
    table = _columns(path, sources, 2)
    if table is None:
        return None
    ids = pd.Index(table[0])
    if not ids.is_unique:
        return None
    codes = ids.get_indexer(values)
    if (codes < 0).any():
        return None
    names = table[1].copy()
    irregular = names.str.contains(r"\s\s|[\t\n\r\f\v]", regex=True)
    names[irregular] = [" ".join(n.split()) for n in names[irregular]]
    return codes.astype(np.int64), tuple(names.tolist())


def _load_tsv_fast(folder: Path, sources: dict[str, bytes]) -> Loaded | None:
    """``_load_tsv`` for regular files, vectorised (a 5M-line KG in seconds); None when a file is not."""
    import pandas as pd

    splits = [_columns(folder / f"{split}.tsv", sources, 3) for split in SPLITS]
    if any(columns is None for columns in splits):
        return None
    # Entities by first appearance: head, then tail, row by row, over train, valid, test.
    ends = pd.concat([pd.concat([c[0], c[2]], axis=1).stack() for c in splits], ignore_index=True)  # type: ignore[index]
    entities = _named(folder, NAME_FILES[0], sources, ends, entity_name)
    relations = _named(folder, NAME_FILES[1], sources, pd.concat([c[1] for c in splits], ignore_index=True),  # type: ignore[index]
                       relation_name)  # fmt: skip
    if entities is None or relations is None:
        return None
    rows = np.cumsum([0, *(len(c[0]) for c in splits)])  # type: ignore[index]
    pairs = entities[0].reshape(-1, 2)
    triples = [
        np.stack([pairs[a:b, 0], relations[0][a:b], pairs[a:b, 1]], axis=1) for a, b in zip(rows[:-1], rows[1:])
    ]
    return entities[1], relations[1], triples


def _load_tsv(folder: Path, sources: dict[str, bytes]) -> Loaded:
    _require(folder, TSV_FILES)
    fast = _load_tsv_fast(folder, sources)
    if fast is not None:
        return fast
    entities = _Ids(folder, NAME_FILES[0], sources, entity_name)
    relations = _Ids(folder, NAME_FILES[1], sources, relation_name)
    splits = [_read_tsv(folder / f"{split}.tsv", sources, entities, relations) for split in SPLITS]
    return tuple(entities.names), tuple(relations.names), splits
