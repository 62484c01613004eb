"""End to end in one process: K-ON learns a small KG, and L_nce matters (Table 3)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from kon_ray.config import ConfigError
from kon_ray.data import Queries, both_directions, sample_negatives
from kon_ray.evaluation import QUERY_COLUMNS, rank_queries
from kon_ray.training import compute_losses, evaluate, run, setup
from tests.conftest import tiny_config


def test_untrained_model_is_near_chance(tiny_kg: Path) -> None:
    s = setup(tiny_config(tiny_kg))
    metrics, _ = evaluate(s, "test", None)
    assert metrics["mrr"] < 0.15


@pytest.mark.slow
def test_evaluation_batching_is_invisible(tiny_kg: Path) -> None:
    """Length-sorted chunks with repeated prompts scored once give every query the rank it gets
    scored alone, and the table keeps the split's query order."""
    s = setup(tiny_config(tiny_kg, "eval.query_chunk=7"))
    _, table = evaluate(s, "test", None)
    queries = both_directions(s.kg.test)
    assert len(np.unique(s.encoded.prompt_rows(queries))) < len(queries)  # some prompts repeat
    for name in QUERY_COLUMNS:
        np.testing.assert_array_equal(table[name].to_numpy(), getattr(queries, name))
    s.model.eval()

    def alone(query: Queries) -> torch.Tensor:
        return s.model.scores_all(s.encoded.batch(query, with_targets=False), s.entity_tokens, s.entity_mask)

    expected = rank_queries(alone, queries, s.filter_index, chunk=1)
    np.testing.assert_allclose(table["target_score"], expected["target_score"], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(table["realistic"], expected["realistic"])


@pytest.mark.slow
def test_training_learns_and_writes_results(tiny_kg: Path, tmp_path: Path) -> None:
    full = run(tiny_config(tiny_kg), tmp_path / "full")
    untrained, _ = evaluate(setup(tiny_config(tiny_kg)), "test", None)
    assert full["test.mrr"] > untrained["mrr"] + 0.3
    written = json.loads((tmp_path / "full" / "metrics.json").read_text())
    for key in ("test.mrr", "test.hits@1", "test.hits@3", "test.hits@10", "valid.mrr", "trainable_params",
                "step_time_s", "train_time_s", "config", "data_hash", "git", "precision"):
        assert key in written
    assert written["config"]["model"]["k"] == 4
    ranks = pd.read_parquet(tmp_path / "full" / "ranks.parquet")
    assert len(ranks) == 2 * 60 and set(ranks["direction"]) == {0, 1}



@pytest.mark.slow
def test_entity_contrastive_loss_matters(tiny_kg: Path, tmp_path: Path) -> None:
    """Table 3 'w/o L_nce': without the entity-level loss, K-ON ranks clearly worse.

    Shown with the InfoNCE form of L_nce: on this KG the eq. 12 form (the default) measured
    0.43 against 0.52 without L_nce (means of 3 seeds), so it does not separate them here (see
    README). One seed's gap on 120 test queries moves by several points with float rounding, so
    3 seeds are averaged (measured gaps 0.15, 0.10 and 0.12; head queries 0.34, 0.32 and 0.32).
    """
    settings = ("loss.contrastive=infonce", "loss.sft=cross_entropy")
    full, without_nce = [], []
    for seed in range(3):
        full.append(run(tiny_config(tiny_kg, *settings, f"train.seed={seed}"), tmp_path / f"full-{seed}"))
        without = tiny_config(tiny_kg, *settings, "loss.nce_weight=0", f"train.seed={seed}")
        without_nce.append(run(without, tmp_path / f"no-nce-{seed}"))

    def mean(runs: list[dict], key: str) -> float:
        return float(np.mean([r[key] for r in runs]))

    assert mean(without_nce, "test.mrr") < mean(full, "test.mrr") - 0.05
    assert mean(without_nce, "test.head.mrr") < mean(full, "test.head.mrr") - 0.1  # head queries have many answers


def test_htt_losses_on_real_steps_equal_the_masked_padded_form(tiny_kg: Path) -> None:
    """Eq. 13-14 computed at the targets' real steps only equal sum_k over all K steps with the
    padding steps masked, averaged over queries (in float32: the reference below runs outside autocast)."""
    s = setup(tiny_config(tiny_kg, "model.dtype=float32"))
    s.model.eval()  # no dropout: both forms see the same forward pass
    chunk = both_directions(s.kg.train).take(np.arange(16))
    negatives = sample_negatives(s.train_index, chunk, 16, torch.Generator().manual_seed(0))
    got = compute_losses(s, chunk, negatives)
    batch = s.encoded.batch(chunk, with_targets=True)
    mask = batch.target_mask
    assert (~mask).any()  # some targets are shorter than K
    h = s.model.hidden(batch)
    rows = torch.arange(len(h))
    log_kon = F.log_softmax(s.model.kon(h[rows, batch.last], s.model.output_weight), -1)
    positions = (batch.last[:, None] + torch.arange(mask.shape[1])).clamp(max=h.shape[1] - 1)
    log_llm = F.log_softmax(s.model.head(h[rows[:, None], positions]), -1)
    floor = torch.tensor(math.log(s.config.loss.floor))
    target = log_llm.gather(-1, batch.target_tokens[..., None])[..., 0]
    sft = -torch.logaddexp(target, floor) + torch.logaddexp(log_llm, floor).mean(-1)  # eq. 13
    kl = (log_kon.exp() * (log_kon - log_llm)).sum(-1)  # eq. 14
    weights = s.config.loss
    assert got["sft"].item() == pytest.approx(weights.sft_weight * (sft * mask).sum(-1).mean().item(), rel=1e-5)
    assert got["tdt"].item() == pytest.approx(weights.tdt_weight * (kl * mask).sum(-1).mean().item(), rel=1e-5)


def test_validation_on_training_triples_is_refused_unless_asked(tiny_kg: Path) -> None:
    with pytest.raises(ConfigError, match="every valid triple of tiny is a training triple"):
        setup(tiny_config(tiny_kg, "data.valid_unseen=true"))


def test_validation_uses_only_unseen_valid_triples(tiny_kg: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(tiny_kg, tmp_path / "kg")
    head, _, tail = (folder / "train.tsv").read_text().splitlines()[0].split("\t")
    with (folder / "valid.tsv").open("a") as f:
        f.write(f"{tail}\tfriendOf\t{head}\n{tail}\tlivesIn\t{head}\n")  # two triples not in train
    s = setup(tiny_config(folder, "data.valid_unseen=true"))
    assert evaluate(s, "valid", None)[0]["queries"] == 2 * 2  # both directions
    s = setup(tiny_config(folder))
    assert evaluate(s, "valid", None)[0]["queries"] == 2 * (40 + 2)


def test_same_seed_same_result(tiny_kg: Path, tmp_path: Path) -> None:
    a = run(tiny_config(tiny_kg, "train.max_steps=6"), tmp_path / "a")
    b = run(tiny_config(tiny_kg, "train.max_steps=6"), tmp_path / "b")
    assert a["history"][-1]["train.loss"] == b["history"][-1]["train.loss"]
    assert a["test.mrr"] == b["test.mrr"]


def test_negatives_must_be_fewer_than_entities(tiny_kg: Path) -> None:
    with pytest.raises(ConfigError, match="loss.negatives=5000"):
        setup(tiny_config(tiny_kg, "loss.negatives=5000"))
