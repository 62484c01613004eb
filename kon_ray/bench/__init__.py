"""Benchmarks of K-ON's efficiency claims and of kon-ray's overheads, each a ratio measured in one run.

``kon-ray bench NAME [--out DIR] [--device DEVICE] [key=value ...]`` (or ``python -m kon_ray.bench``):
undotted keys set the benchmark (``steps=5``), dotted keys the run config (``model.k=4``).
Each benchmark prints its setup, its figures and a final ``ratio:`` line, and writes ``DIR/NAME.json``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kon_ray.config import ConfigError, RunConfig, apply_overrides
from kon_ray.overrides import parse_overrides, set_fields, split_dotted

if TYPE_CHECKING:
    import torch

BENCHMARKS = (
    "scoring", "negatives", "sampling", "evaluation", "study", "heads", "sft", "precision", "scale", "gpu"
)  # fmt: skip
IN_ALL = BENCHMARKS[:-2]  # scale takes 20 minutes alone; gpu runs scoring and sft itself, on CUDA only
HELP = "measure K-ON's efficiency claims and kon-ray's overheads as ratios"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``kon-ray bench`` and ``python -m kon_ray.bench``."""
    parser.add_argument("name", choices=[*BENCHMARKS, "all"], help="the benchmark, or all of them in turn")
    parser.add_argument(
        "overrides", nargs="*", help="key=value benchmark settings (steps=5) and run config (model.k=4)"
    )
    parser.add_argument(
        "--out", default="runs/bench", help="folder of the JSON records, NAME.json (default: runs/bench)"
    )
    parser.add_argument("--device", help="cpu or cuda (default: cuda where available)")
    parser.set_defaults(func=run_args)


def run_args(args: argparse.Namespace) -> None:
    """Run the benchmark (or all) that parsed ``args`` name."""
    import torch

    # As training.default_device, without importing training (DeepSpeed) before a benchmark refuses.
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out = Path(args.out)
    if args.name == "all":
        run_all(args.overrides, out, device)
    else:
        run_benchmark(args.name, args.overrides, out, device)


def main(argv: list[str]) -> None:
    """``python -m kon_ray.bench``: the same as ``kon-ray bench``, without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="python -m kon_ray.bench", description=HELP)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    from kon_ray.data import KGFormatError

    try:
        run_args(args)
    except (ConfigError, KGFormatError) as error:
        print(f"kon-ray bench: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def run_benchmark(name: str, items: list[str], out: Path, device: torch.device) -> dict[str, Any]:
    """Run one benchmark with its ``key=value`` overrides; print it, write ``out/NAME.json``, return the record."""
    from kon_ray.bench.common import record, require_device, show, verdict, write_record

    if name not in BENCHMARKS:
        raise ConfigError(f"benchmark {name!r}: must be one of {', '.join(BENCHMARKS)} or all")
    module = importlib.import_module(f"kon_ray.bench.{name}")
    if hasattr(module, "DEVICE"):
        require_device(name, module.DEVICE, device)
    pairs, dotted = split_dotted(parse_overrides(items))
    settings = set_fields(module.Settings(), pairs, scope=f"among the settings of bench {name}")
    config = apply_overrides(apply_overrides(RunConfig(), dict(module.BASE)), dotted)
    show(f"== bench {name}: {(module.__doc__ or '').strip().splitlines()[0]}")
    start = time.perf_counter()
    report = module.run(settings, config, device)
    wall = time.perf_counter() - start
    show(verdict(report))
    result = record(name, settings, config, report, wall)
    show(f"record: {write_record(out, name, result)} ({wall:.0f} s)")
    return result


def run_all(items: list[str], out: Path, device: torch.device) -> list[dict[str, Any]]:
    """Every benchmark but gpu in turn; only dotted (run config) overrides, which each benchmark takes."""
    pairs, _ = split_dotted(parse_overrides(items))
    if pairs:
        raise ConfigError(f"bench all: benchmark settings {sorted(pairs)} differ per benchmark; run it alone")
    return [run_benchmark(name, items, out, device) for name in IN_ALL]
