"""Training step time in mixed precision (bfloat16 autocast, float32 weights) vs float32.

Two models from the same seed, each with its DeepSpeed engine, take optimiser steps on the same
batch as training does, one step of each per round, interleaved. On a CPU, bfloat16 is fast only
with native support (AVX512-BF16 or AMX), which is when ``model.dtype=auto`` picks mixed.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from kon_ray.backbone import native_cpu_bfloat16
from kon_ray.bench.common import (
    Check,
    Report,
    announce,
    describe,
    describe_step,
    engine_for,
    hardware,
    interleaved,
    load,
    median,
    show,
    train_batch,
    train_step,
)
from kon_ray.config import RunConfig, apply_overrides

BASE: dict[str, str] = {}
TARGET = 0.85
DTYPES = ("float32", "mixed")


@dataclass(frozen=True)
class Settings:
    steps: int = 10
    """Timed steps of each (after ``warmup`` rounds); medians reported."""
    warmup: int = 2


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    sides = {dtype: load(apply_overrides(config, {"model.dtype": dtype}), device) for dtype in DTYPES}
    engines = {dtype: engine_for(s) for dtype, s in sides.items()}
    base = sides["float32"]
    queries = train_batch(base, config.train.seed)
    native = device.type == "cuda" or native_cpu_bfloat16()
    setup = announce({**describe(base), **describe_step(base), "native bfloat16": native, **hardware(device)})
    counter = itertools.count()

    def step(dtype: str) -> float:
        return train_step(sides[dtype], engines[dtype], queries, config.loss.negatives, next(counter))

    steps = {dtype: lambda dtype=dtype: step(dtype) for dtype in DTYPES}
    times = {dtype: median(t) for dtype, t in interleaved(steps, settings.steps, settings.warmup, device).items()}
    for dtype, t in times.items():
        show(f"{dtype}: {t * 1e3:.1f} ms per step")
    return Report(
        setup=setup,
        figures={"step_s": times},
        checks=[Check("step(mixed) / step(float32)", times["mixed"] / times["float32"], "<=", TARGET)],
    )
