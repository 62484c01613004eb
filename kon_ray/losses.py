"""K-ON's losses: the entity contrastive loss (eq. 12 and options) and head trajectory tuning (eq. 13-14).

Entity scores arrive as ``s`` from ``KON.entity_scores``: log p^e in probability space,
raw logits in 'logit' space. Every loss returns the mean over queries.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from kon_ray.config import LossConfig, RunConfig

if TYPE_CHECKING:
    from kon_ray.data.prompts import Batch
    from kon_ray.model import KONModel


def _floored(log_p: torch.Tensor, floor: float) -> torch.Tensor:
    """log(p + floor), computed from log p."""
    return torch.logaddexp(log_p, torch.full_like(log_p, math.log(floor)))


def eq12(pos: torch.Tensor, neg: torch.Tensor, floor: float) -> torch.Tensor:
    """Eq. 12: -log p^e + mean_j log p^{e_j}, each log p taken as log(p + floor).

    As printed eq. 12 has no lower bound: pushing negatives towards p = 0 lowers it without
    limit. With the floor the loss is bounded below by log(floor) - log(1 + floor), and a
    negative whose p is already far below the floor stops receiving gradient.
    """
    return (-_floored(pos, floor) + _floored(neg, floor).mean(-1)).mean()


def infonce(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the positive against its |N| negatives."""
    logits = torch.cat([pos.unsqueeze(-1), neg], dim=-1)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


def bce_adversarial(pos: torch.Tensor, neg: torch.Tensor, temperature: float, probability: bool) -> torch.Tensor:
    """The published code's loss: BCE with positives labelled 1 and negatives 0, each negative
    weighted by softmax(temperature x score) over the query's negatives (self-adversarial,
    RotatE's convention), weights detached."""
    if probability:  # scores are log p: turn them into logits of p
        pos = pos - torch.log1p(-pos.exp().clamp(max=1 - 1e-6))
        neg = neg - torch.log1p(-neg.exp().clamp(max=1 - 1e-6))
    weights = torch.softmax(neg.detach() * temperature, dim=-1)
    return (-F.logsigmoid(pos) - (weights * F.logsigmoid(-neg)).sum(-1)).mean()


Contrastive = Callable[[torch.Tensor, torch.Tensor, LossConfig, bool], torch.Tensor]
"""L_nce from (positive scores (B,), negative scores (B, |N|), settings, probability space)."""

CONTRASTIVE: dict[str, Contrastive] = {
    "eq12": lambda pos, neg, config, probability: eq12(pos, neg, config.floor),
    "infonce": lambda pos, neg, config, probability: infonce(pos, neg),
    "bce_adversarial": lambda pos, neg, config, probability: bce_adversarial(
        pos, neg, config.adversarial_temperature, probability
    ),
}
"""``loss.contrastive`` names a key of this registry (a test checks that both agree)."""


def contrastive(pos: torch.Tensor, neg: torch.Tensor, config: LossConfig, probability: bool) -> torch.Tensor:
    """L_nce for scores of the positive (B,) and the negatives (B, |N|)."""
    return CONTRASTIVE[config.contrastive](pos, neg, config, probability)


def sft(logits: torch.Tensor, tokens: torch.Tensor, queries: int, config: LossConfig) -> torch.Tensor:
    """Eq. 13 on the backbone head's teacher-forced logits (n, V) at the targets' n real
    (non-padding) steps, tokens (n,): the sum over steps, averaged over the ``queries``.

    'eq13': sum_k (-log p_k^e + mean_{j in V} log p_k^j), each log p taken as log(p + floor) as
    in eq. 12 (as printed, the term equals mean logit minus target logit: unbounded).
    'cross_entropy': sum_k -log p_k^e, the standard SFT loss.
    """
    log_p = F.log_softmax(logits.float(), dim=-1)
    target = log_p.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    if config.sft == "eq13":
        per_step = -_floored(target, config.floor) + _floored(log_p, config.floor).mean(-1)
    else:
        per_step = -target
    return per_step.sum() / queries


def tdt(kon_logits: torch.Tensor, llm_logits: torch.Tensor, queries: int, detach_target: bool) -> torch.Tensor:
    """Eq. 14: sum_k KL(p_k^{K-ON} || p_k^{LLM}) over the targets' n real steps (logits (n, V)),
    averaged over the ``queries``."""
    log_kon = F.log_softmax(kon_logits.float(), dim=-1)
    log_llm = F.log_softmax(llm_logits.float(), dim=-1)
    if detach_target:
        log_llm = log_llm.detach()
    return (log_kon.exp() * (log_kon - log_llm)).sum() / queries


def step_losses(
    model: KONModel, batch: Batch, candidate_tokens: torch.Tensor, candidate_mask: torch.Tensor, config: RunConfig
) -> dict[str, torch.Tensor]:
    """Algorithm 1, lines 3-8, for one micro-batch: the weighted terms and their sum (``loss``).

    ``model`` is the KONModel or the DeepSpeed engine over it (which passes ``kon`` and ``head``
    through). ``batch`` holds the queries with their targets' tokens; ``candidate_tokens`` and
    ``candidate_mask`` (B, 1 + |N|, K) are eq. 8's tokens of each query's target (column 0)
    and its negatives.
    """
    cfg = config.loss
    out: dict[str, torch.Tensor] = {}
    h, kon_logits, scores = model(batch, candidate_tokens, candidate_mask)  # eq. 1-11
    if cfg.nce_weight > 0:
        probability = config.model.score_space == "probability"
        out["nce"] = cfg.nce_weight * contrastive(scores[:, 0], scores[:, 1:], cfg, probability)
    if cfg.sft_weight > 0 or cfg.tdt_weight > 0:
        # The backbone head, teacher-forced at the target's real steps only: position last + k
        # predicts the target's token k.
        query, step = batch.target_mask.nonzero(as_tuple=True)
        llm_logits = model.head(h[query, batch.last[query] + step])  # (n, V)
        if cfg.sft_weight > 0:
            out["sft"] = cfg.sft_weight * sft(llm_logits, batch.target_tokens[query, step], len(h), cfg)
        if cfg.tdt_weight > 0:
            out["tdt"] = cfg.tdt_weight * tdt(kon_logits[query, step], llm_logits, len(h), cfg.kl_detach_target)
    out["loss"] = sum(out.values())
    return out
