"""A K-ON training step vs a plain LoRA-SFT step of the same backbone: what the K heads add.

Both tune the backbone with LoRA and take optimiser steps through DeepSpeed on the same queries
and micro-batches: K-ON as training does (negatives, L_nce + L_sft + L_tdt); SFT as a causal-LM
cross-entropy on the target's tokens after the prompt. Steps are interleaved. The paper's setting
(a 7B backbone on a GPU) is ``--device cuda model.backbone=PATH``; with the small embedded
backbone the heads weigh far more against the backbone than they would there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
    train_batch,
    train_step,
)
from kon_ray.config import RunConfig
from kon_ray.data import Queries
from kon_ray.training import Setup, deepspeed_config, trainable_parameters

BASE = {"model.backbone_tuning": "lora"}
TARGET = 1.2


@dataclass(frozen=True)
class Settings:
    steps: int = 10
    """Timed steps of each (after ``warmup`` rounds); medians reported."""
    warmup: int = 2


def sft_engine(s: Setup) -> Any:
    """A DeepSpeed engine over the backbone alone, with the optimiser and settings training uses."""
    import deepspeed

    params = [p for p in s.model.backbone.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.config.learning_rate, weight_decay=s.config.train.weight_decay)
    bf16 = s.precision.weights == torch.bfloat16
    engine, _, _, _ = deepspeed.initialize(model=s.model.backbone, optimizer=optimizer, config=deepspeed_config(s.config, bf16))
    return engine


def sft_step(s: Setup, engine: Any, queries: Queries) -> float:
    """One LoRA-SFT optimiser step: per micro-batch, cross-entropy on the target tokens, backward, step."""
    t = s.config.train
    loss = 0.0
    for micro in range(t.grad_accum):
        chunk = queries.take(slice(micro * t.micro_batch, (micro + 1) * t.micro_batch))
        batch = s.encoded.batch(chunk, with_targets=True).to(s.device)
        positions = torch.arange(batch.input_ids.shape[1], device=s.device)
        answer = (positions[None, :] > batch.last[:, None]) & batch.attention_mask.bool()
        labels = torch.where(answer, batch.input_ids, -100)
        with s.precision.training(s.device):
            out = engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels)
        engine.backward(out.loss)
        engine.step()
        loss += out.loss.item()
    return loss


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    kon, plain = load(config, device), load(config, device)
    kon_engine, plain_engine = engine_for(kon), sft_engine(plain)
    queries = train_batch(kon, config.train.seed)
    params = {"kon": trainable_parameters(kon.model), "sft": trainable_parameters(plain.model.backbone)}
    setup = announce({**describe(kon), **describe_step(kon), "trainable": params, **hardware(device)})
    counter = iter(range(10**9))
    steps = {
        "kon": lambda: train_step(kon, kon_engine, queries, config.loss.negatives, next(counter)),
        "sft": lambda: sft_step(plain, plain_engine, queries),
    }
    times = {name: median(t) for name, t in interleaved(steps, settings.steps, settings.warmup, device).items()}
    show(f"K-ON step: {times['kon'] * 1e3:.1f} ms, LoRA-SFT step: {times['sft'] * 1e3:.1f} ms (medians of {settings.steps})")
    return Report(
        setup=setup,
        figures={"kon_step_s": times["kon"], "sft_step_s": times["sft"], "trainable_params": params},
        checks=[Check("K-ON step / LoRA-SFT step", times["kon"] / times["sft"], "<=", TARGET)],
    )
