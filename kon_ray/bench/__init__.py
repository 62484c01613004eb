"""Benchmarks of K-ON's efficiency claims and of kon-ray's overheads, each a ratio measured in one run.

``kon-ray bench NAME [--out DIR] [--device DEVICE] [key=value ...]`` (or ``python -m kon_ray.bench``):
undotted keys set the benchmark (``steps=5``), dotted keys the run config (``model.k=4``).
Each benchmark prints its setup, its figures and a final ``ratio:`` line, and writes ``DIR/NAME.json``.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kon_ray.config import ConfigError, RunConfig, apply_overrides

if TYPE_CHECKING:
    import torch

BENCHMARKS = ("scoring", "negatives", "sampling", "evaluation", "study", "heads", "sft", "precision", "gpu")
IN_ALL = BENCHMARKS[:-1]  # gpu runs scoring and sft itself, on CUDA only


def run_benchmark(name: str, items: list[str], out: Path, device: torch.device) -> dict[str, Any]:
    """Run one benchmark with its ``key=value`` overrides; print it, write ``out/NAME.json``, return the record."""
    from kon_ray.bench.common import parse_settings, record, require_device, show, split_overrides, verdict
    from kon_ray.bench.common import write_record

    if name not in BENCHMARKS:
        raise ConfigError(f"benchmark {name!r}: must be one of {', '.join(BENCHMARKS)} or all")
    module = importlib.import_module(f"kon_ray.bench.{name}")
    if hasattr(module, "DEVICE"):
        require_device(name, module.DEVICE, device)
    pairs, dotted = split_overrides(items)
    settings = parse_settings(module.Settings, pairs)
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
    from kon_ray.bench.common import split_overrides

    pairs, _ = split_overrides(items)
    if pairs:
        raise ConfigError(f"bench all: benchmark settings {sorted(pairs)} differ per benchmark; run it alone")
    return [run_benchmark(name, items, out, device) for name in IN_ALL]
