"""The study's Ray callbacks: validation reports from Train to Tune, and progress on the terminal.

Imported only once Ray runs (importing Ray reads its loopback switch).
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback
from ray.tune.integration.ray_train import TuneReportCallback

from kon_ray.studies.folder import trial_status

log = logging.getLogger("kon_ray.studies")


class ValidationToTune(TuneReportCallback):
    """Forwards each validation report to Tune (ASHA, progress). The trial reports its final
    metrics itself, exactly once, even when its run had finished before a resume."""

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics[0].get("final"):
            super().after_report(run_context, metrics, checkpoint)


class Progress(Callback):
    """One line per finished, failed or retried trial: counts and the best so far."""

    def __init__(self, study: str, metric: str, mode: str, total: int) -> None:
        self.study, self.metric, self.mode, self.total = study, metric, mode, total

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(trials, trial, trial_status("TERMINATED", trial.last_result))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(trials, trial, "ERROR")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._line(trials, trial, "RETRYING")

    def _line(self, trials: list[Any], trial: Any, event: str) -> None:
        counts: dict[str, int] = {}
        for t in trials:
            status = trial_status(t.status, t.last_result)
            if t is trial:  # Tune updates its status after the callbacks
                status = "RUNNING" if event == "RETRYING" else event
            counts[status] = counts.get(status, 0) + 1
        best = [(t.metric_analysis[self.metric][self.mode], t) for t in trials if self.metric in t.metric_analysis]
        text = ""
        if best:
            value, leader = (max if self.mode == "max" else min)(best, key=lambda pair: pair[0])
            params = ", ".join(f"{k}={v}" for k, v in leader.config.items())
            text = f"; best {self.metric} {value:.4f} ({params})"
        log.info(
            "%s: trial %s %s | %d/%d done, %d running, %d failed, %d pruned%s",
            self.study, trial.trial_id, event.lower(), counts.get("TERMINATED", 0), self.total, counts.get("RUNNING", 0),
            counts.get("ERROR", 0), counts.get("PRUNED", 0), text,
        )  # fmt: skip
