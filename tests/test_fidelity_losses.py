"""Eq. 12-14 and the contrastive options on batches, against naive per-query references.

The hand-worked cases in test_losses.py use one query; these use several, with different
numbers of real steps, so that the mean over queries, the sum over steps, the floor, the
temperature and which side is the positive are all pinned, values and gradients alike.
"""

from __future__ import annotations

import math

import pytest
import torch

from kon_ray import losses
from kon_ray.config import LossConfig

FLOOR = 1e-3


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """log p scores of 3 positives (B,) and their 4 negatives (B, 4), all in (0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    p = torch.rand(3, 5, generator=generator, dtype=torch.float64) * 0.9 + 0.05
    return p[:, 0].log(), p[:, 1:].log()


def naive_eq12(pos: torch.Tensor, neg: torch.Tensor, floor: float) -> float:
    def floored(log_p: torch.Tensor) -> float:
        return math.log(math.exp(log_p) + floor)

    per_query = [-floored(pos[b]) + sum(floored(x) for x in neg[b]) / neg.shape[1] for b in range(len(pos))]
    return sum(per_query) / len(per_query)


def naive_infonce(pos: torch.Tensor, neg: torch.Tensor) -> float:
    per_query = [
        -pos[b].item() + math.log(math.exp(pos[b]) + sum(math.exp(x) for x in neg[b]))
        for b in range(len(pos))
    ]
    return sum(per_query) / len(per_query)


def naive_bce_adversarial(
    pos: torch.Tensor, neg: torch.Tensor, temperature: float, probability: bool
) -> float:
    def logit(s: float) -> float:
        return s - math.log(1 - math.exp(s)) if probability else s

    def log_sigmoid(x: float) -> float:
        return -math.log(1 + math.exp(-x))

    per_query = []
    for b in range(len(pos)):
        logits = [logit(float(x)) for x in neg[b]]  # the weights too see logits, not log p
        weights = [math.exp(temperature * x) for x in logits]
        weights = [w / sum(weights) for w in weights]
        negative = sum(w * log_sigmoid(-x) for w, x in zip(weights, logits))
        per_query.append(-log_sigmoid(logit(float(pos[b]))) - negative)
    return sum(per_query) / len(per_query)


def test_eq12_batch() -> None:
    pos, neg = batch()
    assert losses.eq12(pos, neg, FLOOR).item() == pytest.approx(naive_eq12(pos, neg, FLOOR), rel=1e-9)


def test_infonce_batch() -> None:
    pos, neg = batch()
    assert losses.infonce(pos, neg).item() == pytest.approx(naive_infonce(pos, neg), rel=1e-9)


@pytest.mark.parametrize("probability", [True, False])
def test_bce_adversarial_batch(probability: bool) -> None:
    pos, neg = batch()
    expected = naive_bce_adversarial(pos, neg, 0.7, probability)
    assert losses.bce_adversarial(pos, neg, 0.7, probability).item() == pytest.approx(expected, rel=1e-6)


def test_bce_adversarial_probability_clamp_keeps_p_one_finite() -> None:
    """p = 1 (log p = 0) would give logit +inf and a NaN gradient; clamping p at 1 - 1e-6 keeps
    the positive's term at log(1 + 1e-6 / (1 - 1e-6)) and its gradient finite."""
    pos = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    neg = torch.full((2, 3), math.log(1e-9), dtype=torch.float64, requires_grad=True)  # terms ~1e-9
    value = losses.bce_adversarial(pos, neg, 0.5, probability=True)
    value.backward()
    assert torch.isfinite(pos.grad).all() and torch.isfinite(neg.grad).all()
    assert value.item() == pytest.approx(math.log1p(1e-6 / (1 - 1e-6)) - math.log1p(-1e-9), rel=1e-6)
    ones = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)  # negatives at p = 1 too
    losses.bce_adversarial(torch.zeros(1, dtype=torch.float64), ones, 0.5, probability=True).backward()
    assert torch.isfinite(ones.grad).all()


def test_bce_adversarial_weights_carry_no_gradient() -> None:
    """Self-adversarial weights are detached: the gradient is that of the loss with fixed weights."""
    pos, neg = batch()
    neg = neg.clone().requires_grad_(True)
    losses.bce_adversarial(pos, neg, 2.0, probability=False).backward()
    fixed = neg.detach().clone().requires_grad_(True)
    weights = torch.softmax(2.0 * neg.detach(), -1)
    (-(weights * torch.nn.functional.logsigmoid(-fixed)).sum(-1)).mean().backward()
    torch.testing.assert_close(neg.grad, fixed.grad)


