"""The ``kon-ray`` command line.

``parser`` holds the arguments; the commands run from ``runs`` (train, evaluate, export, predict),
``data`` (stats, baseline), ``studies`` (study validate|run|status|export, report) and ``config``.
Each imports its heavy libraries when it runs.
"""

from __future__ import annotations

import sys

from kon_ray import console
from kon_ray.cli.parser import build_parser
from kon_ray.config import ConfigError

__all__ = ["build_parser", "main"]


def _user_errors() -> tuple[type[Exception], ...]:
    """ConfigError, and KGFormatError once the data layer is loaded (only it raises one): importing it
    up front would load torch into the commands that only read JSON."""
    lines = sys.modules.get("kon_ray.data.lines")
    return (ConfigError,) if lines is None else (ConfigError, lines.KGFormatError)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides += extra  # settings after an option: evaluate RUN --split valid eval.ties=...
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    console.setup(args.verbose)
    try:
        args.func(args)
    except _user_errors() as error:
        print(f"kon-ray: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        console.close_log()
