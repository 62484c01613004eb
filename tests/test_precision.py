"""Precision: what 'auto' picks per device, and mixed precision's bfloat16 in training only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from kon_ray.backbone import Precision, native_cpu_bfloat16, resolve_precision
from kon_ray.config import ModelConfig
from kon_ray.data import both_directions, sample_negatives
from kon_ray.training import compute_losses, setup
from tests.conftest import tiny_config


def test_precision_per_setting_and_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_precision(ModelConfig(dtype="float32"), cuda) == Precision(torch.float32, autocast=False)
    assert resolve_precision(ModelConfig(dtype="bfloat16"), cpu) == Precision(torch.bfloat16, autocast=False)
    assert resolve_precision(ModelConfig(dtype="mixed"), cpu) == Precision(torch.float32, autocast=True)
    assert resolve_precision(ModelConfig(), cuda) == Precision(torch.bfloat16, autocast=False)
    assert resolve_precision(ModelConfig(), cpu) == Precision(torch.float32, autocast=native_cpu_bfloat16())
    assert [str(Precision(torch.float32, a)) for a in (True, False)] == ["mixed", "float32"]


def test_mixed_precision_trains_in_bfloat16_and_ranks_in_float32(tiny_kg: Path) -> None:
    """'mixed' keeps float32 weights and gradients, runs training's matmuls in bfloat16 (losses
    within bfloat16 rounding of float32's), and ranks exactly as float32 does."""
    runs = {}
    for dtype in ("float32", "mixed"):
        s = setup(tiny_config(tiny_kg, f"model.dtype={dtype}"))
        s.model.eval()  # no dropout: both see the same forward pass
        head_dtypes: list[torch.dtype] = []
        s.model.head.register_forward_hook(lambda module, args, out: head_dtypes.append(out.dtype))
        chunk = both_directions(s.kg.train).take(np.arange(16))
        negatives = sample_negatives(s.train_index, chunk, 16, torch.Generator().manual_seed(0))
        terms = compute_losses(s, chunk, negatives)
        terms["loss"].backward()
        grads = [p.grad for p in s.model.parameters() if p.requires_grad]
        with torch.no_grad():
            ranked = s.model.scores_all(s.encoded.batch(chunk, with_targets=False), s.entity_tokens, s.entity_mask)
        runs[dtype] = terms, head_dtypes, grads, ranked
    (fp32, fp32_head, _, fp32_ranked), (mixed, mixed_head, mixed_grads, mixed_ranked) = runs.values()
    assert set(fp32_head) == {torch.float32}
    assert mixed_head == [torch.bfloat16]  # the teacher-forced head of eq. 13-14
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in mixed_grads)
    for name in ("nce", "sft", "tdt"):
        assert mixed[name].item() == pytest.approx(fp32[name].item(), rel=0.05, abs=1e-3)
        assert mixed[name].item() != fp32[name].item()  # bfloat16 did round
    torch.testing.assert_close(mixed_ranked, fp32_ranked, rtol=0, atol=0)


def test_mixed_precision_survives_the_deepspeed_engine(tiny_kg: Path) -> None:
    """Training runs the model through DeepSpeed's forward, which on CUDA switches off an autocast
    begun outside it (KONModel enters its own): the backbone's matmuls run in bfloat16 there, and
    ranking in float32."""
    from kon_ray.training import init_process_group, make_engine

    s = setup(tiny_config(tiny_kg, "model.dtype=mixed"))
    init_process_group()
    engine, _ = make_engine(s)
    dtypes: list[torch.dtype] = []
    s.model.base.get_input_embeddings()  # the backbone is built
    projection = s.model.decoder.layers[0].self_attn.q_proj
    projection.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    chunk = both_directions(s.kg.train).take(np.arange(16))
    negatives = sample_negatives(s.train_index, chunk, 16, torch.Generator().manual_seed(0))
    compute_losses(s, chunk, negatives, engine)
    assert dtypes == [torch.bfloat16]
    with torch.no_grad():
        s.model.scores_all(s.encoded.batch(chunk, with_targets=False), s.entity_tokens, s.entity_mask)
    assert dtypes[-1] == torch.float32
