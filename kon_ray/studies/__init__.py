"""Studies: a grid, ablation variants or an Optuna search of K-ON runs on Ray Tune, and their result table."""

from kon_ray.studies.study import Choice, FloatRange, IntRange, Study, check_study, load_study

__all__ = ["Choice", "FloatRange", "IntRange", "Study", "check_study", "load_study"]
