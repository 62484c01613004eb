"""Thin plotly drawings of the curves computed in :mod:`analysis.figures`.

Static images for a paper: plotly's ``fig.write_image`` needs kaleido, which drives a Chrome.
``pip install kaleido`` (it finds or installs Chrome: ``kaleido_get_chrome``), then
``export_images(figs, folder, "pdf")`` or ``fig.write_image("fig3.pdf")``.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

log = logging.getLogger(__name__)

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
LABELS = {"mrr": "MRR (%)", "hits@1": "Hits@1 (%)", "hits@3": "Hits@3 (%)", "hits@10": "Hits@10 (%)"}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _mean_with_band(fig: go.Figure, curve: pd.DataFrame, x: str, metric: str, row: int, col: int, color: str) -> None:
    """Mean line with markers and a shaded 95% CI band (absent where n = 1)."""
    xs = curve[x].tolist()
    common = {"x": xs, "mode": "lines", "line": {"width": 0}, "hoverinfo": "skip", "showlegend": False}
    fig.add_trace(go.Scatter(y=curve[f"{metric}_high"], **common), row=row, col=col)
    fig.add_trace(
        go.Scatter(y=curve[f"{metric}_low"], fill="tonexty", fillcolor=_rgba(color, 0.2), **common), row=row, col=col
    )
    fig.add_trace(
        go.Scatter(
            x=xs,
            y=curve[f"{metric}_mean"],
            customdata=curve[["n", f"{metric}_ci"]].to_numpy(),
            mode="lines+markers",
            line={"color": color},
            name=LABELS.get(metric, metric),
            showlegend=False,
            hovertemplate="%{x}: %{y:.2f} ± %{customdata[1]:.2f} (n=%{customdata[0]})<extra></extra>",
        ),
        row=row,
        col=col,
    )


def _cost(fig: go.Figure, curve: pd.DataFrame, x: str, column: str, row: int, col: int, color: str) -> None:
    fig.add_trace(
        go.Scatter(x=curve[x], y=curve[column], mode="lines+markers", line={"color": color}, showlegend=False, name=column),
        row=row,
        col=col,
    )


def _ticks(fig: go.Figure, curve: pd.DataFrame, x: str, title: str) -> None:
    """Log x-axis ticked at the studied values, each labelled with its number of seeds n."""
    text = [f"{v:g}<br>n={n}" for v, n in zip(curve[x], curve["n"], strict=True)]
    fig.update_xaxes(type="log", tickvals=curve[x].tolist(), ticktext=text, title_text=title)


def heads_figure(curve: pd.DataFrame) -> go.Figure:
    """Fig. 3: MRR, trainable parameters, step time and total training time vs K (from ``heads_curve``)."""
    titles = ("MRR (%)", "Trainable parameters", "Step time (s)", "Training time (s)")
    fig = make_subplots(rows=2, cols=2, subplot_titles=titles)
    _mean_with_band(fig, curve, "k", "mrr", 1, 1, COLORS[0])
    _cost(fig, curve, "k", "trainable_params", 1, 2, COLORS[1])
    _cost(fig, curve, "k", "step_time_s", 2, 1, COLORS[2])
    _cost(fig, curve, "k", "train_time_s", 2, 2, COLORS[3])
    _ticks(fig, curve, "k", "number of heads K")
    fig.update_layout(title="Fig. 3: K-ON w.r.t. the number of heads K (mean, 95% t-CI over seeds)", height=700)
    return fig


def negatives_figure(curve: pd.DataFrame, metrics: Sequence[str] = ("mrr", "hits@1", "hits@3", "hits@10")) -> go.Figure:
    """Fig. 4: MRR, Hits@1, Hits@3, Hits@10 vs |N| on a log x-axis (from ``negatives_curve``)."""
    fig = make_subplots(rows=2, cols=2, subplot_titles=[LABELS[m] for m in metrics])
    for i, metric in enumerate(metrics):
        _mean_with_band(fig, curve, "negatives", metric, i // 2 + 1, i % 2 + 1, COLORS[i % len(COLORS)])
    _ticks(fig, curve, "negatives", "number of negatives |N|")
    fig.update_layout(title="Fig. 4: K-ON w.r.t. the number of negatives |N| (mean, 95% t-CI over seeds)", height=700)
    return fig


def export_images(figs: Mapping[str, go.Figure], folder: Path, fmt: str = "pdf") -> list[Path]:
    """Write each figure to ``folder/<name>.<fmt>`` with kaleido; a clear error when it is missing."""
    if importlib.util.find_spec("kaleido") is None:
        raise RuntimeError(
            "static image export needs kaleido, which drives a Chrome: `pip install kaleido` "
            "(then `kaleido_get_chrome` if no Chrome is found); the HTML report needs neither"
        )
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figs.items():
        path = folder / f"{name}.{fmt}"
        fig.write_image(path)
        log.info("wrote %s", path)
        paths.append(path)
    return paths
