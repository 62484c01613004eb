"""Figures, tables and HTML reports of kon-ray studies beside the K-ON paper's published numbers."""

from analysis.figures import ablation_table, heads_curve, joint_probability_table, main_table, negatives_curve
from analysis.hpo import HpoViews, hpo_views
from analysis.registry import REGISTRY, Analysis
from analysis.report import StudyInfo, build_report
from analysis.stats import CI_METHOD, Summary, summarize, t_quantile

__all__ = [
    "CI_METHOD", "REGISTRY", "Analysis", "HpoViews", "StudyInfo", "Summary", "ablation_table", "build_report",
    "heads_curve", "hpo_views", "joint_probability_table", "main_table", "negatives_curve", "summarize", "t_quantile",
]  # fmt: skip
