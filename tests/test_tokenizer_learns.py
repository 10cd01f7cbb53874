"""The tiny tokenizer must be able to learn: it overfits four trivial clips (flat background, one big moving
square) through the training objective (pixel MSE in place of the L1) and the SVQ path, well past their per-clip
mean colour. With the L1 alone it stays at the mean colour (15.9 dB, README: "Why the tiny tokenizer stalls")."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from larp.config import preset
from larp.losses import TokenizerLoss
from larp.models import LARPTokenizer

TINY = preset("tiny")


def square_clips() -> torch.Tensor:
    """(4, 3, 16, 32, 32): distinct flat backgrounds, a 10x10 yellow square moving 1 px a frame."""
    x = torch.zeros(4, 3, 16, 32, 32)
    backgrounds = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.2, 0.2], [0.1, 0.5, 0.2], [0.4, 0.4, 0.1]])
    for i in range(4):
        x[i] = backgrounds[i].view(3, 1, 1, 1)
        for t in range(16):
            x0, y0 = (2 + t if i % 2 == 0 else 20 - t), 4 + 2 * i
            x[i, :, t, y0 : y0 + 10, x0 : x0 + 10] = torch.tensor([1.0, 0.9, 0.2]).view(3, 1, 1)
    return x


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (-10 * (a - b).square().flatten(1).mean(1).log10()).mean().item()


@pytest.mark.slow  # ~15 s on one core
def test_tiny_tokenizer_overfits_trivial_clips_with_the_mse_pixel_loss():
    torch.manual_seed(0)
    x = square_clips()
    prior = replace(TINY.prior, enabled=False)
    model = LARPTokenizer(TINY.tokenizer, prior)
    loss = TokenizerLoss(replace(TINY.loss, l1_weight=0.0, mse_weight=1.0, gan_weight=0.0), prior)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.5, 0.9))
    for step in range(300):
        g = loss.autoencoder_loss(x, model(x, step=step, max_steps=300), None, step=step, epoch=0)
        opt.zero_grad()
        g.total.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        recon = model.decode(model.encode(x)).clamp(0, 1)
    baseline = psnr(x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x), x)
    assert psnr(recon, x) > max(25.0, baseline + 5)  # measured: 26.4 dB vs 16.3 (the L1 alone: 15.9)
