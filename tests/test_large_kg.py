"""What a large or long-named KG needs: the anchor-name cap in training, and memory that grows
linearly with the entities (at most 50k here), measured as ``bench scale`` measures a stage: the
peak resident memory during the work above the resident memory just before it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kon_ray.bench.scale import Settings, measure, write_synthetic_kg
from kon_ray.data import AnswerIndex, both_directions, load_kg
from kon_ray.evaluation import rank_queries
from kon_ray.training import setup
from tests.conftest import tiny_config

MB = 2**20
SMALL, LARGE = 5_000, 40_000
LINEAR = 1.5
"""Memory may grow 1.5x more than the entities do (8x from SMALL to LARGE); a quadratic term, 8x more."""


def test_training_caps_the_anchor_name_at_data_anchor_tokens(tiny_kg: Path) -> None:
    default, capped = (setup(tiny_config(tiny_kg, *cap)).encoded for cap in ([], ["data.anchor_tokens=2"]))
    assert np.array_equal(default.prompt_keys, capped.prompt_keys)
    long = default.name_lengths[default.prompt_keys % default.num_entities] > 2
    before, after = np.diff(default.prompt_offsets), np.diff(capped.prompt_offsets)
    assert long.any() and after[long].sum() < before[long].sum()  # the long anchors' prompts are shorter
    assert np.array_equal(after[~long], before[~long])  # the short ones untouched
    assert capped.capped_prompts(2) == long.sum() and default.capped_prompts(48) == 0


def test_measure_counts_the_work_alone() -> None:
    earlier = np.ones(200 * MB // 8)  # an earlier, larger peak in the same process
    del earlier
    figures = measure(lambda: {"sum": float(np.ones(50 * MB // 8).sum())})
    assert 45 <= figures["increment_mb"] <= 80 and figures["sum"] == 50 * MB // 8
    assert figures["peak_mb"] >= figures["before_mb"] >= figures["resident_mb"] + 190


def _triples(entities: int, per_entity: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    count = per_entity * entities
    return np.stack([rng.integers(0, n, count) for n in (entities, 50, entities)], axis=1)


def test_answer_index_memory_grows_linearly() -> None:
    AnswerIndex.build([_triples(SMALL)], SMALL, 50)  # warm-up
    grown = {}
    for entities in (SMALL, LARGE):
        triples = _triples(entities)
        built: list[AnswerIndex] = []
        figures = measure(lambda: built.append(AnswerIndex.build([triples], entities, 50)))  # noqa: B023
        grown[entities] = figures["increment_mb"]
        held = sum(a.nbytes for a in (built[0].keys, built[0].offsets, built[0].values))
        assert grown[entities] * MB >= held  # what it keeps is counted
    assert grown[LARGE] / grown[SMALL] <= LINEAR * LARGE / SMALL, grown


def test_chunked_ranking_memory_does_not_grow_with_the_queries() -> None:
    """16 or 256 chunks of 16 queries x 40,000 entities: each chunk's (16, E) scores and masks, never
    (queries, E) (4,096 x E: a bool mask alone is 164 MB), and nothing that grows chunk by chunk."""
    entities, chunk = LARGE, 16
    triples = _triples(entities)
    index = AnswerIndex.build([triples], entities, 50)
    queries = both_directions(triples[:2048])
    generator = torch.Generator().manual_seed(0)

    def score(part: object) -> torch.Tensor:
        return torch.rand(len(part), entities, generator=generator)  # type: ignore[arg-type]

    def rank(count: int) -> float:
        part = queries.take(slice(0, count))
        return measure(lambda: {"rows": float(len(rank_queries(score, part, index, chunk)))})["increment_mb"]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # steady on a busy machine
    try:
        rank(256)  # warm-up
        few, many = rank(256), rank(len(queries))
    finally:
        torch.set_num_threads(threads)
    assert few * MB >= 4 * chunk * entities  # one chunk's float32 scores, at least
    assert many <= 3 * few, (few, many)  # 16x more chunks


@pytest.mark.slow
def test_loading_and_tokenising_memory_grows_linearly(
    tmp_path: Path, tiny_kg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kon_ray.backbone import load_tokenizer
    from kon_ray.data import prompts
    from kon_ray.data.prompts import encode_kg

    config = tiny_config(tiny_kg)

    def load_and_tokenise(folder: Path) -> dict[str, float]:
        kg = load_kg(str(folder))
        tokenizer = load_tokenizer(config.model, kg, config.data.prompt)
        encoded = encode_kg(kg, tokenizer, config.data.prompt, config.model.k, config.data.anchor_tokens)
        arrays = (encoded.entity_tokens.numpy(), encoded.prompt_keys, encoded.prompt_flat, encoded.prompt_offsets)
        return {"held_mb": sum(a.nbytes for a in arrays) / MB}

    settings = Settings(triples_per_entity=2.0, relations=50, held_out=100)
    monkeypatch.setattr(prompts, "CHUNK", 4096)  # at these sizes, 65,536 texts would be one buffer of all
    monkeypatch.setenv("KON_RAY_CACHE", str(tmp_path / "warm-up"))
    load_and_tokenise(tiny_kg)  # lazy imports, first calls
    grown = {}
    for entities in (SMALL, LARGE):
        folder = write_synthetic_kg(tmp_path / f"kg-{entities}", entities, settings)
        monkeypatch.setenv("KON_RAY_CACHE", str(tmp_path / f"cache-{entities}"))  # tokenise, not load a cache
        figures = measure(lambda: load_and_tokenise(folder))  # noqa: B023
        assert figures["increment_mb"] >= figures["held_mb"]
        grown[entities] = figures["increment_mb"]
    assert grown[LARGE] / grown[SMALL] <= LINEAR * LARGE / SMALL, grown
