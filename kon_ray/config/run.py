"""``RunConfig``, the sections together, and dotted overrides of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kon_ray.config.data import DataConfig
from kon_ray.config.evaluation import EvalConfig
from kon_ray.config.losses import LossConfig
from kon_ray.config.model import EMBEDDED, ModelConfig
from kon_ray.config.training import TrainConfig
from kon_ray.overrides import check, nest, parse_overrides, set_fields

PAPER_LR = 1e-4
EMBEDDED_LR = 1e-3


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "The KG and its splits."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "The backbone and the K-ON head."})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "The HTT losses (Algorithm 1)."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Optimisation and workers."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Filtered ranking."})

    def __post_init__(self) -> None:
        space = self.model.score_space
        check(
            not (self.loss.contrastive == "eq12" and space == "logit"),
            "loss.contrastive='eq12' needs model.score_space='probability' (it takes log p)",
        )
        check(
            not (self.model.joint == "product" and space == "logit"),
            "model.joint='product' needs model.score_space='probability' (a product of probabilities)",
        )

    @property
    def learning_rate(self) -> float:
        """``train.lr``, or the default for the backbone when it is None."""
        if self.train.lr is not None:
            return self.train.lr
        return EMBEDDED_LR if self.model.backbone == EMBEDDED else PAPER_LR

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Rebuild a config from ``to_dict`` output (or any subset of it)."""
        return apply_overrides(cls(), dict(flatten(values)))


def flatten(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) pairs of a nested dict such as ``RunConfig.to_dict()``."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def apply_overrides(config: RunConfig, overrides: Mapping[str, Any] | Sequence[str]) -> RunConfig:
    """Apply dotted overrides, e.g. ``["model.k=4", "data.dataset=MKG-W"]`` or a dict."""
    pairs = parse_overrides(overrides) if not isinstance(overrides, Mapping) else overrides
    return set_fields(config, nest(pairs))
