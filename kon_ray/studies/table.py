"""A study's tidy result table, built from what Tune keeps on disk; readable while the study runs.

One row per trial: status, seed, the varied config values, metrics (fractions), cost and
provenance. ``analysis/`` reads exactly these column names. A finished trial's ``valid.*`` are
those of its best validation and its ``test.*`` come from that checkpoint; an unfinished trial
shows its latest validation, and ``best.<metric>`` is the best of the study's metric so far.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pandas as pd

from kon_ray.config import RunConfig
from kon_ray.results import write_atomic
from kon_ray.studies.folder import (
    TrialSpec,
    final_row,
    finished_metrics,
    has_trials,
    read_spec,
    read_trials,
    run_folder,
    started_at,
    trial_status,
)

METRICS = tuple(f"{split}.{m}" for split in ("valid", "test") for m in ("mrr", "hits@1", "hits@3", "hits@10"))
COST = ("trainable_params", "step_time_s", "train_time_s", "device_hours")
PROVENANCE = ("git_commit", "git_dirty", "versions", "data_hash", "hardware", "started", "ended")
STATUSES = ("TERMINATED", "ERROR", "PRUNED", "RUNNING", "PENDING")
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*$", re.MULTILINE)


def study_table(folder: Path) -> pd.DataFrame:
    """The table of the study in ``folder`` (``<storage>/<study>``), from Tune's experiment state."""
    spec = read_spec(folder)
    config_columns = [f"config.{k}" for k in spec.varied]
    config_columns += ["config.variant"] if spec.variants else []
    config_columns += [c for c in ("config.model.backbone", "config.data.dataset") if c not in config_columns]
    best = f"best.{spec.metric}"
    columns = ["study", "trial_id", "status", "seed", "error", "failures", *config_columns, *METRICS, best, *COST, *PROVENANCE]
    if not has_trials(folder):
        return pd.DataFrame(columns=columns)
    rows = []
    for trial in read_trials(folder):
        result, params = trial.last_result, dict(trial.config)
        config = spec.config(params)
        status = trial_status(trial.status, result)
        run = run_folder(spec, trial.trial_id)
        finished = None if result.get("final") else finished_metrics(run)
        if finished is not None:  # the run holds its final result; Tune's saved state lags it
            result, status = {**result, **final_row(finished, config, started_at(run))}, "TERMINATED"
        t = config.train
        train_time = result.get("train_time_s")
        rows.append({
            "study": spec.study,
            "trial_id": trial.trial_id,
            "status": status,
            "seed": params.get("seed"),
            "error": _error(trial.path),
            "failures": trial.num_failures,
            **{c: params.get("variant") if c == "config.variant" else _value(config, c) for c in config_columns},
            **{c: result.get(c) for c in METRICS + COST + PROVENANCE},
            best: trial.metric_analysis.get(spec.metric, {}).get(spec.mode),
            "device_hours": None if train_time is None else train_time * t.workers * max(t.gpus_per_worker, 1) / 3600,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=columns)


def _value(config: RunConfig, column: str) -> Any:
    """The value of ``config.<dotted key>`` in a run config."""
    value: Any = config
    for part in column.split(".")[1:]:
        value = getattr(value, part)
    return value


def _error(trial_dir: Path) -> str | None:
    """The cause of the trial's last failure (the exception line of ``error.txt``), if it failed."""
    path = trial_dir / "error.txt"
    if not path.is_file():
        return None
    text = path.read_text(errors="replace")
    causes = [m.group(0) for m in ERROR_LINE.finditer(text)]
    return causes[-1].strip() if causes else text.strip().splitlines()[-1]


def export_table(table: pd.DataFrame, out: Path, study: str) -> tuple[Path, Path]:
    """Write ``<out>/<study>.parquet`` and ``.csv`` atomically."""
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    parquet, csv = out / f"{study}.parquet", out / f"{study}.csv"
    write_atomic(parquet, buffer.getvalue())
    write_atomic(csv, table.to_csv(index=False).encode())
    return parquet, csv


def status_text(table: pd.DataFrame, spec: TrialSpec) -> str:
    """Counts per status (trials Tune has not created yet count as pending) and the best trial so far."""
    counts = table["status"].value_counts().to_dict()
    counts["PENDING"] = counts.get("PENDING", 0) + max(0, spec.trials - len(table))
    lines = [f"{spec.study}: {max(spec.trials, len(table))} trials: " + ", ".join(f"{counts.get(s, 0)} {s.lower()}" for s in STATUSES)]
    scored = table.dropna(subset=[spec.metric]) if spec.metric in table.columns else table.iloc[:0]
    if len(scored):
        best = scored.loc[scored[spec.metric].astype(float).idxmax() if spec.mode == "max" else scored[spec.metric].astype(float).idxmin()]
        params = ", ".join(f"{c.removeprefix('config.')}={best[c]}" for c in table.columns if c.startswith("config.") or c == "seed")
        lines.append(f"best {spec.metric} {best[spec.metric]:.4f}: trial {best['trial_id']} ({best['status'].lower()}; {params})")
    for _, row in table[table["status"] == "ERROR"].iterrows():
        lines.append(f"failed: trial {row['trial_id']}: {row['error']}")
    return "\n".join(lines)
