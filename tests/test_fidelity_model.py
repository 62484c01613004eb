"""Eq. 3-11 of the K-ON head against naive references written out from the paper.

Each reference reads the module's parameters and recomputes the equation with loops and
explicit formulas, so that a one-line change to an equation (an operator moved, a step's
adapter swapped, a mask one step off, a constant changed) fails here. Weights are drawn at
random first: at the zero init several of these changes are invisible.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

from kon_ray.config import ModelConfig
from kon_ray.model import KON, HeadMLP, RMSNorm, ScoreLoRA

DIM, VOCAB, K, HEADS = 16, 23, 4, 2
ATOL = 1e-5


def randomised_kon(**changes: object) -> KON:
    """A K-ON in eval mode whose every weight (zero-initialised ones too) is random."""
    config = dataclasses.replace(
        ModelConfig(k=K, attention_heads=HEADS, score_lora_r=3, score_lora_alpha=5), **changes
    )
    torch.manual_seed(0)
    kon = KON(config, DIM, VOCAB).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in kon.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
        kon.step_weights.copy_(torch.randn(K, generator=generator))
    return kon


def naive_rmsnorm(x: torch.Tensor, gain: torch.Tensor, eps: float) -> torch.Tensor:
    """x_i / sqrt(mean_j x_j^2 + eps) * g_i, one vector at a time."""
    out = torch.empty_like(x)
    for index in range(x.shape[0]):
        row = x[index]
        out[index] = row / math.sqrt(sum(v.item() ** 2 for v in row) / len(row) + eps) * gain
    return out


def naive_head_mlp(mlp: HeadMLP, h0: torch.Tensor) -> torch.Tensor:
    """Eq. 3: RMSNorm(SiLU(W h)), SiLU(x) = x sigmoid(x)."""
    x = h0 @ mlp.linear.weight.t()
    return naive_rmsnorm(x * torch.sigmoid(x), mlp.norm.weight, mlp.norm.eps)


def naive_causal_attention(
    attention: torch.nn.MultiheadAttention, hh: torch.Tensor, heads: int
) -> torch.Tensor:
    """Eq. 4: multi-head attention where step i attends to steps j <= i only (M_ij = 1 iff i >= j)."""
    batch, steps, dim = hh.shape
    wq, wk, wv = attention.in_proj_weight.chunk(3)
    q, k, v = hh @ wq.t(), hh @ wk.t(), hh @ wv.t()
    width = dim // heads
    out = torch.zeros_like(hh)
    for b in range(batch):
        for head in range(heads):
            cols = slice(head * width, (head + 1) * width)
            for i in range(steps):
                logits = torch.stack([q[b, i, cols] @ k[b, j, cols] / math.sqrt(width) for j in range(i + 1)])
                weights = torch.softmax(logits, 0)
                out[b, i, cols] = sum(weights[j] * v[b, j, cols] for j in range(i + 1))
    return out @ attention.out_proj.weight.t()


def naive_forward(kon: KON, h0: torch.Tensor, output_weight: torch.Tensor) -> torch.Tensor:
    """Eq. 3-7 for every step k: logits (B, K, V)."""
    c = kon.config
    mlps = [kon.head_mlps[0 if c.shared_head_mlp else k] for k in range(c.k)]
    hh = torch.stack([naive_head_mlp(mlp, h0) for mlp in mlps], 1)
    if c.conditional_attention:
        attended = naive_causal_attention(kon.attention, hh, c.attention_heads)
    else:
        attended = hh
    h0s = h0[:, None, :]
    if c.residual == "paper":
        ha = attended + h0s  # eq. 5
    elif c.conditional_attention:
        ha = 0.2 * attended + 0.5 * h0s + 0.8 * hh
    else:
        ha = 0.5 * h0s + 0.8 * hh
    scale = c.score_lora_alpha / c.score_lora_r
    steps = []
    for k in range(c.k):
        adapter = 0 if c.shared_score_layer else k
        # Eq. 6: W_k^S = W^S + A_k B_k, a (V, d) matrix of its own for step k; eq. 7: p_k = W_k^S h_k^a.
        merged = output_weight + scale * kon.score.up[adapter] @ kon.score.down[adapter]
        steps.append(ha[:, k] @ merged.t())
    return torch.stack(steps, 1)


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(3, DIM, generator=generator), torch.randn(VOCAB, DIM, generator=generator) * 0.3


VARIANTS = [
    {},
    {"conditional_attention": False},
    {"residual": "published"},
    {"residual": "published", "conditional_attention": False},
    {"shared_head_mlp": True},
    {"shared_score_layer": True},
]


def variant_id(changes: dict[str, object]) -> str:
    return ",".join(f"{k}={v}" for k, v in changes.items()) or "paper"


@pytest.mark.parametrize("changes", VARIANTS, ids=variant_id)
def test_forward_matches_naive_equations(changes: dict[str, object]) -> None:
    """Eq. 3-7 (and the published residual, the shared variants, no conditional attention)."""
    kon = randomised_kon(**changes)
    h0, weight = inputs()
    with torch.no_grad():
        torch.testing.assert_close(kon(h0, weight), naive_forward(kon, h0, weight), atol=ATOL, rtol=ATOL)


def test_rmsnorm_matches_formula() -> None:
    norm = RMSNorm(7, eps=0.5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(7.0) - 3)
    x = torch.randn(4, 7)
    torch.testing.assert_close(norm(x), naive_rmsnorm(x, norm.weight, 0.5), atol=ATOL, rtol=ATOL)
    assert RMSNorm(7).eps == 1e-6 and torch.equal(RMSNorm(7).weight, torch.ones(7))


def test_head_mlp_is_norm_of_silu() -> None:
    """Eq. 3: RMSNorm(SiLU(W h)); SiLU(RMSNorm(W h)) would differ (it can be negative)."""
    torch.manual_seed(0)
    mlp = HeadMLP(DIM, zero_init=False)
    h0 = torch.randn(5, DIM)
    with torch.no_grad():
        torch.testing.assert_close(mlp(h0), naive_head_mlp(mlp, h0), atol=ATOL, rtol=ATOL)
    assert mlp.linear.bias is None


def test_zero_init_head_mlp_outputs_zero_and_still_learns() -> None:
    """Zero init: the output is 0 (eq. 5 then passes h0 through), and the gain gets a finite,
    nonzero gradient."""
    mlp = HeadMLP(DIM, zero_init=True)
    assert not torch.equal(mlp.linear.weight, torch.zeros_like(mlp.linear.weight))
    out = mlp(torch.randn(3, DIM))
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    grad = mlp.norm.weight.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_each_step_has_its_own_score_adapter() -> None:
    """Eq. 6-7: step k uses A_k B_k; swapping two steps' adapters changes the logits."""
    kon = randomised_kon()
    assert kon.score.down.shape == (K, 3, DIM) and kon.score.up.shape == (K, VOCAB, 3)
    h = torch.randn(2, K, DIM)
    weight = torch.randn(VOCAB, DIM)
    with torch.no_grad():
        out = kon.score(h, weight)
        for k in range(K):
            merged = weight + (5 / 3) * kon.score.up[k] @ kon.score.down[k]
            torch.testing.assert_close(out[:, k], h[:, k] @ merged.t(), atol=ATOL, rtol=ATOL)
        kon.score.up.copy_(kon.score.up.roll(1, 0))
        assert not torch.allclose(kon.score(h, weight), out, atol=1e-3)


