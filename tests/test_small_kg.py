"""A KG of about 140 entities with ids and repeated names trains with the defaults: its busiest
query leaves fewer non-answers than the default |N|, and every data check runs before training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kon_ray.cli import main
from kon_ray.config import ConfigError, RunConfig, apply_overrides
from kon_ray.data import AnswerIndex, both_directions, check_data, load_kg

SENSES = ["bank", "bank", "bank", "spring", "spring", "pitch"]  # names several entities share


def write_small_kg(folder: Path, entities: int = 140, seed: int = 0) -> Path:
    """Wikidata-style ids (``Q1``...) with names, a hub class most entities are an instance of."""
    rng = np.random.default_rng(seed)
    ids = [f"Q{i + 1}" for i in range(entities)]
    names = [SENSES[i] if i < len(SENSES) else f"item {rng.integers(10**6):06d}" for i in range(entities)]
    hub, cities = 0, range(1, 11)
    triples = [(ids[e], "P31", ids[hub]) for e in range(11, 11 + int(0.75 * entities))]  # (?, P31, hub): 105
    triples += [(ids[e], "P19", ids[int(rng.choice(cities))]) for e in range(11, entities)]
    triples += [(ids[e], "P3373", ids[int(rng.integers(11, entities))]) for e in range(11, entities, 2)]
    order = rng.permutation(len(triples))
    lines = ["\t".join(triples[i]) for i in order]
    cut = int(0.8 * len(lines))
    middle = (cut + len(lines)) // 2
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "entities.tsv").write_text("".join(f"{i}\t{n}\n" for i, n in zip(ids, names, strict=True)))
    (folder / "relations.tsv").write_text("P31\tinstance of\nP19\tplace of birth\nP3373\tsibling\n")
    for split, part in (("train", lines[:cut]), ("valid", lines[cut:middle]), ("test", lines[middle:])):
        (folder / f"{split}.tsv").write_text("\n".join(part) + "\n")
    return folder


@pytest.fixture(scope="module")
def small_kg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_small_kg(tmp_path_factory.mktemp("small") / "small")


def _fewest_non_answers(folder: Path) -> int:
    kg = load_kg(str(folder))
    index = AnswerIndex.build([kg.train], kg.num_entities, kg.num_relations)
    return int((kg.num_entities - index.counts(both_directions(kg.train))).min())


def test_small_kg_passes_the_data_checks_with_the_defaults(small_kg: Path) -> None:
    kg = load_kg(str(small_kg))
    config = apply_overrides(RunConfig(), [f"data.dataset={small_kg}"])
    assert kg.num_entities == 140 and kg.entity_names.count("bank") == 3
    assert _fewest_non_answers(small_kg) < config.loss.negatives < kg.num_entities
    check_data(config, kg)


def test_negatives_at_or_above_the_entity_count_are_refused(small_kg: Path) -> None:
    kg = load_kg(str(small_kg))
    for n in (140, 141):
        config = apply_overrides(RunConfig(), [f"data.dataset={small_kg}", f"loss.negatives={n}"])
        with pytest.raises(ConfigError, match=rf"loss.negatives={n}: \|N\| must be below the number of entities"):
            check_data(config, kg)
    check_data(apply_overrides(RunConfig(), ["loss.negatives=139"]), kg)


def test_a_query_that_every_entity_answers_is_refused_before_training(tmp_path: Path) -> None:
    folder = tmp_path / "all"
    folder.mkdir()
    every = "".join(f"x\tr\t{e}\n" for e in ("x", "y", "z"))
    (folder / "train.tsv").write_text(every + "y\ts\tz\n")
    (folder / "valid.tsv").write_text("z\ts\ty\n")
    (folder / "test.tsv").write_text("z\ts\tx\n")
    config = apply_overrides(RunConfig(), [f"data.dataset={folder}", "loss.negatives=2"])
    with pytest.raises(ConfigError, match=r"loss.nce_weight=1.0: the tail query .*\('x', 'r'\) has every entity"):
        check_data(config, load_kg(str(folder)))
    check_data(apply_overrides(config, ["loss.nce_weight=0"]), load_kg(str(folder)))


def test_valid_split_of_training_triples_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "seen"
    folder.mkdir()
    (folder / "train.tsv").write_text("a\tr\tb\nb\tr\tc\nc\tr\td\n")
    (folder / "valid.tsv").write_text("a\tr\tb\n")
    (folder / "test.tsv").write_text("a\tr\tc\n")
    config = apply_overrides(RunConfig(), [f"data.dataset={folder}", "loss.negatives=2"])
    with pytest.raises(ConfigError, match="data.valid_unseen=True: every valid triple of seen"):
        check_data(config, load_kg(str(folder)))


@pytest.mark.slow
def test_small_kg_trains_with_the_default_model(small_kg: Path, tmp_path: Path) -> None:
    """The defaults (|N|=128, 192 queries a step) on 140 entities: short rows are filled, not refused."""
    main(["train", "--no-ray", f"data.dataset={small_kg}", "train.max_steps=2", "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0 < metrics["test.mrr"] <= 1
