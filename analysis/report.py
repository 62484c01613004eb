"""One self-contained HTML report of one or more studies: provenance, trial counts, figures and tables.

The file opens offline: plotly.js is embedded once, inline, and nothing is fetched (no CDN, no
MathJax, no web fonts). Each study's figures and tables are the analyses it names
(:data:`analysis.registry.REGISTRY`). For static images see :mod:`analysis.plots`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from plotly.offline import get_plotlyjs

from analysis import figures as F
from analysis.hpo import HpoViews, hpo_views
from analysis.html import escape, figure
from analysis.registry import REGISTRY
from analysis.stats import CI_METHOD
from kon_ray.paper import PaperValues
from kon_ray.results import write_atomic

log = logging.getLogger(__name__)

STATUSES = {"finished": "TERMINATED", "failed": "ERROR", "pruned": "PRUNED", "running": "RUNNING", "pending": "PENDING"}
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}
td:first-child,th:first-child{text-align:left}th.paper,td.paper{background:#f3f3f3}td.reproduced{font-weight:600}
.banner{background:#fff3cd;border:1px solid #e0b000;padding:.5em 1em;font-weight:600}
.note{color:#555;font-style:italic}dt{font-weight:600}dd{margin:0 0 .3em 1.5em;word-break:break-all}
"""


@dataclass(frozen=True)
class StudyInfo:
    """What the report knows about a study beyond its result table."""

    name: str  # matches the table's ``study`` column
    analyses: tuple[str, ...] = ()
    """The figures and tables the study names (``analysis.registry.REGISTRY``); the report guesses none."""
    paper: PaperValues | Mapping[str, PaperValues] | None = None
    """The study's published values (by dataset for Table 2), instead of each analysis's own; None: theirs."""
    expected_trials: int | None = None  # M in "partial: N of M trials finished"; default: rows in the table
    optuna_storage: str | None = None  # e.g. "sqlite:///path/optuna.db", for the HPO views
    optuna_study: str | None = None


class _Ids:
    """Stable element ids: "fig-heads" for the first, then "fig-heads-2", ..."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, base: str) -> str:
        self.seen[base] = self.seen.get(base, 0) + 1
        return base if self.seen[base] == 1 else f"{base}-{self.seen[base]}"


def _distinct(table: pd.DataFrame, column: str) -> list[str]:
    return sorted(map(str, table[column].dropna().unique())) if column in table.columns else []


def status_counts(table: pd.DataFrame) -> dict[str, int]:
    """Trials per status, by the report's names (finished, failed, pruned, running, pending)."""
    return {name: int((table["status"] == status).sum()) for name, status in STATUSES.items()}


def partial_banner(finished: int, total: int) -> str | None:
    """The banner text for a study that has not finished every trial, else None."""
    return f"partial: {finished} of {total} trials finished" if finished < total else None


def _versions(table: pd.DataFrame) -> dict[str, list[str]]:
    found: dict[str, set[str]] = {}
    for raw in table.get("versions", pd.Series(dtype=object)).dropna():
        try:
            versions = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (ValueError, TypeError):
            versions = {"?": raw}
        for package, version in versions.items():
            found.setdefault(str(package), set()).add(str(version))
    return {p: sorted(v) for p, v in sorted(found.items())}


def _dates(table: pd.DataFrame) -> str:
    def parse(column: str) -> pd.Series:
        if column not in table.columns:
            return pd.Series(dtype="datetime64[ns, UTC]")
        return pd.to_datetime(table[column], errors="coerce", utc=True, format="ISO8601").dropna()

    started, ended = parse("started"), parse("ended")
    first = started.min().isoformat(timespec="minutes") if len(started) else "?"
    last = ended.max().isoformat(timespec="minutes") if len(ended) else "?"
    return f"{first} → {last}"


def _provenance(table: pd.DataFrame) -> str:
    pairs = zip(table.get("git_commit", []), table.get("git_dirty", []), strict=False)
    commits = sorted({f"{commit} ({'dirty' if dirty else 'clean'})" for commit, dirty in pairs})
    items = {
        "Backbone": ", ".join(_distinct(table, F.BACKBONE)) or "?",
        "Dataset": ", ".join(_distinct(table, F.DATASET)) or "?",
        "Hardware": ", ".join(_distinct(table, "hardware")) or "?",
        "Dates (first start → last end, UTC)": _dates(table),
        "Git commit": ", ".join(commits) or "?",
        "Data hash": ", ".join(_distinct(table, "data_hash")) or "?",
        "Package versions": "; ".join(f"{p} {' / '.join(v)}" for p, v in _versions(table).items()) or "?",
    }
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in items.items()) + "</dl>"


