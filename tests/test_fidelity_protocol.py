"""Protocol rules of a whole run, each pinned by a fast test on a tiny KG.

- ranking filters the known answers of train, valid and test, and runs in eval mode;
- the contrastive loss takes candidate 0, the target, as its positive;
- the eq. 8 mask covers exactly the entity's real tokens;
- ``model.conditional_attention=false`` removes the attention layer;
- the checkpoint is selected on the valid split, the test split is ranked once at the end;
- negatives are "strict": only training answers are excluded.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kon_ray.backbone import load_tokenizer
from kon_ray.data import AnswerIndex, Queries, both_directions, sample_negatives
from kon_ray.data.prompts import TEMPLATES, encode_kg
from kon_ray.data.queries import HEAD, TAIL
from kon_ray.losses import contrastive
from kon_ray.training import Setup, compute_losses, evaluate, run, setup
from tests.conftest import tiny_config


def read_triples(path: Path) -> list[tuple[str, str, str]]:
    return [tuple(line.split("\t")) for line in path.read_text().splitlines() if line]  # type: ignore[misc]


def write_triples(path: Path, triples: list[tuple[str, str, str]]) -> None:
    path.write_text("".join("\t".join(t) + "\n" for t in triples))


@pytest.fixture(scope="module")
def split_kg(tiny_kg: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny_kg with test triples not in train, whose queries have further answers known only in
    valid or test: (p, friendOf, ?) has one training answer, two test answers and one valid answer."""
    folder = Path(shutil.copytree(tiny_kg, tmp_path_factory.mktemp("split") / "kg"))
    train = read_triples(folder / "train.tsv")
    people = sorted({h for h, r, _ in train if r == "friendOf"})
    friends = {h: t for h, r, t in train if r == "friendOf"}
    test, valid = [], []
    for i, person in enumerate(people[:12]):
        others = [p for p in people if p not in (person, friends[person])]
        test += [(person, "friendOf", others[i]), (person, "friendOf", others[i + 12])]
        valid.append((person, "friendOf", others[i + 24]))
    write_triples(folder / "test.tsv", test)
    write_triples(folder / "valid.tsv", read_triples(folder / "valid.tsv") + valid)
    return folder


