"""The K-ON paper's published numbers (Guo et al., AAAI 2025), kept beside the studies that reproduce them.

Values are percentages exactly as printed; ``None`` is the paper's "-" (unavailable entry).
Figures 3 and 4 are published only as images, so they carry no values, only what the text says.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

METRICS: tuple[str, ...] = ("mrr", "hits@1", "hits@3", "hits@10")
ANALYSES: tuple[str, ...] = (
    "main_table", "ablation_table", "joint_probability_table", "heads_curve", "negatives_curve",
)  # fmt: skip
"""The report's figures and tables by name, as a ``Study`` names them; ``analysis.registry`` declares each."""


@dataclass(frozen=True)
class PaperValues:
    """One published table (or figure): rows keyed by label -> {metric: percent as printed}."""

    source: str  # where in the paper, e.g. "Table 3"
    rows: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)
    note: str = ""  # what the paper says where it prints no numbers
    modality: Mapping[str, str] = field(default_factory=dict)  # Table 2's S/T/I column, by row

    def __post_init__(self) -> None:
        rows = {}
        for label, values in self.rows.items():
            for metric, value in values.items():
                if metric not in METRICS:
                    raise ValueError(f"{self.source} row {label!r}: metric={metric!r}; valid metrics are {METRICS}")
                if value is not None and not 0.0 <= value <= 100.0:
                    raise ValueError(f"{self.source} row {label!r} {metric}={value}: paper values are percents in [0, 100]")
            rows[label] = MappingProxyType(dict(values))
        object.__setattr__(self, "rows", MappingProxyType(rows))
        object.__setattr__(self, "modality", MappingProxyType(dict(self.modality)))

    @property
    def has_values(self) -> bool:
        return bool(self.rows)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "rows": {k: dict(v) for k, v in self.rows.items()}, "note": self.note,
                "modality": dict(self.modality)}  # fmt: skip

    @classmethod
    def of(cls, value: PaperValues | Mapping[str, Mapping[str, float | None]], source: str = "paper") -> PaperValues:
        """Accept a ``PaperValues`` or the plain mapping a study object carries."""
        return value if isinstance(value, PaperValues) else cls(source=source, rows=value)


Published = PaperValues | Mapping[str, PaperValues]
"""A study's paper values: one table or figure, or Table 2's by dataset."""


def published_to_json(paper: Published | None) -> dict[str, Any] | None:
    if paper is None or isinstance(paper, PaperValues):
        return None if paper is None else paper.to_json()
    return {"by_dataset": {name: values.to_json() for name, values in paper.items()}}


def published_from_json(values: dict[str, Any] | None) -> Published | None:
    """The inverse of :func:`published_to_json` (a study folder's ``study.json``)."""
    if values is None or "by_dataset" not in values:
        return None if values is None else PaperValues(**values)
    return MappingProxyType({name: PaperValues(**v) for name, v in values["by_dataset"].items()})


def _rows(*lines: tuple[str, float | None, float | None, float | None, float | None]) -> dict[str, dict[str, float | None]]:
    return {label: dict(zip(METRICS, values, strict=True)) for label, *values in lines}


_MODALITY = {
    "TransE": "S", "DistMult": "S", "RotatE": "S", "IKRL": "S+I", "TransAE": "S+I", "KG-Bert": "S+T",
    "MMKRL": "S+T+I", "OTKGE": "S+T+I", "MMRNS": "S+T+I", "KGLM": "S+T", "QEB": "S+T+I", "VISTA": "S+T+I",
    "MANS": "S+T+I", "FLT-LM": "S+T", "AdaMF": "S+T+I", "KG-Llama-7b": "S+T", "GPT 3.5 Turbo": "S+T", "K-ON": "S+T",
}  # fmt: skip

