"""The study folder format: ``<storage>/<study>/study.json`` (the ``TrialSpec``) beside Tune's state.

Everything that reads a study folder without running it (``study status``, ``export``, ``report``)
goes through this module, which imports neither Ray nor torch.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kon_ray.config import ConfigError, RunConfig, apply_overrides
from kon_ray.studies.study import Study, load_study, trial_overrides

SPEC_FILE = "study.json"


@dataclass(frozen=True)
class TrialSpec:
    """What every trial of a study shares; saved as ``study.json`` beside Tune's state."""

    study: str
    base: Mapping[str, Any]
    variants: Mapping[str, Mapping[str, Any]]
    extra: Mapping[str, Any]
    """The command line's global overrides, on top of every trial."""
    varied: tuple[str, ...]
    metric: str
    mode: str
    trials: int
    """Trials the study runs: its grid x variants x seeds, or its Optuna sample budget."""
    train_storage: str
    """Folder of the trials' Ray Train runs (``train-<trial_id>``)."""
    loop_extra: Mapping[str, Any] = field(default_factory=dict)
    """Extra ``distributed.worker`` arguments (fault injection in tests)."""

    def config(self, params: Mapping[str, Any]) -> RunConfig:
        return apply_overrides(RunConfig(), trial_overrides(self.base, self.variants, params, self.extra))

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "varied": list(self.varied)}


def experiment_dir(study: Study, storage: str | Path) -> Path:
    return Path(storage).resolve() / study.name


def read_spec(folder: Path) -> TrialSpec:
    path = folder / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: not a study folder (no {SPEC_FILE})")
    values = json.loads(path.read_text())
    return TrialSpec(**{**values, "varied": tuple(values["varied"]), "loop_extra": {}})


def folder_of(target: str | Path, storage: str | Path) -> Path:
    """A study's folder from its study file (under ``storage``) or the folder itself."""
    path = Path(target)
    return experiment_dir(load_study(path), storage) if path.suffix == ".py" else path.resolve()
