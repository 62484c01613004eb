"""Typed, frozen run configuration: the paper's settings as defaults, except the backbone.

Every field is validated on construction; a bad value names the field, the value
and what would be valid. Change a config with ``dataclasses.replace`` or with
dotted ``key=value`` overrides (``apply_overrides``).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kon_ray.overrides import ConfigError, check, nest, parse_overrides, set_fields

__all__ = ["ConfigError", "RunConfig", "apply_overrides", "flatten"]  # ConfigError: from kon_ray.overrides

EMBEDDED = "embedded"
PAPER_LR = 1e-4
EMBEDDED_LR = 1e-3


def _choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    check(value in choices, f"{name}={value!r}: must be one of {', '.join(map(repr, choices))}")


def _literal_choices(cls: type, name: str) -> tuple[object, ...]:
    hint = typing.get_type_hints(cls)[name]
    return typing.get_args(hint)


def _check_literals(obj: object) -> None:
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        hint = typing.get_type_hints(type(obj))[f.name]
        if typing.get_origin(hint) is Literal:
            _choice(f.name, getattr(obj, f.name), typing.get_args(hint))


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "DB15K"
    """'DB15K', 'MKG-W' (shipped) or the path of a folder with train/valid/test.tsv."""
    prompt: Literal["compact", "instruction"] = "compact"
    """'instruction': the published code's natural-language instruction (for chat LLMs);
    'compact': 'head | relation | ?' markers, cheaper for the small embedded backbone."""
    train_limit: int | None = None
    """Use only the first N training triples (a KG slice for quick trials and tests)."""
    valid_limit: int | None = 2000
    """Validate on at most N valid triples per evaluation (both directions); None: all."""
    valid_unseen: bool = True
    """Validate only on valid triples that are not training triples (88% of DB15K's valid
    triples are also in train: ranking them measures recall of training data, and selecting
    the checkpoint on them picks the most memorised one). False: the split as given."""
    test_limit: int | None = None
    """Test on at most N test triples (both directions); None: all, as the paper does."""

    def __post_init__(self) -> None:
        _check_literals(self)
        check(bool(self.dataset), "data.dataset='': name a shipped KG (DB15K, MKG-W) or a folder")
        for name in ("train_limit", "valid_limit", "test_limit"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"data.{name}={value}: must be >= 1 or None")


@dataclass(frozen=True)
class EmbeddedBackboneConfig:
    """The default backbone: a small Llama built from a config, never downloaded."""

    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 384
    vocab_size: int = 4096
    """Size of the BPE tokenizer trained offline on the KG's names and relation words."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "layers", "heads", "intermediate_size"):
            check(getattr(self, name) >= 1, f"model.embedded.{name}={getattr(self, name)}: must be >= 1")
        check(
            self.hidden_size % self.heads == 0,
            f"model.embedded.hidden_size={self.hidden_size}: must be divisible by heads={self.heads}",
        )
        check(self.vocab_size >= 300, f"model.embedded.vocab_size={self.vocab_size}: must be >= 300")


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = EMBEDDED
    """'embedded' or any Hugging Face causal-LM path or id (e.g. meta-llama/Llama-2-7b-chat-hf)."""
    embedded: EmbeddedBackboneConfig = field(default_factory=EmbeddedBackboneConfig)
    backbone_tuning: Literal["auto", "lora", "full"] = "auto"
    """'lora' as the paper does; 'full' trains every weight; 'auto': LoRA for a pretrained
    backbone, full for the randomly initialised embedded one (LoRA on random weights learns little)."""
    dtype: Literal["auto", "float32", "bfloat16", "mixed"] = "auto"
    """'bfloat16': bfloat16 weights (DeepSpeed bf16); 'mixed': float32 weights, training's forward
    under bfloat16 autocast. 'auto': bfloat16 on CUDA; mixed on a CPU with native bfloat16
    (AVX512-BF16 or AMX), where its matmuls run 2.5x faster; float32 on other CPUs."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("embed_tokens", "q_proj", "v_proj")
    k: int = 8
    """Number of K-ON heads: entity names are padded or truncated to K tokens (eq. 8)."""
    head_init: Literal["zero", "default"] = "zero"
    """Head-MLP init: 'zero' as the paper (eq. 5 residual); 'default' as the published code."""
    conditional_attention: bool = True
    """Table 3 'w/o Conditional Attention' when False."""
    attention_heads: int = 8
    attention_dropout: float = 0.3
    residual: Literal["paper", "published"] = "paper"
    """'paper': eq. 5, attention + h0; 'published': 0.2 attention + 0.5 h0 + 0.8 head MLP."""
    shared_head_mlp: bool = False
    """Table 3 'Shared Head MLP': one head MLP for all K steps."""
    shared_score_layer: bool = False
    """Table 3 'Shared Score Layer': one LoRA score layer for all K steps."""
    score_lora_r: int = 8
    score_lora_alpha: int = 16
    score_lora_dropout: float = 0.3
    score_space: Literal["probability", "logit"] = "probability"
    """'probability': eq. 11 gathers softmax probabilities; 'logit': the published code's raw logits."""
    joint: Literal["sum", "product"] = "sum"
    """Table 4 operator combining the K token probabilities into the entity's (eq. 11)."""
    joint_weights: Literal["learnable", "constant"] = "learnable"
    """Table 4 step weights alpha_k: learnable parameters or constant."""

    def __post_init__(self) -> None:
        _check_literals(self)
        check(self.k >= 1, f"model.k={self.k}: the number of K-ON heads must be >= 1")
        for name in ("lora_r", "lora_alpha", "score_lora_r", "score_lora_alpha", "attention_heads"):
            check(getattr(self, name) >= 1, f"model.{name}={getattr(self, name)}: must be >= 1")
        for name in ("lora_dropout", "attention_dropout", "score_lora_dropout"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, f"model.{name}={value}: must be in [0, 1)")
        check(bool(self.lora_targets), "model.lora_targets=(): name at least one module")
        if self.backbone == EMBEDDED and self.conditional_attention:
            hidden = self.embedded.hidden_size
            check(
                hidden % self.attention_heads == 0,
                f"model.attention_heads={self.attention_heads}: must divide the hidden size {hidden}",
            )

    @property
    def tuning(self) -> Literal["lora", "full"]:
        """The backbone tuning that 'auto' resolves to."""
        if self.backbone_tuning != "auto":
            return self.backbone_tuning
        return "full" if self.backbone == EMBEDDED else "lora"


