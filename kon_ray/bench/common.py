"""What every benchmark shares: timing, the setup it states, its JSON record.

A benchmark measures both sides of its ratio in the same run, interleaved where it can, so that
load on a shared machine falls on both; it never compares against a fixed time from elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from kon_ray.config import ConfigError, RunConfig
from kon_ray.data import Queries, both_directions, sample_negatives
from kon_ray.results import provenance, write_json

if typing.TYPE_CHECKING:
    from kon_ray.training import Setup


@dataclass(frozen=True)
class Check:
    """One figure of a benchmark's verdict, against its target (``op bound``) or reported only."""

    name: str
    value: float
    op: Literal[">=", "<=", ">"] | None = None
    bound: float | None = None
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.op is None or self.bound is None:
            return None
        value, bound = self.value, self.bound
        return {">=": value >= bound, "<=": value <= bound, ">": value > bound}[self.op]

    def text(self) -> str:
        target = "reported" if self.met is None else f"target {self.op} {self.bound:g}{self.unit}"
        return f"{self.name} {number(self.value)}{self.unit} ({target})"


def number(value: float) -> str:
    """3 significant digits, without an exponent for large values."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


@dataclass
class Report:
    """What a benchmark returns: the setup it ran under, its figures and its checks."""

    setup: dict[str, Any]
    figures: dict[str, Any]
    checks: list[Check]
    notes: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool | None:
        verdicts = [c.met for c in self.checks if c.met is not None]
        return all(verdicts) if verdicts else None


def show(line: str) -> None:
    """A benchmark's output line, as it is measured."""
    print(line, flush=True)


def announce(setup: dict[str, Any]) -> dict[str, Any]:
    show("setup: " + ", ".join(f"{key} {value}" for key, value in setup.items()))
    return setup


def require_device(name: str, needed: str, device: torch.device) -> None:
    """Refuse, in one line, a benchmark that needs a ``needed`` device ('cuda') on another."""
    if needed == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"bench {name}: needs a CUDA device; torch {torch.__version__} sees none on this machine"
        )
    if device.type != needed:
        raise ConfigError(f"bench {name}: --device {device}: it runs on {needed} only")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time of one call, the device's queued work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    fns: Mapping[Any, Callable[[], Any]], rounds: int, warmup: int, device: torch.device
) -> dict[Any, list[float]]:
    """Times of each function over ``rounds``, taking one call of each per round after ``warmup`` rounds,
    so that a change of load in the middle falls on every side of a ratio alike."""
    times: dict[Any, list[float]] = {key: [] for key in fns}
    for r in range(warmup + rounds):
        for key, fn in fns.items():
            elapsed = seconds(fn, device)
            if r >= warmup:
                times[key].append(elapsed)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict[str, Any]:
    """Where the benchmark ran: device, CPU model and count, torch threads and version."""
    info: dict[str, Any] = {"device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info |= {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__}
    return info


def describe(s: Setup) -> dict[str, Any]:
    """The model and data a benchmark runs: the KG, backbone dims and parameters, K."""
    c = s.model.backbone.config
    backbone_params = sum(p.numel() for p in s.model.backbone.parameters())
    return {
        "dataset": f"{s.kg.name} ({s.kg.num_entities} entities)",
        "backbone": f"{s.config.model.backbone} hidden {c.hidden_size} x {c.num_hidden_layers} layers, "
        f"{c.num_attention_heads} heads, vocab {c.vocab_size}, {backbone_params / 1e6:.2f}M params "
        f"({s.config.model.tuning} tuning)",
        "K": s.config.model.k,
    }


def describe_step(s: Setup) -> dict[str, Any]:
    """A training step's shape: queries per optimiser step, micro-batches, |N|."""
    t = s.config.train
    return {"batch": f"{t.global_batch} queries ({t.micro_batch} x {t.grad_accum})", "|N|": s.config.loss.negatives}


def load(config: RunConfig, device: torch.device) -> Setup:
    """The model and data as ``training.setup`` builds them, in train mode."""
    from kon_ray.training import setup

    s = setup(config, device)
    s.model.train()
    return s


def engine_for(s: Setup) -> Any:
    """A DeepSpeed engine over ``s.model`` as training builds it (one-process group without Ray)."""
    from kon_ray.training import init_process_group, make_engine

    init_process_group()
    engine, _ = make_engine(s)
    return engine


def train_batch(s: Setup, seed: int = 0) -> Queries:
    """One optimiser step's training queries: the first ``global_batch`` rows of a seeded permutation."""
    queries = both_directions(s.kg.train)
    order = np.random.default_rng(seed).permutation(len(queries))
    return queries.take(order[: s.config.train.global_batch])


def train_step(s: Setup, engine: Any, queries: Queries, negatives: int, step: int) -> float:
    """One optimiser step as ``training.fit`` takes it: per micro-batch, sample |N| negatives,
    the losses, backward, step (DeepSpeed steps the optimiser at the accumulation boundary)."""
    from kon_ray.training import compute_losses, micro_seed

    t = s.config.train
    loss = 0.0
    for micro in range(t.grad_accum):
        seed = micro_seed(t.seed, step, micro)
        torch.manual_seed(seed)
        chunk = queries.take(slice(micro * t.micro_batch, (micro + 1) * t.micro_batch))
        drawn = sample_negatives(s.train_index, chunk, negatives, torch.Generator().manual_seed(seed)).to(s.device)
        terms = compute_losses(s, chunk, drawn, engine)
        engine.backward(terms["loss"])
        engine.step()
        loss += terms["loss"].item()
    return loss


def slope(x: list[float], y: list[float]) -> tuple[float, float]:
    """Least-squares line through (x, y): (slope, intercept)."""
    a, b = np.polyfit(np.asarray(x, dtype=float), np.asarray(y, dtype=float), 1)
    return float(a), float(b)


def record(name: str, settings: Any, config: RunConfig | None, report: Report, wall_s: float) -> dict[str, Any]:
    """The JSON record of one benchmark run, with the provenance of the code that ran it."""
    return {
        "benchmark": name,
        "setup": report.setup,
        "settings": dataclasses.asdict(settings),
        "figures": report.figures,
        "checks": [{**dataclasses.asdict(c), "met": c.met} for c in report.checks],
        "ratio": report.checks[0].value,
        "target": "; ".join(c.text() for c in report.checks),
        "met": report.met,
        "notes": report.notes,
        "wall_s": wall_s,
        "ended": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": config.to_dict() if config is not None else None,
        **provenance(),
    }


def verdict(report: Report) -> str:
    """The final line: every check, then met, missed or reported."""
    status = {True: "met", False: "missed", None: "reported"}[report.met]
    return f"ratio: {'; '.join(c.text() for c in report.checks)}: {status}"


def write_record(out: Path, name: str, value: dict[str, Any]) -> Path:
    path = out / f"{name}.json"
    write_json(path, value)
    return path
