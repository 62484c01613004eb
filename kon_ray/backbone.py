"""The LLM under K-ON: the embedded small Llama, or any Hugging Face causal LM, with LoRA via peft."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from kon_ray.config import EMBEDDED, ModelConfig
from kon_ray.data.cache import cache_key, cached_dir
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


def tokenizer_identity(tokenizer: PreTrainedTokenizerBase) -> dict[str, str]:
    """The tokenizer's name (for the reader) and a hash of what it does: its vocabulary, merges,
    normalisation and special tokens, whatever folder it was loaded from."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)  # set and reset by each call with padding or truncation
        spec.pop("padding", None)
    else:
        spec = sorted(tokenizer.get_vocab().items())
    text = json.dumps(
        {"backend": spec, "special": tokenizer.special_tokens_map, "pad": tokenizer.pad_token_id},
        sort_keys=True,
        default=str,
    )
    return {"name": str(tokenizer.name_or_path), "hash": hashlib.sha256(text.encode()).hexdigest()}


# Files of a saved Hugging Face model that decide its weights and architecture.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json")


def backbone_identity(config: ModelConfig) -> dict[str, str]:
    """The backbone's name and a hash of its config and weight files; for the embedded backbone,
    of its config (its initial weights follow from the config and the seed)."""
    if config.backbone == EMBEDDED:
        text = json.dumps(dataclasses.asdict(config.embedded), sort_keys=True)
        return {"name": EMBEDDED, "hash": hashlib.sha256(text.encode()).hexdigest()}
    folder = _model_folder(config.backbone)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)):
        if "tokenizer" in path.name or path.name == "special_tokens_map.json":
            continue  # the tokenizer has its own identity
        h.update(f"{path.name}\0{_file_hash(path)}\0".encode())
    return {"name": config.backbone, "hash": h.hexdigest()}


def _file_hash(path: Path) -> str:
    """sha256 of a file's bytes, cached under its path, size and modification time: a 7B model's
    13 GB are read once per machine, not at every start."""
    stat = path.stat()
    key = cache_key(kind="sha256", path=str(path.resolve()), size=stat.st_size, mtime_ns=stat.st_mtime_ns)

    def build(folder: Path) -> None:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        (folder / "sha256").write_text(h.hexdigest())

    return (cached_dir("file-sha256", key, build) / "sha256").read_text()


def _model_folder(backbone: str) -> Path:
    """A local model folder, or a Hub id's snapshot in the local Hugging Face cache."""
    if Path(backbone).is_dir():
        return Path(backbone)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(backbone, local_files_only=True))


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
