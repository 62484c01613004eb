"""The ``train`` section: optimisation, budgets and Ray Train workers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kon_ray.config.literals import check_literals
from kon_ray.overrides import check


@dataclass(frozen=True)
class TrainConfig:
    lr: float | None = field(default=None, metadata={
        "help": "AdamW learning rate; None: the paper's 1e-4 for a pretrained backbone, 1e-3 for the "
                "embedded one, which is trained from random weights.",
        "paper": 1e-4})
    epochs: float = field(default=5.0, metadata={
        "help": "Passes over the training queries (both directions)."})
    warmup_steps: int = field(default=50, metadata={
        "help": "Optimiser steps of linear learning-rate warm-up."})
    schedule: Literal["linear", "constant"] = field(default="linear", metadata={
        "help": "After warm-up: 'linear' decays to 0 at the end of the step or time budget; 'constant' "
                "keeps it."})
    micro_batch: int = field(default=192, metadata={
        "help": "Queries per device per forward pass; derived when batch_size is set. The paper's 12 is a "
                "GPU-memory setting (studies/paper.py uses it).",
        "paper": 12})
    batch_size: int | None = field(default=None, metadata={
        "help": "Global queries per optimiser step; when set, micro_batch = batch_size / (workers x "
                "grad_accum)."})
    grad_accum: int = field(default=1, metadata={
        "help": "Micro-batches per optimiser step and worker.", "paper": 8})
    grad_clip: float = field(default=1.0, metadata={"help": "Gradient-norm clipping; 0: off."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_minutes: float | None = field(default=None, metadata={
        "help": "Stop training after this many minutes (then evaluate); None: run all epochs."})
    max_steps: int | None = field(default=None, metadata={
        "help": "Stop after this many optimiser steps; None: run all epochs."})
    evals_per_epoch: int = field(default=1, metadata={
        "help": "Validations (each leaving a checkpoint) per epoch; the best on valid MRR is tested."})
    seed: int = field(default=0, metadata={
        "help": "Seed of initialisation, shuffling and negative sampling (>= 0)."})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads per process; None: torch's default."})
    workers: int = field(default=1, metadata={
        "help": "Data-parallel Ray Train workers, each running DeepSpeed.", "paper": 8})
    gpus_per_worker: float = field(default=0.0, metadata={
        "help": "0: CPU workers (gloo); >= 1: CUDA workers (nccl).", "paper": 1})
    cpus_per_worker: float | None = field(default=None, metadata={
        "help": "CPUs each worker reserves; None: the cluster's CPUs shared out over CPU workers, 1 per GPU "
                "worker."})
    zero_stage: int = field(default=0, metadata={"help": "DeepSpeed ZeRO stage 0-3."})
    deepspeed_config: str | None = field(default=None, metadata={
        "help": "Path of a DeepSpeed JSON to use instead of the one built from these settings."})

    def __post_init__(self) -> None:
        check_literals(self)
        check(self.lr is None or self.lr > 0, f"train.lr={self.lr}: must be > 0 or None")
        check(self.epochs > 0, f"train.epochs={self.epochs}: must be > 0")
        check(self.warmup_steps >= 0, f"train.warmup_steps={self.warmup_steps}: must be >= 0")
        check(self.micro_batch >= 1, f"train.micro_batch={self.micro_batch}: must be >= 1")
        check(self.grad_accum >= 1, f"train.grad_accum={self.grad_accum}: must be >= 1")
        check(self.grad_clip >= 0, f"train.grad_clip={self.grad_clip}: must be >= 0 (0: off)")
        check(self.weight_decay >= 0, f"train.weight_decay={self.weight_decay}: must be >= 0")
        check(
            self.max_minutes is None or self.max_minutes > 0,
            f"train.max_minutes={self.max_minutes}: must be > 0 or None",
        )
        check(self.max_steps is None or self.max_steps >= 1, f"train.max_steps={self.max_steps}: must be >= 1")
        check(self.evals_per_epoch >= 1, f"train.evals_per_epoch={self.evals_per_epoch}: must be >= 1")
        check(self.seed >= 0, f"train.seed={self.seed}: must be >= 0")
        check(self.threads is None or self.threads >= 1, f"train.threads={self.threads}: must be >= 1")
        check(self.workers >= 1, f"train.workers={self.workers}: must be >= 1")
        check(self.gpus_per_worker >= 0, f"train.gpus_per_worker={self.gpus_per_worker}: must be >= 0")
        check(
            self.cpus_per_worker is None or self.cpus_per_worker > 0,
            f"train.cpus_per_worker={self.cpus_per_worker}: must be > 0 or None",
        )
        check(
            self.zero_stage in (0, 1, 2, 3),
            f"train.zero_stage={self.zero_stage}: DeepSpeed ZeRO stages are 0, 1, 2 and 3",
        )
        if self.batch_size is not None:
            parts = self.workers * self.grad_accum
            check(
                self.batch_size % parts == 0,
                f"train.batch_size={self.batch_size}: must be divisible by train.workers x train.grad_accum "
                f"= {self.workers} x {self.grad_accum} = {parts}",
            )
            object.__setattr__(self, "micro_batch", self.batch_size // parts)

    @property
    def global_batch(self) -> int:
        """Queries per optimiser step over all workers."""
        return self.micro_batch * self.grad_accum * self.workers
