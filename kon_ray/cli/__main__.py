"""``python -m kon_ray.cli ...``: the same as ``kon-ray ...``."""

from kon_ray.cli import main

main()
