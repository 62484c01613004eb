"""kon-ray: K-ON (AAAI 2025) on Ray, DeepSpeed and Optuna."""

__version__ = "0.1.0"
