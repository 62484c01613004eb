"""Training step time and trainable parameters against the number of K-ON heads K (Fig. 3).

One model and DeepSpeed engine per K, each taking optimiser steps on the same batch as training
does; one step per K per round, interleaved. The slopes come from a least-squares line over K.
"""

from __future__ import annotations

import dataclasses
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
    slope,
    train_batch,
    train_step,
)
from kon_ray.config import RunConfig
from kon_ray.training import trainable_parameters

BASE: dict[str, str] = {}


@dataclass(frozen=True)
class Settings:
    k: tuple[int, ...] = tuple(range(1, 17))
    """K values; the ratio is the step time at the last over the first."""
    steps: int = 5
    """Timed steps per K (after ``warmup`` rounds); medians reported."""
    warmup: int = 1


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    setups = {k: load(dataclasses.replace(config, model=dataclasses.replace(config.model, k=k)), device) for k in settings.k}
    engines = {k: engine_for(s) for k, s in setups.items()}
    first, last = settings.k[0], settings.k[-1]
    queries = train_batch(setups[first], config.train.seed)
    setup = {**describe(setups[first]), **describe_step(setups[first]), "K values": list(settings.k), **hardware(device)}
    setup.pop("K")
    announce(setup)
    counter = iter(range(10**9))
    negatives = config.loss.negatives
    steps = {k: lambda k=k: train_step(setups[k], engines[k], queries, negatives, next(counter)) for k in settings.k}
    times = {k: median(t) for k, t in interleaved(steps, settings.steps, settings.warmup, device).items()}
    params = {k: trainable_parameters(s.model) for k, s in setups.items()}
    for k in settings.k:
        show(f"K={k}: {times[k] * 1e3:.1f} ms per step, {params[k]:,} trainable parameters")
    ks = [float(k) for k in settings.k]
    time_slope, time_at_0 = slope(ks, [times[k] for k in settings.k])
    param_slope, _ = slope(ks, [float(params[k]) for k in settings.k])
    show(
        f"slope: {time_slope * 1e3:.2f} ms per head ({time_slope / times[first]:.1%} of step(K={first})), "
        f"{param_slope:,.0f} trainable parameters per head"
    )
    return Report(
        setup=setup,
        figures={
            "step_s": {str(k): t for k, t in times.items()},
            "trainable_params": {str(k): p for k, p in params.items()},
            "step_s_per_head": time_slope,
            "step_s_at_k0": time_at_0,
            "params_per_head": param_slope,
        },
        checks=[
            Check(f"step(K={last}) / step(K={first})", times[last] / times[first]),
            Check("step time per head", time_slope * 1e3, unit=" ms"),
            Check("trainable parameters per head", param_slope),
        ],
    )
