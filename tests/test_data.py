"""Loading KGs (shipped, id format, TSV), name normalisation, queries and the answer index."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from kon_ray.data import (
    HEAD,
    TAIL,
    AnswerIndex,
    KGFormatError,
    KnowledgeGraph,
    both_directions,
    entity_name,
    load_kg,
    relation_name,
)


@pytest.fixture(scope="module")
def db15k() -> KnowledgeGraph:
    return load_kg("DB15K")


@pytest.mark.parametrize(
    ("dataset", "counts"),
    [("DB15K", (12842, 279, 79222, 9904, 9902)), ("MKG-W", (15000, 169, 34196, 4276, 4274))],
)
def test_shipped_counts(dataset: str, counts: tuple[int, ...]) -> None:
    kg = load_kg(dataset)
    assert (kg.num_entities, kg.num_relations, len(kg.train), len(kg.valid), len(kg.test)) == counts
    for split in (kg.train, kg.valid, kg.test):
        assert split.dtype == np.int64 and split.shape[1] == 3
        assert split[:, [0, 2]].max() < kg.num_entities and split[:, 1].max() < kg.num_relations
    assert len(kg.digest) == 64


def test_shipped_names_and_columns(db15k: KnowledgeGraph) -> None:
    assert db15k.entity_names[0] == "Anarchism"
    assert db15k.entity_names[6675] == "AC/DC"
    assert db15k.relation_names[0] == "see also"
    assert db15k.relation_names[12] == "birth place"
    assert db15k.train[0].tolist() == [11208, 117, 6404]  # file line '11208 6404 117' is head tail relation
    mkg = load_kg("MKG-W")
    assert mkg.entity_names[49] == "Where Are You Going on Holiday?"
    assert mkg.relation_names[0] == "cast member"
    assert mkg.digest != db15k.digest


def test_slice(db15k: KnowledgeGraph) -> None:
    small = db15k.slice(100)
    assert len(small.train) == 100 and len(small.valid) == len(db15k.valid)
    assert small.digest != db15k.digest
    assert db15k.slice(None) is db15k
    with pytest.raises(ValueError, match="train_limit=0"):
        db15k.slice(0)


def test_unseen_drops_training_triples_against_a_naive_check(db15k: KnowledgeGraph) -> None:
    train = {tuple(t) for t in db15k.train.tolist()}
    for split in ("valid", "test"):
        triples = getattr(db15k, split)
        expected = np.array([t for t in triples.tolist() if tuple(t) not in train]).reshape(-1, 3)
        np.testing.assert_array_equal(db15k.unseen(split), expected)
    assert len(db15k.unseen("valid")) == 1185  # 88% of DB15K's valid triples are training triples
    assert len(db15k.unseen("test")) == len(db15k.test)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("<http://dbpedia.org/resource/Barack_Obama>", "Barack Obama"),
        ("http://dbpedia.org/resource/Nice_Girl%3F", "Nice Girl?"),
        ("<http://dbpedia.org/resource/Fahrenheit_9/11>", "Fahrenheit 9/11"),
        ("<http://example.org/things/Big__Red_Dog>", "Big Red Dog"),
        ("New_York_City", "New York City"),
    ],
)
def test_entity_name(raw: str, name: str) -> None:
    assert entity_name(raw) == name


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("<http://dbpedia.org/ontology/birthPlace>", "birth place"),
        ("<http://www.w3.org/2000/01/rdf-schema#seeAlso>", "see also"),
        ("<http://dbpedia.org/ontology/isPartOf>", "is part of"),
        ("original_language_of_film_or_TV_show", "original language of film or tv show"),
        ("located_in/on_physical_feature", "located in/on physical feature"),
        ("hasPart", "has part"),
    ],
)
def test_relation_name(raw: str, name: str) -> None:
    assert relation_name(raw) == name


def _write(folder: Path, files: dict[str, str | bytes]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, content in files.items():
        (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return folder


TSV = {
    "train.tsv": "Barack_Obama\tbornIn\tHonolulu\nHonolulu\tlocatedIn\tHawaii\n",
    "valid.tsv": "\nMichelle_Obama\tbornIn\tChicago\n",
    "test.tsv": "Chicago\tlocatedIn\tIllinois\n",
}
IDS = {
    "entity2id.txt": "<http://x.org/resource/A> 0\n<http://x.org/resource/B> 1\n<http://x.org/resource/C> 2\n",
    "relation2id.txt": "<http://x.org/ontology/likes> 0\n<http://x.org/ontology/hasPart> 1\n",
    "train2id.txt": "0 1 0\n1 2 1\n",
    "valid2id.txt": "2 0 0\n",
    "test2id.txt": "0 2 1\n",
}


def test_tsv_folder(tmp_path: Path) -> None:
    kg = load_kg(str(_write(tmp_path / "mine", TSV)))
    assert kg.name == "mine"
    assert kg.entity_names == ("Barack Obama", "Honolulu", "Hawaii", "Michelle Obama", "Chicago", "Illinois")
    assert kg.relation_names == ("born in", "located in")
    assert kg.train.tolist() == [[0, 0, 1], [1, 1, 2]]
    assert kg.valid.tolist() == [[3, 0, 4]] and kg.test.tolist() == [[4, 1, 5]]


def test_id_folder(tmp_path: Path) -> None:
    kg = load_kg(str(_write(tmp_path / "ids", IDS)))
    assert kg.entity_names == ("A", "B", "C") and kg.relation_names == ("likes", "has part")
    assert kg.train.tolist() == [[0, 0, 1], [1, 1, 2]]
    numbered = {
        **IDS,
        "entity2id.txt": "0 http://x.org/resource/A 0\n1 B 1\n2 C 2\n",
        "relation2id.txt": "0 r_s 0\n1 t 1\n",
    }
    kg = load_kg(str(_write(tmp_path / "numbered", numbered)))
    assert kg.entity_names == ("A", "B", "C") and kg.relation_names == ("r s", "t")


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({**IDS, "train2id.txt": "0 1 0\n1 2\n"}, r"train2id\.txt, line 2: expected 3 whitespace-separated"),
        ({**IDS, "valid2id.txt": "0 1 0\n0 3 0\n"}, r"valid2id\.txt, line 2: tail entity id 3 out of range"),
        ({**IDS, "test2id.txt": "0 1 2\n"}, r"test2id\.txt, line 1: relation id 2 out of range"),
        ({**IDS, "train2id.txt": "0 x 0\n"}, r"train2id\.txt, line 1: expected an integer id, got 'x'"),
        ({**IDS, "entity2id.txt": "<a> 0\n<b> 0\n<c> 2\n"}, r"entity2id\.txt, line 2: duplicate id 0, .* on line 1"),
        ({**IDS, "entity2id.txt": "<a> 0\n<b> 1\n<c> 3\n"}, r"entity2id\.txt, line 3: id 3 out of range"),
        ({**IDS, "relation2id.txt": "<r> 0\n<s>\n"}, r"relation2id\.txt, line 2: expected '<label> id'"),
        ({**IDS, "test2id.txt": "\n\n"}, r"test2id\.txt: empty split"),
        ({**IDS, "train2id.txt": b"0 1 0\n1 2 1\n\xff\n"}, r"train2id\.txt, line 3: not UTF-8"),
        ({k: v for k, v in IDS.items() if k != "valid2id.txt"}, r"valid2id\.txt: missing file"),
        ({**TSV, "valid.tsv": "a\tb\tc\nd,e,f\n"}, r"valid\.tsv, line 2: expected 3 non-empty tab-separated fields"),
        ({**TSV, "train.tsv": "a b c\n"}, r"train\.tsv, line 1: .*separated by tabs"),
        ({**TSV, "test.tsv": "a\tb\tc\na\t\tc\n"}, r"test\.tsv, line 2: expected 3 non-empty"),
        ({**TSV, "test.tsv": "a\tb\tc\td\n"}, r"test\.tsv, line 1: .*got 4"),
        ({**TSV, "valid.tsv": "a\tb\tc\n\nx\tr\t\xe9\n".encode("latin-1")}, r"valid\.tsv, line 3: not UTF-8"),
        ({**TSV, "test.tsv": ""}, r"test\.tsv: empty split"),
        ({k: v for k, v in TSV.items() if k != "test.tsv"}, r"test\.tsv: missing file"),
    ],
)
def test_bad_input(tmp_path: Path, files: dict[str, str | bytes], match: str) -> None:
    with pytest.raises(KGFormatError, match=match):
        load_kg(str(_write(tmp_path / "bad", files)))


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(KGFormatError, match=r"not a shipped KG \(DB15K, MKG-W\)"):
        load_kg("DB99K")
    with pytest.raises(KGFormatError, match="not a shipped KG"):
        load_kg(str(tmp_path))


def _random_triples(rng: np.random.Generator, n: int, entities: int, relations: int) -> np.ndarray:
    return np.stack([rng.integers(0, size, n) for size in (entities, relations, entities)], axis=1)


def test_both_directions() -> None:
    q = both_directions(np.array([[1, 2, 3], [4, 5, 6]]))
    assert len(q) == 4
    assert q.anchor.tolist() == [1, 3, 4, 6] and q.target.tolist() == [3, 1, 6, 4]
    assert q.relation.tolist() == [2, 2, 5, 5] and q.direction.tolist() == [TAIL, HEAD, TAIL, HEAD]
    assert q.take(np.array([3])).anchor.tolist() == [6] and len(q.take(slice(1, 3))) == 2


def test_answer_index_parity() -> None:
    rng = np.random.default_rng(0)
    entities, relations = 30, 4
    splits = [_random_triples(rng, 200, entities, relations), _random_triples(rng, 50, entities, relations)]
    index = AnswerIndex.build(splits, entities, relations)
    known: dict[tuple[int, int, int], set[int]] = defaultdict(set)
    for h, r, t in np.concatenate(splits).tolist():
        known[h, r, TAIL].add(t)
        known[t, r, HEAD].add(h)
    queries = both_directions(_random_triples(rng, 300, entities, relations))  # many keys not indexed
    offsets, values = index.answers(queries)
    mask = index.mask(queries)
    counts = index.counts(queries)
    for i, key in enumerate(zip(queries.anchor.tolist(), queries.relation.tolist(), queries.direction.tolist())):
        expected = sorted(known.get(key, set()))
        assert values[offsets[i] : offsets[i + 1]].tolist() == expected
        assert mask[i].nonzero().flatten().tolist() == expected
        assert counts[i] == len(expected)
    assert offsets.dtype == values.dtype == torch.int64


def test_answer_index_empty_queries() -> None:
    index = AnswerIndex.build([np.array([[0, 0, 1]])], 2, 1)
    offsets, values = index.answers(both_directions(np.zeros((0, 3), dtype=np.int64)))
    assert offsets.tolist() == [0] and values.numel() == 0
