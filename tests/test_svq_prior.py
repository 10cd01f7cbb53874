"""SVQ (sampling vs argmax, hand-computed losses, straight-through) and the AR prior (loss, scheduled
sampling, gradient paths, quirk switches)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from larp.config import preset
from larp.models import SVQ, GPTCPrior, LARPTokenizer, prior_loss, scheduled_sampling_ratio
from larp.models.prior import prior_logits

TINY_PRIOR = preset("tiny").prior


def hand_svq(temperature: float = 0.03) -> SVQ:
    """4 codes in 2-D at different norms (the codebook is used normalised): +x, +y, -x, -y."""
    q = SVQ(4, 2, temperature=temperature)
    with torch.no_grad():
        q.embedding.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5], [-2.0, 0.0], [0.0, -1.0]]))
    return q


# --------------------------------------------------------------------------------------------------
# SVQ


def test_svq_argmax_and_losses_by_hand():
    q = hand_svq().eval()
    z = torch.tensor([[[2.0, 0.5], [-0.1, -4.0], [0.0, 0.2]]])  # nearest by cosine: +x, -y, +y
    out = q(z)
    assert out.indices.tolist() == [[0, 3, 1]]
    zn = z / z.norm(dim=-1, keepdim=True)
    e = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    expected = ((zn[0] - e) ** 2).mean()
    assert out.commit.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.codebook.item() == pytest.approx(expected.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(1.25 * expected.item(), rel=1e-6)
    assert torch.allclose(out.quantized_st[0], e)
    assert out.usage.item() == pytest.approx(3 / 4)
    assert out.perplexity.item() == pytest.approx(3.0, rel=1e-5)


def test_svq_sampling_follows_softmax_of_cosines():
    tau = 0.5
    q = hand_svq(tau).train()
    z = torch.tensor([[0.8, 0.6]]).expand(20000, -1)[None]  # cos = (0.8, 0.6, -0.8, -0.6)
    out = q(z, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out.indices.flatten(), minlength=4).float() / 20000
    p = torch.softmax(torch.tensor([0.8, 0.6, -0.8, -0.6]) / tau, dim=0)
    assert torch.allclose(freq, p, atol=0.015), (freq, p)
    again = q(z, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.indices, again.indices)  # reproducible with an explicit generator
    # eval mode (or stochastic=False) takes the argmax, training mode samples
    assert torch.all(q.eval()(z).indices == 0)
    assert torch.all(q.train()(z, stochastic=False).indices == 0)


def test_svq_small_temperature_sampling_equals_argmax():
    torch.manual_seed(0)
    q = SVQ(64, 8, temperature=1e-4).train()
    z = torch.randn(2, 50, 8)
    sampled = q(z, generator=torch.Generator().manual_seed(3)).indices
    assert torch.equal(sampled, q(z, stochastic=False).indices)


def test_svq_straight_through_gradients():
    q = hand_svq().train()
    z = torch.tensor([[[2.0, 0.5], [0.3, -4.0]]], requires_grad=True)
    w = torch.tensor([[[1.0, -2.0], [0.5, 3.0]]])
    out = q(z, stochastic=False)
    (out.quantized_st * w).sum().backward()
    # d/dz of sum(w * normalize(z)): straight-through passes w through the l2 normalisation unchanged
    z2 = z.detach().clone().requires_grad_(True)
    (w * torch.nn.functional.normalize(z2, dim=-1)).sum().backward()
    assert torch.allclose(z.grad, z2.grad)
    assert q.embedding.weight.grad is None  # the ST output carries no gradient to the codebook
    out = q(z, stochastic=False)
    out.codebook.backward()  # the codebook loss does move the (used) codebook rows
    g = q.embedding.weight.grad
    assert g[0].abs().sum() > 0 and g[3].abs().sum() > 0 and g[1].abs().sum() == 0


def test_svq_rejects_bad_temperature():
    with pytest.raises(ValueError, match="temperature"):
        SVQ(8, 4, temperature=0.0)


# --------------------------------------------------------------------------------------------------
# scheduled sampling


def test_scheduled_sampling_ratio_schedule():
    assert scheduled_sampling_ratio(0, 1000) == 0.0
    assert scheduled_sampling_ratio(150, 1000) == pytest.approx(0.25)
    assert scheduled_sampling_ratio(300, 1000) == pytest.approx(0.5)
    assert scheduled_sampling_ratio(999, 1000) == pytest.approx(0.5)
    assert scheduled_sampling_ratio(100, 1000, max_ratio=0.2, peak_ratio=0.5) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="max_steps"):
        scheduled_sampling_ratio(1, 0)
    with pytest.raises(ValueError, match="step"):
        scheduled_sampling_ratio(-1, 10)


# --------------------------------------------------------------------------------------------------
# prior


def unit_codes(codebook: torch.Tensor, b: int, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, codebook.shape[0], (b, n), generator=torch.Generator().manual_seed(seed))
    return codebook[idx], idx


def test_prior_loss_rounds_and_lower_bound():
    torch.manual_seed(0)
    k, d = 32, 8
    prior = GPTCPrior(d, max_len=16, width=32, depth=2, heads=4, dropout=0.0, attn_dropout_in_eval=False)
    codebook = torch.nn.functional.normalize(torch.randn(k, d), dim=-1)
    codes, idx = unit_codes(codebook, 3, 16)
    # ss = 0: both rounds see the same inputs -> identical CE (no dropout)
    out = prior_loss(prior, codes, idx, codebook, ss_ratio=0.0, generator=torch.Generator().manual_seed(0))
    assert out.round_losses.shape == (2,)
    assert torch.allclose(out.round_losses[0], out.round_losses[1])
    logits = prior_logits(prior, codes, codebook)
    assert logits.shape == (3, 15, k)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, k), idx[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, ce)
    # cosine logits with T = 1 bound the CE from below by log(1 + (K - 1) e^-2)
    assert out.loss.item() >= math.log(1 + (k - 1) * math.exp(-2)) - 1e-5
    # ss = 1: round 2 sees the sampled codes everywhere but position 0 -> a different CE
    out1 = prior_loss(prior, codes, idx, codebook, ss_ratio=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out1.round_losses[0], out.round_losses[0])
    assert not torch.allclose(out1.round_losses[1], out1.round_losses[0])
    assert out1.loss.item() == pytest.approx(out1.round_losses.mean().item())
    assert 0 <= out.top1.item() <= out.top5.item() <= 1


def test_prior_gradient_reaches_encoder_not_codebook():
    torch.manual_seed(0)
    tok = LARPTokenizer.from_preset("tiny").train()
    x = torch.rand(2, 3, 16, 32, 32)
    out = tok(x, step=50, max_steps=100, generator=torch.Generator().manual_seed(0))
    out.prior_loss.backward()
    for name in (
        "encoder_latent_query_embed",
        "x_embedder.proj.weight",
        "bottleneck.in_linear.weight",
        "encoder.blocks.0.attn.qkv.weight",
        "prior_model.head.weight",
        "prior_model.pos_emb",
    ):
        grad = tok.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    cb = tok.bottleneck.regularizer.embedding.weight.grad
    assert cb is None or torch.count_nonzero(cb) == 0
    for name, p in tok.decoder.named_parameters():
        assert p.grad is None, name


def test_attention_dropout_in_eval_quirk_switch():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 8)
    quirky = GPTCPrior(8, 16, width=32, depth=2, heads=4, dropout=0.5, attn_dropout_in_eval=True).eval()
    assert not torch.allclose(quirky(x), quirky(x))  # official behaviour: attention dropout stays on
    fixed = GPTCPrior(8, 16, width=32, depth=2, heads=4, dropout=0.5, attn_dropout_in_eval=False).eval()
    assert torch.equal(fixed(x), fixed(x))


def test_prior_is_causal():
    torch.manual_seed(0)
    prior = GPTCPrior(8, 16, width=32, depth=2, heads=4, dropout=0.0, attn_dropout_in_eval=False).eval()
    x = torch.randn(1, 10, 8)
    y = x.clone()
    y[:, 6:] = torch.randn(1, 4, 8)
    assert torch.allclose(prior(x)[:, :6], prior(y)[:, :6], atol=1e-6)
    assert not torch.allclose(prior(x)[:, 6:], prior(y)[:, 6:])
    with pytest.raises(ValueError, match="max_len"):
        prior(torch.randn(1, 17, 8))


def test_prior_init_quirk_switch():
    torch.manual_seed(0)
    width = 256
    xavier = GPTCPrior(16, 8, width=width, depth=1, heads=4, xavier_init=True)
    normal = GPTCPrior(16, 8, width=width, depth=1, heads=4, xavier_init=False)
    w_x, w_n = xavier.blocks[0].attn.key.weight, normal.blocks[0].attn.key.weight
    assert w_x.std().item() == pytest.approx(math.sqrt(2 / (2 * width)), rel=0.05)  # xavier-uniform
    assert w_n.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(xavier.blocks[0].attn.key.bias == 0) and torch.all(normal.blocks[0].attn.key.bias == 0)
    assert xavier.pos_emb.std().item() == pytest.approx(0.02, rel=0.1)


def test_tokenizer_prior_uses_config_switches():
    tok = LARPTokenizer.from_preset("tiny", prior=replace(TINY_PRIOR, attn_dropout_in_eval=False, dropout=0.0))
    attn = tok.prior.blocks[0].attn
    assert attn.attn_dropout == 0.0 and attn.attn_dropout_in_eval is False


def test_prior_position_table_has_the_official_1024_rows_whatever_the_token_count():
    torch.manual_seed(0)
    tok = LARPTokenizer.from_preset("tiny").train()  # 64 tokens
    assert tok.config.num_tokens == 64 and tok.prior.pos_emb.shape == (1, 1024, TINY_PRIOR.width)
    out = tok(torch.rand(2, 3, 16, 32, 32), step=5, max_steps=10, generator=torch.Generator().manual_seed(0))
    out.prior_loss.backward()
    grad = tok.prior.pos_emb.grad[0]
    assert grad[:63].abs().sum(-1).gt(0).all()  # the prior reads tokens 0..62 (it predicts 1..63)
    assert torch.count_nonzero(grad[63:]) == 0  # the extra rows are never used
    assert LARPTokenizer.from_preset("tiny", prior=replace(TINY_PRIOR, max_len=64)).prior.pos_emb.shape[1] == 64
    with pytest.raises(ValueError, match=r"prior\.max_len: must be >= tokenizer\.num_tokens \(64\)"):
        LARPTokenizer.from_preset("tiny", prior=replace(TINY_PRIOR, max_len=63))