@dataclass(frozen=True)
class LossConfig:
    contrastive: Literal["eq12", "bce_adversarial", "infonce"] = "eq12"
    """'eq12': the paper's loss with a probability floor; 'bce_adversarial': the published
    code's BCE with self-adversarial negative weights; 'infonce': softmax CE over the
    positive and its negatives."""
    negatives: int = 128
    """|N|: negative entities per query, never a known true answer in training (strict)."""
    floor: float = 1e-4
    """eq. 12/13 are unbounded below as printed; each log p is taken as log(p + floor)."""
    adversarial_temperature: float = 0.5
    sft: Literal["eq13", "cross_entropy"] = "eq13"
    """'eq13': the paper's SFT loss (with the floor); 'cross_entropy': standard SFT."""
    kl_detach_target: bool = True
    """eq. 14: treat the backbone head's distribution as a fixed target, as the published code."""
    nce_weight: float = 1.0
    """Weight of L_nce; 0 is Table 3 'w/o L_nce'."""
    sft_weight: float = 0.1
    """Weight of L_sft (eq. 13); 0 is Table 3 'w/o L_sft'. The paper does not state the HTT
    weights; 0.1 is the published code's weight of L_sft + L_tdt."""
    tdt_weight: float = 0.1
    """Weight of L_tdt (eq. 14); 0 is Table 3 'w/o L_tdt'."""

    def __post_init__(self) -> None:
        _check_literals(self)
        check(self.negatives >= 1, f"loss.negatives={self.negatives}: |N| must be >= 1")
        check(0.0 < self.floor < 1.0, f"loss.floor={self.floor}: must be in (0, 1)")
        check(
            self.adversarial_temperature > 0,
            f"loss.adversarial_temperature={self.adversarial_temperature}: must be > 0",
        )
        for name in ("nce_weight", "sft_weight", "tdt_weight"):
            check(getattr(self, name) >= 0, f"loss.{name}={getattr(self, name)}: must be >= 0")
        check(
            self.nce_weight + self.sft_weight + self.tdt_weight > 0,
            "loss.nce_weight, sft_weight and tdt_weight are all 0: nothing would be trained",
        )


