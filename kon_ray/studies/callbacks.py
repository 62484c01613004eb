"""The study's Ray callbacks: validation reports from Train to Tune, and progress on the terminal.

Imported only once Ray runs (importing Ray reads its loopback switch).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from kon_ray import console
from kon_ray.console import FILE_ONLY, Live
from kon_ray.studies.folder import trial_status
from kon_ray.studies.progress import TrialRow, event_line, trial_table

log = logging.getLogger("kon_ray.studies")


class ValidationToTune(TuneReportCallback):
    """Forwards each validation report to Tune (ASHA, progress). The trial reports its final
    metrics itself, exactly once, even when its run had finished before a resume."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics[0].get("final"):
            super().after_report(run_context, metrics, checkpoint)


class Progress(Callback):
    """The study on the terminal: a table of its trials, redrawn in place at most once a second
    when stdout is a terminal; otherwise one line per trial event. The log file gets the lines.

    Pickled with the tuner (a resumed study restores it): state is set up in ``setup``.
    """

    def __init__(self, study: str, metric: str, mode: str, total: int) -> None:
        self.study, self.metric, self.mode, self.total = study, metric, mode, total

    def setup(self, **info: Any) -> None:
        self.started: dict[str, float] = {}
        self.latest: dict[str, float] = {}
        self.progress: dict[str, float] = {}
        self.begun, self.drawn = time.monotonic(), 0.0
        self.live = Live(sys.stdout) if sys.stdout.isatty() and not console.verbose() else None
        if self.live is not None:
            self.live.start()

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.started[trial.trial_id] = time.monotonic()
        self._event(trials, trial, "started", "RUNNING")

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        if self.metric in result:
            self.latest[trial.trial_id] = result[self.metric]
        if "progress" in result:
            self.progress[trial.trial_id] = result["progress"]

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        status = trial_status("TERMINATED", trial.last_result)
        self._event(trials, trial, "finished" if status == "TERMINATED" else "pruned", status)

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._event(trials, trial, "failed", "ERROR")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._event(trials, trial, "retrying", "RUNNING")

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        if time.monotonic() - self.drawn >= 1.0:
            self._draw(self._rows(trials))

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        if self.live is not None:
            self._draw(self._rows(trials))
            self.live.stop()

    def _rows(self, trials: list[Any], current: Any = None, status: str | None = None) -> list[TrialRow]:
        """Each trial's row; ``current``'s status is ``status`` (Tune updates it after the callbacks)."""
        now = time.monotonic()
        rows = []
        for t in trials:
            state = status if t is current else trial_status(t.status, t.last_result)
            running = state == "RUNNING" and t.trial_id in self.started
            elapsed = now - self.started[t.trial_id] if running else t.last_result.get("time_total_s", 0.0)
            rows.append(TrialRow(
                trial_id=t.trial_id,
                settings=dict(t.config),
                status=state,
                progress=self.progress.get(t.trial_id),
                latest=self.latest.get(t.trial_id),
                best=t.metric_analysis.get(self.metric, {}).get(self.mode),
                elapsed_s=elapsed,
            ))  # fmt: skip
        return rows

    def _event(self, trials: list[Any], trial: Any, event: str, status: str) -> None:
        rows = self._rows(trials, trial, status)
        (row,) = [r for r in rows if r.trial_id == trial.trial_id]
        line = event_line(self.study, self.metric, self.mode, self.total, rows, row, event)
        log.info(line, extra=FILE_ONLY if self.live is not None else {})
        self._draw(rows)

    def _draw(self, rows: list[TrialRow]) -> None:
        if self.live is None:
            return
        elapsed = time.monotonic() - self.begun
        self.live.show(trial_table(self.study, self.metric, self.mode, self.total, rows, elapsed))
        self.drawn = time.monotonic()
