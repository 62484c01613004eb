"""The numbers behind the paper's figures and tables, computed from a study's result table.

Input: one row per trial (columns ``status``, ``seed``, ``config.*``, ``valid.*``/``test.*`` metrics as
fractions, cost columns). Only finished trials (``status == "TERMINATED"``) count. Replicates (same
config, different seed) are averaged; every interval is the 95% Student-t interval over seeds,
mean ± t(0.975, n−1)·s/√n (see :mod:`analysis.stats`), absent when n = 1. Metrics come out in
percent (x100), the paper's unit. Drawing lives in :mod:`analysis.plots`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from kon_ray.paper import METRICS, TABLE2, TABLE3, TABLE4, PaperValues
from analysis.stats import summarize

log = logging.getLogger(__name__)

FINISHED = "TERMINATED"
K = "config.model.k"
NEGATIVES = "config.loss.negatives"
JOINT = "config.model.joint"
WEIGHTS = "config.model.joint_weights"
VARIANT = "config.variant"
DATASET = "config.data.dataset"
BACKBONE = "config.model.backbone"
COST = ("trainable_params", "step_time_s", "train_time_s")
OPERATORS = {"sum": "+", "product": "*"}

PaperLike = PaperValues | Mapping[str, Mapping[str, float | None]]


def finished(table: pd.DataFrame) -> pd.DataFrame:
    """The finished trials; a clear ``ValueError`` when there are none."""
    if "status" not in table.columns:
        raise ValueError(f"result table has no 'status' column; columns are {sorted(table.columns)}")
    done = table[table["status"] == FINISHED]
    if done.empty:
        studies = sorted(map(str, table["study"].unique())) if "study" in table.columns else []
        counts = table["status"].value_counts().to_dict()
        raise ValueError(
            f"no finished trials (status == {FINISHED!r}) in study {studies or '?'}: {len(table)} rows, "
            f"statuses {counts}; nothing to report yet"
        )
    return done


def _require(table: pd.DataFrame, *columns: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"result table lacks column(s) {missing}; it has {sorted(table.columns)}")


def varies(table: pd.DataFrame, column: str) -> bool:
    """Whether ``column`` takes more than one value across the table's trials (all statuses)."""
    return column in table.columns and table[column].nunique(dropna=True) > 1


def _warn_confounded(done: pd.DataFrame, by: str) -> None:
    config = [c for c in done.columns if c.startswith("config.") and c != by and "seed" not in c]
    others = [c for c in config if done[c].astype(str).nunique() > 1]
    if others:
        log.warning("averaging over %s although %s also vary in the table", by, others)


def _curve(
    table: pd.DataFrame, by: str, name: str, metrics: tuple[str, ...], split: str, cost: tuple[str, ...]
) -> pd.DataFrame:
    done = finished(table)
    _require(done, by, *(f"{split}.{m}" for m in metrics), *cost)
    _warn_confounded(done, by)
    rows = []
    for value, group in done.groupby(by, sort=True):
        row: dict[str, float | int] = {name: value, "n": len(group)}
        for metric in metrics:
            s = summarize((group[f"{split}.{metric}"] * 100).tolist())
            row |= {f"{metric}_mean": s.mean, f"{metric}_ci": s.half_width}
            row |= {f"{metric}_low": s.low, f"{metric}_high": s.high}
        row |= {c: float(group[c].mean()) for c in cost}
        rows.append(row)
    return pd.DataFrame(rows)


