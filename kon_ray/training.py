"""Training K-ON: ``setup -> fit -> evaluate``, plain functions, on one or many DeepSpeed workers.

``train_and_test`` is the job of one data-parallel worker; ``run`` runs it in this process
without Ray, and ``kon_ray.distributed`` runs it on Ray Train workers.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from peft import PeftModel
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel

from kon_ray import checkpoint, losses
from kon_ray.backbone import Precision, load_backbone, load_tokenizer, resolve_precision
from kon_ray.checkpoint import LoopState, load_trainable, trainable_state
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
    precision: Precision
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
    if config.data.valid_unseen and not len(kg.unseen("valid")):
        raise ConfigError(
            f"data.valid_unseen=True: every valid triple of {kg.name} is a training triple, so none is left "
            "to validate on; set data.valid_unseen=false to validate on them anyway"
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
    precision = resolve_precision(config.model, device)
    log.info("precision %s", precision)
    backbone = load_backbone(config.model, tokenizer, device, precision.weights, config.train.seed)
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
        precision=precision,
    )


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def compute_losses(s: Setup, queries: Queries, negatives: torch.Tensor) -> dict[str, torch.Tensor]:
    """Algorithm 1, lines 3-8, for one micro-batch: the weighted terms and their sum."""
    cfg = s.config.loss
    model = s.model
    batch = s.encoded.batch(queries, with_targets=True).to(s.device)
    out: dict[str, torch.Tensor] = {}
    with s.precision.training(s.device):
        h = model.hidden(batch)
        rows = torch.arange(len(h), device=h.device)
        h0 = h[rows, batch.last]
        kon_logits = model.kon(h0, model.output_weight)  # eq. 3-7
        if cfg.nce_weight > 0:
            candidates = torch.cat([torch.as_tensor(queries.target, device=s.device)[:, None], negatives], dim=1)
            step_scores = model.kon.step_log_probs(kon_logits)
            scores = model.kon.entity_scores(step_scores, s.entity_tokens[candidates], s.entity_mask[candidates])
            probability = s.config.model.score_space == "probability"
            out["nce"] = cfg.nce_weight * losses.contrastive(scores[:, 0], scores[:, 1:], cfg, probability)
        if cfg.sft_weight > 0 or cfg.tdt_weight > 0:
            # The backbone head, teacher-forced at the target's real steps only: position last + k
            # predicts the target's token k.
            query, step = batch.target_mask.nonzero(as_tuple=True)
            llm_logits = model._head(h[query, batch.last[query] + step])  # (n, V)
            if cfg.sft_weight > 0:
                out["sft"] = cfg.sft_weight * losses.sft(llm_logits, batch.target_tokens[query, step], len(h), cfg)
            if cfg.tdt_weight > 0:
                kon_steps = kon_logits[query, step]
                out["tdt"] = cfg.tdt_weight * losses.tdt(kon_steps, llm_logits, len(h), cfg.kl_detach_target)
    out["loss"] = sum(out.values())
    return out


@dataclass(frozen=True)
class World:
    """This process's place among the data-parallel workers."""

    rank: int = 0
    size: int = 1

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (collective)."""
        if self.size == 1:
            return [value]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def reduce(self, value: float, op: str) -> float:
        if self.size == 1:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return t.item() / (self.size if op == "mean" else 1)

    def shard(self, n: int) -> np.ndarray:
        """Row indices of this rank; every rank gets the same count (padded by repeats, flagged -1)."""
        per_rank = math.ceil(n / self.size)
        index = np.arange(self.rank, per_rank * self.size, self.size)
        return np.where(index < n, index, -1)


def evaluate(s: Setup, split: str, limit: int | None, world: World = World()) -> tuple[dict[str, float], pd.DataFrame]:
    """Filtered ranking of ``split`` (both directions) against all entities, queries sharded over ranks.

    The valid split holds only its triples unseen in training when ``data.valid_unseen``.
    """
    triples = s.kg.unseen(split) if split == "valid" and s.config.data.valid_unseen else getattr(s.kg, split)
    queries = both_directions(triples[:limit])
    shard = world.shard(len(queries))
    model = s.model
    was_training = model.training
    model.eval()

    def score(chunk: Queries) -> torch.Tensor:
        rows = s.encoded.prompt_rows(chunk)
        _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
        batch = s.encoded.batch(chunk.take(first), with_targets=False).to(s.device)
        scores = model.scores_all(batch, s.entity_tokens, s.entity_mask).float()
        return scores[torch.as_tensor(inverse, device=s.device)]  # a repeated prompt is scored once

    local_queries = queries.take(np.maximum(shard, 0))
    rows = s.encoded.prompt_rows(local_queries)
    order = np.lexsort((rows, s.encoded.prompt_lengths(rows)))  # chunks of like length pad less
    local = rank_queries(score, local_queries.take(order), s.filter_index, s.config.eval.query_chunk)
    local["query"] = shard[order]
    model.train(was_training)
    table = pd.concat(world.gather(local[local["query"] >= 0]), ignore_index=True).sort_values("query")
    table = table.drop(columns="query").reset_index(drop=True)
    return metrics_from_table(table, s.config.eval.ties), table


def micro_seed(seed: int, step: int, micro: int) -> int:
    """Seed of one micro-batch's negatives and dropout: the same whatever the number of workers."""
    return int(np.random.SeedSequence([seed, step, micro]).generate_state(1)[0])


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
    params = [p for p in s.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=s.config.learning_rate, weight_decay=t.weight_decay)
    schedule = Schedule(t.warmup_steps, t.schedule == "linear")
    engine, _, _, _ = deepspeed.initialize(
        model=s.model,
        optimizer=optimizer,
        lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        config=deepspeed_config(s.config, s.precision.weights == torch.bfloat16),
    )
    return engine, schedule


