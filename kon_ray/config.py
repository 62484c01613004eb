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
PUBLISHED_LORA_TARGETS = ("embed_tokens", "q_proj", "v_proj")


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
    dataset: str = field(default="DB15K", metadata={
        "help": "'DB15K', 'MKG-W' (shipped) or the path of a folder with train/valid/test.tsv."})
    prompt: Literal["compact", "instruction"] = field(default="compact", metadata={
        "help": "'instruction': the published code's natural-language instruction (for chat LLMs); "
                "'compact': 'head | relation | ?' markers, shorter for the small embedded backbone.",
        "paper": "instruction"})
    train_limit: int | None = field(default=None, metadata={
        "help": "Use only the first N training triples (a KG slice for quick trials and tests); None: all."})
    valid_limit: int | None = field(default=2000, metadata={
        "help": "Validate on at most N valid triples per evaluation (both directions); None: all.",
        "paper": None})
    valid_unseen: bool = field(default=True, metadata={
        "help": "Validate only on valid triples that are not also training triples, so that the checkpoint "
                "is not selected on recall of training data; False: the valid split as given.",
        "paper": False})
    test_limit: int | None = field(default=None, metadata={
        "help": "Test on at most N test triples (both directions); None: all, as the paper does."})
    anchor_tokens: int | None = field(default=48, metadata={
        "help": "Tokens of the query entity's name kept in the prompt (its first N; the answer side is cut at "
                "model.k), so a KG of long names does not pay for its longest prompt; None: all."})

    def __post_init__(self) -> None:
        _check_literals(self)
        check(bool(self.dataset), "data.dataset='': name a shipped KG (DB15K, MKG-W) or a folder")
        for name in ("train_limit", "valid_limit", "test_limit", "anchor_tokens"):
            value = getattr(self, name)
            check(value is None or value >= 1, f"data.{name}={value}: must be >= 1 or None")


