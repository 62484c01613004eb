"""One run: ``setup -> fit -> test`` on a worker (``train_and_test``), or in this process (``run``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from kon_ray import checkpoint
from kon_ray.checkpoint import LoopState, load_trainable, trainable_state
from kon_ray.config import RunConfig
from kon_ray.evaluation import write_rank_table
from kon_ray.results import provenance, write_json
from kon_ray.run_identity import RunIdentity, check_same_run
from kon_ray.training.engine import init_process_group, make_engine
from kon_ray.training.evaluate import evaluate
from kon_ray.training.fit import OnEval, fit
from kon_ray.training.monitor import Monitor
from kon_ray.training.setup import setup, trainable_parameters
from kon_ray.training.world import World

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

OnCheckpoint = Callable[
    [Any, dict[str, float], LoopState, "dict[str, torch.Tensor] | None", RunIdentity], None
]
"""Called on every rank after each validation with (engine, record, state, best weights, identity)."""


@dataclass
class Outcome:
    """What a finished run leaves: final metrics, the test rank table, and what ``model/`` keeps."""

    metrics: dict[str, Any]
    table: pd.DataFrame
    weights: dict[str, torch.Tensor]
    """The trainable weights the test split was ranked with (those of the best validation)."""
    tokenizer: PreTrainedTokenizerBase
    identity: RunIdentity


def train_and_test(
    config: RunConfig,
    world: World,
    on_checkpoint: OnCheckpoint,
    resume: Path | None = None,
    device: torch.device | None = None,
) -> Outcome:
    """setup -> fit -> test on one worker of ``world``: the final metrics and the test rank table.

    The test split is ranked with the weights of the best validation. A resumed checkpoint must
    come from the same run: same settings, data, tokenizer and backbone.
    """
    started = time.time()
    if resume is not None:
        check_same_run(resume, config.to_dict())  # the settings, before any weight loads
    s = setup(config, device)
    if resume is not None:
        check_same_run(resume, config.to_dict(), s.identity)
    engine, schedule = make_engine(s)
    state, best = LoopState(), None
    if resume is not None:
        state, best = checkpoint.load(resume, engine)
        log.info("resumed at step %d", state.step)

    def on_eval(
        engine: Any, record: dict[str, float], state: LoopState, best: dict[str, torch.Tensor] | None
    ) -> None:
        on_checkpoint(engine, record, state, best, s.identity)

    best = fit(s, engine, schedule, world, state, best, on_eval)
    if best is not None:
        load_trainable(engine.module, best)
    weights = best if best is not None else trainable_state(engine.module)
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
    return Outcome(metrics, table, weights, s.tokenizer, s.identity)


def write_results(out: Path, outcome: Outcome) -> None:
    """``metrics.json``, ``ranks.parquet`` and ``model/`` (what ``kon-ray export`` and ``predict`` load)."""
    metrics = outcome.metrics
    write_rank_table(outcome.table, out / "ranks.parquet")
    summary = {k: metrics[k] for k in ("dataset", "steps", "valid.mrr", "test.mrr") if k in metrics}
    config, identity = metrics["config"], outcome.identity
    checkpoint.save_model(out, outcome.weights, outcome.tokenizer, config, identity, summary)
    write_json(out / "metrics.json", metrics)


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    """The whole job in this process, without Ray: one worker, checkpoints in ``out/checkpoints``.

    Re-running with the same ``out`` resumes from the latest complete checkpoint.
    """
    init_process_group()
    root = out / "checkpoints"

    monitor = Monitor(out, bar=False)  # fit's own bar is on this terminal

    def on_checkpoint(
        engine: Any, record: dict[str, float], state: LoopState, best: dict[str, torch.Tensor] | None,
        identity: RunIdentity,
    ) -> None:
        checkpoint.save_atomic(root, engine, state, best, config.to_dict(), identity)
        monitor.record(record)

    with monitor:
        outcome = train_and_test(config, World(), on_checkpoint, checkpoint.latest_complete(root))
    write_results(out, outcome)
    return outcome.metrics
