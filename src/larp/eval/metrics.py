"""Reconstruction metrics on videos (b, c, t, h, w) in [0, 1]: MSE, PSNR, SSIM, one value per video.

* PSNR as LARP's rFVD evaluator: per-video MSE over all pixels, PSNR = -10·log10(MSE / range²); the reported
  number is the mean over videos of the per-video PSNR (not the PSNR of the mean MSE).
* Mean-colour PSNR: the PSNR of each video's own per-channel mean colour, the baseline beside a reconstruction.
* SSIM (Wang et al. 2004): 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03, data range 1, statistics over
  the valid window positions (no padding), population (biased) local variances; averaged over channels and
  pixels per frame, then over frames per video.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.shape != target.shape or pred.ndim != 5:
        raise ValueError(
            f"expected two videos (b, c, t, h, w) of equal shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )


def mse_per_video(pred: Tensor, target: Tensor) -> Tensor:
    """(b,) float64 mean squared error of each video."""
    _check_pair(pred, target)
    return (pred.double() - target.double()).pow(2).flatten(1).mean(dim=1)


def psnr_per_video(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """(b,) float64 PSNR in dB of each video (inf for an exact reconstruction)."""
    return 10 * torch.log10(data_range**2 / mse_per_video(pred, target))


def mean_colour_psnr_per_video(target: Tensor, data_range: float = 1.0) -> Tensor:
    """(b,) float64 PSNR of the trivial reconstruction that paints each video in its own mean colour (per
    channel over all frames and pixels): the floor a reconstruction must clear to show it kept anything
    that moves or has a shape."""
    flat = target.double().mean(dim=(2, 3, 4), keepdim=True).expand_as(target)
    return psnr_per_video(flat, target, data_range)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    """(size, size) float64 normalised Gaussian."""
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_per_frame(
    pred: Tensor, target: Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5
) -> Tensor:
    """(b, t) float64 SSIM of each frame (mean over channels and valid window positions)."""
    _check_pair(pred, target)
    b, c, t, h, w = pred.shape
    if h < window or w < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window}, got {h}x{w}")
    x = rearrange(pred.double(), "b c t h w -> (b t) c h w")
    y = rearrange(target.double(), "b c t h w -> (b t) c h w")
    k = gaussian_window(window, sigma).to(x.device).expand(c, 1, window, window)

    def blur(z: Tensor) -> Tensor:
        return F.conv2d(z, k, groups=c)  # depthwise, valid positions only

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return rearrange(ssim_map.mean(dim=(1, 2, 3)), "(b t) -> b t", b=b)


def ssim_per_video(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """(b,) float64 SSIM of each video: the mean of its per-frame SSIM."""
    return ssim_per_frame(pred, target, data_range).mean(dim=1)
