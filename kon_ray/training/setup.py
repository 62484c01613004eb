"""``setup``: the KG, tokenizer, backbone and K-ON heads of a run, on one device."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

import torch
from torch import nn

from kon_ray.backbone import (
    Precision,
    backbone_identity,
    load_backbone,
    load_tokenizer,
    resolve_precision,
    tokenizer_identity,
)
from kon_ray.config import RunConfig
from kon_ray.data import AnswerIndex, KnowledgeGraph, check_data, load_kg
from kon_ray.data.prompts import EncodedKG, encode_kg
from kon_ray.model import KON, KONModel
from kon_ray.run_identity import RunIdentity

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


@dataclass
class Setup:
    config: RunConfig
    kg: KnowledgeGraph
    tokenizer: PreTrainedTokenizerBase
    identity: RunIdentity
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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(
    config: RunConfig, device: torch.device | None = None, tokenizer: PreTrainedTokenizerBase | None = None
) -> Setup:
    """Load the KG, tokenizer, backbone and K-ON heads; everything ``fit`` needs.

    ``tokenizer``: a saved run's own, instead of the one the config names.
    """
    device = device or default_device()
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    kg = load_kg(config.data.dataset).slice(config.data.train_limit)
    check_data(config, kg)
    torch.manual_seed(config.train.seed)
    tokenizer = tokenizer or load_tokenizer(config.model, kg, config.data.prompt)
    encoded = encode_kg(kg, tokenizer, config.data.prompt, config.model.k, config.data.anchor_tokens)
    precision = resolve_precision(config.model, device)
    log.info("precision %s", precision)
    backbone = load_backbone(config.model, tokenizer, device, precision.weights, config.train.seed)
    vocab, dim = backbone.get_output_embeddings().weight.shape
    # The heads in the weights' dtype, as DeepSpeed's bf16 mode casts them (and ranking without an engine).
    kon = KON(config.model, dim, vocab).to(device, precision.weights)
    return Setup(
        config=config,
        kg=kg,
        tokenizer=tokenizer,
        identity=RunIdentity(kg.digest, tokenizer_identity(tokenizer), backbone_identity(config.model)),
        encoded=encoded,
        model=KONModel(backbone, kon, precision.autocast),
        train_index=AnswerIndex.build([kg.train], kg.num_entities, kg.num_relations),
        filter_index=AnswerIndex.build([kg.train, kg.valid, kg.test], kg.num_entities, kg.num_relations),
        device=device,
        precision=precision,
    )


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
