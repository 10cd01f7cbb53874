"""Tokenizer objective (docs/training.md#tokenizer-objective): L1 + LPIPS-VGG + non-saturating GAN + VQ +
prior, and the discriminator's ns_smooth loss with LeCam.

    L_G = l1 * mean|x - x^| + mse * mean(x - x^)^2 + perceptual * LPIPS(x, x^) + gan * softplus(-D(x^)).mean()
          + vq * (commit_w * commit + codebook_w * codebook) + alpha * L_prior
    L_D = BCE(D(x), y_real) + BCE(D(sg x^), y_fake) + lecam_w(^2) * LeCam

Videos are float (b, c, t, h, w) in [0, 1]. LPIPS runs per frame on the b*t images, in float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from larp.config import LossParams, PriorParams
from larp.models.layers import frozen
from larp.models.tokenizer import TokenizerOutput
from larp.weights import WeightFile, ensure_weights

# --------------------------------------------------------------------------------------------------
# LPIPS (VGG16 backbone + v0.1 linear heads), written from the published architecture

VGG16_WEIGHTS = WeightFile(
    filename="vgg16-397923af.pth",
    url="https://download.pytorch.org/models/vgg16-397923af.pth",
    sha256="397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0",
    description="torchvision ImageNet VGG16 weights (LPIPS backbone)",
)
LPIPS_VGG_HEADS = WeightFile(
    filename="lpips_v0.1_vgg.pth",
    url=(
        "https://raw.githubusercontent.com/richzhang/PerceptualSimilarity/"
        "082bb24f84c091ea94de2867d34c4544f68e0963/lpips/weights/v0.1/vgg.pth"
    ),
    sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    description="LPIPS v0.1 linear heads for VGG16 (PerceptualSimilarity lpips/weights/v0.1/vgg.pth)",
)

# torchvision vgg16 "D" configuration; "M" = 2x2 max-pool. Layer indices match torchvision's `features`.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_LPIPS_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_LPIPS_CHANNELS = (64, 128, 256, 512, 512)


def vgg16_features() -> nn.Sequential:
    """The convolutional part of VGG16 with torchvision's layer indices (so its state-dict keys load)."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers)


class LPIPS(nn.Module):
    """LPIPS-VGG distance of image pairs in [0, 1]: (n, 3, h, w) x 2 -> (n,). Frozen, float32."""

    def __init__(self) -> None:
        super().__init__()
        # ImageNet-style input scaling of LPIPS, applied to inputs mapped to [-1, 1]
        self.register_buffer(
            "shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None], persistent=False
        )
        self.register_buffer(
            "scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None], persistent=False
        )
        self.features = vgg16_features()
        self.heads = nn.ModuleList([nn.Conv2d(c, 1, 1, bias=False) for c in _LPIPS_CHANNELS])
        # before loading: equal non-negative head weights (channel mean): the untrained metric is >= 0
        for head, c in zip(self.heads, _LPIPS_CHANNELS, strict=True):
            nn.init.constant_(head.weight, 1.0 / c)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_pretrained(cls, directory: str | Path | None = None) -> LPIPS:
        """Both weight files from the cache (downloaded and sha256-checked when online; offline the error
        names the file to put where)."""
        model = cls()
        model.load_pretrained(
            ensure_weights(VGG16_WEIGHTS, directory), ensure_weights(LPIPS_VGG_HEADS, directory)
        )
        return model

    def load_pretrained(self, vgg_path: str | Path, heads_path: str | Path) -> None:
        vgg = torch.load(vgg_path, map_location="cpu", weights_only=True)
        self.features.load_state_dict(
            {k[len("features.") :]: v for k, v in vgg.items() if k.startswith("features.")}
        )
        heads = torch.load(heads_path, map_location="cpu", weights_only=True)
        # official keys lin{i}.model.1.weight (model.0 is a Dropout, a no-op for the frozen metric)
        self.heads.load_state_dict(
            {f"{i}.weight": heads[f"lin{i}.model.1.weight"] for i in range(len(self.heads))}
        )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS: inputs must be two (n, 3, h, w) tensors, got {tuple(x.shape)}, {tuple(y.shape)}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            n = x.shape[0]
            h = (torch.cat([x, y]).float() * 2 - 1 - self.shift) / self.scale
            total = torch.zeros(n, device=x.device)
            for (start, stop), head in zip(_LPIPS_SLICES, self.heads, strict=True):
                h = self.features[start:stop](h)
                f = h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)  # unit norm across channels
                total = total + head((f[:n] - f[n:]).pow(2)).mean(dim=(1, 2, 3))
        return total