def randomise_heads(s: Setup) -> None:
    """Random K-ON weights (zero-initialised ones included), so that dropout and every step matter."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in s.model.kon.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)


@pytest.fixture(scope="module")
def split_setup(split_kg: Path) -> Setup:
    """The product joint (eq. 11) here: names share their first token (the space), and with the sum
    the first step dominates, so entities score within rounding of each other and ranks blur."""
    overrides = ("model.dtype=float32", "model.joint=product", "model.score_lora_dropout=0.5")
    s = setup(tiny_config(split_kg, *overrides))
    randomise_heads(s)
    return s


@pytest.fixture(scope="module")
def loss_setup(split_kg: Path) -> Setup:
    """The default sum joint, for the losses: under the product, p^e is so small that eq. 12 sits
    at its floor and compares only rounding."""
    s = setup(tiny_config(split_kg, "model.dtype=float32"))
    randomise_heads(s)
    return s


def reference_scores(s: Setup, queries: Queries) -> torch.Tensor:
    """(n, E) scores of all entities, one query at a time, in eval mode."""
    was_training = s.model.training
    s.model.eval()
    rows = []
    with torch.no_grad():
        for q in range(len(queries)):
            batch = s.encoded.batch(queries.take(slice(q, q + 1)), with_targets=False)
            rows.append(s.model.scores_all(batch, s.entity_tokens, s.entity_mask)[0].float())
    s.model.train(was_training)
    return torch.stack(rows)


def known_answers(*splits: np.ndarray) -> dict[tuple[int, int, int], set[int]]:
    """(anchor, relation, direction) -> every answer in ``splits``, by a loop over their triples."""
    answers: dict[tuple[int, int, int], set[int]] = defaultdict(set)
    for split in splits:
        for h, r, t in split.tolist():
            answers[(h, r, 0)].add(t)
            answers[(t, r, 1)].add(h)
    return answers


Interval = tuple[int, int]
TOLERANCE = 1e-5
"""Batched and one-at-a-time scoring differ by float rounding; entities sharing a first token
can score within 1e-6 of each other, so a reference rank is an interval over such near-ties."""


def naive_ranks(
    scores: torch.Tensor, queries: Queries, answers: dict[tuple[int, int, int], set[int]]
) -> list[Interval]:
    """Per query, 1 + the entities scoring above the target, other known answers skipped, as
    (lowest, highest) over near-ties: both the optimistic and the pessimistic rank lie in it."""
    out = []
    for q in range(len(queries)):
        key = (int(queries.anchor[q]), int(queries.relation[q]), int(queries.direction[q]))
        target = int(queries.target[q])
        others = [e for e in range(scores.shape[1]) if e != target and e not in answers[key]]
        row = scores[q].tolist()
        clearly_above = sum(row[e] > row[target] + TOLERANCE for e in others)
        maybe_above = sum(row[e] > row[target] - TOLERANCE for e in others)
        out.append((1 + clearly_above, 1 + maybe_above))
    return out


def within(ranks: list[float], intervals: list[Interval]) -> bool:
    return all(low <= rank <= high for rank, (low, high) in zip(ranks, intervals, strict=True))


def test_ranking_filters_answers_of_every_split(split_setup: Setup) -> None:
    s = split_setup
    _, table = evaluate(s, "test", None)
    queries = both_directions(s.kg.test)
    scores = reference_scores(s, queries)
    target_scores = scores[torch.arange(len(queries)), queries.target]
    np.testing.assert_allclose(table["target_score"], target_scores, rtol=1e-6, atol=1e-5)
    expected = naive_ranks(scores, queries, known_answers(s.kg.train, s.kg.valid, s.kg.test))
    assert within(table["optimistic"].tolist(), expected) and within(table["pessimistic"].tolist(), expected)
    # The case discriminates: filtering training answers only (or train and test) would rank otherwise.
    for splits in ((s.kg.train,), (s.kg.train, s.kg.test), (s.kg.train, s.kg.valid)):
        other = naive_ranks(scores, queries, known_answers(*splits))
        assert any(low > high for (low, _), (_, high) in zip(other, expected, strict=True))


def test_setup_indexes_train_for_negatives_and_every_split_for_filtering(split_setup: Setup) -> None:
    s = split_setup
    queries = both_directions(np.concatenate([s.kg.train, s.kg.valid, s.kg.test]))
    every_split = (s.kg.train, s.kg.valid, s.kg.test)
    for index, splits in ((s.train_index, (s.kg.train,)), (s.filter_index, every_split)):
        answers = known_answers(*splits)
        mask = index.mask(queries)
        for q in range(len(queries)):
            key = (int(queries.anchor[q]), int(queries.relation[q]), int(queries.direction[q]))
            assert set(torch.nonzero(mask[q]).flatten().tolist()) == answers[key]


def test_ranking_runs_in_eval_mode(split_setup: Setup) -> None:
    """Dropout off while ranking (the scores equal eval-mode scores, twice over), the mode restored after."""
    s = split_setup
    s.model.train()
    queries = both_directions(s.kg.test)
    expected = reference_scores(s, queries)[torch.arange(len(queries)), queries.target]
    for _ in range(2):
        _, table = evaluate(s, "test", None)
        np.testing.assert_allclose(table["target_score"], expected, rtol=1e-6, atol=1e-5)
        assert s.model.training and s.model.kon.training and s.model.backbone.training
    s.model.eval()
    # The case discriminates: the same forward pass in train mode scores otherwise.
    s.model.kon.train()
    with torch.no_grad():
        batch = s.encoded.batch(queries.take(slice(0, 4)), with_targets=False)
        dropped = s.model.scores_all(batch, s.entity_tokens, s.entity_mask)
    s.model.eval()
    assert not torch.allclose(dropped[torch.arange(4), queries.target[:4]].float(), expected[:4], atol=1e-3)


def test_headline_metrics_use_the_configured_ties(tiny_kg: Path) -> None:
    """With K = 1, entities sharing their first token tie exactly: the three rank columns differ."""
    columns = set()
    for ties in ("optimistic", "pessimistic", "realistic"):
        metrics, table = evaluate(setup(tiny_config(tiny_kg, "model.k=1", f"eval.ties={ties}")), "test", None)
        assert metrics["mrr"] == pytest.approx(float(np.mean(1 / table[ties])))
        assert metrics["hits@1"] == pytest.approx(float(np.mean(table[ties] <= 1)))
        columns.add(tuple(table[ties]))
    assert len(columns) == 3  # the case discriminates: ties occur


def with_loss(s: Setup, **changes: object) -> Setup:
    loss = dataclasses.replace(s.config.loss, **changes)
    return dataclasses.replace(s, config=dataclasses.replace(s.config, loss=loss))


def micro_batch(s: Setup) -> tuple[Queries, torch.Tensor]:
    chunk = both_directions(s.kg.train).take(np.arange(0, 64, 3))
    return chunk, sample_negatives(s.train_index, chunk, 8, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["eq12", "infonce", "bce_adversarial"])
def test_contrastive_positive_is_the_target(loss_setup: Setup, name: str) -> None:
    """L_nce of a micro-batch equals the configured loss on (target score, negatives' scores),
    both read from the all-entity ranking scores of the same queries (probability space)."""
    s = with_loss(loss_setup, contrastive=name, nce_weight=0.7)
    s.model.eval()  # the same forward pass in both
    chunk, negatives = micro_batch(s)
    got = compute_losses(s, chunk, negatives)["nce"]
    scores = reference_scores(s, chunk).double()
    rows = torch.arange(len(chunk))
    loss = s.config.loss
    expected = 0.7 * contrastive(scores[rows, chunk.target], scores[rows[:, None], negatives], loss, True)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)
    swapped = 0.7 * contrastive(scores[rows, negatives[:, 0]], scores[rows[:, None], negatives], loss, True)
    assert abs(swapped.item() - expected.item()) > 0.01  # the case discriminates


WEIGHTS = [(0.7, 0.2, 0.3), (0.0, 0.2, 0.3), (0.7, 0.0, 0.3), (0.7, 0.2, 0.0), (0.7, 0.0, 0.0)]


@pytest.mark.parametrize("weights", WEIGHTS)
def test_step_losses_are_the_weighted_terms_and_their_sum(
    loss_setup: Setup, weights: tuple[float, ...]
) -> None:
    """A weight of 0 (Table 3's 'w/o' rows) leaves its term out; ``loss`` is the sum of the others."""
    names = ("nce", "sft", "tdt")
    s = with_loss(loss_setup, **{f"{name}_weight": w for name, w in zip(names, weights, strict=True)})
    s.model.eval()
    out = compute_losses(s, *micro_batch(s))
    assert set(out) == {name for name, w in zip(names, weights, strict=True) if w > 0} | {"loss"}
    assert out["loss"].item() == pytest.approx(sum(out[name].item() for name in names if name in out))


def test_kl_target_detach_setting_reaches_the_loss(loss_setup: Setup) -> None:
    """loss.kl_detach_target decides whether L_tdt's gradient reaches the backbone through its head."""
    grads = []
    for detach in (True, False):
        s = with_loss(loss_setup, nce_weight=0.0, sft_weight=0.0, tdt_weight=1.0, kl_detach_target=detach)
        s.model.eval()
        s.model.zero_grad(set_to_none=True)
        compute_losses(s, *micro_batch(s))["loss"].backward()
        reached = [p.grad.flatten() for p in s.model.backbone.parameters() if p.grad is not None]
        grads.append(torch.cat(reached))
    s.model.zero_grad(set_to_none=True)
    assert grads[0].abs().sum() > 0 and not torch.allclose(grads[0], grads[1])


def test_eq8_mask_covers_exactly_the_real_tokens(split_setup: Setup) -> None:
    """Eq. 8: entity e's K steps hold its first K tokens, then padding; the mask is True on the real ones.
    Teacher forcing (eq. 13) appends exactly the real tokens after the prompt's last token."""
    s = split_setup
    tokenizer = load_tokenizer(s.config.model, s.kg, s.config.data.prompt)
    template = TEMPLATES[s.config.data.prompt][TAIL]
    prompt = template.format(entity=s.kg.entity_names[0], relation=s.kg.relation_names[0])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    names = []
    for name in s.kg.entity_names:  # the name's tokens as the backbone reads them after a prompt
        ids = tokenizer(f"{prompt} {name}", add_special_tokens=False)["input_ids"]
        assert ids[: len(prompt_ids)] == prompt_ids
        names.append(ids[len(prompt_ids) :])
    assert min(map(len, names)) < 4 and max(map(len, names)) > 2  # k=2 truncates some, k=4 pads some
    for k in (2, 4):
        encoded = encode_kg(s.kg, tokenizer, s.config.data.prompt, k)
        for e, ids in enumerate(names):
            real = ids[:k]
            assert encoded.entity_mask[e].tolist() == [step < len(real) for step in range(k)], e
            assert encoded.entity_tokens[e, : len(real)].tolist() == real, e
            assert encoded.entity_tokens[e, len(real) :].tolist() == [encoded.pad_id] * (k - len(real)), e
    k = s.config.model.k
    lengths = [min(len(ids), k) for ids in names]
    chunk = both_directions(s.kg.train).take(np.arange(12))
    batch = s.encoded.batch(chunk, with_targets=True)
    prompt = s.encoded.batch(chunk, with_targets=False)
    for b in range(len(chunk)):
        n = lengths[chunk.target[b]]
        last = int(batch.last[b])
        assert last == int(prompt.last[b]) and int(batch.attention_mask[b].sum()) == last + 1 + n
        appended = batch.input_ids[b, last + 1 : last + 1 + n]
        assert appended.tolist() == s.encoded.entity_tokens[chunk.target[b], :n].tolist()
        assert batch.target_mask[b].tolist() == [step < n for step in range(k)]


def test_conditional_attention_switch_reaches_the_model(tiny_kg: Path) -> None:
    for on in (True, False):
        s = setup(tiny_config(tiny_kg, f"model.conditional_attention={str(on).lower()}"))
        names = [name for name, _ in s.model.kon.named_parameters() if "attention" in name]
        assert (s.model.kon.attention is not None) is on and bool(names) is on


def test_checkpoint_is_selected_on_valid(tiny_kg: Path, tmp_path: Path) -> None:
    """Every validation ranks the valid split (40 triples); the test split (60) is ranked once, at
    the end; the reported valid metrics are those of the best validation."""
    config = tiny_config(tiny_kg, "train.max_steps=4", "train.evals_per_epoch=18", "train.lr=3e-2")
    metrics = run(config, tmp_path / "run")
    history = metrics["history"]
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(h["valid.queries"] == 2 * 40 for h in history)
    assert metrics["test.queries"] == 2 * 60 and metrics["valid.queries"] == 2 * 40
    mrrs = [h["valid.mrr"] for h in history]
    assert len(set(mrrs)) > 1  # the case discriminates
    assert metrics["valid.mrr"] == max(mrrs)


def test_negatives_exclude_only_training_answers(tiny_kg: Path, tmp_path: Path) -> None:
    """Strict negatives: a valid-only answer stays a possible negative.

    (?, livesIn, c) has 16 training answers among 51 entities, so 35 remain; a valid triple adds a
    17th answer. |N| = 35 draws all 35, the valid answer among them, only if it is not excluded
    (excluded, 34 would be drawn and one repeated).
    """
    folder = Path(shutil.copytree(tiny_kg, tmp_path / "kg"))
    train = read_triples(folder / "train.tsv")
    city = sorted({t for _, r, t in train if r == "livesIn"})[0]
    outsider = next(h for h, r, t in train if r == "livesIn" and t != city)
    write_triples(folder / "valid.tsv", read_triples(folder / "valid.tsv") + [(outsider, "livesIn", city)])
    config = tiny_config(folder, "loss.negatives=35", "train.micro_batch=288", "train.max_steps=1")
    s = setup(config)
    assert s.kg.num_entities == 51 and len(both_directions(s.kg.train)) == 288
    assert run(config, tmp_path / "run")["steps"] == 1
    names = s.kg.entity_names
    c, r, o = names.index(city), s.kg.relation_names.index("lives in"), names.index(outsider)
    head = next(h for h, rel, t in s.kg.train.tolist() if rel == r and t == c)
    query = Queries(*(np.array([v], dtype=np.int64) for v in (c, r, HEAD, head)))  # (?, livesIn, city)
    drawn = sample_negatives(s.train_index, query, 35, torch.Generator().manual_seed(0))[0].tolist()
    assert o in drawn and len(set(drawn)) == 35  # all 35 non-answers, the valid-only answer among them
    strict = AnswerIndex.build([s.kg.train, s.kg.valid], s.kg.num_entities, s.kg.num_relations)
    drawn = sample_negatives(strict, query, 35, torch.Generator().manual_seed(0))[0].tolist()
    assert o not in drawn and len(set(drawn)) == 34  # the case discriminates: 34 left, then a repeat


def test_evaluation_table_is_in_split_order(split_setup: Setup) -> None:
    _, table = evaluate(split_setup, "test", None)
    queries = both_directions(split_setup.kg.test)
    expected = pd.DataFrame({n: getattr(queries, n) for n in ("anchor", "relation", "direction", "target")})
    pd.testing.assert_frame_equal(table[list(expected.columns)], expected)
