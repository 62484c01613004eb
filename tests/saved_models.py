"""A tiny Llama saved with ``save_pretrained``, with its tokenizer: a pretrained backbone offline."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kon_ray.data import load_kg
from kon_ray.data.prompts import template_words
from kon_ray.data.tokenizer import train_tokenizer


def save_tiny_llama(folder: Path, kg_folder: Path, seed: int = 0) -> Path:
    """A 2-layer Llama (hidden 32) and a byte-level BPE tokenizer of the KG's words, in ``folder``."""
    kg = load_kg(str(kg_folder))
    words = [*kg.entity_names, *kg.relation_names, *template_words("instruction"), *template_words("compact")]
    tokenizer = train_tokenizer(words, 300)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
