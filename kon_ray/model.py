"""K-ON: K head layers on an LLM that score every entity of a KG in one forward pass.

The module follows the paper's equations in order (Guo et al., AAAI 2025):
eq. 3 head MLPs, eq. 4-5 conditional attention, eq. 6-7 LoRA score layers,
eq. 8-10 K-step gathering, eq. 11 joint entity probability; ``KONModel`` puts them on the
backbone LLM (eq. 1-2). Losses live in ``kon_ray.losses``; ranking in ``kon_ray.evaluation``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from kon_ray.config import ModelConfig

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from kon_ray.data.prompts import Batch


class RMSNorm(nn.Module):
    """LlamaRMSNorm (Zhang and Sennrich, 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return self.weight * (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)


class HeadMLP(nn.Module):
    """Eq. 3: h_k^h = L_k^h(SiLU(W_k^h h_0^m)), W_k^h a d x d matrix without bias."""

    def __init__(self, dim: int, zero_init: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim, bias=False)
        self.norm = RMSNorm(dim)
        if zero_init:
            # The MLP's output starts at zero (eq. 5's residual then gives h_0^m). Zeroing the
            # RMSNorm gain rather than W_k^h keeps the gradient finite: RMSNorm at 0 has slope 1/sqrt(eps).
            nn.init.zeros_(self.norm.weight)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(F.silu(self.linear(h)))


class ScoreLoRA(nn.Module):
    """Eq. 6-7: p_k = (W^S + A_k B_k) h_k^a for every step k, B_k zero-initialised.

    ``W^S`` is the backbone's output head, shared by reference (frozen under LoRA tuning).
    A single adapter serves all steps when ``shared`` (Table 3 'Shared Score Layer').
    """

    def __init__(self, steps: int, dim: int, vocab: int, rank: int, alpha: int, dropout: float) -> None:
        super().__init__()
        self.down = nn.Parameter(torch.empty(steps, rank, dim))
        self.up = nn.Parameter(torch.zeros(steps, vocab, rank))
        for k in range(steps):
            nn.init.kaiming_uniform_(self.down[k], a=math.sqrt(5))
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, output_weight: torch.Tensor) -> torch.Tensor:
        base = h @ output_weight.t()  # (B, K, V)
        low = torch.einsum("bkd,krd->bkr", self.dropout(h), self.down)  # a shared adapter's k=1 broadcasts
        return base + self.scale * torch.einsum("bkr,kvr->bkv", low, self.up)


