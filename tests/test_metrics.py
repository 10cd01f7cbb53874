"""PSNR (per-video MSE, mean of PSNRs) and SSIM against a direct formula-based reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from larp.eval.metrics import (
    gaussian_window,
    mean_colour_psnr_per_video,
    mse_per_video,
    psnr_per_video,
    ssim_per_frame,
    ssim_per_video,
)


def test_psnr_known_values():
    target = torch.rand(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    pred = target.clone()
    pred[0] += 0.1  # MSE 0.01 -> 20 dB
    pred[1] += 0.01  # MSE 1e-4 -> 40 dB
    np.testing.assert_allclose(mse_per_video(pred, target).numpy(), [1e-2, 1e-4], rtol=1e-5)
    psnr = psnr_per_video(pred, target)
    np.testing.assert_allclose(psnr.numpy(), [20.0, 40.0], rtol=1e-5)
    # LARP averages per-video PSNRs (30 dB), which differs from the PSNR of the mean MSE (~23 dB)
    assert psnr.mean().item() == pytest.approx(30.0, rel=1e-5)
    assert -10 * math.log10((1e-2 + 1e-4) / 2) == pytest.approx(22.97, abs=0.01)
    assert torch.isinf(psnr_per_video(target, target)).all()
    with pytest.raises(ValueError, match="equal shape"):
        psnr_per_video(pred, target[:, :, :2])


def test_mean_colour_psnr_is_the_psnr_of_each_videos_own_channel_means():
    video = torch.zeros(2, 3, 2, 4, 4)
    video[0, 0, :, :, :2] = 1.0  # red channel: half the pixels 1, half 0 -> mean 0.5, MSE over channels 0.25/3
    video[1] = 0.3  # flat: its mean colour is exact
    psnr = mean_colour_psnr_per_video(video)
    assert psnr[0].item() == pytest.approx(-10 * math.log10(0.25 / 3), rel=1e-9)
    assert torch.isinf(psnr[1])


def ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """SSIM of one (c, h, w) frame pair, written straight from the formula with explicit windows."""
    w = gaussian_window().numpy()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for xc, yc in zip(x, y):
        px, py = sliding_window_view(xc, (11, 11)), sliding_window_view(yc, (11, 11))  # (H', W', 11, 11)
        mx, my = (px * w).sum((-1, -2)), (py * w).sum((-1, -2))
        vx = (w * (px - mx[..., None, None]) ** 2).sum((-1, -2))
        vy = (w * (py - my[..., None, None]) ** 2).sum((-1, -2))
        cxy = (w * (px - mx[..., None, None]) * (py - my[..., None, None])).sum((-1, -2))
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        vals.append(s.mean())
    return float(np.mean(vals))


def test_ssim_matches_formula_reference():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(2, 3, 3, 20, 24, generator=g)
    pred = (target + 0.15 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    ours = ssim_per_frame(pred, target)
    assert ours.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            ref = ssim_reference(pred[b, :, t].double().numpy(), target[b, :, t].double().numpy())
            assert ours[b, t].item() == pytest.approx(ref, abs=1e-10)
    assert 0.2 < ours.mean().item() < 0.95
    np.testing.assert_allclose(ssim_per_video(pred, target).numpy(), ours.mean(1).numpy())


def test_ssim_properties():
    x = torch.rand(1, 3, 2, 16, 16, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(ssim_per_video(x, x), torch.ones(1, dtype=torch.float64))
    y = x * 0.5 + 0.2
    assert ssim_per_video(x, y).item() == pytest.approx(ssim_per_video(y, x).item(), abs=1e-12)  # symmetric
    assert ssim_per_video(x, y).item() < 1
    assert window_sum_is_one()
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_per_video(torch.rand(1, 3, 1, 8, 8), torch.rand(1, 3, 1, 8, 8))


def window_sum_is_one() -> bool:
    w = gaussian_window()
    return w.shape == (11, 11) and abs(w.sum().item() - 1) < 1e-12 and w[5, 5] == w.max()