def test_score_lora_init() -> None:
    """Eq. 6: B_k (up) starts at zero, A_k (down) at a per-step Kaiming-uniform draw: distinct steps."""
    torch.manual_seed(0)
    lora = ScoreLoRA(3, DIM, VOCAB, rank=4, alpha=8, dropout=0.1)
    assert torch.count_nonzero(lora.up) == 0 and lora.scale == 2.0 and lora.dropout.p == 0.1
    bound = 1 / math.sqrt(DIM)  # kaiming_uniform with a=sqrt(5) on a (4, DIM) matrix
    assert lora.down.abs().max() <= bound and lora.down.abs().max() > bound / 2
    assert not torch.allclose(lora.down[0], lora.down[1])


def test_score_dropout_hits_only_the_adapter_path() -> None:
    """Dropout applies to the LoRA input, not to W^S h: in train mode with B = 0 the logits are exact."""
    torch.manual_seed(0)
    lora = ScoreLoRA(K, DIM, VOCAB, rank=4, alpha=8, dropout=0.5).train()
    h, weight = torch.randn(2, K, DIM), torch.randn(VOCAB, DIM)
    torch.testing.assert_close(lora(h, weight), h @ weight.t())
    with torch.no_grad():
        lora.up.normal_()
    assert not torch.allclose(lora(h, weight), lora.eval()(h, weight))


