"""The K-ON head, equation by equation, on a tiny Llama built from a config."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kon_ray.config import ModelConfig
from kon_ray.data.prompts import Batch
from kon_ray.model import KON, KONModel

DIM, VOCAB, K = 32, 50, 4


@pytest.fixture
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def make_kon(**changes: object) -> KON:
    torch.manual_seed(1)
    config = dataclasses.replace(ModelConfig(k=K, attention_heads=4), **changes)
    return KON(config, DIM, VOCAB).eval()


def test_zero_init_reproduces_backbone_distribution(llama: LlamaForCausalLM) -> None:
    """Eq. 3 zero init + eq. 5 residual + eq. 6 B_k = 0: every step equals the LLM's next token."""
    ids = torch.randint(0, VOCAB, (3, 7))
    out = llama(input_ids=ids, output_hidden_states=True)
    h0 = out.hidden_states[-1][:, -1]
    expected = torch.log_softmax(out.logits[:, -1], dim=-1)
    for conditional_attention in (True, False):
        kon = make_kon(conditional_attention=conditional_attention)
        steps = kon.step_log_probs(kon(h0, llama.lm_head.weight))
        assert steps.shape == (3, K, VOCAB)
        for k in range(K):
            torch.testing.assert_close(steps[:, k], expected, atol=1e-5, rtol=1e-5)


def test_default_init_does_not_reproduce_backbone(llama: LlamaForCausalLM) -> None:
    """The published code's default init: the check above would fail (so it can fail)."""
    ids = torch.randint(0, VOCAB, (2, 5))
    out = llama(input_ids=ids, output_hidden_states=True)
    kon = make_kon(head_init="default")
    steps = kon.step_log_probs(kon(out.hidden_states[-1][:, -1], llama.lm_head.weight))
    assert not torch.allclose(steps[:, 0], torch.log_softmax(out.logits[:, -1], dim=-1), atol=1e-3)


def test_conditional_attention_is_causal() -> None:
    """Eq. 4: step k's output does not change when a later step's head output changes."""
    kon = make_kon(head_init="default")
    h0 = torch.randn(2, DIM)
    weight = torch.randn(VOCAB, DIM, generator=torch.Generator().manual_seed(0))
    base = kon(h0, weight)
    with torch.no_grad():
        kon.head_mlps[2].linear.weight.add_(torch.randn(DIM, DIM))  # perturb step 2's input only
    changed = kon(h0, weight)
    torch.testing.assert_close(changed[:, :2], base[:, :2])
    assert not torch.allclose(changed[:, 2:], base[:, 2:])


def test_shared_variants_have_one_module() -> None:
    shared = make_kon(shared_head_mlp=True, shared_score_layer=True)
    separate = make_kon()
    assert len(shared.head_mlps) == 1 and len(separate.head_mlps) == K
    assert shared.score.up.shape[0] == 1 and separate.score.up.shape[0] == K
    out = shared(torch.randn(2, DIM), torch.randn(VOCAB, DIM))
    assert out.shape == (2, K, VOCAB)


def test_score_lora_starts_as_the_output_head() -> None:
    """Eq. 6: B_k = 0 at init, so W_k^S = W^S."""
    kon = make_kon()
    assert torch.count_nonzero(kon.score.up) == 0
    h = torch.randn(2, K, DIM)
    weight = torch.randn(VOCAB, DIM)
    torch.testing.assert_close(kon.score(h, weight), h @ weight.t())


def naive_entity_score(step: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, theta: torch.Tensor, joint: str):
    """Eq. 10-11 written out with loops, in probability space."""
    scores = torch.empty(step.shape[0], tokens.shape[0])
    for b in range(step.shape[0]):
        for e in range(tokens.shape[0]):
            real = [k for k in range(tokens.shape[1]) if mask[e, k]]
            p = [step[b, k, tokens[e, k]].exp() for k in real]
            if joint == "sum":
                alpha = torch.softmax(theta[real], 0)
                scores[b, e] = torch.log(sum(a * pk for a, pk in zip(alpha, p)))
            else:
                scores[b, e] = sum(theta[k].exp() * torch.log(pk) for k, pk in zip(real, p))
    return scores