def video_lpips(lpips: LPIPS, x: Tensor, y: Tensor) -> Tensor:
    """Mean per-frame LPIPS of two videos (b, c, t, h, w) in [0, 1]."""
    return lpips(rearrange(x, "b c t h w -> (b t) c h w"), rearrange(y, "b c t h w -> (b t) c h w")).mean()


# --------------------------------------------------------------------------------------------------
# GAN losses and LeCam


def g_loss_nonsaturating(logits_fake: Tensor) -> Tensor:
    """-mean log sigmoid(D(x^))."""
    return F.softplus(-logits_fake.float()).mean()


def d_loss_ns_smooth(
    logits_real: Tensor, logits_fake: Tensor, *, noise: float = 0.15, generator: torch.Generator | None = None
) -> Tensor:
    """BCE with noisy label smoothing.

    y_real = max(1 - |N(0,1)| noise, 0.7), y_fake = min(|N(0,1)| noise, 0.3); real noise is drawn first.
    """
    real, fake = logits_real.float(), logits_fake.float()
    y_real = (1 - torch.randn(real.shape, device=real.device, generator=generator).abs() * noise).clamp(
        min=0.7
    )
    y_fake = (torch.randn(fake.shape, device=fake.device, generator=generator).abs() * noise).clamp(max=0.3)
    return F.binary_cross_entropy_with_logits(real, y_real) + F.binary_cross_entropy_with_logits(fake, y_fake)


class LeCam(nn.Module):
    """LeCam regulariser with EMA anchors (buffers start at 0 and are updated after use, in training)."""

    def __init__(self, decay: float = 0.999) -> None:
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        real, fake = logits_real.float().mean(), logits_fake.float().mean()
        reg = F.relu(real - self.ema_fake).pow(2) + F.relu(self.ema_real - fake).pow(2)
        if self.training:
            with torch.no_grad():
                self.ema_real.lerp_(real.detach(), 1 - self.decay)
                self.ema_fake.lerp_(fake.detach(), 1 - self.decay)
        return reg


# --------------------------------------------------------------------------------------------------
# composition


class AutoencoderLoss(NamedTuple):
    """The autoencoder phase's objective (the GAN's G step; the AR model is the other "generator")."""

    total: Tensor  # the scalar to back-propagate
    l1: Tensor
    mse: Tensor
    perceptual: Tensor  # 0 when perceptual_weight == 0
    gan: Tensor  # unweighted non-saturating G loss (0 when off)
    vq: Tensor  # commit_w * commit + codebook_w * codebook (unweighted by vq_weight)
    prior: Tensor  # unweighted prior CE (0 when there is no prior)
    gan_active: bool


GeneratorLoss = AutoencoderLoss  # the old name


class DiscriminatorLoss(NamedTuple):
    total: Tensor
    bce: Tensor
    lecam: Tensor  # unweighted regulariser
    logits_real: Tensor  # () mean
    logits_fake: Tensor  # () mean


