"""``fit``: the training loop, from a loop state to the end of the epoch, step or time budget."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from kon_ray import losses
from kon_ray.checkpoint import LoopState, trainable_state
from kon_ray.console import FILE_ONLY
from kon_ray.data import Queries, both_directions, sample_negatives
from kon_ray import faults
from kon_ray.training.engine import Schedule
from kon_ray.training.evaluate import evaluate
from kon_ray.training.setup import Setup, trainable_parameters
from kon_ray.training.world import World

log = logging.getLogger(__name__)

OnEval = Callable[[Any, dict[str, float], LoopState, "dict[str, torch.Tensor] | None"], None]
"""Called on every rank after each validation with (engine, record, state, best weights)."""


def compute_losses(
    s: Setup, queries: Queries, negatives: torch.Tensor, engine: Any = None
) -> dict[str, torch.Tensor]:
    """Algorithm 1, lines 3-8, for one micro-batch of ``queries`` and their ``negatives`` (B, |N|).

    Training passes its DeepSpeed ``engine``, whose forward the model runs through: ZeRO-3 counts
    micro-batches there, and without it keeps only the last micro-batch's gradients of a step.
    """
    batch = s.encoded.batch(queries, with_targets=True).to(s.device)
    candidates = torch.cat([torch.as_tensor(queries.target, device=s.device)[:, None], negatives], dim=1)
    model = s.model if engine is None else engine
    with s.precision.training(s.device):
        tokens, mask = s.entity_tokens[candidates], s.entity_mask[candidates]
        return losses.step_losses(model, batch, tokens, mask, s.config)


def micro_seed(seed: int, step: int, micro: int) -> int:
    """Seed of one micro-batch's negatives and dropout: the same whatever the number of workers."""
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1)[0])


def fit(s: Setup, engine: Any, schedule: Schedule, world: World, state: LoopState,
        best: dict[str, torch.Tensor] | None, on_eval: OnEval) -> dict[str, torch.Tensor] | None:
    """Train from ``state`` until the epoch, step or time budget runs out; return the best weights.

    Each optimiser step takes the next ``global_batch`` rows of a seeded permutation, orders them
    by token count and splits them into ``grad_accum x workers`` micro-batches; rank r takes
    micro-batches r, r + workers, ... so that any number of workers sees the same data,
    negatives and dropout for a given seed. The best weights are those of the best
    validation MRR. ``on_eval`` runs on every rank after each validation (checkpoint, report).
    """
    cfg = s.config.train
    queries = both_directions(s.kg.train)
    lengths = s.encoded.training_lengths(queries)
    steps_per_epoch = max(1, len(queries) // cfg.global_batch)
    total = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    trainable = trainable_parameters(s.model)
    engine.train()
    running: dict[str, float] = {}
    order, order_epoch = np.empty(0, dtype=np.int64), -1
    bar = tqdm(total=total, initial=state.step, desc="train", unit="step", disable=world.rank != 0, mininterval=10.0)
    shown = {"loss": "-", "valid MRR": "-", "qps": "-"}  # the bar's postfix
    while state.step < total and state.train_time_s < budget:
        epoch, within = divmod(state.step, steps_per_epoch)
        if epoch != order_epoch:
            order, order_epoch = np.random.default_rng([cfg.seed, epoch]).permutation(len(queries)), epoch
        start = time.perf_counter()
        rows = order[within * cfg.global_batch : (within + 1) * cfg.global_batch]
        rows = rows[np.argsort(lengths[rows], kind="stable")]  # micro-batches of like length pad less
        for a in range(cfg.grad_accum):
            micro = a * world.size + world.rank
            seed = micro_seed(cfg.seed, state.step, micro)
            torch.manual_seed(seed)
            chunk = queries.take(rows[micro * cfg.micro_batch : (micro + 1) * cfg.micro_batch])
            generator = torch.Generator().manual_seed(seed)
            negatives = sample_negatives(s.train_index, chunk, s.config.loss.negatives, generator).to(s.device)
            terms = compute_losses(s, chunk, negatives, engine)
            engine.backward(terms["loss"])
            engine.step()
            for name, value in terms.items():
                running[name] = running.get(name, 0.0) + value.item() / cfg.grad_accum
        state.step += 1
        state.train_time_s += world.reduce(time.perf_counter() - start, "max")
        schedule.progress = max(state.step / total, state.train_time_s / budget)
        bar.update(1)
        shown["loss"] = f"{terms['loss'].item():.3f}"
        shown["qps"] = f"{state.step * cfg.global_batch / max(state.train_time_s, 1e-9):.0f}"
        bar.set_postfix(shown, refresh=False)
        if state.step % eval_every == 0 or state.step >= total or state.train_time_s >= budget:
            valid, _ = evaluate(s, "valid", s.config.data.valid_limit, world)
            steps = state.step - (state.history[-1]["step"] if state.history else 0)
            previous_time = state.history[-1]["train_time_s"] if state.history else 0.0
            record = {
                "step": state.step,
                "progress": schedule.progress,
                "epoch": state.step / steps_per_epoch,
                "train_time_s": state.train_time_s,
                "queries_per_s": steps * cfg.global_batch / max(state.train_time_s - previous_time, 1e-9),
                "step_time_s": (state.train_time_s - previous_time) / max(steps, 1),
                "trainable_params": trainable,
                "lr": engine.get_lr()[0],
                **{f"train.{k}": world.reduce(v / steps, "mean") for k, v in running.items()},
                **{f"valid.{k}": v for k, v in valid.items()},
            }
            running = {}
            state.history.append(record)
            log.info("step %d: valid MRR %.4f", state.step, valid["mrr"], extra=FILE_ONLY)  # the bar shows it
            shown["valid MRR"] = f"{valid['mrr']:.4f}"
            if valid["mrr"] > state.best_mrr:
                state.best_valid = valid
                best = trainable_state(engine.module)
            on_eval(engine, record, state, best)
            faults.after_checkpoint(state.step)
    bar.close()
    return best