OnEval = Callable[[Any, dict[str, float], LoopState, "dict[str, torch.Tensor] | None"], None]
"""Called on every rank after each validation with (engine, record, state, best weights)."""


def fit(s: Setup, engine: Any, schedule: Schedule, world: World, state: LoopState,
        best: dict[str, torch.Tensor] | None, on_eval: OnEval) -> dict[str, torch.Tensor] | None:
    """Train from ``state`` until the epoch, step or time budget runs out; return the best weights.

    Each optimiser step takes the next ``global_batch`` rows of a seeded permutation, orders them
    by token count and splits them into ``grad_accum x workers`` micro-batches; rank r takes
    micro-batches r, r + workers, ... so that any number of workers sees the same data,
    negatives and dropout for a given seed.
    ``on_eval`` runs on every rank after each validation (checkpoint, report).
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
            terms = compute_losses(s, chunk, negatives)
            engine.backward(terms["loss"])
            engine.step()
            for name, value in terms.items():
                running[name] = running.get(name, 0.0) + value.item() / cfg.grad_accum
        state.step += 1
        state.train_time_s += world.reduce(time.perf_counter() - start, "max")
        schedule.progress = max(state.step / total, state.train_time_s / budget)
        bar.update(1)
        qps = state.step * cfg.global_batch / max(state.train_time_s, 1e-9)
        bar.set_postfix(loss=f"{terms['loss'].item():.3f}", qps=f"{qps:.0f}", refresh=False)
        if state.step % eval_every == 0 or state.step >= total or state.train_time_s >= budget:
            valid, _ = evaluate(s, "valid", s.config.data.valid_limit, world)
            steps = state.step - (state.history[-1]["step"] if state.history else 0)
            previous_time = state.history[-1]["train_time_s"] if state.history else 0.0
            record = {
                "step": state.step,
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
            log.info("step %d: valid MRR %.4f", state.step, valid["mrr"])
            if valid["mrr"] > state.best_mrr:
                state.best_valid = valid
                best = trainable_state(engine.module)
            on_eval(engine, record, state, best)
    bar.close()
    return best


def train_and_test(
    config: RunConfig, world: World, on_eval: OnEval, resume: Path | None = None, device: torch.device | None = None
) -> tuple[dict[str, Any], pd.DataFrame]:
    """setup -> fit -> test on one worker of ``world``: the final metrics and the test rank table."""
    started = time.time()
    if resume is not None:
        checkpoint.check_same_run(resume, config.to_dict())
    s = setup(config, device)
    engine, schedule = make_engine(s)
    state, best = LoopState(), None
    if resume is not None:
        state, best = checkpoint.load(resume, engine)
        log.info("resumed at step %d", state.step)
    best = fit(s, engine, schedule, world, state, best, on_eval)
    if best is not None:
        load_trainable(engine.module, best)
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
    return metrics, table


def write_results(out: Path, metrics: dict[str, Any], table: pd.DataFrame) -> None:
    write_rank_table(table, out / "ranks.parquet")
    write_json(out / "metrics.json", metrics)


def run(config: RunConfig, out: Path) -> dict[str, Any]:
    """The whole job in this process, without Ray: one worker, checkpoints in ``out/checkpoint``.

    Re-running with the same ``out`` resumes from that checkpoint.
    """
    init_process_group()
    ckpt = out / "checkpoint"

    def on_eval(engine: Any, record: dict[str, float], state: LoopState, best: dict[str, torch.Tensor] | None) -> None:
        checkpoint.save(ckpt, engine, state, best, 0, config.to_dict())

    resume = ckpt if (ckpt / "state.json").exists() else None
    metrics, table = train_and_test(config, World(), on_eval, resume)
    write_results(out, metrics, table)
    return metrics
