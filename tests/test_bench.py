"""Benchmarks: their baselines are correct and their records complete. Timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kon_ray.bench.negatives import Settings as NegativeSettings
from kon_ray.bench.sampling import samplers, support
from kon_ray.bench.scoring import autoregressive_scores
from kon_ray.cli import main
from kon_ray.config import RunConfig, apply_overrides, flatten
from kon_ray.data import AnswerIndex, Queries, both_directions, load_kg
from kon_ray.overrides import parse_overrides, set_fields
from kon_ray.training import Setup, setup
from tests.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


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


def test_bench_scale_synthetic_kg_is_seeded_heavy_tailed_and_loadable(tmp_path: Path) -> None:
    from kon_ray.bench.scale import Settings, _exponents, write_synthetic_kg

    settings = Settings(held_out=50)
    kg = load_kg(str(write_synthetic_kg(tmp_path / "a", 3000, settings)))
    again = load_kg(str(write_synthetic_kg(tmp_path / "b", 3000, settings)))
    assert kg.digest == again.digest and kg.num_entities == 3000 and len(kg.test) == 50
    assert 4.5 <= len(kg.train) / kg.num_entities <= 5.1 and kg.num_relations == settings.relations
    degree = np.bincount(kg.train[:, [0, 2]].ravel(), minlength=kg.num_entities)
    assert (degree == 0).sum() <= 2 * settings.held_out and degree.max() > 20 * np.median(degree)  # heavy tail
    words = np.array([len(n.split()) for n in kg.entity_names])
    assert 2 < words.mean() < 3.5 and words.max() <= 6
    stage = {"seconds": 1.0, "peak_mb": 1000.0, "increment_mb": 20.0}
    figures = {str(n): {name: dict(stage) for name in ("imports", "negatives")} for n in (10, 100)}
    figures["100"]["negatives"] = {"seconds": 10.0, "peak_mb": 1900.0, "increment_mb": 400.0}  # 900 MB above
    figures["10"]["negatives"]["peak_mb"] = 1090.0  # imports against 90 MB: linear; its own 400 against 20 MB
    grown = _exponents(Settings(sizes=(10, 100)), figures)["negatives"]
    assert grown == pytest.approx({"time": 1.0, "peak above imports": 1.0, "increment": np.log10(20)})


def test_rank_comparison_allows_ties_within_tolerance_only() -> None:
    from kon_ray.bench.gpu import compare_rankings

    reference = torch.tensor([[-1.0, -2.0, -2.00001, -3.0], [-1.0, -2.0, -3.0, -4.0]])
    targets = torch.tensor([1, 2])
    close = reference * (1 + 1e-6)
    assert compare_rankings(reference, close, targets, 1e-4)["rank_mismatches"] == 0
    swapped = reference.clone()
    swapped[0, 2] = -1.99999  # within 1e-4 of the target: a tie at that tolerance, not a mismatch
    result = compare_rankings(reference, swapped, targets, 1e-4)
    assert result["rank_mismatches"] == 0
    assert result["max_relative_difference"] == pytest.approx(1e-5, rel=1e-2)
    moved = reference.clone()
    moved[1, 3] = -0.5  # an entity far below the target now outranks it
    assert compare_rankings(reference, moved, targets, 1e-4)["rank_mismatches"] == 1
    tied = reference.clone()
    tied[1, 1] = -3.0  # bf16-style: the target ties an entity the reference tells apart
    result = compare_rankings(reference, tied, targets, 1e-2)
    assert result["new_ties"] == 1 and result["queries_with_new_ties"] == 1 and result["rank_mismatches"] == 1
    assert result["first_new_ties"] == [{"query": 1, "target": 2, "tied_with": [1]}]
    assert compare_rankings(reference, reference, targets, 1e-4)["first_new_ties"] == []


def test_relative_score_difference_is_floored_at_the_query_scale() -> None:
    """A score near 0 (log p near 1) differs by float32's error in the terms it is computed from,
    which is relative to the query's scores, not to the score: it is measured against a share of
    the query's largest |score|, while a large score's own relative difference stays as it is."""
    from kon_ray.bench.gpu import SCALE_FLOOR, compare_rankings, relative_difference

    reference = torch.tensor([[-1e-6, -8.0, -40.0]], dtype=torch.float64)
    other = reference + torch.tensor([[4e-6, 0.0, 40.0 * 1e-3]], dtype=torch.float64)  # float32-size error near 0; 1e-3 at -40
    relative = relative_difference(reference, other)
    assert relative[0, 0] == pytest.approx(4e-6 / (SCALE_FLOOR * 40.0))  # not 4, as against |-1e-6|
    assert relative[0, 2] == pytest.approx(1e-3)  # a large score keeps its own scale
    assert relative[0, 1] == 0
    # The rank band uses the same scale: the near-zero target is ranked 1 either way, no mismatch.
    assert compare_rankings(reference, other, torch.tensor([0]), 1e-4)["rank_mismatches"] == 0
    assert relative_difference(torch.zeros(1, 3), torch.zeros(1, 3)).max() == 0  # no 0 / 0


def gpu_overrides(tiny_kg: Path) -> list[str]:
    """The tiny KG and model as ``bench gpu`` takes them: the saved backbone has the embedded shape."""
    return [o for o in tiny_overrides(tiny_kg) if not o.startswith(("model.dtype=", "model.backbone="))]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for a machine without CUDA")
def test_bench_gpu_refuses_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "gpu"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "bench gpu: needs a CUDA device" in captured.err


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")])],
)
def test_bench_gpu_checks(
    tiny_kg: Path, tmp_path: Path, device: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``bench gpu``'s checks: bf16 training with LoRA on a saved backbone, ranking on ``device``
    against the CPU in float32 and in bf16. On a CPU ``run`` is called directly (the command
    refuses a CPU); on CUDA, the command as a user runs it."""
    from kon_ray.bench import gpu

    overrides = [*gpu_overrides(tiny_kg), "model.dtype=bfloat16", "data.test_limit=20"]
    if device == "cuda":
        settings = ["steps=20", "queries=40"]
        main(["bench", "gpu", *settings, *overrides, "--out", str(tmp_path), "--device", "cuda"])
        record = json.loads((tmp_path / "gpu.json").read_text())
        assert record["met"], record["target"]  # scoring's and sft's targets are only reported
        assert {"scoring", "sft"} <= set(record["figures"]) and record["figures"]["peak_memory_gib"] > 0
        assert record["figures"]["ranked_weights_dtype"] == ["bfloat16"]
        assert "first_new_ties" in record["figures"]["ranking_bf16"]
        return
    config = apply_overrides(RunConfig(), [*overrides, "train.lr=1e-2"])
    report = gpu.run(gpu.Settings(steps=20, queries=40), config, torch.device(device))
    out = capsys.readouterr().out
    assert "bf16 ties the target with" in out and "ok: CUDA vs CPU max relative score difference" in out
    same, cast = report.figures["ranking_float32"], report.figures["ranking_bf16"]
    assert same["max_relative_difference"] == 0 and same["rank_mismatches"] == 0  # CPU against itself
    assert cast["queries"] == 40 and cast["max_relative_difference"] > 0  # bf16 differs, within ties
    assert report.figures["heads_dtype"] == ["bfloat16"]  # DeepSpeed's bf16 mode cast the K-ON heads
    assert report.figures["ranked_weights_dtype"] == ["bfloat16"]  # both devices rank those weights
    # Where bf16 ties a target with entities float32 tells apart: counted, the first ones named.
    ties = cast["first_new_ties"]
    assert len(ties) == min(cast["queries_with_new_ties"], gpu.TIE_EXAMPLES)
    entities = set(load_kg(str(tiny_kg)).entity_names)
    for tie in ties:
        assert 0 <= tie["query"] < 40 and tie["target"] in entities and set(tie["tied_with"]) <= entities
        assert f"bf16 tie, query {tie['query']} (" in out
    fixed = report.figures["fixed_batch_loss"]
    assert report.checks[0].met and fixed["after"] < fixed["before"], fixed
    assert report.met  # scoring's and sft's targets (missed on this tiny model) are only reported
    assert {"scoring", "sft"} <= set(report.figures) and "== sft on cpu" in out


