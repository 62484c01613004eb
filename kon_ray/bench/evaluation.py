"""Filtered evaluation of the test split (both directions, all entities): wall time and peak memory.

The evaluation runs in a fresh process, so that its peak resident memory (``ru_maxrss``) is its
own: the model as ``training.setup`` builds it (untrained weights), then ``training.evaluate``.
"""

from __future__ import annotations

import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from kon_ray.bench.common import Check, Report, announce, show
from kon_ray.config import RunConfig

BASE: dict[str, str] = {}
TIME_TARGET_S = 30.0
MEMORY_TARGET_GIB = 4.0
GIB = 2**30


@dataclass(frozen=True)
class Settings:
    limit: int | None = None
    """Test triples evaluated (both directions); None: the whole test split."""


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def evaluate_in_child(config: dict[str, Any], device: str, limit: int | None) -> dict[str, Any]:
    """In the child process: set up, evaluate, and report the times and memory."""
    from kon_ray.bench.common import describe, hardware, seconds
    from kon_ray.training import evaluate, setup

    config_ = RunConfig.from_dict(config)
    s = setup(config_, torch.device(device))
    before = peak_rss()
    metrics: dict[str, float] = {}
    wall = seconds(lambda: metrics.update(evaluate(s, "test", limit)[0]), s.device)
    cuda = torch.cuda.max_memory_allocated(s.device) if s.device.type == "cuda" else None
    setup_info = {**describe(s), "query chunk": config_.eval.query_chunk, **hardware(s.device)}
    return {"setup": setup_info, "wall_s": wall, "queries": int(metrics["queries"]), "peak_rss": peak_rss(),
            "rss_before": before, "cuda_peak": cuda, "mrr": metrics["mrr"]}


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    context = multiprocessing.get_context("spawn")
    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=context) as pool:
        result = pool.submit(evaluate_in_child, config.to_dict(), str(device), settings.limit).result()
    setup = announce({**result["setup"], "test triples": settings.limit or "all"})
    peak = result["peak_rss"] / GIB
    show(
        f"evaluation: {result['queries']} queries in {result['wall_s']:.1f} s "
        f"({result['queries'] / result['wall_s']:.0f} queries/s), MRR {result['mrr']:.4f} (untrained)"
    )
    show(
        f"peak resident memory {peak:.2f} GiB (after set-up, before evaluating: {result['rss_before'] / GIB:.2f} GiB)"
        + ("" if result["cuda_peak"] is None else f", peak CUDA memory {result['cuda_peak'] / GIB:.2f} GiB")
        + f"; the child process took {time.perf_counter() - started:.0f} s in all"
    )
    return Report(
        setup=setup,
        figures={key: result[key] for key in ("wall_s", "queries", "peak_rss", "rss_before", "cuda_peak", "mrr")},
        checks=[
            Check("evaluation wall time", result["wall_s"], "<=", TIME_TARGET_S, " s"),
            Check("peak memory", peak, "<=", MEMORY_TARGET_GIB, " GiB"),
        ],
    )
