"""Typed configs: paper defaults, validation messages, dotted overrides."""

from __future__ import annotations

import math

import pytest

from kon_ray.config import ConfigError, ModelConfig, RunConfig, apply_overrides


def test_defaults_are_the_papers() -> None:
    c = RunConfig()
    assert (c.model.k, c.loss.negatives) == (8, 128)
    assert apply_overrides(c, ['model.backbone=some/llm']).learning_rate == 1e-4  # the paper's
    assert c.learning_rate == 1e-3  # the embedded backbone starts from random weights
    assert (c.train.global_batch, c.train.epochs, c.train.warmup_steps) == (192, 5.0, 50)
    assert (c.model.joint, c.model.joint_weights, c.model.score_space, c.model.residual) == (
        "sum",
        "learnable",
        "probability",
        "paper",
    )
    assert c.loss.contrastive == "eq12" and c.model.head_init == "zero"


def test_overrides_are_typed() -> None:
    c = apply_overrides(
        RunConfig(),
        ["model.k=4", "data.dataset=MKG-W", "train.max_minutes=5", "model.conditional_attention=false",
         "model.lora_targets=q_proj,v_proj", "data.valid_limit=none", "model.embedded.layers=2"],
    )
    assert c.model.k == 4 and c.data.dataset == "MKG-W" and c.train.max_minutes == 5.0
    assert c.model.conditional_attention is False and c.model.lora_targets == ("q_proj", "v_proj")
    assert c.data.valid_limit is None and c.model.embedded.layers == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.k=0", "model.k=0: the number of K-ON heads must be >= 1"),
        ("model.kk=3", "unknown key 'kk' in 'model'"),
        ("modle.k=3", "unknown key 'modle' at the top level"),
        ("model.k=four", "expected an integer"),
        ("model.joint=max", "must be one of 'sum', 'product'"),
        ("loss.negatives=0", "loss.negatives=0"),
        ("train.lr=-1", "train.lr=-1.0: must be > 0"),
        ("model=3", "is a section"),
        ("model.k", "expected key=value"),
        ("model.score_space=logit", "loss.contrastive='eq12' needs model.score_space='probability'"),
        ("train.lr=inf", "train.lr='inf': must be a finite number"),
        ("train.lr=nan", "train.lr='nan': must be a finite number"),
        ("train.epochs=inf", "train.epochs='inf': must be a finite number"),
        ("train.gpus_per_worker=inf", "train.gpus_per_worker='inf': must be a finite number"),
        ("train.max_minutes=-inf", "train.max_minutes='-inf': must be a finite number"),
        ("model.k=inf", "model.k='inf': must be a finite number"),
        ("model.k=2.5", "model.k='2.5': expected an integer"),
        ("train.seed=-1", "train.seed=-1: must be >= 0"),
    ],
)
def test_bad_values_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(RunConfig(), [override])


def test_roundtrip_through_dict() -> None:
    c = apply_overrides(RunConfig(), ["model.k=3", "loss.contrastive=infonce"])
    assert RunConfig.from_dict(c.to_dict()) == c


def test_auto_tuning() -> None:
    assert ModelConfig().tuning == "full"
    assert ModelConfig(backbone="some/llm").tuning == "lora"
    assert ModelConfig(backbone="some/llm", backbone_tuning="full").tuning == "full"


def test_cross_field_checks_run_on_construction() -> None:
    """A product of probabilities needs probability space, whatever the loss."""
    with pytest.raises(ConfigError, match="model.joint='product' needs model.score_space='probability'"):
        apply_overrides(RunConfig(), ["loss.contrastive=infonce", "model.score_space=logit", "model.joint=product"])
    assert apply_overrides(RunConfig(), ["loss.contrastive=infonce", "model.score_space=logit"]).model.score_space == "logit"
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_python_values_are_refused(value: float) -> None:
    """Study files and ``from_dict`` pass Python floats, which go through the same coercer."""
    with pytest.raises(ConfigError, match=r"train\.lr=.*: must be a finite number"):
        apply_overrides(RunConfig(), {"train.lr": value})


def test_integers_from_python_values() -> None:
    assert apply_overrides(RunConfig(), {"model.k": 4.0}).model.k == 4
    for bad in (4.5, True):
        with pytest.raises(ConfigError, match="model.k=.*: expected an integer"):
            apply_overrides(RunConfig(), {"model.k": bad})
