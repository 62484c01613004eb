"""One self-contained HTML report of one or more studies: provenance, trial counts, figures and tables.

The file opens offline: plotly.js is embedded once, inline, and nothing is fetched (no CDN, no
MathJax, no web fonts). Which figures appear depends on the config columns that vary in each
study's table (see :func:`analysis.figures.analyses`). For static images see :mod:`analysis.plots`.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from analysis import figures as F
from analysis.hpo import HpoViews, hpo_views
from kon_ray.paper import METRICS, PUBLISHED, TABLE2, PaperValues
from analysis.plots import heads_figure, negatives_figure
from analysis.stats import CI_METHOD
from kon_ray.results import write_atomic

log = logging.getLogger(__name__)

STATUSES = {"finished": "TERMINATED", "failed": "ERROR", "pruned": "PRUNED", "running": "RUNNING", "pending": "PENDING"}
HEADERS = {"mrr": "MRR", "hits@1": "Hits@1", "hits@3": "Hits@3", "hits@10": "Hits@10"}
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
    paper: Mapping[str, PaperValues | Mapping[str, Mapping[str, float | None]]] = field(default_factory=dict)
    """Published values by key: "table2/<dataset>", "table3", "table4", "figure3", "figure4"; missing
    keys fall back to :data:`kon_ray.paper.PUBLISHED`."""
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


def _e(value: object) -> str:
    return html.escape(str(value))


def _num(value: float, fmt: str = "{:.2f}") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


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
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items.items()) + "</dl>"


def _trials(table: pd.DataFrame, expected: int | None) -> str:
    counts = status_counts(table)
    total = max(expected or len(table), len(table))
    parts = []
    if banner := partial_banner(counts["finished"], total):
        parts.append(f'<p class="banner" id="partial">{_e(banner)}</p>')
    parts.append("<p>Trials: " + ", ".join(f"{v} {k}" for k, v in counts.items()) + f" (of {total})</p>")
    failed = table[table["status"] == STATUSES["failed"]]
    if len(failed):
        rows = "".join(
            "<tr>" + "".join(f"<td>{'' if pd.isna(r.get(c)) else _e(r.get(c))}</td>" for c in ("trial_id", "seed", "error")) + "</tr>"
            for r in failed.to_dict("records")
        )
        parts.append(f'<table id="failures"><tr><th>failed trial</th><th>seed</th><th>error</th></tr>{rows}</table>')
    return "".join(parts)


def comparison_html(frame: pd.DataFrame, element_id: str, paper: PaperValues) -> str:
    """A tidy comparison (``analysis.figures._comparison``) as a table: paper | reproduced | difference per metric."""
    modality = bool(paper.modality)
    head1 = "<th rowspan=2>row</th>" + ("<th rowspan=2>modality</th>" if modality else "") + "<th rowspan=2>n</th>"
    head1 += "".join(f"<th colspan=3>{HEADERS[m]}</th>" for m in METRICS)
    head2 = '<th class="paper">paper</th><th class="reproduced">reproduced</th><th>difference</th>' * len(METRICS)
    body = []
    for label, group in frame.groupby("row", sort=False):
        by_metric = group.set_index("metric")
        cells = [f"<td>{_e(label)}</td>"] + ([f"<td>{_e(paper.modality.get(label, ''))}</td>"] if modality else [])
        cells.append(f"<td>{int(group['n'].max())}</td>")
        for m in METRICS:
            r = by_metric.loc[m]
            reproduced = _num(r["reproduced"]) + ("" if math.isnan(r["ci"]) else f" ± {r['ci']:.2f}")
            cells += [f'<td class="paper">{_num(r["paper"])}</td>', f'<td class="reproduced">{reproduced}</td>',
                      f"<td>{_num(r['difference'], '{:+.2f}')}</td>"]  # fmt: skip
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="{element_id}"><caption>{_e(paper.source)}: paper (as printed, %) beside reproduced '
        f"(mean ± 95% CI half-width over seeds, %); difference = reproduced − paper</caption>"
        f"<tr>{head1}</tr><tr>{head2}</tr>{''.join(body)}</table>"
    )


def _figure(fig: go.Figure, element_id: str, caption: str, numbers: pd.DataFrame | None = None) -> str:
    # The camera button saves the figure as a vector SVG, ready for a paper, with no extra install.
    config = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg", "filename": element_id}}
    div = pio.to_html(
        fig, full_html=False, include_plotlyjs=False, include_mathjax=False, div_id=f"{element_id}-plot", config=config
    )
    details = ""
    if numbers is not None:
        numbers_html = numbers.to_html(index=False, na_rep="—", float_format="{:.4g}".format)
        details = f"<details><summary>numbers</summary>{numbers_html}</details>"
    return f'<figure id="{element_id}">{div}<figcaption>{caption}</figcaption>{details}</figure>'


def _paper(info: StudyInfo, key: str) -> PaperValues:
    if key in info.paper:
        return PaperValues.of(info.paper[key], key)
    return PUBLISHED.get(key, PaperValues(key))


def _paper_note(paper: PaperValues) -> str:
    return f'<p class="note">Paper ({_e(paper.source)}): {_e(paper.note or "no published values")}</p>'


def _heads(table: pd.DataFrame, info: StudyInfo, ids: _Ids) -> list[str]:
    curve = F.heads_curve(table)
    figure = _figure(heads_figure(curve), ids("fig-heads"), f"Mean test MRR with {_e(CI_METHOD)}", curve)
    return ["<h3>Fig. 3: number of heads K</h3>", _paper_note(_paper(info, "figure3")), figure]


def _negatives(table: pd.DataFrame, info: StudyInfo, ids: _Ids) -> list[str]:
    curve = F.negatives_curve(table)
    figure = _figure(negatives_figure(curve), ids("fig-negatives"), f"Mean test metrics with {_e(CI_METHOD)}", curve)
    return ["<h3>Fig. 4: number of negatives |N|</h3>", _paper_note(_paper(info, "figure4")), figure]


def _joint(table: pd.DataFrame, info: StudyInfo, ids: _Ids) -> list[str]:
    paper = _paper(info, "table4")
    frame = F.joint_probability_table(table, paper)
    return ["<h3>Table 4: joint entity probability</h3>", comparison_html(frame, ids("table-joint"), paper)]


def _ablation(table: pd.DataFrame, info: StudyInfo, ids: _Ids) -> list[str]:
    paper = _paper(info, "table3")
    return ["<h3>Table 3: ablations</h3>", comparison_html(F.ablation_table(table, paper), ids("table-ablation"), paper)]


def _main(table: pd.DataFrame, info: StudyInfo, ids: _Ids) -> list[str]:
    parts = []
    published = {F.dataset_key(k): k for k in TABLE2}
    for dataset in _distinct(F.finished(table), F.DATASET) or ["?"]:
        paper = _paper(info, f"table2/{published.get(F.dataset_key(dataset), dataset)}")
        frame = F.main_table(table, paper, dataset)
        parts += [f"<h3>Table 2: main results, {_e(dataset)}</h3>",
                  comparison_html(frame, ids(f"table-main-{F.dataset_key(dataset)}"), paper)]  # fmt: skip
    return parts


def _hpo(info: StudyInfo, ids: _Ids) -> list[str]:
    name = info.optuna_study or info.name
    try:
        views = hpo_views(info.optuna_storage or "", name)
    except (ImportError, KeyError) as e:  # optuna missing, or no such study in the storage
        views = HpoViews(name, notes=(f"hyper-parameter views unavailable: {e!r}",))
    parts = [f"<h3>Hyper-parameter search: {_e(views.study)} ({views.complete_trials} complete trials)</h3>"]
    parts += [f'<p class="note">{_e(n)}</p>' for n in views.notes]
    return parts + [_figure(fig, ids(f"fig-hpo-{kind}"), _e(kind)) for kind, fig in views.figures.items()]


SECTIONS = {"heads": _heads, "negatives": _negatives, "joint": _joint, "ablation": _ablation, "main": _main}


def _study_section(table: pd.DataFrame, info: StudyInfo, ids: _Ids) -> str:
    names = ", ".join(_distinct(table, "study") or [info.name])
    parts = [f"<section><h2>Study: {_e(names)}</h2>", _provenance(table), _trials(table, info.expected_trials)]
    if status_counts(table)["finished"]:
        for kind in F.analyses(table):
            parts += SECTIONS[kind](table, info, ids)
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
    its varying config supports, with the paper's values beside the reproduced ones. Raises
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
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body><h1>{_e(title)}</h1>"
        f'<p class="note">Generated {generated}. Metrics are test-split percentages. {_e(CI_METHOD)}</p>'
        f"{''.join(sections)}</body></html>"
    )
    write_atomic(out, page.encode("utf-8"))
    log.info("wrote report %s (%d studies)", out, len(tables))
    return out
