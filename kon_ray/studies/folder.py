"""The study folder format: ``<storage>/<study>/study.json`` (the ``TrialSpec``) beside Tune's state.

Everything that reads a study folder without running it (``study status``, ``export``, ``report``)
goes through this module, which imports neither Ray nor torch.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kon_ray.config import ConfigError, RunConfig, apply_overrides
from kon_ray.studies.study import Study, load_study, trial_overrides

SPEC_FILE = "study.json"
STARTED_FILE = "started.txt"
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
    definition: Mapping[str, Any] = field(default_factory=dict)
    """What the study file said when the study ran (``definition``); ``--resume`` compares it."""

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
    try:
        values = {k: v for k, v in json.loads(path.read_text()).items() if k != "loop_extra"}  # older records
        tuples = {name: tuple(values.get(name, ())) for name in ("varied", "analyses")}
        return TrialSpec(**{**values, **tuples})
    except json.JSONDecodeError as error:
        raise ConfigError(f"{path}:{error.lineno}: corrupt study record ({error.msg})") from None
    except (KeyError, TypeError) as error:
        cause = f"{type(error).__name__}: {error}"
        raise ConfigError(f"{path}: not a study record of this kon-ray ({cause})") from None


# Study fields that do not change what a trial runs: a resume may change them.
NOT_DEFINING = ("paper", "max_concurrent_trials", "analyses")


def definition(study: Study) -> dict[str, Any]:
    """What ``study`` says its trials are, as JSON values: every field but ``NOT_DEFINING``."""
    values = {f.name: getattr(study, f.name) for f in dataclasses.fields(study) if f.name not in NOT_DEFINING}
    return json.loads(json.dumps(values, default=_param_json))


def _param_json(param: Any) -> dict[str, Any]:
    return {"kind": type(param).__name__, **dataclasses.asdict(param)}


def differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``field: old -> new`` for each field of two ``definition``s that differs, dict fields by key."""
    out = []
    for name in sorted(set(saved) | set(current)):
        old, new = saved.get(name), current.get(name)
        if isinstance(old, dict) and isinstance(new, dict):
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            out += [f"{name}[{k!r}]: {old.get(k)!r} -> {new.get(k)!r}" for k in keys]
        elif old != new:
            out.append(f"{name}: {old!r} -> {new!r}")
    return out


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
    try:
        pairs = json.loads(state.read_text())["trial_data"]
        saved = [(json.loads(trial), json.loads(metadata)) for trial, metadata in pairs]
    except (ValueError, KeyError, TypeError) as error:
        cause = f"{type(error).__name__}: {error}"
        raise ConfigError(f"{state}: Tune's saved state cannot be read ({cause})") from None
    trials = []
    for trial, metadata in saved:
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


def run_folder(spec: TrialSpec, trial_id: str) -> Path:
    """The Ray Train run of trial ``trial_id``: its checkpoints, and when the trial first started."""
    return Path(spec.train_storage) / f"train-{trial_id}"


def finished_metrics(run: Path) -> dict[str, Any] | None:
    """The final metrics of a trial's run, once its newest checkpoint holds them (the record a
    finished trial is counted from, whatever Tune last saved); None while it has not finished."""
    for folder in sorted(run.glob("checkpoint_*"), reverse=True):  # names end in their time
        if (folder / "metrics.json").is_file() and (folder / "ranks.parquet").is_file():
            import pyarrow.parquet

            try:
                pyarrow.parquet.read_metadata(folder / "ranks.parquet")
                return json.loads((folder / "metrics.json").read_text())
            except (json.JSONDecodeError, pyarrow.ArrowInvalid):  # a copy cut short: not finished yet
                return None
    return None


def saved_data_hash(run: Path) -> str | None:
    """The data hash of the KG a trial's run trained on: from its final metrics, else from its newest
    checkpoint; None before its first checkpoint."""
    finished = finished_metrics(run)
    if finished is not None:
        return finished["data_hash"]
    for state in sorted(run.glob("checkpoint_*/state.json"), reverse=True):
        try:
            return json.loads(state.read_text())["identity"]["data_hash"]
        except (json.JSONDecodeError, KeyError):  # cut short, or an older kon-ray's: the resume says so
            continue
    return None


def started_at(run: Path) -> str | None:
    """When the trial first started (a resumed or retried trial keeps its first start)."""
    path = run / STARTED_FILE
    return path.read_text().strip() if path.is_file() else None


def final_row(metrics: dict[str, Any], config: RunConfig, started: str | None) -> dict[str, Any]:
    """What a finished trial reports to Tune: flat final metrics, cost and provenance."""
    numbers = {k: v for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    return {
        **numbers,
        "final": 1,
        "git_commit": metrics["git"]["commit"],
        "git_dirty": metrics["git"]["dirty"],
        "versions": json.dumps(metrics["versions"], sort_keys=True),
        "data_hash": metrics["data_hash"],
        "hardware": f"{config.train.workers} x {metrics['device']} on {metrics['host']}",
        "nodes": ",".join(dict.fromkeys(metrics.get("nodes", []))),
        "started": started,
        "ended": metrics.get("ended"),
    }
