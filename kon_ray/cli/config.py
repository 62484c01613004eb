"""``kon-ray config``: every setting with its type, default, help and the paper's value."""

from __future__ import annotations

import argparse
import sys


def show(args: argparse.Namespace) -> None:
    from kon_ray.settings import settings_markdown, settings_text

    sys.stdout.write(settings_markdown() if args.markdown else settings_text(args.section) + "\n")