@pytest.mark.parametrize("joint", ["sum", "product"])
def test_gathering_matches_naive_reference(joint: str) -> None:
    """Eq. 8-11 vectorised (all entities, and per-row candidates) against loops; padding masked."""
    kon = make_kon(joint=joint)
    with torch.no_grad():
        kon.step_weights.copy_(torch.tensor([0.3, -0.2, 0.5, 0.0]))
    step = torch.log_softmax(torch.randn(3, K, VOCAB), dim=-1)
    tokens = torch.randint(0, VOCAB, (6, K))
    lengths = torch.tensor([1, 2, 4, 3, 4, 1])
    mask = torch.arange(K)[None] < lengths[:, None]
    tokens[~mask] = 0  # padding id, never gathered
    expected = naive_entity_score(step, tokens, mask, kon.step_weights.detach(), joint)
    torch.testing.assert_close(kon.entity_scores(step, tokens, mask), expected, atol=1e-5, rtol=1e-5)
    per_row = torch.tensor([[0, 2, 5], [1, 1, 3], [4, 0, 2]])
    got = kon.entity_scores(step, tokens[per_row], mask[per_row])
    torch.testing.assert_close(got, expected.gather(1, per_row), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("joint", "space"), [("sum", "probability"), ("product", "probability"), ("sum", "logit")])
@pytest.mark.parametrize("spread", [1.0, 300.0])
def test_all_entity_scoring_matches_per_row_gathering(joint: str, space: str, spread: float) -> None:
    """The sparse product that scores all entities equals eq. 10-11 gathered per row, also when
    step distributions are so peaked that exp underflows (spread 300: rescored exactly)."""
    kon = make_kon(joint=joint, score_space=space)
    with torch.no_grad():
        kon.step_weights.copy_(torch.tensor([0.3, -0.2, 0.5, 0.0]))
    step = torch.log_softmax(torch.randn(5, K, VOCAB) * spread, dim=-1)
    tokens = torch.randint(0, VOCAB, (40, K))
    mask = torch.arange(K)[None] < torch.randint(1, K + 1, (40, 1))
    with torch.no_grad():
        shared = kon.entity_scores(step, tokens, mask)
    per_row = kon.entity_scores(step, tokens.expand(5, -1, -1), mask.expand(5, -1, -1))
    assert torch.isfinite(shared).all()
    torch.testing.assert_close(shared, per_row, atol=1e-5, rtol=1e-6)


def test_all_entity_scoring_refuses_gradients() -> None:
    step = torch.log_softmax(torch.randn(2, K, VOCAB, requires_grad=True), dim=-1)
    with pytest.raises(RuntimeError, match="for ranking"):
        make_kon().entity_scores(step, torch.zeros(3, K, dtype=torch.long), torch.ones(3, K, dtype=torch.bool))


def test_padding_does_not_change_scores() -> None:
    """A padded step's token id must not matter."""
    kon = make_kon()
    step = torch.log_softmax(torch.randn(2, K, VOCAB), dim=-1)
    tokens = torch.tensor([[5, 6, 0, 0]])
    mask = torch.tensor([[True, True, False, False]])
    other = torch.tensor([[5, 6, 17, 33]])
    torch.testing.assert_close(kon.entity_scores(step, tokens, mask), kon.entity_scores(step, other, mask))


def test_learnable_step_weights_are_updated_by_the_optimiser() -> None:
    kon = make_kon()
    assert any(p is kon.step_weights for p in kon.parameters())
    optimizer = torch.optim.AdamW(kon.parameters(), lr=0.1)
    step = torch.log_softmax(torch.randn(2, K, VOCAB), dim=-1)
    tokens = torch.randint(0, VOCAB, (5, K))
    before = kon.step_weights.detach().clone()
    mask = torch.ones(2, 5, K, dtype=torch.bool)
    kon.entity_scores(step, tokens.expand(2, -1, -1), mask)[:, 0].sum().backward()
    optimizer.step()
    assert not torch.allclose(before, kon.step_weights.detach())


