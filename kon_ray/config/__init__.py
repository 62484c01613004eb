"""Typed, frozen run configuration: the paper's settings as defaults, except the backbone.

Every field is validated on construction; a bad value names the field, the value
and what would be valid. Change a config with ``dataclasses.replace`` or with
dotted ``key=value`` overrides (``apply_overrides``). One module per section
(``data``, ``model``, ``losses``, ``training``, ``evaluation``); ``run`` holds
``RunConfig`` and the overrides.
"""

from kon_ray.config.data import DataConfig
from kon_ray.config.evaluation import EvalConfig
from kon_ray.config.losses import LossConfig
from kon_ray.config.model import EMBEDDED, PUBLISHED_LORA_TARGETS, EmbeddedBackboneConfig, ModelConfig
from kon_ray.config.run import EMBEDDED_LR, PAPER_LR, RunConfig, apply_overrides, flatten
from kon_ray.config.training import TrainConfig
from kon_ray.overrides import ConfigError

__all__ = [
    "EMBEDDED", "EMBEDDED_LR", "PAPER_LR", "PUBLISHED_LORA_TARGETS", "ConfigError", "DataConfig",
    "EmbeddedBackboneConfig", "EvalConfig", "LossConfig", "ModelConfig", "RunConfig", "TrainConfig",
    "apply_overrides", "flatten",
]  # fmt: skip