@pytest.mark.parametrize("name", ["eq12", "infonce", "bce_adversarial"])
def test_contrastive_dispatches_with_its_settings(name: str) -> None:
    """``contrastive`` runs the configured loss with the configured floor and temperature."""
    pos, neg = batch()
    config = LossConfig(contrastive=name, floor=0.02, adversarial_temperature=3.0)
    expected = {
        "eq12": lambda: losses.eq12(pos, neg, 0.02),
        "infonce": lambda: losses.infonce(pos, neg),
        "bce_adversarial": lambda: losses.bce_adversarial(pos, neg, 3.0, True),
    }[name]()
    got = losses.contrastive(pos, neg, config, probability=True)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)
    others = [
        losses.eq12(pos, neg, 0.02), losses.infonce(pos, neg), losses.bce_adversarial(pos, neg, 3.0, True)
    ]
    assert sum(abs(o.item() - expected.item()) < 1e-9 for o in others) == 1  # the three differ here


@pytest.mark.parametrize("name", ["eq12", "infonce", "bce_adversarial"])
def test_contrastive_rewards_the_positive_and_punishes_negatives(name: str) -> None:
    """The positive's gradient lowers the loss as its score rises; each negative's as it falls.

    A loss fed the positive in place of a negative (or the other way round) flips these signs.
    """
    pos, neg = batch(1)
    pos, neg = pos.clone().requires_grad_(True), neg.clone().requires_grad_(True)
    losses.contrastive(pos, neg, LossConfig(contrastive=name, floor=FLOOR), probability=True).backward()
    assert (pos.grad < 0).all() and (neg.grad > 0).all()


def test_floor_bounds_log_p() -> None:
    """log(p + f) from log p: exact, including p = 0."""
    log_p = torch.tensor([0.0, math.log(0.5), -math.inf], dtype=torch.float64)
    expected = [math.log(1 + 0.1), math.log(0.6), math.log(0.1)]
    assert losses._floored(log_p, 0.1).tolist() == pytest.approx(expected, rel=1e-12)


def naive_log_softmax(row: torch.Tensor) -> list[float]:
    total = math.log(sum(math.exp(x) for x in row.tolist()))
    return [x - total for x in row.tolist()]


@pytest.mark.parametrize("kind", ["eq13", "cross_entropy"])
def test_sft_sums_steps_and_averages_queries(kind: str) -> None:
    """Eq. 13 over 5 real steps of 2 queries: the sum over steps divided by the 2 queries."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    tokens = torch.tensor([0, 3, 5, 2, 2])
    total = 0.0
    for n in range(5):
        log_p = naive_log_softmax(logits[n])
        target = log_p[tokens[n]]
        if kind == "eq13":
            floored = [math.log(math.exp(x) + FLOOR) for x in log_p]
            total += -math.log(math.exp(target) + FLOOR) + sum(floored) / len(floored)
        else:
            total += -target
    got = losses.sft(logits, tokens, 2, LossConfig(sft=kind, floor=FLOOR)).item()
    assert got == pytest.approx(total / 2, rel=1e-6)


def test_tdt_sums_steps_and_averages_queries() -> None:
    """Eq. 14: sum over steps of KL(p_KON || p_LLM), divided by the queries; not KL(p_LLM || p_KON)."""
    generator = torch.Generator().manual_seed(1)
    kon = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    llm = torch.randn(5, 6, generator=generator, dtype=torch.float64) * 2
    total = 0.0
    for n in range(5):
        p, q = naive_log_softmax(kon[n]), naive_log_softmax(llm[n])
        total += sum(math.exp(a) * (a - b) for a, b in zip(p, q))
    for detach in (True, False):
        assert losses.tdt(kon, llm, 2, detach).item() == pytest.approx(total / 2, rel=1e-6)


def test_tdt_gradient_reaches_the_target_unless_detached() -> None:
    kon = torch.randn(3, 4, requires_grad=True)
    llm = torch.randn(3, 4, requires_grad=True)
    losses.tdt(kon, llm, 1, detach_target=False).backward()
    assert llm.grad is not None and llm.grad.abs().sum() > 0 and kon.grad.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_losses_on_cuda_match_cpu() -> None:
    """Every loss runs on the device of its inputs (InfoNCE's labels included) and agrees with the CPU."""
    pos, neg = batch()
    logits, tokens = torch.randn(5, 6, dtype=torch.float64), torch.tensor([0, 3, 5, 2, 2])
    for name in ("eq12", "infonce", "bce_adversarial"):
        config = LossConfig(contrastive=name, floor=FLOOR)
        cpu = losses.contrastive(pos, neg, config, probability=True)
        assert losses.contrastive(pos.cuda(), neg.cuda(), config, True).item() == pytest.approx(cpu.item())
    htt = LossConfig(floor=FLOOR)
    assert losses.sft(logits.cuda(), tokens.cuda(), 2, htt).item() == pytest.approx(
        losses.sft(logits, tokens, 2, htt).item(), rel=1e-6
    )
    assert losses.tdt(logits.cuda(), logits.flip(1).cuda(), 2, True).item() == pytest.approx(
        losses.tdt(logits, logits.flip(1), 2, True).item(), rel=1e-6
    )
