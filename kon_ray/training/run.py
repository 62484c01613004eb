"""One run: ``setup -> fit -> test`` on a worker (``train_and_test``), or in this process (``run``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from kon_ray import checkpoint
from kon_ray.checkpoint import LoopState, load_trainable
from kon_ray.config import RunConfig
from kon_ray.evaluation import write_rank_table
from kon_ray.results import provenance, write_json
from kon_ray.training.engine import init_process_group, make_engine
from kon_ray.training.evaluate import evaluate
from kon_ray.training.fit import OnEval, fit
from kon_ray.training.monitor import Monitor
from kon_ray.training.setup import setup, trainable_parameters
from kon_ray.training.world import World

log = logging.getLogger(__name__)


def train_and_test(
    config: RunConfig, world: World, on_eval: OnEval, resume: Path | None = None, device: torch.device | None = None
) -> tuple[dict[str, Any], pd.DataFrame]:
    """setup -> fit -> test on one worker of ``world``: the final metrics and the test rank table.

    The test split is ranked with the weights of the best validation.
    """
    started = time.time()
    if resume is not None:
        checkpoint.check_same_run(resume, config.to_dict())
    s = setup(config, device)
    engine, schedule = make_engine(s)
    state, best = LoopState(), None
    if resume is not None:
        state, best = checkpoint.load(resume, engine)
        log.info("resumed at step %d", state.step)
    best = fit(s, engine, schedule, world, state, best, on_eval)
    if best is not None:
        load_trainable(engine.module, best)
    test, table = evaluate(s, "test", config.data.test_limit, world)
    metrics: dict[str, Any] = {
        **{f"test.{k}": v for k, v in test.items()},
        **{f"valid.{k}": v for k, v in state.best_valid.items()},
        "trainable_params": trainable_parameters(s.model),
        "steps": state.step,
        "step_time_s": state.train_time_s / max(state.step, 1),
        "train_time_s": state.train_time_s,
        "wall_time_s": time.time() - started,
        "workers": world.size,
        "history": state.history,
        "config": config.to_dict(),
        "data_hash": s.kg.digest,
        "dataset": s.kg.name,
        "device": str(s.device),
        "precision": str(s.precision),
        **provenance(),
    }
    return metrics, table


def write_results(out: Path, metrics: dict[str, Any], table: pd.DataFrame) -> None:
    write_rank_table(table, out / "ranks.parquet")
    write_json(out / "metrics.json", metrics)


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    """The whole job in this process, without Ray: one worker, checkpoints in ``out/checkpoint``.

    Re-running with the same ``out`` resumes from that checkpoint.
    """
    init_process_group()
    ckpt = out / "checkpoint"

    monitor = Monitor(out, bar=False)  # fit's own bar is on this terminal

    def on_eval(engine: Any, record: dict[str, float], state: LoopState, best: dict[str, torch.Tensor] | None) -> None:
        checkpoint.save(ckpt, engine, state, best, 0, config.to_dict())
        monitor.record(record)

    resume = ckpt if (ckpt / "state.json").exists() else None
    with monitor:
        metrics, table = train_and_test(config, World(), on_eval, resume)
    write_results(out, metrics, table)
    return metrics
