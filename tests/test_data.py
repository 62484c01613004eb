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


NAMED = {
    "entities.tsv": "id\tname\n00001740\tbank\n00002137\tbank\nQ42\tDouglas  Adams\n00003553\triver\n",
    "relations.tsv": "P1\tnear\nP2\tpart of\n",
    "train.tsv": "00001740\tP1\t00003553\nQ42\tP2\t00002137\n",
    "valid.tsv": "00002137\tP1\t00003553\n",
    "test.tsv": "Q42\tP1\t00001740\n",
}


def test_ids_with_names(tmp_path: Path) -> None:
    kg = load_kg(str(_write(tmp_path / "named", NAMED)))
    assert kg.entity_names == ("bank", "bank", "Douglas Adams", "river")  # file order; names repeat
    assert kg.relation_names == ("near", "part of")
    assert kg.train.tolist() == [[0, 0, 3], [2, 1, 1]]  # the two banks stay apart
    assert kg.valid.tolist() == [[1, 0, 3]] and kg.test.tolist() == [[2, 0, 0]]


def test_ids_with_one_names_file(tmp_path: Path) -> None:
    alone = {k: v for k, v in NAMED.items() if k != "relations.tsv"}
    kg = load_kg(str(_write(tmp_path / "entities-only", alone)))
    assert kg.entity_names[:2] == ("bank", "bank") and kg.relation_names == ("p1", "p2")  # named by their ids
    alone = {**TSV, "relations.tsv": "bornIn\tplace of birth\nlocatedIn\tlocated in\n"}
    kg = load_kg(str(_write(tmp_path / "relations-only", alone)))
    assert kg.relation_names == ("place of birth", "located in") and kg.entity_names[0] == "Barack Obama"


def test_bom_cr_endings_header_and_count_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    files = {
        **TSV,
        "train.tsv": "\ufeffhead\trelation\ttail\rBarack_Obama\tbornIn\tHonolulu\rHonolulu\tlocatedIn\tHawaii\r",
        "valid.tsv": "\ufeffMichelle_Obama\tbornIn\tBarack_Obama\r\n",
    }
    with caplog.at_level("WARNING"):
        kg = load_kg(str(_write(tmp_path / "clean", files)))
    assert kg.entity_names[:3] == ("Barack Obama", "Honolulu", "Hawaii") and len(kg.train) == 2
    assert "Barack Obama" in kg.entity_names and not any("\ufeff" in n for n in kg.entity_names)
    assert kg.valid.tolist() == [[3, 0, 0]]
    assert "train.tsv, line 1: header 'head\\trelation\\ttail' skipped" in caplog.text
    openke = {**IDS, "entity2id.txt": "3\n" + IDS["entity2id.txt"], "train2id.txt": "2\n0 1 0\n1 2 1\n"}
    assert load_kg(str(_write(tmp_path / "openke", openke))).train.tolist() == [[0, 0, 1], [1, 1, 2]]


def test_duplicates_dropped_from_train_kept_in_valid_and_test(tmp_path: Path) -> None:
    line = "Barack_Obama\tbornIn\tHonolulu\n"
    files = {**TSV, "train.tsv": TSV["train.tsv"] + line + line, "valid.tsv": TSV["valid.tsv"] * 2}
    kg = load_kg(str(_write(tmp_path / "dup", files)))
    assert kg.train.tolist() == [[0, 0, 1], [1, 1, 2]]
    assert len(kg.valid) == 2 and kg.duplicates == {"train": 2, "valid": 1, "test": 0}


def test_db15k_valid_repeats_are_kept_as_published(db15k: KnowledgeGraph) -> None:
    assert len(db15k.valid) == 9904 and db15k.duplicates == {"train": 0, "valid": 2423, "test": 0}
    assert db15k.only_in("test").tolist()[:1] and len(db15k.only_in("test")) == 57


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({**TSV, "train.tsv": "a\tr\tb\nc\tr\x00\td\n"}, r"train\.tsv, line 2: NUL byte"),
        ({**NAMED, "train.tsv": "00001740\tP1\t1740\n"}, r"train\.tsv, line 1: id '1740' is not in entities\.tsv"),
        ({**NAMED, "train.tsv": "Q42\tP9\tQ42\n"}, r"train\.tsv, line 1: id 'P9' is not in relations\.tsv"),
        ({**NAMED, "entities.tsv": "Q1\ta\nQ1\tb\n"}, r"entities\.tsv, line 2: duplicate id 'Q1', .* on line 1"),
        ({**NAMED, "entities.tsv": "Q1\ta\nQ2\n"}, r"entities\.tsv, line 2: expected 'id<TAB>name'"),
        ({**TSV, "entities.tsv": "\n"}, r"entities\.tsv: empty file"),
    ],
)
def test_bad_named_input(tmp_path: Path, files: dict[str, str | bytes], match: str) -> None:
    with pytest.raises(KGFormatError, match=match):
        load_kg(str(_write(tmp_path / "bad", files)))


