"""The training-time AR prior ("gptc": a minGPT-style continuous GPT) and its loss (docs/model.md#prior).

Tokens ``b n d`` with d = code dim (16). The prior reads the straight-through unit code vectors in query
order, regresses the next unit vector, and is scored by cross-entropy over
cos(prediction, detached codebook) / T. Two rounds with scheduled sampling: round r > 1 replaces a
Bernoulli(ss) subset of its inputs by codes sampled from the previous round's softmax (detached).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from larp.models.layers import xavier_linears_
from larp.models.svq import l2norm


class CausalSelfAttention(nn.Module):
    """Separate query/key/value/proj Linears with bias (the official key names), SDPA with is_causal."""

    def __init__(self, width: int, heads: int, dropout: float, attn_dropout_in_eval: bool) -> None:
        super().__init__()
        self.heads = heads
        self.key = nn.Linear(width, width)
        self.query = nn.Linear(width, width)
        self.value = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)
        self.attn_dropout = dropout
        self.attn_dropout_in_eval = attn_dropout_in_eval  # [quirk] official GPTC drops attention in eval too
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = (
            rearrange(f(x), "b n (h e) -> b h n e", h=self.heads) for f in (self.query, self.key, self.value)
        )
        p = self.attn_dropout if (self.training or self.attn_dropout_in_eval) else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return self.resid_drop(self.proj(rearrange(y, "b h n e -> b n (h e)")))


class PriorBlock(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, attn_dropout_in_eval: bool) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, dropout, attn_dropout_in_eval)
        self.ln2 = nn.LayerNorm(width)
        # Sequential so the keys read mlp.0 / mlp.2 like the official checkpoint
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class GPTCPrior(nn.Module):
    """Causal GPT on continuous d-dim inputs: (b, n, d) -> (b, n, d) predictions of the next vector."""

    def __init__(
        self,
        code_dim: int,
        max_len: int,
        width: int = 384,
        depth: int = 12,
        heads: int = 6,
        dropout: float = 0.1,
        attn_dropout_in_eval: bool = True,
        xavier_init: bool = True,
    ) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"GPTCPrior: width {width} must be divisible by heads {heads}")
        self.max_len = max_len
        self.pos_emb = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        self.input_proj = nn.Linear(code_dim, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [PriorBlock(width, heads, dropout, attn_dropout_in_eval) for _ in range(depth)]
        )
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, code_dim)
        # GPTC's own init is N(0, 0.02) weights and zero biases; [quirk] the official tokenizer then
        # overwrites every Linear with xavier-uniform. xavier_init=False keeps GPTC's own init.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        if xavier_init:
            xavier_linears_(self)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        if n > self.max_len:
            raise ValueError(f"GPTCPrior: sequence of {n} tokens exceeds max_len {self.max_len}")
        h = self.drop(self.input_proj(x) + self.pos_emb[:, :n])
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


# --------------------------------------------------------------------------------------------------
# the prior loss


def scheduled_sampling_ratio(
    step: int, max_steps: int, max_ratio: float = 0.5, peak_ratio: float = 0.3
) -> float:
    """Replacement probability: linear from 0 at step 0 to ``max_ratio`` at ``peak_ratio * max_steps``, then
    flat."""
    if max_steps <= 0:
        raise ValueError(f"scheduled_sampling_ratio: max_steps must be > 0, got {max_steps}")
    if not 0 < peak_ratio <= 1:
        raise ValueError(f"scheduled_sampling_ratio: peak_ratio must be in (0, 1], got {peak_ratio}")
    if step < 0:
        raise ValueError(f"scheduled_sampling_ratio: step must be >= 0, got {step}")
    return min(step / (peak_ratio * max_steps) * max_ratio, max_ratio)


class PriorLossOutput(NamedTuple):
    loss: Tensor  # () CE averaged over positions and rounds (unweighted: multiply by prior.alpha)
    round_losses: Tensor  # (rounds,) CE of each round
    top1: Tensor  # () round-1 next-token top-1 accuracy (no grad)
    top5: Tensor  # () round-1 top-5 accuracy (no grad)
    ss_ratio: float  # the replacement probability used


def prior_logits(prior: GPTCPrior, codes: Tensor, codebook: Tensor, temperature: float = 1.0) -> Tensor:
    """Teacher-forced logits for positions 1..n-1.

    codes (b, n, d) unit vectors, codebook (K, d) unit rows (detached here) -> (b, n-1, K) float32
    = cos(normalised prediction, e_k) / temperature.
    """
    pred = prior(codes[:, :-1])
    with torch.autocast(device_type=codes.device.type, enabled=False):
        return l2norm(pred.float()) @ codebook.detach().float().t() / temperature


def prior_loss(
    prior: GPTCPrior,
    codes: Tensor,
    indices: Tensor,
    codebook: Tensor,
    *,
    ss_ratio: float,
    n_rounds: int = 2,
    ce_temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> PriorLossOutput:
    """Two-round (``n_rounds``) next-code CE with scheduled sampling.

    codes (b, n, d): the straight-through quantised codes (their gradient reaches the encoder);
    indices (b, n) int64: their code indices (labels); codebook (K, d): the normalised codebook (detached
    here, so the prior never moves it). ``generator`` (on the codes' device) drives the mask and the
    sampling.
    """
    if codes.ndim != 3 or indices.shape != codes.shape[:2]:
        raise ValueError(
            f"prior_loss: codes must be (b, n, d) and indices (b, n), got {tuple(codes.shape)} "
            f"and {tuple(indices.shape)}"
        )
    if n_rounds < 1:
        raise ValueError(f"prior_loss: n_rounds must be >= 1, got {n_rounds}")
    b, n, _ = codes.shape
    codebook = codebook.detach().float()
    labels = indices[:, 1:].reshape(-1)
    # one Bernoulli(ss) mask per step, shared by the rounds, broadcast over the code dims
    mask = torch.rand((b, n - 1, 1), device=codes.device, generator=generator) < ss_ratio
    inputs = codes
    losses, first_logits = [], None
    for r in range(n_rounds):
        logits = prior_logits(prior, inputs, codebook, ce_temperature)  # (b, n-1, K) float32
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels))
        if r == 0:
            first_logits = logits
        if r + 1 < n_rounds:
            with torch.no_grad():
                probs = torch.softmax(logits.detach().reshape(-1, logits.shape[-1]), dim=-1)
                sampled = torch.multinomial(probs, 1, generator=generator).reshape(b, n - 1)
            replacement = F.embedding(sampled, codebook).to(codes.dtype)  # detached codebook rows
            inputs = torch.cat([codes[:, :1], torch.where(mask, replacement, codes[:, 1:])], dim=1)
    round_losses = torch.stack(losses)
    with torch.no_grad():
        top5 = first_logits.topk(min(5, first_logits.shape[-1]), dim=-1).indices.reshape(
            -1, min(5, first_logits.shape[-1])
        )
        top1 = (top5[:, 0] == labels).float().mean()
        top5_acc = (top5 == labels[:, None]).any(dim=-1).float().mean()
    return PriorLossOutput(round_losses.mean(), round_losses, top1, top5_acc, float(ss_ratio))
