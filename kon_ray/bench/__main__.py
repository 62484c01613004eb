"""``python -m kon_ray.bench NAME [...]``: the same as ``kon-ray bench NAME [...]``."""

import sys

from kon_ray.cli import main

main(["bench", *sys.argv[1:]])
