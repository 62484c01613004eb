"""Training K-ON in one process: ``setup -> fit -> evaluate``, plain functions.

``run`` is the whole job: it writes ``metrics.json`` and the per-query ``ranks.parquet``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel

from kon_ray import losses
from kon_ray.backbone import load_backbone, load_tokenizer
from kon_ray.config import ConfigError, RunConfig
from kon_ray.data import AnswerIndex, KnowledgeGraph, Queries, both_directions, load_kg, sample_negatives
from kon_ray.data.prompts import Batch, EncodedKG, encode_kg
from kon_ray.evaluation import metrics_from_table, rank_queries, write_rank_table
from kon_ray.model import KON
from kon_ray.results import provenance, write_json

log = logging.getLogger(__name__)


class KONModel(nn.Module):
    """The backbone LLM and the K-ON heads, trained together."""

    def __init__(self, backbone: PreTrainedModel, kon: KON) -> None:
        super().__init__()
        self.backbone = backbone
        self.kon = kon
        base = backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone
        self._decoder = getattr(base, base.base_model_prefix)
        self._head = base.get_output_embeddings()

    @property
    def output_weight(self) -> torch.Tensor:
        """W^S of eq. 6: the backbone's own output head."""
        return self._head.weight

    def hidden(self, batch: Batch) -> torch.Tensor:
        """Eq. 1: the backbone's final hidden states (B, L, d)."""
        return self._decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state

    def scores_all(self, batch: Batch, entity_tokens: torch.Tensor, entity_mask: torch.Tensor) -> torch.Tensor:
        """One forward pass scores every entity: (B, E)."""
        h = self.hidden(batch)
        h0 = h[torch.arange(len(h), device=h.device), batch.last]
        step = self.kon.step_log_probs(self.kon(h0, self.output_weight))
        return self.kon.entity_scores(step, entity_tokens, entity_mask)


@dataclass
class Setup:
    config: RunConfig
    kg: KnowledgeGraph
    encoded: EncodedKG
    model: KONModel
    train_index: AnswerIndex
    filter_index: AnswerIndex
    device: torch.device
    entity_tokens: torch.Tensor = field(init=False)
    entity_mask: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.entity_tokens = self.encoded.entity_tokens.to(self.device)
        self.entity_mask = self.encoded.entity_mask.to(self.device)


def check_against_data(config: RunConfig, kg: KnowledgeGraph) -> None:
    """Settings that only the data can validate, checked before any training."""
    if config.loss.negatives >= kg.num_entities:
        raise ConfigError(
            f"loss.negatives={config.loss.negatives}: |N| must be below the number of entities "
            f"of {kg.name} ({kg.num_entities})"
        )
    if config.loss.contrastive == "eq12" and config.model.score_space == "logit":
        raise ConfigError("loss.contrastive='eq12' needs model.score_space='probability' (it takes log p)")
    if config.model.joint == "product" and config.model.score_space == "logit":
        raise ConfigError("model.joint='product' needs model.score_space='probability' (a product of probabilities)")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(config: RunConfig, device: torch.device | None = None) -> Setup:
    """Load the KG, tokenizer, backbone and K-ON heads; everything ``fit`` needs."""
    device = device or default_device()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    kg = load_kg(config.data.dataset).slice(config.data.train_limit)
    check_against_data(config, kg)
    torch.manual_seed(config.train.seed)
    tokenizer = load_tokenizer(config.model, kg, config.data.prompt)
    encoded = encode_kg(kg, tokenizer, config.data.prompt, config.model.k)
    backbone = load_backbone(config.model, tokenizer, device, config.train.seed)
    dim = backbone.get_output_embeddings().weight.shape[1]
    vocab = backbone.get_output_embeddings().weight.shape[0]
    kon = KON(config.model, dim, vocab).to(device)
    return Setup(
        config=config,
        kg=kg,
        encoded=encoded,
        model=KONModel(backbone, kon),
        train_index=AnswerIndex.build([kg.train], kg.num_entities, kg.num_relations),
        filter_index=AnswerIndex.build([kg.train, kg.valid, kg.test], kg.num_entities, kg.num_relations),
        device=device,
    )


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def compute_losses(s: Setup, queries: Queries, negatives: torch.Tensor) -> dict[str, torch.Tensor]:
    """Algorithm 1, lines 3-8, for one micro-batch: the weighted terms and their sum."""
    cfg = s.config.loss
    model = s.model
    batch = s.encoded.batch(queries, with_targets=True).to(s.device)
    h = model.hidden(batch)
    rows = torch.arange(len(h), device=h.device)
    h0 = h[rows, batch.last]
    kon_logits = model.kon(h0, model.output_weight)  # eq. 3-7
    out: dict[str, torch.Tensor] = {}
    if cfg.nce_weight > 0:
        candidates = torch.cat([torch.as_tensor(queries.target, device=s.device)[:, None], negatives], dim=1)
        step = model.kon.step_log_probs(kon_logits)
        scores = model.kon.entity_scores(step, s.entity_tokens[candidates], s.entity_mask[candidates])
        probability = s.config.model.score_space == "probability"
        out["nce"] = cfg.nce_weight * losses.contrastive(scores[:, 0], scores[:, 1:], cfg, probability)
    if cfg.sft_weight > 0 or cfg.tdt_weight > 0:
        # The backbone head, teacher-forced: position last + k predicts the target's token k.
        k = s.config.model.k
        positions = (batch.last[:, None] + torch.arange(k, device=h.device)).clamp(max=h.shape[1] - 1)
        llm_logits = model._head(h[rows[:, None], positions])
        if cfg.sft_weight > 0:
            out["sft"] = cfg.sft_weight * losses.sft(llm_logits, batch.target_tokens, batch.target_mask, cfg)
        if cfg.tdt_weight > 0:
            out["tdt"] = cfg.tdt_weight * losses.tdt(kon_logits, llm_logits, batch.target_mask, cfg.kl_detach_target)
    out["loss"] = sum(out.values())
    return out