@dataclass(frozen=True)
class TrainConfig:
    lr: float | None = None
    """None: the paper's 1e-4 for a pretrained backbone; EMBEDDED_LR for the embedded one,
    which is trained from random weights."""
    epochs: float = 5.0
    warmup_steps: int = 50
    schedule: Literal["linear", "constant"] = "linear"
    """After warm-up: 'linear' decays to 0 at the end of the step or time budget."""
    micro_batch: int = 192
    """Queries per device per forward pass; derived when batch_size is set. The paper's
    12 per device x 8 accumulation is a GPU-memory setting (studies/paper.py uses it); on a CPU
    larger micro-batches run faster: 48 x 2 took 12 x 8's 96 queries 2.3x as fast, 96 x 1 6-8%
    faster still, and 192 x 1 7-11% less time per query than 96 x 1 in mixed precision."""
    batch_size: int | None = None
    """Global queries per optimiser step; when set, micro_batch = batch_size / (workers x grad_accum)."""
    grad_accum: int = 1
    """Micro-batches per optimiser step and worker (the paper: 8)."""
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    max_minutes: float | None = None
    """Stop training after this many minutes (then evaluate); None: run all epochs."""
    max_steps: int | None = None
    """Stop after this many optimiser steps; None: run all epochs."""
    evals_per_epoch: int = 1
    seed: int = 0
    threads: int | None = None
    """torch CPU threads per process; None: torch's default."""
    workers: int = 1
    """Data-parallel Ray Train workers, each running DeepSpeed."""
    gpus_per_worker: float = 0.0
    """0: CPU workers (gloo, fp32); >= 1: CUDA workers (nccl, bf16)."""
    cpus_per_worker: float | None = None
    """None: the cluster's CPUs shared out over CPU workers, 1 per GPU worker."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage 0-3."""
    deepspeed_config: str | None = None
    """Path of a DeepSpeed JSON to use instead of the one built from these settings."""

    def __post_init__(self) -> None:
        _check_literals(self)
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


@dataclass(frozen=True)
class EvalConfig:
    ties: Literal["realistic", "optimistic", "pessimistic"] = "realistic"
    """Rank reported as the headline metric; all three are always computed."""
    query_chunk: int = 256
    """Queries scored against all entities at once: bounds memory to chunk x entities."""

    def __post_init__(self) -> None:
        _check_literals(self)
        check(self.query_chunk >= 1, f"eval.query_chunk={self.query_chunk}: must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        space = self.model.score_space
        check(
            not (self.loss.contrastive == "eq12" and space == "logit"),
            "loss.contrastive='eq12' needs model.score_space='probability' (it takes log p)",
        )
        check(
            not (self.model.joint == "product" and space == "logit"),
            "model.joint='product' needs model.score_space='probability' (a product of probabilities)",
        )

    @property
    def learning_rate(self) -> float:
        """``train.lr``, or the default for the backbone when it is None."""
        if self.train.lr is not None:
            return self.train.lr
        return EMBEDDED_LR if self.model.backbone == EMBEDDED else PAPER_LR

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Rebuild a config from ``to_dict`` output (or any subset of it)."""
        return apply_overrides(cls(), dict(flatten(values)))


def flatten(values: dict[str, Any], prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    """(dotted key, value) pairs of a nested dict such as ``RunConfig.to_dict()``."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def apply_overrides(config: RunConfig, overrides: Mapping[str, Any] | Sequence[str]) -> RunConfig:
    """Apply dotted overrides, e.g. ``["model.k=4", "data.dataset=MKG-W"]`` or a dict."""
    pairs = parse_overrides(overrides) if not isinstance(overrides, Mapping) else overrides
    return set_fields(config, nest(pairs))
