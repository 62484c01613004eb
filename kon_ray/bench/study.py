"""A study of short trials through Ray Tune vs the same runs one after another in one process.

Both sides run the same configs (one per seed) to the same step budget, validation and test
included. The Ray side is timed from ``ray.init`` (a local Ray on 127.0.0.1 with ``cpus`` CPUs)
to the study's result table, so Ray's start-up and each trial's worker start-up count; the
sequential side calls ``training.run`` in this process with ``threads`` torch threads (default:
``cpus``; on a machine shared with other work, 2 threads can wait on each other far longer than
they gain, and ``threads=1`` is the fairer baseline). Each side's time outside training steps
(start-up, set-up, validation, test, and on Ray the trial and worker start-up) is reported beside it,
on Ray broken down per trial, and so is the speed-up of the training steps alone: the most that
running trials side by side could gain on these CPUs.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kon_ray.bench.common import Check, Report, announce, hardware, show
from kon_ray.config import RunConfig, flatten
from kon_ray.distributed import start_ray

BASE = {
    "data.train_limit": "2000",
    "data.valid_limit": "100",
    "data.test_limit": "200",
    "train.max_steps": "60",
    "train.evals_per_epoch": "1",
}
TARGET = 1.0
"""Not slower than the same runs one after another: on 2 cores two one-thread trials side by side
train no faster than one two-thread run, so Ray's overhead is all a study could add here."""
OVERHEAD_TARGET_S = 15.0
"""Per trial, outside training steps, on 2 cores."""


@dataclass(frozen=True)
class Settings:
    trials: int = 4
    """Trials (seeds 0..trials-1 of the same config)."""
    cpus: int = 2
    """CPUs of the local Ray (trials run at once as far as they fit, one CPU per worker)."""
    threads: int | None = None
    """torch threads of the sequential runs; None: ``cpus``."""


def study_of(config: RunConfig, trials: int) -> object:
    """A replicate study whose trials are ``config`` with seeds 0..trials-1."""
    from kon_ray.studies import Study

    default = dict(flatten(RunConfig().to_dict()))
    base = {k: v for k, v in flatten(config.to_dict()) if default[k] != v and k != "train.seed"}
    return Study(name="bench-study", base=base, seeds=tuple(range(trials)), max_concurrent_trials=trials)


def sequential(config: RunConfig, trials: int, threads: int, folder: Path) -> tuple[list[float], list[float]]:
    """Each seed's ``training.run`` in this process, one after another: wall and training times."""
    from kon_ray.training import run

    torch.set_num_threads(threads)
    walls, training = [], []
    for seed in range(trials):
        start = time.perf_counter()
        metrics = run(dataclasses.replace(config, train=dataclasses.replace(config.train, seed=seed)), folder / f"seed-{seed}")
        walls.append(time.perf_counter() - start)
        training.append(metrics["train_time_s"])
        show(f"sequential run {seed}: {walls[-1]:.1f} s, of which training steps {training[-1]:.1f} s")
    return walls, training


def on_ray(
    config: RunConfig, trials: int, cpus: int, folder: Path
) -> tuple[float, float, pd.DataFrame, dict[str, float]]:
    """The study on a fresh local Ray: seconds from ray.init to the result table, of which
    ray.init, the table, and where each trial's time outside training steps went (``overhead``)."""
    from kon_ray.studies.folder import read_trials
    from kon_ray.studies.tune import SLOT, run_study

    start = time.perf_counter()
    start_ray(None, num_cpus=cpus, resources={SLOT: 1024})
    import ray

    started = time.perf_counter() - start
    try:
        study = study_of(config, trials)
        table = run_study(study, __file__, {}, folder)
    finally:
        wall = time.perf_counter() - start
        ray.shutdown()
    return wall, started, table, overhead(read_trials(folder / study.name))


def overhead(trials: list[Any]) -> dict[str, float]:
    """Seconds per finished trial, from its final Tune result: inside its run, set-up, validations,
    checkpoints and the test (``wall_time_s - train_time_s``); inside the trial's function but
    outside its run, starting workers (Ray Train) and reporting (``time_total_s - wall_time_s``)."""
    done = [t.last_result for t in trials if t.last_result.get("final")]
    mean = lambda key: sum(r[key] for r in done) / max(len(done), 1)  # noqa: E731
    return {
        "run_outside_steps_s": mean("wall_time_s") - mean("train_time_s"),
        "trial_outside_run_s": mean("time_total_s") - mean("wall_time_s"),
    }


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    cpu = torch.device("cpu")
    setup = announce(
        {
            "trials": settings.trials,
            "cpus": settings.cpus,
            "trial": f"{config.data.dataset}, {config.data.train_limit} train triples, {config.train.max_steps} steps "
            f"of {config.train.global_batch} queries, valid {config.data.valid_limit}, test {config.data.test_limit} triples",
            **hardware(cpu),
        }
    )
    threads = settings.threads or settings.cpus
    with tempfile.TemporaryDirectory(prefix="kon-ray-bench-study-") as folder:
        walls, training = sequential(config, settings.trials, threads, Path(folder) / "sequential")
        outside = (sum(walls) - sum(training)) / settings.trials
        show(f"sequential, {threads} torch threads: {sum(walls):.1f} s for {settings.trials} runs; {outside:.1f} s per run outside training steps")
        wall, started, table, parts = on_ray(config, settings.trials, settings.cpus, Path(folder) / "ray")
    finished = int((table["status"] == "TERMINATED").sum())
    at_once = min(settings.trials, settings.cpus)
    ray_training = float(table["train_time_s"].sum())
    ray_outside = (wall - ray_training / at_once) * at_once / settings.trials
    show(
        f"Ray Tune: {wall:.1f} s for {settings.trials} trials ({finished} finished, up to {at_once} at once, 1 CPU each; "
        f"ray.init {started:.1f} s); about {ray_outside:.1f} s per trial outside training steps"
    )
    elsewhere = ray_outside - sum(parts.values())
    show(
        f"of which per trial: set-up, validations, checkpoints, test {parts['run_outside_steps_s']:.1f} s; "
        f"in the trial, outside its run {parts['trial_outside_run_s']:.1f} s; "
        f"starting and stopping trial processes, scheduling, ray.init {elsewhere:.1f} s"
    )
    # What running trials side by side gains on its own: the speed-up if neither side spent any
    # time outside training steps (on 2 cores, 2 one-thread trials against one two-thread run).
    steps_only = sum(training) / (ray_training / at_once)
    show(f"training steps alone: {steps_only:.2f}x faster on Ray ({sum(training):.1f} s against {ray_training / at_once:.1f} s)")
    return Report(
        setup={**setup, "sequential threads": threads},
        figures={
            "sequential_s": sum(walls),
            "sequential_runs_s": walls,
            "sequential_training_s": training,
            "ray_s": wall,
            "ray_init_s": started,
            "ray_training_s": table["train_time_s"].tolist(),
            "ray_outside_training_per_trial_s": ray_outside,
            **{f"ray_{key}": value for key, value in parts.items()},
            "ray_elsewhere_per_trial_s": elsewhere,
            "ray_trials_finished": finished,
            "steps_only_speedup": steps_only,
        },
        checks=[
            Check("Ray Tune speed-up over sequential", sum(walls) / wall, ">=", TARGET, "x"),
            Check("Ray's time per trial outside training steps", ray_outside, "<=", OVERHEAD_TARGET_S, " s"),
            Check("trials that did not finish", settings.trials - finished, "<=", 0),
        ],
    )