def evaluate(s: Setup, split: str, limit: int | None) -> tuple[dict[str, float], Any]:
    """Filtered ranking of ``split`` (both directions) against all entities."""
    triples = getattr(s.kg, split)[:limit]
    queries = both_directions(triples)
    model = s.model
    was_training = model.training
    model.eval()

    def score(chunk: Queries) -> torch.Tensor:
        batch = s.encoded.batch(chunk, with_targets=False).to(s.device)
        return model.scores_all(batch, s.entity_tokens, s.entity_mask).float()

    table = rank_queries(score, queries, s.filter_index, s.config.eval.query_chunk)
    model.train(was_training)
    return metrics_from_table(table, s.config.eval.ties), table


def lr_lambda(warmup: int) -> Callable[[int], float]:
    """Linear warm-up to the full learning rate, then constant."""
    return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


@dataclass
class FitResult:
    history: list[dict[str, float]]
    steps: int
    step_time_s: float
    train_time_s: float
    best_valid: dict[str, float]


def fit(s: Setup, report: Callable[[dict[str, float]], None] | None = None) -> FitResult:
    """Train until the epochs, step or time budget run out; keep the best-validating weights."""
    cfg = s.config.train
    model = s.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps))
    queries = both_directions(s.kg.train)
    global_batch = cfg.micro_batch * cfg.grad_accum
    steps_per_epoch = max(1, len(queries) // global_batch)
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    eval_every = max(1, steps_per_epoch // cfg.evals_per_epoch)
    generator = torch.Generator().manual_seed(cfg.seed)
    budget = cfg.max_minutes * 60 if cfg.max_minutes else math.inf

    history: list[dict[str, float]] = []
    best: tuple[float, dict[str, torch.Tensor] | None, dict[str, float]] = (-1.0, None, {})
    train_time = 0.0
    step = 0
    running: dict[str, float] = {}
    bar = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0)
    order = np.empty(0, dtype=np.int64)
    while step < total_steps and train_time < budget:
        epoch, within = divmod(step, steps_per_epoch)
        if within == 0 or len(order) == 0:
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(queries))
        start = time.perf_counter()
        rows = order[within * global_batch : (within + 1) * global_batch]
        for micro in np.array_split(rows, cfg.grad_accum):
            chunk = queries.take(micro)
            negatives = sample_negatives(s.train_index, chunk, s.config.loss.negatives, generator).to(s.device)
            terms = compute_losses(s, chunk, negatives)
            (terms["loss"] / cfg.grad_accum).backward()
            for name, value in terms.items():
                running[name] = running.get(name, 0.0) + value.item() / cfg.grad_accum
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        train_time += time.perf_counter() - start
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{terms['loss'].item():.3f}", qps=f"{step * global_batch / train_time:.0f}")
        at_end = step >= total_steps or train_time >= budget
        if step % eval_every == 0 or at_end:
            valid, _ = evaluate(s, "valid", s.config.data.valid_limit)
            record = {
                "step": step,
                "epoch": step / steps_per_epoch,
                "train_time_s": train_time,
                **{f"train.{k}": v / (step - (history[-1]["step"] if history else 0)) for k, v in running.items()},
                **{f"valid.{k}": v for k, v in valid.items()},
            }
            running = {}
            history.append(record)
            log.info("step %d valid mrr %.4f", step, valid["mrr"])
            if valid["mrr"] > best[0]:
                state = {k: v.detach().clone() for k, v in model.state_dict().items() if _trained(model, k)}
                best = (valid["mrr"], state, valid)
            if report is not None:
                report(record)
    bar.close()
    if best[1] is not None:
        model.load_state_dict(best[1], strict=False)
    return FitResult(
        history=history,
        steps=step,
        step_time_s=train_time / max(step, 1),
        train_time_s=train_time,
        best_valid=best[2],
    )


def _trained(model: nn.Module, key: str) -> bool:
    params = dict(model.named_parameters())
    return key in params and params[key].requires_grad or key.endswith("step_weights")


def run(config: RunConfig, out: Path, report: Callable[[dict[str, float]], None] | None = None) -> dict[str, Any]:
    """The whole job: setup, fit, test; writes ``metrics.json`` and ``ranks.parquet`` into ``out``."""
    started = time.time()
    s = setup(config)
    result = fit(s, report)
    test, table = evaluate(s, "test", config.data.test_limit)
    write_rank_table(table, out / "ranks.parquet")
    metrics: dict[str, Any] = {
        **{f"test.{k}": v for k, v in test.items()},
        **{f"valid.{k}": v for k, v in result.best_valid.items()},
        "trainable_params": trainable_parameters(s.model),
        "steps": result.steps,
        "step_time_s": result.step_time_s,
        "train_time_s": result.train_time_s,
        "wall_time_s": time.time() - started,
        "history": result.history,
        "config": config.to_dict(),
        "data_hash": s.kg.digest,
        "dataset": s.kg.name,
        "device": str(s.device),
        **provenance(),
    }
    write_json(out / "metrics.json", metrics)
    return metrics