class KON(nn.Module):
    """The K-ON head layers. ``forward`` maps h_0^m to K step logits; ``entity_scores`` gathers."""

    def __init__(self, config: ModelConfig, dim: int, vocab: int) -> None:
        super().__init__()
        self.config = config
        k = config.k
        mlps = 1 if config.shared_head_mlp else k
        self.head_mlps = nn.ModuleList(HeadMLP(dim, config.head_init == "zero") for _ in range(mlps))
        self.attention = (
            nn.MultiheadAttention(
                dim, config.attention_heads, dropout=config.attention_dropout, bias=False, batch_first=True
            )
            if config.conditional_attention
            else None
        )
        # Eq. 4: M_ij = 1 if i >= j; stored as the boolean "may not attend" mask (i < j).
        self.register_buffer("causal", torch.ones(k, k, dtype=torch.bool).triu(1), persistent=False)
        self.score = ScoreLoRA(
            1 if config.shared_score_layer else k,
            dim,
            vocab,
            config.score_lora_r,
            config.score_lora_alpha,
            config.score_lora_dropout,
        )
        # Eq. 11 step weights alpha_k: parameters (so the optimiser updates them) or a constant buffer.
        if config.joint_weights == "learnable":
            self.step_weights = nn.Parameter(torch.zeros(k))
        else:
            self.register_buffer("step_weights", torch.zeros(k))

    def forward(self, h0: torch.Tensor, output_weight: torch.Tensor) -> torch.Tensor:
        """h0: (B, d) last hidden state of the query (eq. 1). Returns step logits (B, K, V)."""
        k = self.config.k
        if len(self.head_mlps) == 1:
            hh = self.head_mlps[0](h0).unsqueeze(1).expand(-1, k, -1)  # eq. 3, one shared MLP
        else:
            hh = torch.stack([mlp(h0) for mlp in self.head_mlps], dim=1)  # eq. 3: (B, K, d)
        mixed = h0.unsqueeze(1)
        if self.attention is not None:
            # Eq. 4-5: step k attends to head outputs 0..k only.
            attended, _ = self.attention(hh, hh, hh, attn_mask=self.causal, need_weights=False)
        else:
            attended = hh
        if self.config.residual == "paper":
            ha = attended + mixed  # eq. 5
        elif self.attention is not None:
            ha = 0.2 * attended + 0.5 * mixed + 0.8 * hh  # the published code's mixing
        else:
            ha = 0.5 * mixed + 0.8 * hh
        return self.score(ha, output_weight)  # eq. 6-7

    def step_log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-step token scores P (eq. 9): log-probabilities, or raw logits in 'logit' space."""
        if self.config.score_space == "probability":
            return F.log_softmax(logits.float(), dim=-1)
        return logits.float()

    def entity_scores(self, step_scores: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 8-11: the joint score of candidate entities.

        step_scores: (B, K, V) from ``step_log_probs``. tokens, mask: the candidates' eq. 8 token
        ids and real-token mask, either (C, K) shared by every row (all entities, for ranking) or
        (B, C, K) per row (the positive and negatives, for training). Returns (B, C): log p^e in
        probability space (eq. 11), a logit score in 'logit' space. Padding steps never contribute.
        """
        if tokens.dim() == 2:
            return self._shared_candidates(step_scores, tokens, mask)
        index = tokens.transpose(1, 2)  # (B, K, C)
        gathered = step_scores.gather(2, index).transpose(1, 2)  # eq. 10: (B, C, K)
        return self._joint(gathered, mask)

    def _joint(self, gathered: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 11 from gathered step scores (..., K)."""
        if self._linear:
            return (gathered * self._weights(mask)).sum(-1)
        log_alpha = self._log_sum_weights(mask)
        return torch.where(mask, gathered + log_alpha, float("-inf")).logsumexp(-1)  # log sum_k alpha_k p_k

    @property
    def _linear(self) -> bool:
        """Whether the entity score is linear in the step scores (a product of probabilities is
        a weighted sum of log-probabilities; 'logit' space sums logits) rather than in p_k."""
        return self.config.joint == "product" or self.config.score_space == "logit"

    def _weights(self, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 11 step weights alpha_k for each candidate (..., K), 0 on padding steps.

        Product: alpha_k = exp(theta_k) > 0. Sum: softmax(theta) over the entity's real tokens,
        so that every entity's weights sum to 1 whatever its length and p^e stays in (0, 1].
        """
        if self.config.joint == "product":
            return self.step_weights.float().exp() * mask
        return self._log_sum_weights(mask).exp() * mask

    def _log_sum_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """log alpha_k of the sum: log-softmax of theta over real tokens (finite, so gradients are)."""
        theta = self.step_weights.float()
        return torch.log_softmax(torch.where(mask, theta, torch.finfo(theta.dtype).min), -1)

    def _shared_candidates(self, step_scores: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 10-11 for candidates shared by every row (all entities) as one sparse product.

        Entity e's score is linear in P[:, k, t_k^e] (or in exp P for the sum of probabilities),
        so a sparse (C, K*V) matrix holding alpha_k at column k*V + t_k^e scores every entity at
        once, without materialising (B, C, K) gathers. The sum of probabilities is scaled by
        each row's most likely token; entities whose sum underflows that scale (below the
        smallest normal float) are scored again exactly by gathering. For ranking only: no
        gradient flows.
        """
        if torch.is_grad_enabled() and step_scores.requires_grad:
            raise RuntimeError("scoring shared candidates is for ranking; train on per-row (B, C, K) candidates")
        b, k, v = step_scores.shape
        steps = torch.arange(k, device=tokens.device).expand_as(tokens)
        entity = torch.arange(len(tokens), device=tokens.device)[:, None].expand_as(tokens)
        weights = self._weights(mask)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            matrix = torch.sparse_coo_tensor(
                torch.stack([entity[mask], (steps * v + tokens)[mask]]),
                weights[mask],
                (len(tokens), k * v),
                check_invariants=False,
            ).to_sparse_csr()
        flat = step_scores.reshape(b, k * v)
        if self._linear:
            return (matrix @ flat.t()).t()
        top = flat.amax(1, keepdim=True)
        summed = (matrix @ (flat - top).exp_().t()).t()  # (B, C): sum_k alpha_k p_k / exp(top)
        rows, cols = (summed < torch.finfo(summed.dtype).tiny).nonzero(as_tuple=True)  # underflow
        scores = summed.log_().add_(top)
        if len(rows):
            gathered = step_scores[rows[:, None], steps[:1], tokens[cols]]  # (n, K)
            scores[rows, cols] = self._joint(gathered, mask[cols])
        return scores


def _without_frozen(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, _: object) -> None:
    """Drop frozen weights from a state dict under every name they have: a tied output head is the
    input embedding under a second name, which ``named_parameters`` lists only once (DeepSpeed's
    ``exclude_frozen_parameters`` filters by it, and so kept GPT-2's frozen ``lm_head.weight``)."""
    for name, p in module.named_parameters(remove_duplicate=False):
        if not p.requires_grad:
            state.pop(prefix + name, None)


class KONModel(nn.Module):
    """The backbone LLM and the K-ON heads, trained together.

    The backbone's decoder and output head are looked up through ``backbone`` on each use,
    never stored as attributes: a stored module would be registered a second time under
    another name, and checkpoints that exclude frozen weights would still save it. For the same
    reason the state dict holds no frozen weight under any name (tied embeddings).
    """

    def __init__(self, backbone: PreTrainedModel, kon: KON, autocast: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.kon = kon
        self.autocast = autocast
        """Training's forward under bfloat16 autocast (mixed precision); ranking (no gradients) never."""
        self.register_state_dict_post_hook(_without_frozen)

    @property
    def base(self) -> PreTrainedModel:
        """The causal LM under any peft wrapper."""
        get_base = getattr(self.backbone, "get_base_model", None)
        return get_base() if get_base is not None else self.backbone

    @property
    def decoder(self) -> nn.Module:
        base = self.base
        return getattr(base, base.base_model_prefix)

    @property
    def head(self) -> nn.Module:
        """The backbone's output head, W^S of eq. 6."""
        return self.base.get_output_embeddings()

    @property
    def output_weight(self) -> torch.Tensor:
        return self.head.weight

    def external_parameters(self) -> Iterator[tuple[nn.Module, nn.Parameter]]:
        """Weights read outside their own module's forward, each with the module that reads them.

        ZeRO-3 gathers a weight only for its own module's forward unless told otherwise
        (``deepspeed.zero.register_external_parameter``): eq. 6's W^S is read by the score layers,
        eq. 11's step weights by ``forward``;
        ``nn.MultiheadAttention`` (eq. 4-5) reads its ``out_proj`` without calling it; and a
        parameter container (peft's LoRA embedding keeps ``lora_embedding_A`` and ``_B`` in
        ParameterDicts) is never called, its parent reads it.
        """
        yield self.kon, self.output_weight
        if isinstance(self.kon.step_weights, nn.Parameter):
            yield self, self.kon.step_weights  # eq. 11's alpha_k, read by entity_scores within forward
        for module in self.modules():
            if isinstance(module, nn.MultiheadAttention):
                yield from ((module, p) for p in module.out_proj.parameters())
            for child in module.children():
                if isinstance(child, nn.ParameterDict | nn.ParameterList):
                    yield from ((module, p) for p in child.parameters())

    def hidden(self, batch: Batch) -> torch.Tensor:
        """Eq. 1: the backbone's final hidden states (B, L, d)."""
        return self.decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state

    def forward(
        self, batch: Batch, candidate_tokens: torch.Tensor, candidate_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. 1-11: the hidden states (B, L, d), the K step logits (B, K, V) of h_0^m, and the
        scores of the candidates (``KON.entity_scores``' tokens and mask).

        One module call, so that ZeRO-3 gathers every weight it reads (``external_parameters``).
        """
        # Entered here, inside the module: on CUDA DeepSpeed's forward switches off an autocast begun outside.
        device = candidate_tokens.device.type
        with torch.autocast(device, dtype=torch.bfloat16, enabled=self.autocast and torch.is_grad_enabled()):
            h = self.hidden(batch)
            h0 = h[torch.arange(len(h), device=h.device), batch.last]
            logits = self.kon(h0, self.output_weight)  # eq. 3-7
        scores = self.kon.entity_scores(self.kon.step_log_probs(logits), candidate_tokens, candidate_mask)
        return h, logits, scores

    def scores_all(
        self, batch: Batch, entity_tokens: torch.Tensor, entity_mask: torch.Tensor
    ) -> torch.Tensor:
        """One forward pass scores every entity: (B, E)."""
        return self(batch, entity_tokens, entity_mask)[2]
