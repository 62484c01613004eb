"""HTML pieces of the report: escaped text, a paper-beside-reproduced table, an embedded plotly figure."""

from __future__ import annotations

import html
import math

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from kon_ray.paper import METRICS, PaperValues

HEADERS = {"mrr": "MRR", "hits@1": "Hits@1", "hits@3": "Hits@3", "hits@10": "Hits@10"}


def escape(value: object) -> str:
    return html.escape(str(value))


def num(value: float, fmt: str = "{:.2f}") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def comparison_html(frame: pd.DataFrame, element_id: str, paper: PaperValues) -> str:
    """A tidy comparison (``analysis.figures._comparison``) as a table: paper | reproduced | difference per metric."""
    modality = bool(paper.modality)
    head1 = "<th rowspan=2>row</th>" + ("<th rowspan=2>modality</th>" if modality else "") + "<th rowspan=2>n</th>"
    head1 += "".join(f"<th colspan=3>{HEADERS[m]}</th>" for m in METRICS)
    head2 = '<th class="paper">paper</th><th class="reproduced">reproduced</th><th>difference</th>' * len(METRICS)
    body = []
    for label, group in frame.groupby("row", sort=False):
        by_metric = group.set_index("metric")
        cells = [f"<td>{escape(label)}</td>"] + ([f"<td>{escape(paper.modality.get(label, ''))}</td>"] if modality else [])
        cells.append(f"<td>{int(group['n'].max())}</td>")
        for m in METRICS:
            r = by_metric.loc[m]
            reproduced = num(r["reproduced"]) + ("" if math.isnan(r["ci"]) else f" ± {r['ci']:.2f}")
            cells += [f'<td class="paper">{num(r["paper"])}</td>', f'<td class="reproduced">{reproduced}</td>',
                      f"<td>{num(r['difference'], '{:+.2f}')}</td>"]  # fmt: skip
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="{element_id}"><caption>{escape(paper.source)}: paper (as printed, %) beside reproduced '
        f"(mean ± 95% CI half-width over seeds, %); difference = reproduced − paper</caption>"
        f"<tr>{head1}</tr><tr>{head2}</tr>{''.join(body)}</table>"
    )


def figure(fig: go.Figure, element_id: str, caption: str, numbers: pd.DataFrame | None = None) -> str:
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


def paper_note(paper: PaperValues) -> str:
    return f'<p class="note">Paper ({escape(paper.source)}): {escape(paper.note or "no published values")}</p>'