class TokenizerLoss(nn.Module):
    """The tokenizer's G and D objectives. Holds the frozen LPIPS (if any) and the LeCam EMA state.

    Checkpoint ``loss.lecam.state_dict()`` with the trainer state (the LPIPS weights are fixed files).
    """

    def __init__(self, loss: LossParams, prior: PriorParams, *, lpips: LPIPS | None = None) -> None:
        super().__init__()
        loss.validate()
        prior.validate()
        self.params, self.prior_params = loss, prior
        self.lpips: LPIPS | None = None
        if loss.perceptual_weight > 0:
            self.lpips = lpips if lpips is not None else LPIPS.from_pretrained()
        self.lecam = LeCam(loss.lecam_ema_decay)

    def train(self, mode: bool = True) -> TokenizerLoss:
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()  # always a frozen metric
        return self

    def _clock(self, step: int, epoch: int) -> int:
        return epoch if self.params.gan_start_compares_epoch else step  # [quirk] the epoch by default

    def gan_active(self, *, step: int, epoch: int) -> bool:
        """disc_start threshold; [quirk] compared with the epoch unless ``gan_start_compares_epoch``."""
        p = self.params
        return p.gan_weight > 0 and self._clock(step, epoch) >= p.disc_start

    def update_discriminator_now(self, *, step: int, epoch: int) -> bool:
        """D is updated from ``disc_self_start`` on (a negative value means disc_start, as in the official
        loss; same clock as :meth:`gan_active`), when step % d_update_every == 0, before the G step of the
        same iteration."""
        p = self.params
        start = p.disc_self_start if p.disc_self_start >= 0 else p.disc_start
        return self._clock(step, epoch) >= start and step % p.d_update_every == 0

    def autoencoder_loss(
        self, video: Tensor, out: TokenizerOutput, disc: nn.Module | None, *, step: int, epoch: int
    ) -> AutoencoderLoss:
        """``out`` is the tokenizer's TokenizerOutput. The discriminator's parameters get no gradient."""
        p = self.params
        recon = out.reconstruction
        zero = recon.new_zeros((), dtype=torch.float32)
        error = video.float() - recon.float()
        l1, mse = error.abs().mean(), error.square().mean()
        perceptual = video_lpips(self.lpips, video, recon) if self.lpips is not None else zero
        active = disc is not None and self.gan_active(step=step, epoch=epoch)
        gan = zero
        if active:
            with frozen(disc):
                gan = g_loss_nonsaturating(disc(recon))
        vq = p.commit_weight * out.commit + p.codebook_weight * out.codebook
        prior = out.prior_loss if out.prior_loss is not None else zero
        total = (
            p.l1_weight * l1
            + p.mse_weight * mse
            + p.perceptual_weight * perceptual
            + p.gan_weight * gan
            + p.vq_weight * vq
            + self.prior_params.alpha * prior
        )
        return AutoencoderLoss(total, l1, mse, perceptual, gan, vq, prior, active)

    generator_loss = autoencoder_loss  # the old name

    def discriminator_loss(
        self,
        video: Tensor,
        reconstruction: Tensor,
        disc: nn.Module,
        *,
        generator: torch.Generator | None = None,
    ) -> DiscriminatorLoss:
        """ns_smooth BCE on (real, detached reconstruction) + LeCam. ``generator`` drives the label noise."""
        p = self.params
        # one forward over [real, fake]: under DDP two forwards before one backward would mark every
        # parameter ready twice; the discriminator has no batch-coupled layers, so the logits are the same
        logits_real, logits_fake = disc(torch.cat([video, reconstruction.detach().to(video.dtype)])).chunk(2)
        bce = d_loss_ns_smooth(logits_real, logits_fake, noise=p.label_noise, generator=generator)
        lecam = self.lecam(logits_real, logits_fake)
        # [quirk] the official loss multiplies the regulariser by lecam_weight twice (effective 1e-6)
        w = p.lecam_weight**2 if p.lecam_weight_applied_twice else p.lecam_weight
        total = bce + w * lecam
        return DiscriminatorLoss(
            total, bce, lecam, logits_real.detach().float().mean(), logits_fake.detach().float().mean()
        )
