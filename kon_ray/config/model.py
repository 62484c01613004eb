"""The ``model`` section: the backbone, its tuning and the K-ON head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kon_ray.config.literals import check_literals
from kon_ray.overrides import check

EMBEDDED = "embedded"
PUBLISHED_LORA_TARGETS = ("embed_tokens", "q_proj", "v_proj")


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
        "help": "'embedded' (a small Llama built from model.embedded, never downloaded) or a Hugging Face "
                "causal-LM path or id (e.g. meta-llama/Llama-2-7b-chat-hf); the Llama, GPT-2 and Qwen2 "
                "families are tested (docs/backbones.md).",
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
        "help": "The causal attention over the K head states (eq. 4-5); False is Table 3 "
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
        check_literals(self)
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