def test_messages_quote_at_most_about_200_characters(tmp_path: Path) -> None:
    huge = "x" * 5000 + "\r" + "y y y\r" * 100  # CR-only line ends: line 2 is bad, not the whole file
    with pytest.raises(KGFormatError) as error:
        load_kg(str(_write(tmp_path / "long", {**TSV, "train.tsv": "a\tr\tb\r" + huge})))
    assert "train.tsv, line 2:" in str(error.value) and len(str(error.value)) < 500


def test_data_stats_reports_sharing_leakage_and_the_anchor_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kon_ray.cli import main

    long = "a very long name that goes on " * 6
    files = {
        **NAMED,
        "entities.tsv": NAMED["entities.tsv"] + f"Q7\t{long}\nQ8\t{long}x\n",
        "train.tsv": NAMED["train.tsv"] * 2 + "Q7\tP1\tQ8\n",
        "valid.tsv": "Q42\tP2\t00002137\nQ42\tP1\t00003553\n",
    }
    folder = _write(tmp_path / "stats", files)
    main(["data", "stats", str(folder), "model.k=4", "model.embedded.vocab_size=300", "data.anchor_tokens=14"])
    rows = dict(line.split("  ", 1) for line in capsys.readouterr().out.strip().splitlines())
    rows = {key.strip(): value.strip() for key, value in rows.items()}
    assert rows["duplicate triples"] == "train 2 (dropped), valid 0, test 0"
    assert rows["valid triples also in train"] == "1 (50%)" and rows["test triples also in train"] == "0 (0%)"
    assert rows["entities only in valid / test"] == "0 / 0"
    assert rows["entities sharing a name"] == "2 (33%)"  # the two banks
    assert rows["entities sharing their first K=4 tokens"].startswith("4 ")  # banks and the long names
    assert rows["prompts cut at data.anchor_tokens=14"] == "2 (25%)"  # (Q7, P1, ?) and (?, P1, Q8)


def _bpe(words: list[str], vocab: int = 300):  # type: ignore[no-untyped-def]
    from kon_ray.data.tokenizer import train_tokenizer

    return train_tokenizer(words, vocab)


def test_anchor_name_is_capped_in_the_prompt_only(tmp_path: Path) -> None:
    from kon_ray.data.prompts import encode_kg

    long = "a very long name that goes on and on " * 4
    files = {**NAMED, "entities.tsv": NAMED["entities.tsv"] + f"Q7\t{long}\n", "train.tsv": "Q7\tP1\tQ42\n"}
    kg = load_kg(str(_write(tmp_path / "long", files)))
    tokenizer = _bpe([*kg.entity_names, *kg.relation_names, "tail: head: | ="])
    full = encode_kg(kg, tokenizer, "compact", 4, anchor_tokens=None)
    capped = encode_kg(kg, tokenizer, "compact", 4, anchor_tokens=12)
    assert torch.equal(full.entity_tokens, capped.entity_tokens)  # the answer side is cut at K only
    query = both_directions(np.array([[4, 0, 2]])).take(slice(0, 1))  # (Q7, near, ?)
    rows = full.prompt_rows(query), capped.prompt_rows(query)
    lengths = full.prompt_lengths(rows[0])[0], capped.prompt_lengths(rows[1])[0]
    assert full.name_lengths[4] > 20 and lengths[1] <= lengths[0] - (full.name_lengths[4] - 13)
    text = tokenizer.decode(capped.prompt_flat[capped.prompt_offsets[rows[1][0]] : capped.prompt_offsets[rows[1][0] + 1]])
    assert text.startswith("tail: a very long") and "| near =" in text
    other = both_directions(np.array([[2, 0, 4]])).take(slice(0, 1))  # (Douglas Adams, near, ?): short, not cut
    assert full.prompt_lengths(full.prompt_rows(other)) == capped.prompt_lengths(capped.prompt_rows(other))
    assert capped.capped_prompts(12) == 1 and full.capped_prompts(None) == 0


