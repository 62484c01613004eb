"""Checkpoints hold only what training changed: the trainable weights (safetensors), the best
weights so far, the loop's position, and DeepSpeed's optimiser and scheduler state.

Layout of a checkpoint folder::

    weights.safetensors   trainable weights now (LoRA or fully trained backbone, K-ON heads)
    best.safetensors      trainable weights at the best validation MRR
    state.json            step, training time, history, best validation metrics, the run's
                          config, identity (data, tokenizer, backbone) and provenance
    optimizer/            DeepSpeed optimiser + scheduler state, frozen weights excluded
    manifest-<rank>.json  size and sha256 of every file above that the rank wrote, written last

A run resumes only a checkpoint of the same run (``kon_ray.run_identity.check_same_run``).

Without Ray, ``save_atomic`` keeps them as ``checkpoints/checkpoint-<step>/``: each is written
under a temporary name, renamed once complete, and then named by the ``latest`` pointer;
the previous one stays. With Ray, Ray Train keeps its own (``kon_ray.distributed``).

A finished run also leaves ``model/`` (``save_model``): its best trainable weights, its
tokenizer, config and identity, all that ``kon_ray.saved_run`` needs to load it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from kon_ray.config import ConfigError
from kon_ray.results import provenance, write_atomic, write_json
from kon_ray.run_identity import RunIdentity

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

TAG = "ds"
POINTER = "latest"
PREFIX = "checkpoint-"
MODEL_DIR = "model"
MODEL_WEIGHTS = "trainable.safetensors"
MODEL_RECORD = "run.json"


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
    identity: RunIdentity,
) -> None:
    """Every rank calls this (DeepSpeed writes each rank's optimiser shard); rank 0 writes the rest.

    Each rank's manifest, written last, lists the files it wrote: a checkpoint without rank 0's
    manifest, or whose files differ from it, is incomplete.
    """
    folder.mkdir(parents=True, exist_ok=True)
    before = set(_files(folder))
    weights = trainable_state(engine.module)
    engine.save_checkpoint(str(folder / "optimizer"), tag=TAG, exclude_frozen_parameters=True)
    if rank == 0:
        save_file(weights, str(folder / "weights.safetensors"))
        if best is not None:
            save_file(best, str(folder / "best.safetensors"))
        record = {**asdict(state), "config": config, "identity": asdict(identity), "provenance": provenance()}
        write_json(folder / "state.json", record)
    written = sorted(set(_files(folder)) - before)
    write_json(folder / f"manifest-{rank}.json", {name: _digest(folder / name) for name in written})


def _files(folder: Path) -> list[str]:
    """Every file under ``folder`` but the manifests, as relative POSIX paths."""
    return [
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith("manifest-")
    ]


def _digest(path: Path) -> dict[str, Any]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def problem(folder: Path) -> str | None:
    """Why the checkpoint in ``folder`` cannot be resumed (incomplete, truncated, corrupt), or None."""
    if not (folder / "manifest-0.json").is_file():
        return f"{folder}: incomplete checkpoint (no manifest-0.json: its writing stopped before the end)"
    for manifest in sorted(folder.glob("manifest-*.json")):
        try:
            files = json.loads(manifest.read_text())
        except (OSError, ValueError):
            return f"{manifest}: unreadable checkpoint manifest"
        for name, expected in files.items():
            path = folder / name
            if not path.is_file():
                return f"{path}: missing from the checkpoint"
            size = path.stat().st_size
            if size != expected["size"]:
                return f"{path}: truncated or changed ({size} bytes, {expected['size']} written)"
            if _digest(path)["sha256"] != expected["sha256"]:
                return f"{path}: corrupt (its sha256 differs from the one written)"
    return None


def check_complete(folder: Path) -> None:
    """Refuse, in one line naming the file, a checkpoint that cannot be resumed."""
    found = problem(folder)
    if found is not None:
        raise ConfigError(f"{found}; cannot resume from it")


def save_atomic(
    root: Path, engine: Any, state: LoopState, best: dict[str, torch.Tensor] | None, config: dict[str, Any],
    identity: RunIdentity,
) -> Path:
    """One process, no Ray: write ``root/checkpoint-<step>`` under a temporary name, rename it
    once complete, then point ``root/latest`` at it; the previous checkpoint stays, older go."""
    name = f"{PREFIX}{state.step:08d}"
    partial = root / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    save(partial, engine, state, best, 0, config, identity)
    final = root / name
    shutil.rmtree(final, ignore_errors=True)  # a broken one, left by the run this one resumed
    os.replace(partial, final)
    _sync(root)
    previous = _pointed(root)
    write_atomic(root / POINTER, f"{name}\n".encode())
    for folder in _checkpoints(root):
        if folder.name not in (name, previous):
            shutil.rmtree(folder, ignore_errors=True)
    return final


def _sync(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pointed(root: Path) -> str | None:
    pointer = root / POINTER
    return pointer.read_text().strip() if pointer.is_file() else None


def _checkpoints(root: Path) -> list[Path]:
    """Complete-named checkpoint folders of ``root``, oldest step first."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and re.fullmatch(rf"{PREFIX}\d+", p.name))


def latest_complete(root: Path) -> Path | None:
    """The checkpoint to resume from: the one ``latest`` names, or if it is broken the newest
    complete one, with a warning. None when there is none at all; a ConfigError naming the
    broken file when every one is broken."""
    pointed = _pointed(root)
    candidates = sorted(_checkpoints(root), key=lambda p: (p.name == pointed, p.name), reverse=True)
    problems = []
    for folder in candidates:
        found = problem(folder)
        if found is None:
            if problems:
                log.warning("%s; resuming from %s instead", "; ".join(problems), folder)
            return folder
        problems.append(found)
    if problems:
        raise ConfigError(
            f"{problems[0]}; no earlier complete checkpoint to resume from (remove {root} to start over)"
        )
    return None


def load(folder: Path, engine: Any) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
    """Restore weights, optimiser and scheduler into ``engine``; return the loop state and best weights."""
    check_complete(folder)
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
    state = LoopState(**{f.name: saved[f.name] for f in fields(LoopState)})
    return state, best


def save_model(
    folder: Path,
    weights: dict[str, torch.Tensor],
    tokenizer: PreTrainedTokenizerBase,
    config: dict[str, Any],
    identity: RunIdentity,
    summary: dict[str, Any],
) -> None:
    """``folder/model``: the best trainable weights, the tokenizer, the config and the identity,
    written under a temporary name and renamed once complete."""
    final = folder / MODEL_DIR
    partial = folder / f".{MODEL_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file(weights, str(partial / MODEL_WEIGHTS))
    tokenizer.save_pretrained(str(partial / "tokenizer"))
    write_json(partial / MODEL_RECORD, {"config": config, "identity": asdict(identity), **summary})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