def test_conditional_attention_off_has_no_attention_and_no_mixing() -> None:
    """Table 3 'w/o Conditional Attention': no attention weights, and step k sees only its own MLP."""
    kon = randomised_kon(conditional_attention=False)
    assert kon.attention is None
    assert not [name for name, _ in kon.named_parameters() if "attention" in name]
    h0, weight = inputs()
    with torch.no_grad():
        base = kon(h0, weight)
        kon.head_mlps[1].linear.weight.add_(1.0)
        changed = kon(h0, weight)
    assert torch.equal(changed[:, [0, 2, 3]], base[:, [0, 2, 3]])
    assert not torch.allclose(changed[:, 1], base[:, 1])


def test_conditional_attention_layer_settings() -> None:
    kon = randomised_kon(attention_dropout=0.25)
    assert kon.attention.num_heads == HEADS and kon.attention.dropout == 0.25 and kon.attention.batch_first
    assert kon.attention.in_proj_bias is None and kon.attention.out_proj.bias is None
    assert torch.equal(kon.causal, torch.tensor([[j > i for j in range(K)] for i in range(K)]))


def test_attention_dropout_is_active_in_train_mode_only() -> None:
    kon = randomised_kon(attention_dropout=0.5, score_lora_dropout=0.0)
    h0, weight = inputs()
    with torch.no_grad():
        evaluated = kon(h0, weight)
        assert torch.equal(kon(h0, weight), evaluated)
        assert not torch.allclose(kon.train()(h0, weight), evaluated)


@pytest.mark.parametrize("space", ["probability", "logit"])
def test_step_log_probs(space: str) -> None:
    kon = randomised_kon(score_space=space)
    logits = torch.randn(2, K, VOCAB)
    expected = logits - logits.exp().sum(-1, keepdim=True).log() if space == "probability" else logits
    torch.testing.assert_close(kon.step_log_probs(logits), expected, atol=ATOL, rtol=ATOL)


