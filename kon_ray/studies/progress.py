"""What a running study shows: a table of its trials (redrawn in place on a terminal), or one line
per trial event (started, finished, pruned, failed, retrying) elsewhere and in the log file.

Plain data in, text out; ``kon_ray.studies.callbacks.Progress`` feeds it from Ray Tune.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SHOWN_STATUS = {
    "TERMINATED": "done", "PRUNED": "pruned", "ERROR": "failed", "RUNNING": "running", "PENDING": "pending",
}


@dataclass(frozen=True)
class TrialRow:
    """One trial as the table shows it."""

    trial_id: str
    settings: Mapping[str, Any]
    """Its varied settings and seed."""
    status: str
    """Tune's status, PRUNED apart (``callbacks.trial_status``)."""
    progress: float | None
    """The fraction of its step or time budget used, at its latest validation."""
    latest: float | None
    """Its latest validation of the study's metric."""
    best: float | None
    elapsed_s: float


def settings_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{key}={_value(value)}" for key, value in settings.items())


def _value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _number(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}" if minutes >= 60 else f"{minutes}:{s:02d}"


def counts_text(rows: list[TrialRow], total: int) -> str:
    counts = {status: sum(r.status == status for r in rows) for status in SHOWN_STATUS}
    return (
        f"{counts['TERMINATED']}/{total} done, {counts['RUNNING']} running, "
        f"{counts['ERROR']} failed, {counts['PRUNED']} pruned"
    )


def best_row(rows: list[TrialRow], mode: str) -> TrialRow | None:
    scored = [r for r in rows if r.best is not None]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored, key=lambda r: r.best)


def trial_table(
    study: str, metric: str, mode: str, total: int, rows: list[TrialRow], elapsed_s: float
) -> list[str]:
    """The live table: a summary line, then one line per trial, columns aligned."""
    lines = [f"{study}  {_clock(elapsed_s)}  {counts_text(rows, total)}"]
    keys = list(dict.fromkeys(key for row in rows for key in row.settings))
    header = ["trial", *keys, "status", "progress", metric, "best", "elapsed"]
    body = [
        [
            row.trial_id,
            *(_value(row.settings[key]) if key in row.settings else "" for key in keys),
            SHOWN_STATUS.get(row.status, row.status.lower()),
            "-" if row.progress is None else f"{min(row.progress, 1.0):.0%}",
            _number(row.latest),
            _number(row.best),
            _clock(row.elapsed_s),
        ]
        for row in rows
    ]
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]
    for cells in [header, *body]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip())
    return lines


def event_line(
    study: str, metric: str, mode: str, total: int, rows: list[TrialRow], row: TrialRow, event: str
) -> str:
    """One line for one trial event, with the study's counts and its best trial so far."""
    what = f"trial {row.trial_id} ({settings_text(row.settings)}) {event}"
    if event != "started" and row.best is not None:
        what += f": best {metric} {row.best:.4f} in {_clock(row.elapsed_s)}"
    text = f"{study}: {what} | {counts_text(rows, total)}"
    best = best_row(rows, mode)
    if best is not None:
        text += f"; best {metric} {best.best:.4f} (trial {best.trial_id})"
    return text