@dataclass(frozen=True)
class EmbeddedBackboneConfig:
    """The default backbone: a small Llama built from a config, never downloaded."""

    hidden_size: int = field(default=128, metadata={"help": "Hidden size of the embedded Llama."})
    layers: int = field(default=2, metadata={"help": "Decoder layers of the embedded Llama."})
    heads: int = field(default=4, metadata={
        "help": "Attention heads of the embedded Llama; must divide hidden_size."})
    intermediate_size: int = field(default=384, metadata={
        "help": "Feed-forward width of the embedded Llama."})
    vocab_size: int = field(default=4096, metadata={
        "help": "Size of the BPE tokenizer trained offline on the KG's names and relation words."})

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
    backbone: str = field(default=EMBEDDED, metadata={
        "help": "'embedded' (a small Llama built from model.embedded, never downloaded) or any Hugging Face "
                "causal-LM path or id (e.g. meta-llama/Llama-2-7b-chat-hf).",
        "paper": "meta-llama/Llama-2-7b-chat-hf"})
    embedded: EmbeddedBackboneConfig = field(default_factory=EmbeddedBackboneConfig, metadata={
        "help": "The embedded backbone's dimensions (used when backbone='embedded')."})
    backbone_tuning: Literal["auto", "lora", "full"] = field(default="auto", metadata={
        "help": "'lora' as the paper does; 'full' trains every weight; 'auto': LoRA for a pretrained "
                "backbone, full for the randomly initialised embedded one (LoRA on random weights learns "
                "little).",
        "paper": "lora"})
    dtype: Literal["auto", "float32", "bfloat16", "mixed"] = field(default="auto", metadata={
        "help": "'bfloat16': bfloat16 weights (DeepSpeed bf16); 'mixed': float32 weights, training's forward "
                "under bfloat16 autocast; 'auto': bfloat16 on CUDA, mixed on a CPU with native bfloat16 "
                "(AVX512-BF16 or AMX), float32 on other CPUs. Ranking stays float32."})
    lora_r: int = field(default=8, metadata={"help": "Rank of the backbone's LoRA (backbone_tuning='lora')."})
    lora_alpha: int = field(default=16, metadata={"help": "Scaling alpha of the backbone's LoRA."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout of the backbone's LoRA, in [0, 1)."})
    lora_targets: tuple[str, ...] = field(default=(), metadata={
        "help": "Backbone modules given LoRA adapters (comma-separated on the command line); () (unset): "
                "peft's default for the backbone's architecture (q_proj, v_proj for Llama; c_attn for "
                "GPT-2). The published code's are PUBLISHED_LORA_TARGETS."})
    k: int = field(default=8, metadata={
        "help": "Number of K-ON heads: entity names are padded or truncated to K tokens (eq. 8)."})
    head_init: Literal["zero", "default"] = field(default="zero", metadata={
        "help": "Head-MLP init: 'zero' as the paper (eq. 5 residual); 'default' as the published code."})
    conditional_attention: bool = field(default=True, metadata={
        "help": "The causal attention over the K head states (eq. 6); False is Table 3 "
                "'w/o Conditional Attention'."})
    attention_heads: int = field(default=8, metadata={"help": "Heads of the conditional attention layer."})
    attention_dropout: float = field(default=0.3, metadata={
        "help": "Dropout of the conditional attention, in [0, 1)."})
    residual: Literal["paper", "published"] = field(default="paper", metadata={
        "help": "'paper': eq. 5, attention + h0; 'published': 0.2 attention + 0.5 h0 + 0.8 head MLP."})
    shared_head_mlp: bool = field(default=False, metadata={
        "help": "One head MLP for all K steps (Table 3 'Shared Head MLP')."})
    shared_score_layer: bool = field(default=False, metadata={
        "help": "One LoRA score layer for all K steps (Table 3 'Shared Score Layer')."})
    score_lora_r: int = field(default=8, metadata={"help": "Rank of each step's LoRA score layer (eq. 7)."})
    score_lora_alpha: int = field(default=16, metadata={"help": "Scaling alpha of the LoRA score layers."})
    score_lora_dropout: float = field(default=0.3, metadata={
        "help": "Dropout of the LoRA score layers, in [0, 1)."})
    score_space: Literal["probability", "logit"] = field(default="probability", metadata={
        "help": "'probability': eq. 11 gathers softmax probabilities; 'logit': the published code's raw "
                "logits."})
    joint: Literal["sum", "product"] = field(default="sum", metadata={
        "help": "Operator combining the K token probabilities into the entity's (eq. 11; Table 4)."})
    joint_weights: Literal["learnable", "constant"] = field(default="learnable", metadata={
        "help": "Step weights alpha_k of eq. 11: learnable parameters or constant (Table 4)."})

    def __post_init__(self) -> None:
        _check_literals(self)
        check(self.k >= 1, f"model.k={self.k}: the number of K-ON heads must be >= 1")
        for name in ("lora_r", "lora_alpha", "score_lora_r", "score_lora_alpha", "attention_heads"):
            check(getattr(self, name) >= 1, f"model.{name}={getattr(self, name)}: must be >= 1")
        for name in ("lora_dropout", "attention_dropout", "score_lora_dropout"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, f"model.{name}={value}: must be in [0, 1)")
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
    contrastive: Literal["eq12", "bce_adversarial", "infonce"] = field(default="eq12", metadata={
        "help": "'eq12': the paper's loss with a probability floor; 'bce_adversarial': the published code's "
                "BCE with self-adversarial negative weights; 'infonce': softmax CE over the positive and its "
                "negatives."})
    negatives: int = field(default=128, metadata={
        "help": "|N|: negative entities per query, never a known true answer in training (strict). A query "
                "with fewer non-answers gets all of them, then uniform repeats; |N| must be below the entity "
                "count."})
    floor: float = field(default=1e-4, metadata={
        "help": "eq. 12/13 are unbounded below as printed; each log p is taken as log(p + floor)."})
    adversarial_temperature: float = field(default=0.5, metadata={
        "help": "Temperature of the self-adversarial negative weights (contrastive='bce_adversarial')."})
    sft: Literal["eq13", "cross_entropy"] = field(default="eq13", metadata={
        "help": "'eq13': the paper's SFT loss (with the floor); 'cross_entropy': standard SFT."})
    kl_detach_target: bool = field(default=True, metadata={
        "help": "eq. 14: treat the backbone head's distribution as a fixed target, as the published code."})
    nce_weight: float = field(default=1.0, metadata={
        "help": "Weight of L_nce (eq. 12); 0 is Table 3 'w/o L_nce'."})
    sft_weight: float = field(default=0.1, metadata={
        "help": "Weight of L_sft (eq. 13); 0 is Table 3 'w/o L_sft'. The paper does not state the HTT "
                "weights; 0.1 is the published code's weight of L_sft + L_tdt."})
    tdt_weight: float = field(default=0.1, metadata={
        "help": "Weight of L_tdt (eq. 14); 0 is Table 3 'w/o L_tdt'."})

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
    ties: Literal["realistic", "optimistic", "pessimistic"] = field(default="realistic", metadata={
        "help": "Tie handling of the headline rank; all three are always computed."})
    query_chunk: int = field(default=256, metadata={
        "help": "Queries scored against all entities at once: bounds memory to chunk x entities."})

    def __post_init__(self) -> None:
        _check_literals(self)
        check(self.query_chunk >= 1, f"eval.query_chunk={self.query_chunk}: must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "The KG and its splits."})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "The backbone and the K-ON head."})
    loss: LossConfig = field(default_factory=LossConfig, metadata={"help": "The HTT losses (Algorithm 1)."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Optimisation and workers."})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "Filtered ranking."})

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