def naive_entity_scores(
    kon: KON, step: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Eq. 8-11 with loops: gather each real step's score of the entity's k-th token and combine.

    Probability space, sum: log sum_k a_k p_k, a = softmax(theta) over the entity's real steps.
    Probability space, product: sum_k exp(theta_k) log p_k. Logit space: sum_k a_k logit_k.
    """
    c = kon.config
    theta = kon.step_weights.detach()
    out = torch.empty(step.shape[0], tokens.shape[0])
    for b in range(step.shape[0]):
        for e in range(tokens.shape[0]):
            real = [k for k in range(c.k) if mask[e, k]]
            values = [step[b, k, tokens[e, k]] for k in real]
            if c.joint == "product":
                out[b, e] = sum(theta[k].exp() * v for k, v in zip(real, values))
                continue
            alpha = [theta[k].exp() / sum(theta[j].exp() for j in real) for k in real]
            if c.score_space == "logit":
                out[b, e] = sum(a * v for a, v in zip(alpha, values))
            else:
                out[b, e] = torch.log(sum(a * v.exp() for a, v in zip(alpha, values)))
    return out


SCORINGS = [("sum", "probability"), ("product", "probability"), ("sum", "logit")]


@pytest.mark.parametrize(("joint", "space"), SCORINGS)
def test_entity_scores_match_naive_gathering(joint: str, space: str) -> None:
    kon = randomised_kon(joint=joint, score_space=space)
    step = kon.step_log_probs(torch.randn(3, K, VOCAB) * 2)
    tokens = torch.randint(0, VOCAB, (7, K), generator=torch.Generator().manual_seed(3))
    mask = torch.arange(K)[None] < torch.tensor([1, 2, 3, 4, 4, 2, 1])[:, None]
    tokens[~mask] = 0
    expected = naive_entity_scores(kon, step, tokens, mask)
    with torch.no_grad():
        torch.testing.assert_close(kon.entity_scores(step, tokens, mask), expected, atol=ATOL, rtol=ATOL)
    rows = torch.tensor([[0, 1, 6], [2, 3, 4], [5, 5, 0]])
    got = kon.entity_scores(step, tokens[rows], mask[rows])
    torch.testing.assert_close(got, expected.gather(1, rows), atol=ATOL, rtol=ATOL)


def test_initial_step_weights_are_zero() -> None:
    """theta starts at 0: the product is then the plain product of probabilities, the sum their mean."""
    for weights in ("learnable", "constant"):
        kon = KON(ModelConfig(k=K, attention_heads=HEADS, joint_weights=weights), DIM, VOCAB)
        assert torch.equal(kon.step_weights, torch.zeros(K))
    learnable = KON(ModelConfig(k=K, attention_heads=HEADS), DIM, VOCAB).step_weights
    assert isinstance(learnable, torch.nn.Parameter)


def test_sum_of_probabilities_is_a_probability() -> None:
    """Eq. 11 (sum): the weights of an entity's real steps sum to 1, so p^e is in (0, 1] at any theta."""
    kon = randomised_kon()
    step = torch.zeros(1, K, VOCAB)  # every p_k = 1
    tokens = torch.zeros(3, K, dtype=torch.long)
    mask = torch.arange(K)[None] < torch.tensor([1, 2, 4])[:, None]
    with torch.no_grad():
        scores = kon.entity_scores(step, tokens, mask)
    torch.testing.assert_close(scores, torch.zeros(1, 3), atol=ATOL, rtol=0)


def test_gradient_reaches_every_trainable_weight() -> None:
    """A training loss through eq. 3-11 gives every K-ON parameter a nonzero, finite gradient."""
    kon = randomised_kon().train()
    h0, weight = inputs()
    step = kon.step_log_probs(kon(h0, weight))
    tokens = torch.randint(0, VOCAB, (3, 5, K), generator=torch.Generator().manual_seed(4))
    kon.entity_scores(step, tokens, torch.ones(3, 5, K, dtype=torch.bool)).sum().backward()
    for name, p in kon.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_rmsnorm_keeps_a_bfloat16_input_in_bfloat16() -> None:
    """As LlamaRMSNorm: computed in float32, returned in the input's dtype (under DeepSpeed's bf16)."""
    norm = RMSNorm(7).to(torch.bfloat16)
    assert norm(torch.randn(3, 7, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_score_lora_down_init_reaches_its_kaiming_bound() -> None:
    """kaiming_uniform with a=sqrt(5) draws A_k in [-1/sqrt(d), 1/sqrt(d)], as peft's LoRA A: with
    (K x r x d) draws the largest comes within 2% of the bound (another `a` would fall short)."""
    torch.manual_seed(0)
    lora = ScoreLoRA(8, 64, VOCAB, rank=8, alpha=8, dropout=0.0)
    bound = 1 / math.sqrt(64)
    assert 0.98 * bound < lora.down.abs().max() <= bound


def test_causal_mask_is_not_saved() -> None:
    kon = randomised_kon()
    assert "causal" not in kon.state_dict() and kon.causal.shape == (K, K)


def test_all_entity_scoring_refuses_gradients_in_one_line() -> None:
    kon = randomised_kon()
    step = kon.step_log_probs(kon(*inputs())).requires_grad_()
    tokens = torch.zeros(5, K, dtype=torch.long)
    with pytest.raises(RuntimeError) as refused:
        kon.entity_scores(step, tokens, torch.ones(5, K, dtype=torch.bool))
    assert str(refused.value) == "scoring shared candidates is for ranking; train on per-row (B, C, K) candidates"


def test_all_entity_scoring_warns_nothing() -> None:
    """The sparse product's 'beta' warning (torch warns once a process) is silenced where it is made."""
    kon = randomised_kon()
    with torch.no_grad():
        step = kon.step_log_probs(kon(*inputs()))
    tokens = torch.randint(0, VOCAB, (7, K), generator=torch.Generator().manual_seed(0))
    warn_always = torch.is_warn_always_enabled()
    torch.set_warn_always(True)  # not only the first time in this process
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            kon.entity_scores(step, tokens, torch.ones(7, K, dtype=torch.bool))
    finally:
        torch.set_warn_always(warn_always)
