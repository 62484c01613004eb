"""Each figure and table of the report, declared once: name, what computes it, how it draws, paper values.

A study names the analyses it wants (``Study(analyses=("heads_curve",))``); the names are checked
against ``kon_ray.paper.ANALYSES`` when the study loads, and a test keeps that list equal to
``REGISTRY``. To add one: a pure function in :mod:`analysis.figures`, an entry here, its name in
``kon_ray.paper.ANALYSES``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

import pandas as pd

from analysis import figures as F
from analysis.html import comparison_html, escape, figure, paper_note
from analysis.plots import heads_figure, negatives_figure
from analysis.stats import CI_METHOD
from kon_ray.paper import FIGURE3, FIGURE4, TABLE2, TABLE3, TABLE4, PaperValues

Compute = Callable[[pd.DataFrame, PaperValues, str], pd.DataFrame]
Draw = Callable[[pd.DataFrame, PaperValues, str], str]


@dataclass(frozen=True)
class Analysis:
    name: str
    """What a study names in ``analyses``."""
    title: str
    """The report's heading."""
    element: str
    """The HTML element id (``-<dataset>`` appended for a per-dataset analysis)."""
    compute: Compute
    """(result table, paper values, dataset) -> the numbers, a plain DataFrame (see analysis.figures)."""
    draw: Draw
    """(numbers, paper values, element id) -> HTML."""
    paper: PaperValues | Mapping[str, PaperValues]
    """The published values; a mapping by dataset makes the analysis one section per dataset."""


def _comparison(frame: pd.DataFrame, paper: PaperValues, element: str) -> str:
    return comparison_html(frame, element, paper)


def _curve(plot: Callable[[pd.DataFrame], object], caption: str) -> Draw:
    def draw(frame: pd.DataFrame, paper: PaperValues, element: str) -> str:
        return paper_note(paper) + figure(plot(frame), element, caption, frame)  # type: ignore[arg-type]

    return draw


HEADS_CAPTION = f"Mean test MRR with {escape(CI_METHOD)}"
NEGATIVES_CAPTION = f"Mean test metrics with {escape(CI_METHOD)}"

REGISTRY: Mapping[str, Analysis] = MappingProxyType({a.name: a for a in (
    Analysis("main_table", "Table 2: main results", "table-main",
             lambda t, p, d: F.main_table(t, p, d), _comparison, TABLE2),
    Analysis("ablation_table", "Table 3: ablations", "table-ablation",
             lambda t, p, d: F.ablation_table(t, p), _comparison, TABLE3),
    Analysis("joint_probability_table", "Table 4: joint entity probability", "table-joint",
             lambda t, p, d: F.joint_probability_table(t, p), _comparison, TABLE4),
    Analysis("heads_curve", "Fig. 3: number of heads K", "fig-heads",
             lambda t, p, d: F.heads_curve(t), _curve(heads_figure, HEADS_CAPTION), FIGURE3),
    Analysis("negatives_curve", "Fig. 4: number of negatives |N|", "fig-negatives",
             lambda t, p, d: F.negatives_curve(t), _curve(negatives_figure, NEGATIVES_CAPTION), FIGURE4),
)})  # fmt: skip
