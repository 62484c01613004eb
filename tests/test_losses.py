"""Eq. 12-14 and the contrastive options, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from kon_ray import losses
from kon_ray.config import LossConfig


def log(x: float) -> float:
    return math.log(x)


def test_eq12_matches_the_formula_with_floor() -> None:
    """Eq. 12: -log(p_e + f) + mean_j log(p_ej + f)."""
    pos = torch.tensor([math.log(0.5)])
    neg = torch.tensor([[math.log(0.1), math.log(0.2)]])
    f = 1e-4
    expected = -log(0.5 + f) + (log(0.1 + f) + log(0.2 + f)) / 2
    assert losses.eq12(pos, neg, f).item() == pytest.approx(expected, rel=1e-5)


def test_eq12_is_bounded_below_by_the_floor() -> None:
    """As printed, eq. 12 goes to -inf as negatives vanish; with the floor it stops at log(f)."""
    f = 1e-4
    pos = torch.tensor([0.0])  # p = 1
    neg = torch.full((1, 8), -1e4)  # p ~ 0
    value = losses.eq12(pos, neg, f).item()
    assert value == pytest.approx(-log(1 + f) + log(f), rel=1e-4)
    unfloored = -pos + neg.mean(-1)
    assert unfloored.item() < value - 1000


def test_eq12_gradient_vanishes_for_negatives_far_below_the_floor() -> None:
    neg = torch.tensor([[math.log(1e-9), math.log(0.3)]], requires_grad=True)
    losses.eq12(torch.tensor([0.0]), neg, 1e-4).backward()
    assert abs(neg.grad[0, 0].item()) < 1e-4 < abs(neg.grad[0, 1].item())


def test_infonce_is_softmax_cross_entropy() -> None:
    pos = torch.tensor([1.0])
    neg = torch.tensor([[0.0, 2.0]])
    expected = -(1.0 - math.log(math.exp(1.0) + math.exp(0.0) + math.exp(2.0)))
    assert losses.infonce(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bce_adversarial_weights_negatives_by_softmax() -> None:
    """Logit space: -log s(x+) - sum_j softmax(T x-)_j log s(-x_j)."""
    pos = torch.tensor([0.5])
    neg = torch.tensor([[1.0, -1.0]])
    t = 0.5
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    w = [math.exp(t * 1.0), math.exp(t * -1.0)]
    w = [x / sum(w) for x in w]
    expected = -log(sig(0.5)) - (w[0] * log(sig(-1.0)) + w[1] * log(sig(1.0)))
    got = losses.bce_adversarial(pos, neg, t, probability=False).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_bce_adversarial_in_probability_space_uses_p_directly() -> None:
    """With log p scores, sigmoid(logit) = p, so the positive term is -log p."""
    pos = torch.tensor([math.log(0.8)])
    neg = torch.tensor([[math.log(0.25)]])
    expected = -log(0.8) - log(1 - 0.25)
    assert losses.bce_adversarial(pos, neg, 0.5, probability=True).item() == pytest.approx(expected, rel=1e-4)


def test_sft_eq13_and_cross_entropy_on_real_steps() -> None:
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.2, 0.6, 0.2], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = torch.tensor([[0, 1, 2]])
    mask = torch.tensor([[True, True, False]])
    real = logits[mask], tokens[mask]  # the real steps only, as training passes them
    ce = losses.sft(*real, 1, LossConfig(sft="cross_entropy")).item()
    assert ce == pytest.approx(-log(0.5) - log(0.6), rel=1e-5)
    f = 1e-4
    step0 = -log(0.5 + f) + (log(0.5 + f) + 2 * log(0.25 + f)) / 3
    step1 = -log(0.6 + f) + (2 * log(0.2 + f) + log(0.6 + f)) / 3
    eq13 = losses.sft(*real, 1, LossConfig(sft="eq13", floor=f)).item()
    assert eq13 == pytest.approx(step0 + step1, rel=1e-5)


def test_tdt_is_kl_of_kon_from_llm_over_real_steps() -> None:
    p = torch.tensor([[[0.7, 0.3], [0.5, 0.5]]])
    q = torch.tensor([[[0.4, 0.6], [0.9, 0.1]]])
    mask = torch.tensor([[True, False]])
    expected = 0.7 * log(0.7 / 0.4) + 0.3 * log(0.3 / 0.6)
    assert losses.tdt(p.log()[mask], q.log()[mask], 1, True).item() == pytest.approx(expected, rel=1e-5)
    assert losses.tdt(q.log()[0], q.log()[0], 1, True).item() == pytest.approx(0, abs=1e-7)


def test_tdt_target_detached() -> None:
    kon = torch.randn(1, 2, 5, requires_grad=True)
    llm = torch.randn(1, 2, 5, requires_grad=True)
    losses.tdt(kon[0], llm[0], 1, detach_target=True).backward()
    assert llm.grad is None and kon.grad is not None


def test_contrastive_registry_matches_the_config_choices() -> None:
    """Every ``loss.contrastive`` name has its loss, and the registry holds no name the config refuses."""
    import typing

    from kon_ray.config import LossConfig
    from kon_ray.losses import CONTRASTIVE

    assert set(CONTRASTIVE) == set(typing.get_args(typing.get_type_hints(LossConfig)["contrastive"]))