def heads_curve(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Fig. 3: per K, mean MRR (percent) with its 95% Student-t CI over seeds, n, and mean cost.

    Columns: ``k, n, mrr_mean, mrr_ci`` (half-width, NaN when n = 1), ``mrr_low, mrr_high,
    trainable_params, step_time_s, train_time_s``. Only finished trials.
    """
    return _curve(table, K, "k", ("mrr",), split, COST)


def negatives_curve(table: pd.DataFrame, split: str = "test") -> pd.DataFrame:
    """Fig. 4: per |N|, mean and 95% Student-t CI (percent) of MRR, Hits@1, Hits@3 and Hits@10.

    Columns: ``negatives, n`` and ``<metric>_mean, <metric>_ci, <metric>_low, <metric>_high`` for
    each metric in :data:`kon_ray.paper.METRICS`. Only finished trials.
    """
    return _curve(table, NEGATIVES, "negatives", METRICS, split, ())


def _comparison(done: pd.DataFrame, labels: pd.Series, paper: PaperValues, split: str) -> pd.DataFrame:
    """Tidy rows (row, metric): reproduced mean ± CI half-width (percent), n, paper value, difference.

    Rows follow the paper's order, then reproduced labels the paper lacks; paper rows with no
    finished trial have n = 0 and NaN reproduced values.
    """
    _require(done, *(f"{split}.{m}" for m in METRICS))
    order = list(paper.rows) + sorted(set(labels) - set(paper.rows))
    records = []
    for label in order:
        group = done[labels == label]
        for metric in METRICS:
            s = summarize((group[f"{split}.{metric}"] * 100).tolist())
            published = paper.rows.get(label, {}).get(metric)
            published = math.nan if published is None else float(published)
            records.append(
                {"row": label, "metric": metric, "n": s.n, "reproduced": s.mean, "ci": s.half_width,
                 "paper": published, "difference": s.mean - published}  # fmt: skip
            )
    return pd.DataFrame.from_records(records, columns=["row", "metric", "n", "reproduced", "ci", "paper", "difference"])


def joint_probability_table(table: pd.DataFrame, paper: PaperLike = TABLE4, split: str = "test") -> pd.DataFrame:
    """Table 4: rows "+ learnable", "+ constant", "* learnable", "* constant" (joint operator x weights).

    Tidy columns ``row, metric, n, reproduced, ci, paper, difference``: ``reproduced`` is the mean
    over seeds in percent, ``ci`` the 95% Student-t half-width, ``difference`` reproduced − paper.
    """
    done = finished(table)
    _require(done, JOINT, WEIGHTS)
    labels = done[JOINT].map(lambda j: OPERATORS.get(str(j), str(j))) + " " + done[WEIGHTS].astype(str)
    return _comparison(done, labels, PaperValues.of(paper, "Table 4"), split)


def ablation_table(table: pd.DataFrame, paper: PaperLike = TABLE3, split: str = "test") -> pd.DataFrame:
    """Table 3: one row per ``config.variant``; same columns as :func:`joint_probability_table`."""
    done = finished(table)
    _require(done, VARIANT)
    return _comparison(done, done[VARIANT].astype(str), PaperValues.of(paper, "Table 3"), split)


def dataset_key(name: object) -> str:
    """A dataset's name for matching: basename, lower case, letters and digits only."""
    return re.sub(r"[^a-z0-9]", "", Path(str(name)).name.lower())


def main_table(
    table: pd.DataFrame, paper: PaperLike | None = None, dataset: str = "DB15K", row: str = "K-ON", split: str = "test"
) -> pd.DataFrame:
    """Table 2 for ``dataset``: the reproduced K-ON row beside the paper's K-ON row and baselines.

    ``paper`` defaults to the published Table 2 for ``dataset`` (:data:`kon_ray.paper.TABLE2`).
    Trials are those whose ``config.data.dataset`` names ``dataset`` (case and punctuation
    ignored, e.g. "MKG-W" matches "data/mkgw"). Same columns as :func:`joint_probability_table`;
    baselines have n = 0.
    """
    if paper is None:
        published = {dataset_key(k): v for k, v in TABLE2.items()}
        if dataset_key(dataset) not in published:
            raise ValueError(f"dataset={dataset!r}: the paper's Table 2 covers {list(TABLE2)}; pass paper= for others")
        paper = published[dataset_key(dataset)]
    done = finished(table)
    if DATASET in done.columns:
        done = done[done[DATASET].map(dataset_key) == dataset_key(dataset)]
        if done.empty:
            present = sorted(table[DATASET].astype(str).unique())
            raise ValueError(f"dataset={dataset!r}: no finished trial on it; datasets present: {present}")
    labels = pd.Series(row, index=done.index)
    return _comparison(done, labels, PaperValues.of(paper, f"Table 2 ({dataset})"), split)