TABLE2: Mapping[str, PaperValues] = MappingProxyType({
    "DB15K": PaperValues("Table 2 (DB15K)", _rows(
        ("TransE", 24.86, 12.78, 31.48, 47.07),
        ("DistMult", 23.03, 14.78, 26.28, 39.59),
        ("RotatE", 29.28, 17.87, 36.12, 49.66),
        ("IKRL", 26.82, 14.09, 34.93, 49.09),
        ("TransAE", 28.09, 21.25, 31.17, 41.17),
        ("KG-Bert", 23.94, 11.98, 31.05, 46.54),
        ("MMKRL", 26.81, 13.85, 35.07, 49.39),
        ("OTKGE", 23.86, 18.45, 25.89, 34.23),
        ("MMRNS", 32.68, 23.01, 37.86, 51.01),
        ("KGLM", 28.47, 17.66, 36.02, 48.89),
        ("QEB", 28.18, 14.82, 36.67, 51.55),
        ("VISTA", 30.42, 22.49, 33.56, 45.94),
        ("MANS", 28.82, 16.87, 36.58, 49.26),
        ("FLT-LM", 33.45, 24.56, 37.67, 50.12),
        ("AdaMF", 32.51, 21.31, 39.67, 51.68),
        ("KG-Llama-7b", None, 13.46, None, None),
        ("GPT 3.5 Turbo", None, 21.71, None, None),
        ("K-ON", 38.10, 30.13, 42.77, 53.59),
    ), modality=_MODALITY),
    "MKG-W": PaperValues("Table 2 (MKG-W)", _rows(
        ("TransE", 29.19, 21.06, 33.20, 44.23),
        ("DistMult", 20.99, 15.93, 22.28, 30.86),
        ("RotatE", 33.67, 26.80, 36.68, 46.73),
        ("IKRL", 32.36, 26.11, 34.75, 44.07),
        ("TransAE", 30.00, 21.23, 34.91, 44.72),
        ("KG-Bert", 28.68, 21.12, 32.57, 43.46),
        ("MMKRL", 30.10, 22.16, 34.09, 44.69),
        ("OTKGE", 34.36, 28.85, 36.25, 44.88),
        ("MMRNS", 35.03, 28.59, 37.49, 47.47),
        ("KGLM", 34.12, 27.01, 36.87, 46.62),  # printed "36.87.46.62" in the arXiv HTML
        ("QEB", 32.38, 25.47, 35.06, 45.32),
        ("VISTA", 32.91, 26.12, 35.38, 45.61),
        ("MANS", 30.88, 24.89, 33.63, 41.78),
        ("FLT-LM", 32.75, 25.89, 32.87, 44.56),
        ("AdaMF", 34.27, 27.21, 37.86, 47.21),
        ("KG-Llama-7b", None, 20.20, None, None),
        ("GPT 3.5 Turbo", None, 22.66, None, None),
        ("K-ON", 36.64, 30.05, 38.72, 48.26),
    ), modality=_MODALITY),
})  # fmt: skip

TABLE3 = PaperValues("Table 3 (ablations, DB15K)", _rows(
    ("full", 38.10, 30.13, 42.77, 53.59),
    ("w/o L_tdt", 37.48, 28.43, 42.34, 53.62),
    ("w/o L_sft", 37.31, 28.07, 42.64, 53.42),
    ("w/o L_nce", 14.09, 10.40, 15.24, 21.29),
    ("w/o Conditional Attention", 37.20, 27.69, 42.13, 53.60),
    ("Shared Head MLP", 28.01, 19.57, 31.98, 44.73),
    ("Shared Score Layer", 37.54, 28.64, 42.12, 53.73),
))  # fmt: skip

TABLE4 = PaperValues("Table 4 (joint entity probability, DB15K)", _rows(
    ("+ learnable", 38.10, 30.13, 42.77, 53.59),
    ("+ constant", 37.11, 29.08, 41.82, 52.97),
    ("* learnable", 23.24, 15.95, 26.37, 37.70),
    ("* constant", 23.61, 16.36, 26.97, 37.93),
))  # fmt: skip

FIGURE3 = PaperValues(
    "Figure 3 (number of heads K)",
    note="No published values (the figure is an image). The paper states that MRR saturates at K >= 8, that "
    "trainable parameters grow markedly with K while step and training time grow slightly, and chooses K = 8.",
)
FIGURE4 = PaperValues(
    "Figure 4 (number of negatives |N|)",
    note="No published values (the figure is an image). The paper states that all its metric curves first rise "
    "rapidly, then decline steadily, then plateau as |N| grows, that cost stays stable, and chooses |N| = 128.",
)
