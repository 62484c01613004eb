"""Hyper-parameter search views from an Optuna storage, drawn by ``optuna.visualization``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import plotly.graph_objects as go

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HpoViews:
    """Figures keyed "history", "importance", "parallel"; ``notes`` say why any is missing."""

    study: str
    figures: Mapping[str, go.Figure] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    complete_trials: int = 0


def hpo_views(storage_url: str, study_name: str) -> HpoViews:
    """Optimisation history, parameter importances and parallel coordinates of one Optuna study.

    ``storage_url`` is an Optuna storage, e.g. ``"sqlite:///path/optuna.db"``. Importances need at
    least 2 complete trials and are skipped with a note when fewer exist or when computing them fails.
    """
    import optuna  # the "studies" extra

    study = optuna.load_study(study_name=study_name, storage=storage_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    figures: dict[str, go.Figure] = {}
    notes: list[str] = []
    if len(study.directions) > 1:
        notes.append(f"{study_name}: multi-objective study; single-objective views skipped")
    elif not complete:
        notes.append(f"{study_name}: no complete trial yet; no views")
    else:
        figures["history"] = optuna.visualization.plot_optimization_history(study)
        figures["parallel"] = optuna.visualization.plot_parallel_coordinate(study)
        if len(complete) < 2:
            notes.append(f"parameter importances skipped: {len(complete)} complete trial(s), need >= 2")
        else:
            try:
                figures["importance"] = optuna.visualization.plot_param_importances(study)
            except (RuntimeError, ValueError) as e:
                notes.append(f"parameter importances skipped: {e}")
    for note in notes:
        log.info(note)
    order = ("history", "importance", "parallel")
    return HpoViews(study_name, MappingProxyType({k: figures[k] for k in order if k in figures}), tuple(notes), len(complete))
