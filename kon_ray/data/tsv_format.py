"""The TSV format, with optional names files.

``train.tsv``, ``valid.tsv``, ``test.tsv`` hold lines ``head<TAB>relation<TAB>tail``. Beside them,
optional ``entities.tsv`` and ``relations.tsv`` hold lines ``id<TAB>name``: the triples then hold ids
(opaque strings such as ``Q42`` or ``00001740``), the names are what the LLM reads and may repeat.
Without a names file, labels are identities (normalised to names) and indices follow first appearance
over train, valid, test. Either way the KG keeps each id as written (the label, without a names
file). A header line (``head<TAB>relation<TAB>tail``, ``id<TAB>name``) is skipped.
docs/data.md shows five lines of each.

Regular files are read vectorised with pandas; any irregular line sends the folder to the
line-by-line reader, which names the line.
"""

from __future__ import annotations

import csv
import io
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kon_ray.data.lines import (
    SPLITS,
    KGFormatError,
    Labels,
    Loaded,
    quote,
    read_lines,
    read_text,
    require,
    skip_header,
)
from kon_ray.data.names import entity_name, relation_name

if TYPE_CHECKING:
    import pandas as pd

TSV_FILES = tuple(f"{split}.tsv" for split in SPLITS)
NAME_FILES = ("entities.tsv", "relations.tsv")
TRIPLE_HEADER = frozenset({"head", "relation", "tail", "subject", "predicate", "object", "h", "r", "t",
                           "head_id", "relation_id", "tail_id", "source", "target", "rel"})  # fmt: skip
NAME_HEADER = (frozenset({"id", "entity", "relation", "entity_id", "relation_id"}),
               frozenset({"name", "label", "text", "title"}))  # fmt: skip


def load_tsv(folder: Path, sources: dict[str, bytes]) -> Loaded:
    """The KG in ``folder``; every file's bytes go to ``sources``."""
    require(folder, TSV_FILES)
    fast = _load_tsv_fast(folder, sources)
    if fast is not None:
        return fast
    entities = _Ids(folder, NAME_FILES[0], sources, entity_name)
    relations = _Ids(folder, NAME_FILES[1], sources, relation_name)
    splits = [_read_tsv(folder / f"{split}.tsv", sources, entities, relations) for split in SPLITS]
    return entities.labels(), relations.labels(), splits


def _read_name_file(path: Path, sources: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    """``id<TAB>name`` lines: id -> (index in file order, name with its whitespace collapsed)."""
    lines = read_lines(path, sources)
    if lines:
        first = [f.strip().lower() for f in lines[0][1].split("\t")]
        header = len(first) == 2 and first[0] in NAME_HEADER[0] and first[1] in NAME_HEADER[1]
        lines = skip_header(path, lines, header)
    names: dict[str, tuple[int, str]] = {}
    seen: dict[str, int] = {}
    for no, line in lines:
        key, tab, name = line.partition("\t")
        key, name = key.strip(), " ".join(name.split())
        if not tab or not key or not name:
            raise KGFormatError(
                f"{path}, line {no}: expected 'id<TAB>name' with both non-empty, got {quote(line)}"
            )
        if key in seen:
            raise KGFormatError(
                f"{path}, line {no}: duplicate id {quote(key)}, already given on line {seen[key]}"
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

    def labels(self) -> Labels:
        return tuple(self.names), tuple(self.index)  # a dict keeps the ids in index order

    def get(self, key: str, path: Path, no: int, line: str) -> int:
        found = self.index.get(key)
        if found is not None:
            return found
        if self.fixed:
            raise KGFormatError(
                f"{path}, line {no}: id {quote(key)} is not in {self.path.name}: {quote(line)}"
            )
        self.index[key] = len(self.names)
        self.names.append(self.normalise(key))
        return self.index[key]


def _read_tsv(path: Path, sources: dict[str, bytes], entities: _Ids, relations: _Ids) -> np.ndarray:
    lines = read_lines(path, sources)
    if lines:
        first = [f.strip().lower() for f in lines[0][1].split("\t")]
        lines = skip_header(path, lines, len(first) == 3 and set(first) <= TRIPLE_HEADER)
    rows = array("q")
    for no, line in lines:
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 3 or not all(fields):
            hint = " (fields must be separated by tabs)" if len(fields) == 1 and (" " in line or "," in line) else ""
            raise KGFormatError(
                f"{path}, line {no}: expected 3 non-empty tab-separated fields 'head<TAB>relation<TAB>tail', "
                f"got {len(fields)} field(s){hint}: {quote(line)}"
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
            io.StringIO(read_text(path, sources)), sep="\t", header=None, dtype=str, quoting=csv.QUOTE_NONE,
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
           normalise: Callable[[str], str]) -> tuple[np.ndarray, Labels] | None:  # fmt: skip
    """Indices of the ids ``values``, and the labels: from ``filename`` when present, else by first
    appearance."""
    import pandas as pd

    path = folder / filename
    if not path.is_file():
        codes, uniques = pd.factorize(values)
        ids = tuple(uniques.tolist())
        return codes.astype(np.int64), (tuple(map(normalise, ids)), ids)
    table = _columns(path, sources, 2)
    if table is None:
        return None
    ids, count = table[0], len(table[0])
    # One factorisation of the ids and the values: at 1M ids, 4x faster than an Index's get_indexer.
    codes, uniques = pd.factorize(pd.concat([ids, values], ignore_index=True))
    row_of = np.full(len(uniques), -1, dtype=np.int64)
    row_of[codes[:count]] = np.arange(count)
    found = row_of[codes[count:]]
    if not np.array_equal(row_of[codes[:count]], np.arange(count)) or (found < 0).any():
        return None  # a repeated id, or a value the file does not name: the line reader says which
    names = table[1].copy()
    irregular = names.str.contains(r"\s\s|[\t\n\r\f\v]", regex=True)
    names[irregular] = [" ".join(n.split()) for n in names[irregular]]
    return found, (tuple(names.tolist()), tuple(ids.tolist()))


def _load_tsv_fast(folder: Path, sources: dict[str, bytes]) -> Loaded | None:
    """``load_tsv`` for regular files, vectorised (a 5M-line KG in seconds); None when a file is not."""
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
