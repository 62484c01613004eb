"""Checkpoints hold only what training changed: the trainable weights (safetensors), the best
weights so far, the loop's position, and DeepSpeed's optimiser and scheduler state.

Layout of a checkpoint folder::

    weights.safetensors   trainable weights now (LoRA or fully trained backbone, K-ON heads)
    best.safetensors      trainable weights at the best validation MRR
    state.json            step, training time, history, best validation metrics, the run's config
    optimizer/            DeepSpeed optimiser + scheduler state, frozen weights excluded
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kon_ray.config import ConfigError, flatten
from kon_ray.results import write_json

TAG = "ds"


@dataclass
class LoopState:
    """Where the training loop is; with the data order seeded by step, enough to resume exactly."""

    step: int = 0
    train_time_s: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)
    best_valid: dict[str, float] = field(default_factory=dict)

    @property
    def best_mrr(self) -> float:
        return self.best_valid.get("mrr", -1.0)


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _gathered(params: list[nn.Parameter], modify: bool) -> contextlib.AbstractContextManager[Any]:
    """Full parameters under ZeRO-3 (a no-op for stages 0-2)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0 if modify else None)
    return contextlib.nullcontext()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every trainable weight (call on every rank: ZeRO-3 gathers collectively)."""
    params = _trainable(model)
    with _gathered(list(params.values()), modify=False):
        return {name: p.detach().to("cpu", copy=True).contiguous() for name, p in params.items()}


def load_trainable(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = _trainable(model)
    unknown = set(state) - set(params)
    if unknown:
        raise ValueError(f"checkpoint holds weights this model does not train: {sorted(unknown)[:5]}")
    with _gathered(list(params.values()), modify=True), torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def save(
    folder: Path,
    engine: Any,
    state: LoopState,
    best: dict[str, torch.Tensor] | None,
    rank: int,
    config: dict[str, Any],
) -> None:
    """Every rank calls this (DeepSpeed writes each rank's optimiser shard); rank 0 writes the rest."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = trainable_state(engine.module)
    engine.save_checkpoint(str(folder / "optimizer"), tag=TAG, exclude_frozen_parameters=True)
    if rank == 0:
        save_file(weights, str(folder / "weights.safetensors"))
        if best is not None:
            save_file(best, str(folder / "best.safetensors"))
        write_json(folder / "state.json", {**asdict(state), "config": config})


# Settings that may change between a run and its resumption: budgets and threads.
RESUMABLE_CHANGES = {"train.max_minutes", "train.max_steps", "train.epochs", "train.threads", "train.cpus_per_worker"}


def check_same_run(folder: Path, config: dict[str, Any]) -> None:
    """Refuse to resume a checkpoint written under other settings."""
    saved = _flat(json.loads((folder / "state.json").read_text())["config"])
    changed = sorted(k for k, v in _flat(config).items() if saved.get(k) != v and k not in RESUMABLE_CHANGES)
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {_flat(config)[k]!r}" for k in changed[:5])
        raise ConfigError(f"{folder} was written by a run with other settings ({details}); use another output folder")


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys, values as JSON gives them back (tuples become lists)."""
    return dict(flatten(json.loads(json.dumps(config))))


def load(folder: Path, engine: Any) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
    """Restore weights, optimiser and scheduler into ``engine``; return the loop state and best weights."""
    engine.load_checkpoint(
        str(folder / "optimizer"),
        tag=TAG,
        load_module_strict=False,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    load_trainable(engine.module, load_file(str(folder / "weights.safetensors")))
    best_path = folder / "best.safetensors"
    best = load_file(str(best_path)) if best_path.exists() else None
    saved = json.loads((folder / "state.json").read_text())
    saved.pop("config")
    state = LoopState(**saved)
    return state, best
