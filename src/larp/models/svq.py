"""Stochastic vector quantisation (SVQ) against an l2-normalised codebook (docs/model.md#svq).

Tokens ``b n d``. All math runs in float32 with autocast off, whatever the surrounding precision.
Training: k ~ Categorical(softmax(cos(z, e_k) / tau)); evaluation: k = argmax cos(z, e_k).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SVQOutput(NamedTuple):
    quantized_st: Tensor  # (b, n, d) float32: value = e_k (unit norm), gradient -> z (straight-through)
    indices: Tensor  # (b, n) int64
    loss: Tensor  # () commit_weight * commit + codebook_weight * codebook
    commit: Tensor  # () mean((sg[q] - z)^2)
    codebook: Tensor  # () mean((q - sg[z])^2)
    perplexity: Tensor  # () exp(entropy) of the code histogram of this batch (no grad)
    usage: Tensor  # () fraction of the codebook used in this batch (no grad)


def l2norm(x: Tensor, eps: float = 1e-12) -> Tensor:
    return F.normalize(x, dim=-1, eps=eps)


class SVQ(nn.Module):
    """Codebook (K, d) used row-normalised; the gradient flows through the normalisation into the raw rows."""

    def __init__(
        self,
        codebook_size: int,
        code_dim: int,
        temperature: float = 0.03,
        commit_weight: float = 0.25,
        codebook_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"SVQ: temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.commit_weight = commit_weight
        self.codebook_weight = codebook_weight
        self.embedding = nn.Embedding(codebook_size, code_dim)
        nn.init.kaiming_uniform_(self.embedding.weight)  # a=0: U(+-sqrt(6/d))

    @property
    def codebook_size(self) -> int:
        return self.embedding.num_embeddings

    def normalized_codebook(self) -> Tensor:
        """(K, d) float32 unit rows (differentiable w.r.t. the raw codebook)."""
        return l2norm(self.embedding.weight.float())

    def lookup(self, indices: Tensor) -> Tensor:
        """(b, n) int64 -> (b, n, d) float32 unit code vectors."""
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"SVQ.lookup: indices must be an integer tensor, got {indices.dtype}")
        k = self.codebook_size
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= k):
            raise ValueError(
                f"SVQ.lookup: indices must be in [0, {k}), got range "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )
        return F.embedding(indices.long(), self.normalized_codebook())

    def forward(
        self, z: Tensor, *, stochastic: bool | None = None, generator: torch.Generator | None = None
    ) -> SVQOutput:
        """z (b, n, d) un-normalised bottleneck vectors.

        ``stochastic`` None means ``self.training``: sample in training, argmax in eval. ``generator`` (on z's
        device) makes the sampling reproducible.
        """
        stochastic = self.training if stochastic is None else stochastic
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = l2norm(z.float())
            codebook = self.normalized_codebook()  # (K, d)
            cos = z @ codebook.detach().t()  # (b, n, K); no gradient through the choice
            if stochastic:
                probs = torch.softmax(cos / self.temperature, dim=-1)
                flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
                indices = flat.reshape(cos.shape[:-1])
            else:
                indices = cos.argmax(dim=-1)
            q = F.embedding(indices, codebook)  # (b, n, d), gradient -> raw codebook rows
            commit = F.mse_loss(z, q.detach())
            codebook_loss = F.mse_loss(q, z.detach())
            loss = self.commit_weight * commit + self.codebook_weight * codebook_loss
            quantized_st = z + (q - z).detach()
        perplexity, usage = code_stats(indices, self.codebook_size)
        return SVQOutput(quantized_st, indices, loss, commit, codebook_loss, perplexity, usage)


@torch.no_grad()
def code_stats(indices: Tensor, codebook_size: int) -> tuple[Tensor, Tensor]:
    """Perplexity exp(H(p)) of the code histogram and the fraction of codes used."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return entropy.exp(), (counts > 0).float().mean()
