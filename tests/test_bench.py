"""Benchmarks: their baselines are correct and their records complete. Timings are never asserted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kon_ray.bench.negatives import Settings as NegativeSettings
from kon_ray.bench.sampling import samplers, support
from kon_ray.bench.scoring import autoregressive_scores
from kon_ray.cli import main
from kon_ray.config import flatten
from kon_ray.data import AnswerIndex, Queries, both_directions, load_kg
from kon_ray.overrides import parse_overrides, set_fields
from kon_ray.training import Setup, setup
from tests.conftest import tiny_config


def tiny_overrides(tiny_kg: Path) -> list[str]:
    """``tiny_config`` as the dotted overrides a benchmark takes on its command line."""
    config = tiny_config(tiny_kg).to_dict()
    return [f"{k}={','.join(v) if isinstance(v, tuple) else v}" for k, v in flatten(config) if v is not None]


def teacher_forced(s: Setup, query: Queries) -> torch.Tensor:
    """Naive reference: log p(name | prompt) of every entity, one full sequence per entity."""
    every = np.arange(s.kg.num_entities)
    repeat = {f: np.repeat(getattr(query, f), len(every)) for f in ("anchor", "relation", "direction")}
    queries = Queries(**repeat, target=every)
    batch = s.encoded.batch(queries, with_targets=True)
    logits = s.model.backbone(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    log_p = F.log_softmax(logits.float(), dim=-1)
    positions = batch.last[:, None] + torch.arange(s.encoded.k)
    rows = torch.arange(len(every))[:, None]
    tokens = log_p[rows, positions.clamp(max=log_p.shape[1] - 1), batch.target_tokens]
    return torch.where(batch.target_mask, tokens, 0.0).sum(1)


@torch.no_grad()
def test_autoregressive_scores_are_the_backbone_likelihood(tiny_kg: Path) -> None:
    s = setup(tiny_config(tiny_kg))
    s.model.eval()
    queries = both_directions(s.kg.test[:2])
    entities = torch.arange(s.kg.num_entities)
    scores = autoregressive_scores(s.model.backbone, s.encoded, queries, entities, entity_batch=7)
    expected = torch.stack([teacher_forced(s, queries.take(slice(q, q + 1))) for q in range(len(queries))])
    assert scores.shape == (4, s.kg.num_entities)
    torch.testing.assert_close(scores, expected, atol=1e-4, rtol=1e-4)


def test_support_check_finds_a_mismatch(tiny_kg: Path) -> None:
    kg = load_kg(str(tiny_kg))
    index = AnswerIndex.build([kg.train], kg.num_entities, kg.num_relations)
    queries = both_directions(kg.train[:12])
    draw = samplers(index)
    expected = support(draw["reference"], index, queries)
    assert torch.equal(support(draw["vectorised"], index, queries), expected)
    assert not expected[torch.arange(len(queries)), torch.from_numpy(queries.target)].any()
    shifted = support(lambda q, n: (draw["vectorised"](q, n) + 1) % kg.num_entities, index, queries)
    assert (shifted != expected).any(1).all()


def test_settings_parse_and_reject_unknown_keys(capsys: pytest.CaptureFixture[str]) -> None:
    settings = set_fields(NegativeSettings(), parse_overrides(["negatives=16,64", "steps=3"]))
    assert (settings.negatives, settings.steps) == ((16, 64), 3)
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "negatives", "stepz=3"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "stepz: unknown key 'stepz' among the settings of bench negatives; valid keys: negatives, steps, warmup" in err
    for item, message in [("steps=inf", "steps='inf': must be a finite number"), ("negatives=16,x", "expected an integer")]:
        with pytest.raises(SystemExit):
            main(["bench", "negatives", item])
        assert message in capsys.readouterr().err


def test_bench_sampling_writes_a_record(tiny_kg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["bench", "sampling", "queries=16", "repeats=2", f"data.dataset={tiny_kg}", "loss.negatives=8", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "setup: " in out and "ratio: vectorised speed-up over the set difference" in out
    record = json.loads((tmp_path / "sampling.json").read_text())
    assert record["benchmark"] == "sampling" and record["setup"]["queries"] == 16 and record["setup"]["|N|"] == 8
    assert record["figures"]["rows_with_other_support"] == 0 and record["ratio"] > 0
    assert isinstance(record["met"], bool) and record["config"]["loss"]["negatives"] == 8
    assert {"git", "versions", "host"} <= set(record)


def test_bench_scoring_runs_on_a_tiny_model(tiny_kg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = tiny_overrides(tiny_kg)
    main(["bench", "scoring", "queries=2", "entities=20", "repeats=1", *overrides, "--out", str(tmp_path), "--device", "cpu"])
    assert "(extrapolated)" in capsys.readouterr().out
    record = json.loads((tmp_path / "scoring.json").read_text())
    assert record["figures"]["autoregressive_entities"] == 20 and record["figures"]["extrapolated"]
    assert record["checks"][0]["name"] == "K-ON speed-up over autoregressive"


def test_bench_precision_times_both_sides(tiny_kg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    overrides = tiny_overrides(tiny_kg)
    main(["bench", "precision", "steps=1", "warmup=0", *overrides, "--out", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    assert "float32: " in out and "mixed: " in out and "ratio: step(mixed) / step(float32)" in out
    record = json.loads((tmp_path / "precision.json").read_text())
    assert set(record["figures"]["step_s"]) == {"float32", "mixed"} and record["ratio"] > 0
    assert record["config"]["model"]["dtype"] == "auto"  # each side overrides it