def test_constant_step_weights_are_not_parameters() -> None:
    kon = make_kon(joint_weights="constant")
    assert all(p is not kon.step_weights for p in kon.parameters())


def _right_padded(prompts: list[list[int]]) -> Batch:
    width = max(map(len, prompts))
    ids = torch.tensor([p + [0] * (width - len(p)) for p in prompts])
    mask = torch.tensor([[1] * len(p) + [0] * (width - len(p)) for p in prompts])
    return Batch(ids, mask, torch.tensor([len(p) - 1 for p in prompts]))


def test_kon_model_reads_h0_at_each_prompts_last_token(llama: LlamaForCausalLM) -> None:
    """Eq. 1-2 through ``KONModel``: h_0^m is the backbone's last hidden state at each right-padded
    prompt's own last token, the heads read the backbone's output head (W^S), and ``scores_all``
    scores shared candidates as ``forward`` does."""
    kon = randomised(make_kon())
    model = KONModel(llama, kon).eval()
    prompts = [[5, 9, 2, 7], [3, 1, 4, 1, 5, 9], [8, 6]]
    batch = _right_padded(prompts)
    tokens = torch.randint(0, VOCAB, (2, 6, K), generator=torch.Generator().manual_seed(0))
    candidates = tokens.reshape(-1, K)[:12].reshape(3, 4, K)  # per row: 4 candidates
    mask = torch.ones_like(candidates, dtype=torch.bool)
    with torch.no_grad():
        h, logits, scores = model(batch, candidates, mask)
        h0 = torch.stack([llama.model(input_ids=torch.tensor([p])).last_hidden_state[0, -1] for p in prompts])
        expected = kon(h0, llama.lm_head.weight)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(scores, kon.entity_scores(kon.step_log_probs(expected), candidates, mask))
        for row, prompt in enumerate(prompts):
            torch.testing.assert_close(h[row, len(prompt) - 1], h0[row], atol=1e-5, rtol=1e-5)
        shared = candidates[0]
        every = model.scores_all(batch, shared, torch.ones_like(shared, dtype=torch.bool))
        torch.testing.assert_close(every, model(batch, shared, torch.ones_like(shared, dtype=torch.bool))[2])
        assert every.shape == (len(prompts), len(shared))


def randomised(kon: KON) -> KON:
    """Every K-ON weight random (zero-initialised ones too), so that eq. 3-7 are all visible."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in kon.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return kon


def test_kon_model_saves_no_frozen_weight_under_any_name() -> None:
    """A tied output head is the input embedding under a second name: frozen, it is saved under neither."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=DIM, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True)  # fmt: skip
    backbone = LlamaForCausalLM(config)
    backbone.requires_grad_(False)
    backbone.model.norm.weight.requires_grad_(True)  # one backbone weight left trainable
    model = KONModel(backbone, make_kon())
    saved = set(model.state_dict())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert saved == trainable and "backbone.model.norm.weight" in saved
    assert not {"backbone.lm_head.weight", "backbone.model.embed_tokens.weight"} & saved


@pytest.mark.parametrize(
    "device",
    ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device (autocast's default there is float16)")])],
)  # fmt: skip
def test_kon_model_autocasts_training_only_and_only_when_asked(llama: LlamaForCausalLM, device: str) -> None:
    """Mixed precision: the backbone's matmuls run in bfloat16 when ``autocast`` and gradients are
    on, in float32 otherwise (ranking under no_grad, or ``autocast`` off, the default)."""
    seen: list[torch.dtype] = []
    llama.to(device).model.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    batch = _right_padded([[5, 9, 2], [3, 1]]).to(device)
    tokens = torch.zeros(2, 1, K, dtype=torch.long, device=device)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    for autocast, grad in ((False, True), (True, True), (True, False)):
        kon = make_kon().to(device)
        model = KONModel(llama, kon, autocast) if autocast else KONModel(llama, kon)
        with torch.set_grad_enabled(grad):
            model(batch, tokens, mask)
    assert seen == [torch.float32, torch.bfloat16, torch.float32]
