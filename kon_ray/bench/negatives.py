"""Training step time against the number of negatives |N|: the cost of entity-level contrast.

One model and one DeepSpeed engine take optimiser steps on the same batch as training does
(sampling |N| negatives, the losses, backward, step), one step per |N| per round, interleaved.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
from kon_ray.config import RunConfig

BASE: dict[str, str] = {}
TARGET = 1.15


@dataclass(frozen=True)
class Settings:
    negatives: tuple[int, ...] = (16, 128, 1024, 2048)
    """|N| values; the ratio is the step time at the last over the first."""
    steps: int = 10
    """Timed steps per |N| (after ``warmup`` rounds); medians reported."""
    warmup: int = 2


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    s = load(config, device)
    engine = engine_for(s)
    queries = train_batch(s, config.train.seed)
    setup = announce({**describe(s), **describe_step(s), "|N| values": list(settings.negatives), **hardware(device)})
    counter = iter(range(10**9))
    steps = {n: lambda n=n: train_step(s, engine, queries, n, next(counter)) for n in settings.negatives}
    times = {n: median(t) for n, t in interleaved(steps, settings.steps, settings.warmup, device).items()}
    first, last = settings.negatives[0], settings.negatives[-1]
    for n, t in times.items():
        show(f"|N|={n}: {t * 1e3:.1f} ms per step ({t / times[first]:.3f} x |N|={first})")
    return Report(
        setup=setup,
        figures={"step_s": {str(n): t for n, t in times.items()}},
        checks=[Check(f"step(|N|={last}) / step(|N|={first})", times[last] / times[first], "<=", TARGET)],
    )