def test_encoding_cache_follows_the_tokenizer_contents_not_its_name(tmp_path: Path) -> None:
    from kon_ray.data.prompts import encode_kg, tokenizer_digest

    kg = load_kg(str(_write(tmp_path / "named", NAMED)))
    a = _bpe([*kg.entity_names, *kg.relation_names], 270)
    b = _bpe(["zzz qqq www", "completely other words", *kg.relation_names], 270)
    a.name_or_path = b.name_or_path = "same/path"  # the old key: name or path and vocabulary size
    assert len(a) == len(b) and tokenizer_digest(a) != tokenizer_digest(b)
    first, second = encode_kg(kg, a, "compact", 4), encode_kg(kg, b, "compact", 4)
    assert not torch.equal(first.entity_tokens, second.entity_tokens)
    assert tokenizer_digest(a) == tokenizer_digest(_bpe([*kg.entity_names, *kg.relation_names], 270))


@pytest.mark.parametrize("named", [False, True])
def test_vectorised_tsv_reader_matches_the_line_reader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, named: bool
) -> None:
    from kon_ray.data import tsv_format

    rng = np.random.default_rng(0)
    ids = [f"{i:08d}" if i % 2 else f"Q{i}" for i in range(300)]
    files = {
        f"{split}.tsv": "\n\n".join(
            f"{ids[h]}\t{'r_' if named else 'rel_'}{r}\t{ids[t]}" for h, r, t in rng.integers(0, [300, 7, 300], (n, 3))
        )
        for split, n in (("train", 900), ("valid", 60), ("test", 60))
    }
    if named:
        files["entities.tsv"] = "".join(f"{i}\tname  {int(i.lstrip('Q')) % 50}\n" for i in ids)
        files["relations.tsv"] = "".join(f"r_{r}\trelation {r}\n" for r in range(7))
    folder = _write(tmp_path / "kg", files)
    fast = load_kg(str(folder))
    monkeypatch.setattr(tsv_format, "_load_tsv_fast", lambda *_: None)
    slow = load_kg(str(folder))
    assert fast.entity_names == slow.entity_names and fast.relation_names == slow.relation_names
    assert fast.digest == slow.digest and fast.duplicates == slow.duplicates
    for split in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(fast, split), getattr(slow, split))
    if named:
        assert fast.entity_names[1] == "name 1"  # file order; whitespace collapsed
    else:
        assert set(fast.entity_names) <= set(ids) and "00000001" in fast.entity_names  # leading zeros kept


def test_regular_tsv_takes_the_vectorised_reader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from kon_ray.data import tsv_format

    def line_by_line(*_: object) -> None:
        raise AssertionError("the line reader ran on a regular file")

    monkeypatch.setattr(tsv_format, "_read_tsv", line_by_line)
    monkeypatch.setattr(tsv_format, "_read_name_file", line_by_line)
    assert load_kg(str(_write(tmp_path / "named", {**NAMED, "entities.tsv": NAMED["entities.tsv"][8:]}))).num_entities == 4


def test_embedded_names_after_the_prompt_do_not_start_with_a_lone_space(tiny_kg: Path) -> None:
    """The embedded tokenizer learns names as the prompts hold them (after a space), so eq. 8's first
    token carries the name, not a space every entity shares."""
    from kon_ray.backbone import load_tokenizer
    from kon_ray.data.prompts import encode_kg
    from tests.conftest import tiny_config

    config = tiny_config(tiny_kg)
    kg = load_kg(str(tiny_kg))
    tokenizer = load_tokenizer(config.model, kg, config.data.prompt)
    encoded = encode_kg(kg, tokenizer, config.data.prompt, config.model.k)
    first = encoded.entity_tokens[:, 0].tolist()
    assert not [t for t in first if not tokenizer.decode([t]).strip()]
    assert len(set(first)) > kg.num_entities // 4