def _trials(table: pd.DataFrame, expected: int | None) -> str:
    counts = status_counts(table)
    total = max(expected or len(table), len(table))
    parts = []
    if banner := partial_banner(counts["finished"], total):
        parts.append(f'<p class="banner" id="partial">{escape(banner)}</p>')
    parts.append("<p>Trials: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" (of {total})</p>")
    failed = table[table["status"] == STATUSES["failed"]]
    if len(failed):
        rows = "".join(
            "<tr>" + "".join(f"<td>{'' if pd.isna(r.get(c)) else escape(r.get(c))}</td>" for c in ("trial_id", "seed", "error")) + "</tr>"
            for r in failed.to_dict("records")
        )
        parts.append(f'<table id="failures"><tr><th>failed trial</th><th>seed</th><th>error</th></tr>{rows}</table>')
    return "".join(parts)


def _analyses(table: pd.DataFrame, info: StudyInfo, ids: _Ids) -> list[str]:
    """The sections of the analyses the study names, each beside the study's paper values or the registry's."""
    parts = []
    for name in info.analyses:
        if name not in REGISTRY:
            raise ValueError(f"study {info.name}: analysis {name!r} unknown; valid: {', '.join(REGISTRY)}")
        analysis = REGISTRY[name]
        paper = info.paper if info.paper is not None else analysis.paper
        if isinstance(analysis.paper, PaperValues):
            paper = paper if isinstance(paper, PaperValues) else analysis.paper  # by dataset: Table 2's
            frame = analysis.compute(table, paper, "")
            heading = f"<h3>{escape(analysis.title)}</h3>"
            parts += [heading, analysis.draw(frame, paper, ids(analysis.element))]
            continue
        for dataset in _distinct(F.finished(table), F.DATASET) or ["?"]:
            values = paper if isinstance(paper, PaperValues) else _by_dataset(paper, dataset, analysis.title)
            frame = analysis.compute(table, values, dataset)
            element = ids(f"{analysis.element}-{F.dataset_key(dataset)}")
            heading = f"<h3>{escape(analysis.title)}, {escape(dataset)}</h3>"
            parts += [heading, analysis.draw(frame, values, element)]
    return parts


def _by_dataset(paper: Mapping[str, PaperValues], dataset: str, title: str) -> PaperValues:
    published = {F.dataset_key(k): v for k, v in paper.items()}
    return published.get(F.dataset_key(dataset), PaperValues(f"{title} ({dataset})"))


def _hpo(info: StudyInfo, ids: _Ids) -> list[str]:
    name = info.optuna_study or info.name
    try:
        views = hpo_views(info.optuna_storage or "", name)
    except (ImportError, KeyError) as e:  # optuna missing, or no such study in the storage
        views = HpoViews(name, notes=(f"hyper-parameter views unavailable: {e!r}",))
    parts = [f"<h3>Hyper-parameter search: {escape(views.study)} ({views.complete_trials} complete trials)</h3>"]
    parts += [f'<p class="note">{escape(n)}</p>' for n in views.notes]
    return parts + [figure(fig, ids(f"fig-hpo-{kind}"), escape(kind)) for kind, fig in views.figures.items()]


def _study_section(table: pd.DataFrame, info: StudyInfo, ids: _Ids) -> str:
    names = ", ".join(_distinct(table, "study") or [info.name])
    parts = [f"<section><h2>Study: {escape(names)}</h2>", _provenance(table), _trials(table, info.expected_trials)]
    if status_counts(table)["finished"]:
        parts += _analyses(table, info, ids)
    else:
        parts.append('<p class="note">No finished trials yet: nothing to plot.</p>')
    if info.optuna_storage:
        parts += _hpo(info, ids)
    return "".join(parts) + "</section>"


def build_report(
    tables: Sequence[pd.DataFrame], out: Path, studies: Iterable[StudyInfo] = (), title: str = "K-ON reproduction report"
) -> Path:
    """Write one self-contained, offline HTML report of the studies' result tables to ``out`` (atomically).

    Each table (one per study) gets its provenance, trial counts with the failures' errors, a
    "partial: N of M trials finished" banner when trials are missing, and the figures and tables
    its study names (``StudyInfo.analyses``), with the paper's values beside the reproduced ones. Raises
    ``ValueError`` when no table has a finished trial. Intervals: the 95% Student-t CI over seeds.
    """
    if not any(len(t) and "status" in t.columns and (t["status"] == STATUSES["finished"]).any() for t in tables):
        raise ValueError(
            f"no finished trials (status == 'TERMINATED') in any of the {len(tables)} result table(s): nothing to report"
        )
    infos = {info.name: info for info in studies}
    ids = _Ids()
    sections = []
    for table in tables:
        name = next(iter(_distinct(table, "study")), "study")
        sections.append(_study_section(table, infos.get(name, StudyInfo(name)), ids))
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body><h1>{escape(title)}</h1>"
        f'<p class="note">Generated {generated}. Metrics are test-split percentages. {escape(CI_METHOD)}</p>'
        f"{''.join(sections)}</body></html>"
    )
    write_atomic(out, page.encode("utf-8"))
    log.info("wrote report %s (%d studies)", out, len(tables))
    return out
