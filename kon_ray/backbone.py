"""The LLM under K-ON: the embedded small Llama, or any Hugging Face causal LM, with LoRA via peft."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from kon_ray.config import EMBEDDED, ModelConfig
from kon_ray.data.kg import KnowledgeGraph
from kon_ray.data.prompts import template_words
from kon_ray.data.tokenizer import kg_tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Precision:
    """The weights' dtype, and whether training's forward runs under bfloat16 autocast."""

    weights: torch.dtype
    autocast: bool

    def __str__(self) -> str:
        return "mixed" if self.autocast else str(self.weights).removeprefix("torch.")

    def training(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """The context of a training forward; ranking always runs at the weights' precision."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.autocast)


def native_cpu_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX)."""
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_precision(config: ModelConfig, device: torch.device) -> Precision:
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" else "mixed" if native_cpu_bfloat16() else "float32"
    if dtype == "mixed":
        return Precision(torch.float32, autocast=True)
    return Precision(getattr(torch, dtype), autocast=False)


def load_tokenizer(config: ModelConfig, kg: KnowledgeGraph, template: str) -> PreTrainedTokenizerBase:
    if config.backbone == EMBEDDED:
        corpus = [*kg.entity_names, *kg.relation_names, *template_words(template)]
        return kg_tokenizer(corpus, kg.digest, config.embedded.vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(config.backbone, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token_id = 0  # the published code pads entity tokens with id 0
    return tokenizer


def load_backbone(
    config: ModelConfig, tokenizer: PreTrainedTokenizerBase, device: torch.device, dtype: torch.dtype, seed: int
) -> PreTrainedModel:
    """The causal LM with ``dtype`` weights, its LoRA adapters (or all weights) trainable per
    ``config.tuning``."""
    if config.backbone == EMBEDDED:
        e = config.embedded
        llama = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=e.hidden_size,
            intermediate_size=e.intermediate_size,
            num_hidden_layers=e.layers,
            num_attention_heads=e.heads,
            num_key_value_heads=e.heads,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=False,
            # Eager attention: at these sizes faster than SDPA on a CPU, and SDPA's CPU kernel is
            # slow in bfloat16 (5x in the mixed-precision step).
            attn_implementation="eager",
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = LlamaForCausalLM(llama).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(config.backbone, dtype=dtype, trust_remote_code=False)
    model.to(device)
    if config.tuning == "lora":
        lora = LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.lora_targets) or None,  # None: peft's default for the architecture
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
    log.info("backbone %s (%s weights, %s tuning)", config.backbone, dtype, config.tuning)
    return model
