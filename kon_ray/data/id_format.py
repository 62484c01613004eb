"""The id format, the shipped KGs' (OpenKE's layout).

``entity2id.txt`` and ``relation2id.txt`` hold lines ``<label> id`` or ``id label id``;
``train2id.txt``, ``valid2id.txt``, ``test2id.txt`` hold lines ``head tail relation`` (ids,
whitespace-separated; note the order). A first line holding only the number of lines that follow
(OpenKE's count line) is skipped. Labels become names (``kon_ray.data.names``) and stay, as written,
the source ids (the numbers are the indices). docs/data.md shows five lines of each.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np

from kon_ray.data.lines import SPLITS, KGFormatError, Loaded, quote, read_lines, require, skip_header
from kon_ray.data.names import entity_name, relation_name

ID_FILES = ("entity2id.txt", "relation2id.txt", *(f"{split}2id.txt" for split in SPLITS))


def load_ids(folder: Path, sources: dict[str, bytes]) -> Loaded:
    """The KG in ``folder``; every file's bytes go to ``sources``."""
    require(folder, ID_FILES)
    entities = _read_names(folder / "entity2id.txt", sources)
    relations = _read_names(folder / "relation2id.txt", sources)
    splits = [
        _read_id_triples(folder / f"{split}2id.txt", sources, len(entities), len(relations))
        for split in SPLITS
    ]
    labels = (tuple(map(entity_name, entities)), tuple(entities))
    return labels, (tuple(map(relation_name, relations)), tuple(relations)), splits


def _skip_count(path: Path, lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Drop OpenKE's first line, the number of lines that follow."""
    first = lines[0][1].strip() if lines else ""
    return skip_header(path, lines, first.isdigit() and int(first) == len(lines) - 1)


def _int(path: Path, no: int, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise KGFormatError(f"{path}, line {no}: expected an integer id, got {quote(text)}") from None


def _check_id(path: Path, no: int, what: str, value: int, count: int) -> None:
    if not 0 <= value < count:
        raise KGFormatError(f"{path}, line {no}: {what} id {value} out of range; expected 0..{count - 1}")


def _read_names(path: Path, sources: dict[str, bytes]) -> list[str]:
    """Labels of ``entity2id.txt`` / ``relation2id.txt`` in id order, from ``<label> id`` or ``id label id``
    lines."""
    lines = _skip_count(path, read_lines(path, sources))
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
                f"{path}, line {no}: expected {form} (whitespace-separated), got {quote(line)}"
            )
        index = _int(path, no, parts[-1])
        label = line.strip().rsplit(None, 1)[0]
        if numbered:
            lead, label = label.split(None, 1)
            if _int(path, no, lead) != index:
                raise KGFormatError(
                    f"{path}, line {no}: expected {form} with the same id twice, got {quote(line)}"
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
    for no, line in _skip_count(path, read_lines(path, sources)):
        parts = line.split()
        if len(parts) != 3:
            raise KGFormatError(
                f"{path}, line {no}: expected 3 whitespace-separated ids 'head tail relation', "
                f"got {len(parts)} field(s): {quote(line)}"
            )
        head, tail, relation = (_int(path, no, p) for p in parts)
        _check_id(path, no, "head entity", head, entities)
        _check_id(path, no, "tail entity", tail, entities)
        _check_id(path, no, "relation", relation, relations)
        rows.extend((head, relation, tail))
    if not rows:
        raise KGFormatError(f"{path}: empty split; expected 'head tail relation' lines")
    return np.frombuffer(rows, dtype=np.int64).reshape(-1, 3).copy()
