"""``python -m kon_ray.bench NAME [...]``: the same as ``kon-ray bench NAME [...]``."""

import sys

from kon_ray.bench import main

main(sys.argv[1:])