def test_bench_gpu_loss_check_fails_on_a_flat_loss(
    tiny_kg: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Steps that change no weight, reporting a constant loss: the loss check fails."""
    from kon_ray.bench import gpu

    monkeypatch.setattr(gpu, "train_step", lambda *args: 1.0)
    overrides = [*gpu_overrides(tiny_kg), "model.dtype=bfloat16", "data.test_limit=4"]
    config = apply_overrides(RunConfig(), overrides)
    report = gpu.run(gpu.Settings(steps=4, queries=4, sub_benchmarks=False), config, torch.device("cpu"))
    fixed = report.figures["fixed_batch_loss"]
    assert fixed["before"] == fixed["after"] and report.checks[0].met is False
    assert "FAILED: fixed-batch loss before - after 0 (target > 0)" in capsys.readouterr().out


def test_bench_gpu_runs_without_ray(tiny_kg: Path) -> None:
    """``bench gpu`` needs torch, DeepSpeed and kon-ray, not Ray: its command's modules, and a run
    of it with its scoring and sft benchmarks (on the CPU, standing in for CUDA), import no Ray module."""
    config = [*gpu_overrides(tiny_kg), "model.dtype=bfloat16", "data.test_limit=4"]
    code = (
        "import sys, torch\n"
        "import kon_ray.cli, kon_ray.bench\n"
        "from kon_ray.bench import gpu, scoring, sft\n"
        "from kon_ray.config import RunConfig, apply_overrides\n"
        f"config = apply_overrides(RunConfig(), {config!r})\n"
        "gpu.run(gpu.Settings(steps=2, queries=4), config, torch.device('cpu'))\n"
        "print('ray:', sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "ray: []", done.stdout[-2000:]


@pytest.mark.slow
def test_bench_scale_records_every_stage(tiny_kg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kon_ray.bench.scale import STAGES

    settings = ["sizes=2000", "held_out=40", "ranked=20", "rank_budget_mb=1", f"folder={tmp_path / 'scale'}"]
    main(["bench", "scale", *settings, *tiny_overrides(tiny_kg), "--out", str(tmp_path), "--device", "cpu"])
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "scale.json").read_text())
    stages = record["figures"]["stages"]["2000"]
    assert set(stages) == set(STAGES) and record["figures"]["exponents"] == {}
    for stage, figures in stages.items():
        assert figures["seconds"] >= 0 and figures["increment_mb"] >= 0, stage
        assert figures["peak_mb"] >= max(figures["before_mb"], figures["resident_mb"] + figures["increment_mb"] - 1e-6)
        assert f"2,000 {stage:<21}" in out
    imports = stages["imports"]["peak_mb"]
    assert stages["load+tokenise cold"]["increment_mb"] > 0 and stages["load+tokenise cold"]["prompts"] > 0
    for stage in ("negatives", "training step", "ranking"):  # above what the stage loaded first
        assert stages[stage]["increment_mb"] < stages[stage]["peak_mb"] - imports, stage
    assert stages["ranking"]["queries"] == 20 and stages["ranking"]["chunk"] >= 1
    assert record["checks"][0]["name"] == "peak of the largest stage at 2,000 entities"
