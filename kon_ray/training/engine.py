"""The DeepSpeed engine of a run: its JSON settings, the optimiser and the learning-rate schedule."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from kon_ray.config import ConfigError, RunConfig
from kon_ray.training.setup import Setup


@dataclass
class Schedule:
    """Warm-up, then constant or linear decay to 0 at the end of the step or time budget."""

    warmup: int
    linear: bool
    progress: float = 0.0  # fraction of the budget used, shared by every rank

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0
        return warm * (max(0.0, 1.0 - self.progress) if self.linear else 1.0)


def deepspeed_config(config: RunConfig, bf16: bool) -> dict[str, Any]:
    """DeepSpeed settings from the run's config, or the user's JSON (``train.deepspeed_config``)."""
    t = config.train
    if t.deepspeed_config:
        user = json.loads(Path(t.deepspeed_config).read_text())
        for key, value in (("train_micro_batch_size_per_gpu", t.micro_batch), ("gradient_accumulation_steps", t.grad_accum)):
            if user.setdefault(key, value) != value:
                raise ConfigError(f"{t.deepspeed_config}: {key}={user[key]} disagrees with train settings ({value})")
        return user
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.global_batch,
        "gradient_clipping": t.grad_clip,
        "zero_optimization": {"stage": t.zero_stage},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
    }


def init_process_group() -> None:
    """A one-process group for running without Ray (DeepSpeed needs one); a file store, no socket."""
    if dist.is_initialized():
        return
    store = tempfile.NamedTemporaryFile(prefix="kon-ray-store-", delete=False).name
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)


def make_engine(s: Setup) -> tuple[Any, Schedule]:
    """``deepspeed.initialize`` with AdamW over the trainable weights and the warm-up schedule."""
    import deepspeed  # heavy import, only where training starts

    t = s.config.train
    settings = deepspeed_config(s.config, s.precision.weights == torch.bfloat16)
    if settings.get("zero_optimization", {}).get("stage", 0) == 3:
        for module, weight in s.model.external_parameters():
            deepspeed.zero.register_external_parameter(module, weight)
    params = [p for p in s.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.config.learning_rate, weight_decay=t.weight_decay)
    schedule = Schedule(t.warmup_steps, t.schedule == "linear")
    engine, _, _, _ = deepspeed.initialize(
        model=s.model,
        optimizer=optimizer,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        config=settings,
    )
    return engine, schedule
