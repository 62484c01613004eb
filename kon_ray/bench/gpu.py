"""GPU readiness: bf16 DeepSpeed training with LoRA, ranking on CUDA against the CPU, memory, speed.

Run it first on a new GPU machine; it needs torch, DeepSpeed and kon-ray, not Ray, and one CUDA
device. The backbone is a small Llama written with ``save_pretrained`` (the embedded model's
shape, ``model.embedded.*``; its weights rounded to bfloat16 so that every copy loads the same
numbers), tuned with LoRA. It checks, one verdict each:

- training: ``steps`` optimiser steps in bf16 (DeepSpeed's bf16 mode casts the K-ON heads too);
  the loss of one fixed batch (step 0's first micro-batch and negatives, in eval mode: a function
  of the weights alone, which unchanged weights leave as it was) must fall strictly;
  peak GPU memory and steps per second are reported;
- ranking: the same weights, as training left them (bf16-cast K-ON heads and LoRA, on the
  bf16-rounded backbone), rank the test queries in float32 on CUDA and on the CPU: scores within
  ``rtol`` relative, each target's rank equal up to ties at that tolerance;
- bf16 ties: the engine's bf16 model, ranking as evaluation does with bf16 weights, against the
  float32 ranking of the same weights on the same device: target ranks equal up to ties at
  ``bf16_rtol``; the queries where bf16 ties a target with entities that float32 tells apart are
  counted and the first of them named;
- the ``scoring`` and ``sft`` benchmarks on CUDA, on the same saved backbone; their ratios and
  whether they meet their targets are reported, the verdict being the machine's, not K-ON's.
"""

from __future__ import annotations

import dataclasses
import importlib
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kon_ray.bench.common import Check, Report, announce, describe, engine_for, hardware, load, show, sync
from kon_ray.bench.common import train_batch, train_step, verdict
from kon_ray.config import RunConfig, apply_overrides
from kon_ray.data import sample_negatives

BASE = {"model.dtype": "bfloat16"}
DEVICE = "cuda"
"""The device this benchmark needs: ``run_benchmark`` refuses any other before it starts (``run``
itself also runs on a CPU, for the tests)."""
SUB_BENCHMARKS = ("scoring", "sft")
SCALE_FLOOR = 1e-2
"""A score's relative difference is taken against at least this share of its query's largest
|score|: float32's error in a score follows the magnitudes it is computed from (log p near 0 is a
difference of two large terms), not the score itself."""
TIE_EXAMPLES = 5
"""Queries where bf16 creates ties that the record names, and entities named per query."""


@dataclass(frozen=True)
class Settings:
    steps: int = 50
    """bf16 training steps."""
    queries: int = 64
    """Test queries ranked on CUDA and on the CPU (both directions of the first test triples)."""
    rtol: float = 1e-4
    """Relative tolerance of CUDA's float32 scores against the CPU's."""
    bf16_rtol: float = 1e-2
    """Relative tolerance of the bf16 ranking's target ranks against float32's (bfloat16 keeps 8 bits:
    2^-8 = 0.004)."""
    sub_benchmarks: bool = True
    """Run the scoring and sft benchmarks on CUDA too."""


def save_backbone(config: RunConfig, folder: Path) -> Path:
    """The embedded backbone of ``config`` and its KG tokenizer as a ``save_pretrained`` folder,
    weights rounded to bfloat16 (stored as float32, so that float32 and bf16 loads agree)."""
    from kon_ray.backbone import load_backbone, load_tokenizer
    from kon_ray.config import EMBEDDED
    from kon_ray.data import load_kg

    embedded = dataclasses.replace(config.model, backbone=EMBEDDED)
    kg = load_kg(config.data.dataset).slice(config.data.train_limit)
    tokenizer = load_tokenizer(embedded, kg, config.data.prompt)
    model = load_backbone(embedded, tokenizer, torch.device("cpu"), torch.float32, config.train.seed)
    model.to(torch.bfloat16).to(torch.float32).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def score_scale(scores: torch.Tensor) -> torch.Tensor:
    """(B, E) |scores|, each floored at ``SCALE_FLOOR`` x its query's largest |score| (and at float32's
    tiny value, for a query scoring every entity 0): what a score's relative difference is taken against."""
    magnitude = scores.abs()
    floor = SCALE_FLOOR * magnitude.amax(1, keepdim=True)
    return torch.maximum(magnitude, floor).clamp_min(torch.finfo(torch.float32).tiny)


