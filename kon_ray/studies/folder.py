"""The study folder format: ``<storage>/<study>/study.json`` (the ``TrialSpec``) beside Tune's state.

Everything that reads a study folder without running it (``study status``, ``export``, ``report``)
goes through this module, which imports neither Ray nor torch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kon_ray.config import ConfigError, RunConfig, apply_overrides
from kon_ray.studies.study import Study, load_study, trial_overrides

SPEC_FILE = "study.json"
STATE_FILES = "experiment_state*.json"
LIVE_STATE_S = 300.0
"""A live Tune driver saves its experiment state every 10 s or so; an older state is a stopped driver's."""


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
    analyses: tuple[str, ...] = ()
    """The report's figures and tables the study names."""
    paper: Mapping[str, Any] | None = None
    """The study's published values, as ``kon_ray.paper.published_to_json`` writes them."""

    def config(self, params: Mapping[str, Any]) -> RunConfig:
        return apply_overrides(RunConfig(), trial_overrides(self.base, self.variants, params, self.extra))

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "varied": list(self.varied), "analyses": list(self.analyses)}


def experiment_dir(study: Study, storage: str | Path) -> Path:
    return Path(storage).resolve() / study.name


def read_spec(folder: Path) -> TrialSpec:
    path = folder / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{folder}: not a study folder (no {SPEC_FILE})")
    values = json.loads(path.read_text())
    tuples = {name: tuple(values.get(name, ())) for name in ("varied", "analyses")}
    return TrialSpec(**{**values, **tuples})


def folder_of(target: str | Path, storage: str | Path) -> Path:
    """A study's folder from its study file (under ``storage``) or the folder itself."""
    path = Path(target)
    return experiment_dir(load_study(path), storage) if path.suffix == ".py" else path.resolve()


@dataclass(frozen=True)
class SavedTrial:
    """One trial as Tune last saved it in the study folder's experiment state (plain JSON fields only)."""

    trial_id: str
    status: str
    """Tune's status; RUNNING only while a live driver saves the state, else PENDING, as Tune resumes it."""
    config: Mapping[str, Any]
    last_result: Mapping[str, Any]
    metric_analysis: Mapping[str, Mapping[str, Any]]
    num_failures: int
    path: Path
    """The trial's folder (``error.txt``, ``result.json``)."""


def has_trials(folder: Path) -> bool:
    return any(folder.glob(STATE_FILES))


def read_trials(folder: Path) -> list[SavedTrial]:
    """The trials in the newest experiment state of ``folder``, read as JSON, without Ray."""
    state = max(folder.glob(STATE_FILES))  # the newest session's: names end in its start time
    live = time.time() - state.stat().st_mtime <= LIVE_STATE_S
    trials = []
    for trial_json, metadata_json in json.loads(state.read_text())["trial_data"]:
        trial, metadata = json.loads(trial_json), json.loads(metadata_json)
        status = "PENDING" if trial["status"] == "RUNNING" and not live else trial["status"]
        trials.append(
            SavedTrial(
                trial_id=trial["trial_id"],
                status=status,
                config=trial["config"],
                last_result=metadata.get("last_result") or {},
                metric_analysis=metadata.get("metric_analysis") or {},
                num_failures=metadata.get("num_failures", 0),
                path=folder / trial["relative_logdir"],
            )
        )
    return trials


def trial_status(status: str, last_result: Mapping[str, Any]) -> str:
    """Tune's status, with TERMINATED split into finished and PRUNED (stopped by ASHA or the time budget)."""
    return "PRUNED" if status == "TERMINATED" and not last_result.get("final") else status
