"""Each entity's and relation's id in the KG's files, kept beside its name (``KnowledgeGraph.*_ids``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kon_ray.data import KnowledgeGraph, load_kg

NAMED = {
    "entities.tsv": "00001740\tbank\n00002137\tbank\nQ42\tDouglas Adams\n00003553\triver\n",
    "relations.tsv": "P1\tnear\nP2\tpart of\n",
    "train.tsv": "Q42\tP2\t00002137\n00001740\tP1\t00003553\n",
    "valid.tsv": "00002137\tP1\t00003553\n",
    "test.tsv": "Q42\tP1\t00001740\n",
}


def write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


@pytest.mark.parametrize("header", ["", "id\tname\n"], ids=["vectorised", "line by line"])
def test_tsv_names_files_keep_their_ids_as_written(tmp_path: Path, header: str) -> None:
    """A header sends the folder to the line-by-line reader; both readers keep the same ids."""
    files = {**NAMED, "entities.tsv": header + NAMED["entities.tsv"]}
    kg = load_kg(str(write(tmp_path / "named", files)))
    assert kg.entity_ids == ("00001740", "00002137", "Q42", "00003553")  # file order, leading zeros kept
    assert kg.entity_names == ("bank", "bank", "Douglas Adams", "river")
    assert kg.relation_ids == ("P1", "P2") and kg.relation_names == ("near", "part of")
    assert kg.train.tolist() == [[2, 1, 1], [0, 0, 3]]


@pytest.mark.parametrize("header", ["", "head\trelation\ttail\n"], ids=["vectorised", "line by line"])
def test_tsv_labels_are_the_ids(tmp_path: Path, header: str) -> None:
    files = {"train.tsv": f"{header}New_York\tlocatedIn\tUSA\nNew York\tlocatedIn\tUSA\n",
             "valid.tsv": "USA\thasPart\tNew_York\n", "test.tsv": "USA\thasPart\tNew York\n"}  # fmt: skip
    kg = load_kg(str(write(tmp_path / "labels", files)))
    assert kg.entity_ids == ("New_York", "USA", "New York") and kg.entity_names == ("New York", "USA", "New York")
    assert kg.relation_ids == ("locatedIn", "hasPart") and kg.relation_names == ("located in", "has part")


def test_id_format_labels_are_the_ids(tmp_path: Path) -> None:
    """Both forms of entity2id.txt lines, '<label> id' and 'id label id'; the numbers are the indices."""
    files = {
        "entity2id.txt": "<http://dbpedia.org/resource/AC/DC> 1\n<http://dbpedia.org/resource/Bon_Scott> 0\n",
        "relation2id.txt": "0 http://dbpedia.org/ontology/bandMember 0\n",
        "train2id.txt": "1 0 0\n", "valid2id.txt": "1 0 0\n", "test2id.txt": "1 0 0\n",
    }  # fmt: skip
    kg = load_kg(str(write(tmp_path / "ids", files)))
    assert kg.entity_ids == ("<http://dbpedia.org/resource/Bon_Scott>", "<http://dbpedia.org/resource/AC/DC>")
    assert kg.entity_names == ("Bon Scott", "AC/DC")
    assert kg.relation_ids == ("http://dbpedia.org/ontology/bandMember",) and kg.relation_names == ("band member",)


def test_ids_survive_a_slice_and_must_be_one_per_name(tmp_path: Path) -> None:
    kg = load_kg(str(write(tmp_path / "named", NAMED)))
    assert kg.slice(1).entity_ids == kg.entity_ids and kg.slice(1).relation_ids == kg.relation_ids
    none = np.zeros((0, 3), dtype=np.int64)
    with pytest.raises(ValueError, match="1 ids for 2 names: one id per name, or none"):
        KnowledgeGraph("hand", ("a", "b"), ("r",), none, none, none, "", entity_ids=("Q1",))