def relative_difference(reference: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """(B, E) |other - reference| relative to ``score_scale(reference)``."""
    reference, other = reference.double(), other.double()
    return (other - reference).abs() / score_scale(reference)


def compare_rankings(
    reference: torch.Tensor, other: torch.Tensor, targets: torch.Tensor, rtol: float
) -> dict[str, Any]:
    """How ``other`` (B, E) scores agree with ``reference``'s for queries whose answer is ``targets`` (B,).

    A target's rank in ``other`` (realistic: ties counted half) must lie in the band of ranks
    the reference allows at ``rtol``: from 1 + the entities scoring above it by more than
    ``rtol`` x its ``score_scale`` to the entities scoring at least as high less that margin.
    ``new_ties`` counts entities that tie the target exactly in ``other`` but not in the
    reference; ``first_new_ties`` names the first ``TIE_EXAMPLES`` such queries (index in the
    batch, target, the first tied entities).
    """
    reference, other = reference.double(), other.double()
    rows = torch.arange(len(targets))
    ref_target, other_target = reference[rows, targets, None], other[rows, targets, None]
    margin = rtol * score_scale(reference)[rows, targets, None]
    best = 1 + (reference > ref_target + margin).sum(1)
    worst = (reference >= ref_target - margin).sum(1)
    above, equal = (other > other_target).sum(1), (other == other_target).sum(1)
    rank = 1 + above + (equal - 1) / 2
    mismatched = (rank < best) | (rank > worst)
    tied = (other == other_target) & (reference != ref_target)
    ties = tied.sum(1)
    first = [
        {"query": q, "target": int(targets[q]), "tied_with": tied[q].nonzero()[:TIE_EXAMPLES, 0].tolist()}
        for q in (ties > 0).nonzero()[:TIE_EXAMPLES, 0].tolist()
    ]
    return {
        "max_relative_difference": float(relative_difference(reference, other).max()),
        "rank_mismatches": int(mismatched.sum()),
        "queries": len(targets),
        "queries_with_new_ties": int((ties > 0).sum()),
        "new_ties": int(ties.sum()),
        "first_new_ties": first,
    }


def train(s: Any, engine: Any, steps: int) -> dict[str, Any]:
    """``steps`` optimiser steps as training takes them, each on the next seeded batch; peak GPU
    memory (NaN on a CPU) and steps per second."""
    cuda = s.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(s.device)
    losses = []
    sync(s.device)
    start = time.perf_counter()
    for step in range(steps):
        losses.append(train_step(s, engine, train_batch(s, step), s.config.loss.negatives, step))
    sync(s.device)
    elapsed = time.perf_counter() - start
    return {
        "losses": losses,
        "steps_per_s": steps / elapsed,
        "peak_memory_gib": torch.cuda.max_memory_allocated(s.device) / 2**30 if cuda else float("nan"),
    }


@torch.no_grad()
def fixed_batch_loss(s: Any) -> float:
    """The loss of step 0's first micro-batch against its negatives, in eval mode (no dropout): the
    same queries, negatives and arithmetic each time, so that only a change of weights moves it."""
    from kon_ray.training import compute_losses, micro_seed

    queries = train_batch(s, 0).take(slice(0, s.config.train.micro_batch))
    seed = micro_seed(s.config.train.seed, 0, 0)
    generator = torch.Generator().manual_seed(seed)
    negatives = sample_negatives(s.train_index, queries, s.config.loss.negatives, generator)
    was_training = s.model.training
    s.model.eval()
    loss = compute_losses(s, queries, negatives.to(s.device))["loss"].item()
    s.model.train(was_training)
    return loss


@torch.no_grad()
def rank_scores(s: Any, queries: Any) -> torch.Tensor:
    """(B, E) scores of every entity for ``queries`` as evaluation computes them, returned on the CPU."""
    s.model.eval()
    batch = s.encoded.batch(queries, with_targets=False).to(s.device)
    return s.model.scores_all(batch, s.entity_tokens, s.entity_mask).float().cpu()


def named_ties(first: list[dict[str, Any]], kg: Any, queries: Any) -> list[dict[str, Any]]:
    """``compare_rankings``' first new ties, each query and entity by name."""
    from kon_ray.data.queries import TAIL

    entities = kg.entity_names
    return [
        {"query": tie["query"], "anchor": entities[int(queries.anchor[tie["query"]])],
         "relation": kg.relation_names[int(queries.relation[tie["query"]])],
         "direction": "tail" if queries.direction[tie["query"]] == TAIL else "head",
         "target": entities[tie["target"]], "tied_with": [entities[e] for e in tie["tied_with"]]}
        for tie in first
    ]


def float32_copy(config: RunConfig, weights: dict[str, torch.Tensor], device: torch.device) -> Any:
    """The run's model in float32 on ``device``, with ``weights`` (the trained ones) loaded."""
    from kon_ray.checkpoint import load_trainable

    s = load(apply_overrides(config, {"model.dtype": "float32"}), device)
    load_trainable(s.model, weights)
    return s


def sub_benchmark(name: str, config: RunConfig, device: torch.device) -> Report:
    """Another benchmark with its default settings, on this run's config and saved backbone."""
    module = importlib.import_module(f"kon_ray.bench.{name}")
    show(f"== {name} on {device}")
    report = module.run(module.Settings(), apply_overrides(config, dict(module.BASE)), device)
    show(f"{name}: {verdict(report)}")
    return report


def run(settings: Settings, config: RunConfig, device: torch.device) -> Report:
    from kon_ray.checkpoint import trainable_state
    from kon_ray.data import both_directions

    with tempfile.TemporaryDirectory(prefix="kon-ray-gpu-") as folder:
        config = apply_overrides(config, {"model.backbone": str(save_backbone(config, Path(folder)))})
        s = load(config, device)
        setup = announce(
            {**describe(s), "steps": settings.steps, "precision": str(s.precision), **hardware(device)}
        )
        engine = engine_for(s)
        before = fixed_batch_loss(s)
        trained = train(s, engine, settings.steps)
        after = fixed_batch_loss(s)
        losses = trained["losses"]
        tail = max(1, len(losses) // 5)
        first, last = sum(losses[:tail]) / tail, sum(losses[-tail:]) / tail
        show(f"training: loss {first:.3f} -> {last:.3f} (means of the first and last {tail} steps), "
             f"{trained['steps_per_s']:.1f} steps/s, peak GPU memory {trained['peak_memory_gib']:.2f} GiB; "
             f"fixed batch {before:.4f} -> {after:.4f}")
        heads = {str(p.dtype).removeprefix("torch.") for p in engine.module.kon.parameters()}
        weights = trainable_state(engine.module)
        ranked = {str(w.dtype).removeprefix("torch.") for w in weights.values()}
        queries = both_directions(s.kg.test).take(slice(0, settings.queries))
        targets = torch.as_tensor(queries.target)
        bf16 = rank_scores(s, queries)
        cpu = rank_scores(float32_copy(config, weights, torch.device("cpu")), queries)
        on_device = rank_scores(float32_copy(config, weights, device), queries)
        same = compare_rankings(cpu, on_device, targets, settings.rtol)
        cast = compare_rankings(on_device, bf16, targets, settings.bf16_rtol)
        cast["first_new_ties"] = named_ties(cast["first_new_ties"], s.kg, queries)
        show(f"ranking: the trained weights ({', '.join(sorted(ranked))}) in float32, {device.type} vs CPU "
             f"over {same['queries']} queries: "
             f"max relative difference {same['max_relative_difference']:.2e}, "
             f"{same['rank_mismatches']} target ranks outside the ties at {settings.rtol:g}")
        show(f"bf16 ranking (K-ON heads {', '.join(sorted(heads))}) vs float32, the same weights on "
             f"{device.type}: max relative difference {cast['max_relative_difference']:.2e}, "
             f"{cast['rank_mismatches']} target ranks outside the ties at {settings.bf16_rtol:g}; "
             f"bf16 ties the target with {cast['new_ties']} entities that float32 tells apart, "
             f"in {cast['queries_with_new_ties']} of {cast['queries']} queries")
        for tie in cast["first_new_ties"]:
            query = f"{tie['anchor']}, {tie['relation']}, {tie['direction']}"
            tied = ", ".join(tie["tied_with"])
            show(f"  bf16 tie, query {tie['query']} ({query}): {tie['target']} with {tied}")
        figures: dict[str, Any] = {
            **trained, "fixed_batch_loss": {"before": before, "after": after}, "heads_dtype": sorted(heads),
            "ranked_weights_dtype": sorted(ranked), "ranking_float32": same, "ranking_bf16": cast,
        }
        checks = [
            Check("fixed-batch loss before - after", before - after, ">", 0.0),
            Check("CUDA vs CPU max relative score difference", same["max_relative_difference"], "<=",
                  settings.rtol),
            Check("CUDA vs CPU target ranks outside ties", same["rank_mismatches"], "<=", 0),
            Check("bf16 target ranks outside ties", cast["rank_mismatches"], "<=", 0),
            Check("steps per s", trained["steps_per_s"]),
            Check("peak GPU memory", trained["peak_memory_gib"], unit=" GiB"),
        ]
        if settings.sub_benchmarks:
            for name in SUB_BENCHMARKS:
                report = sub_benchmark(name, config, device)
                figures[name] = {"figures": report.figures, "met": report.met}
                # Reported here: their targets are claims about K-ON, not about the machine.
                for c in report.checks:
                    target = c.text().split("(", 1)[1][:-1]
                    outcome = "met" if c.met else "missed"
                    checks.append(Check(f"{name}: {c.name} ({target}: {outcome})", c.value, unit=c.unit))
        for check in checks:
            status = {True: "ok", False: "FAILED", None: "reported"}[check.met]
            show(f"{status}: {check.text()}")
    return Report(setup=setup, figures=figures, checks=checks)
