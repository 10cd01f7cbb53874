"""Tokenizer losses: LPIPS plumbing (random weights, weight-file loading, offline error), GAN losses, LeCam,
and the G/D composition with the quirk switches."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from dataclasses import replace

from larp.config import preset
from larp.losses import (
    LPIPS,
    LPIPS_VGG_HEADS,
    VGG16_WEIGHTS,
    LeCam,
    TokenizerLoss,
    d_loss_ns_smooth,
    g_loss_nonsaturating,
    video_lpips,
)
from larp.models import Discriminator, LARPTokenizer
from larp.weights import WeightsUnavailable

PAPER = preset("paper")

# --------------------------------------------------------------------------------------------------
# LPIPS


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    torch.manual_seed(0)
    return LPIPS()


def test_lpips_metric_properties(lpips):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 32, 32, generator=g), torch.rand(3, 3, 32, 32, generator=g)
    d = lpips(x, y)
    assert d.shape == (3,)
    assert torch.all(d > 0)
    assert torch.allclose(lpips(x, x), torch.zeros(3), atol=1e-6)
    assert torch.allclose(d, lpips(y, x), rtol=1e-5)
    assert torch.all(lpips(x, x * 0.9 + 0.05) < d)  # a small change is closer than an unrelated image
    assert not any(p.requires_grad for p in lpips.parameters())
    xr = x.clone().requires_grad_(True)
    lpips(xr, y).sum().backward()
    assert xr.grad is not None and xr.grad.abs().sum() > 0
    v1, v2 = torch.rand(2, 3, 4, 32, 32, generator=g), torch.rand(2, 3, 4, 32, 32, generator=g)
    per_frame = lpips(
        v1.permute(0, 2, 1, 3, 4).reshape(8, 3, 32, 32), v2.permute(0, 2, 1, 3, 4).reshape(8, 3, 32, 32)
    )
    assert torch.allclose(video_lpips(lpips, v1, v2), per_frame.mean())


def test_lpips_layers_follow_torchvision_vgg16(lpips):
    import torchvision

    with torch.device("meta"):
        tv = torchvision.models.vgg16(weights=None).features
    ours = {k: tuple(v.shape) for k, v in lpips.features.state_dict().items()}
    assert ours == {k: tuple(v.shape) for k, v in tv.state_dict().items()}


def test_lpips_loads_weight_files(tmp_path, lpips):
    g = torch.Generator().manual_seed(1)
    vgg = {f"features.{k}": torch.randn(v.shape, generator=g) for k, v in lpips.features.state_dict().items()}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # the torchvision file also holds the classifier
    heads = {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g)
        for i, c in enumerate((64, 128, 256, 512, 512))
    }
    torch.save(vgg, tmp_path / "vgg.pth")
    torch.save(heads, tmp_path / "heads.pth")
    model = LPIPS()
    model.load_pretrained(tmp_path / "vgg.pth", tmp_path / "heads.pth")
    assert torch.equal(model.features[28].weight, vgg["features.28.weight"])
    assert torch.equal(model.heads[4].weight, heads["lin4.model.1.weight"])


def test_lpips_offline_error_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("LARP_OFFLINE", "1")
    monkeypatch.setenv("LARP_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailable) as err:
        LPIPS.from_pretrained()
    msg = str(err.value)
    assert str(tmp_path / VGG16_WEIGHTS.filename) in msg and VGG16_WEIGHTS.url in msg
    (tmp_path / VGG16_WEIGHTS.filename).write_bytes(b"x")  # present but wrong: a checksum error
    with pytest.raises(
        WeightsUnavailable, match=r"has sha256 [0-9a-f]{64}, expected " + VGG16_WEIGHTS.sha256
    ):
        LPIPS.from_pretrained()


def test_weight_pins_are_full_sha256():
    for w in (VGG16_WEIGHTS, LPIPS_VGG_HEADS):
        assert re.fullmatch(r"[0-9a-f]{64}", w.sha256)
        assert w.url.startswith("https://")
    assert VGG16_WEIGHTS.sha256.startswith("397923af")  # torchvision names files by their hash prefix
    assert re.search(r"/[0-9a-f]{40}/", LPIPS_VGG_HEADS.url)  # a commit, not a moving branch


# --------------------------------------------------------------------------------------------------
# GAN losses and LeCam


def test_nonsaturating_generator_loss():
    assert g_loss_nonsaturating(torch.zeros(4)).item() == pytest.approx(math.log(2))
    logits = torch.tensor([-1.0, 2.0])
    expected = -torch.log(torch.sigmoid(logits)).mean()
    assert g_loss_nonsaturating(logits).item() == pytest.approx(expected.item(), rel=1e-6)


def test_ns_smooth_discriminator_loss():
    real, fake = torch.tensor([1.5, -0.5, 0.2]), torch.tensor([-2.0, 0.3, 1.0])
    plain = F.binary_cross_entropy_with_logits(real, torch.ones(3)) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros(3)
    )
    assert d_loss_ns_smooth(real, fake, noise=0.0).item() == pytest.approx(plain.item(), rel=1e-6)
    # huge noise: the targets hit their clamps, 0.7 (real) and 0.3 (fake)
    clamped = F.binary_cross_entropy_with_logits(
        real, torch.full((3,), 0.7)
    ) + F.binary_cross_entropy_with_logits(fake, torch.full((3,), 0.3))
    assert d_loss_ns_smooth(real, fake, noise=1e6).item() == pytest.approx(clamped.item(), rel=1e-6)
    a = d_loss_ns_smooth(real, fake, generator=torch.Generator().manual_seed(0))
    b = d_loss_ns_smooth(real, fake, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)  # reproducible with an explicit generator
    g = torch.Generator().manual_seed(0)  # real-side noise is drawn first, then fake-side
    y_real = (1 - torch.randn(3, generator=g).abs() * 0.15).clamp(min=0.7)
    y_fake = (torch.randn(3, generator=g).abs() * 0.15).clamp(max=0.3)
    assert torch.all(y_real < 1) and torch.all(y_fake > 0)
    smooth = F.binary_cross_entropy_with_logits(real, y_real) + F.binary_cross_entropy_with_logits(
        fake, y_fake
    )
    assert a.item() == pytest.approx(smooth.item(), rel=1e-6)


def test_lecam_values_and_ema():
    lecam = LeCam(decay=0.9).train()
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([-4.0, 0.0])
    assert lecam(real, fake).item() == pytest.approx(2.0**2 + 2.0**2)  # EMAs start at 0
    assert lecam.ema_real.item() == pytest.approx(0.1 * 2.0)
    assert lecam.ema_fake.item() == pytest.approx(0.1 * -2.0)
    expected = max(2.0 - (-0.2), 0) ** 2 + max(0.2 - (-2.0), 0) ** 2
    assert lecam(real, fake).item() == pytest.approx(expected)
    assert set(lecam.state_dict()) == {"ema_real", "ema_fake"}  # checkpointed with the trainer state
    lecam.eval()
    before = lecam.ema_real.clone()
    lecam(real, fake)
    assert torch.equal(before, lecam.ema_real)


# --------------------------------------------------------------------------------------------------
# composition


@pytest.fixture()
def parts():
    torch.manual_seed(0)
    tok = LARPTokenizer.from_preset("tiny").train()
    torch.nn.init.normal_(tok.final_layer.linear.weight, std=0.02)
    disc = Discriminator.from_preset("tiny")
    x = torch.rand(2, 3, 16, 32, 32, generator=torch.Generator().manual_seed(0))
    return tok, disc, x


def test_autoencoder_loss_composition_and_frozen_discriminator(parts):
    tok, disc, x = parts
    params, prior = replace(PAPER.loss, perceptual_weight=0.0), PAPER.prior
    loss = TokenizerLoss(params, prior)
    assert loss.lpips is None  # no perceptual term -> no weights needed
    out = tok(x, step=1, max_steps=10, generator=torch.Generator().manual_seed(0))
    g = loss.autoencoder_loss(x, out, disc, step=1, epoch=0)
    assert g.gan_active
    expected = (
        (x - out.reconstruction).abs().mean()
        + 0.3 * F.softplus(-disc(out.reconstruction)).mean()
        + 0.1 * (0.25 * out.commit + out.codebook)
        + 0.06 * out.prior_loss
    )
    assert g.total.item() == pytest.approx(expected.item(), rel=1e-5)
    g.total.backward()
    assert all(p.grad is None for p in disc.parameters())  # D is frozen during the G step...
    assert all(p.requires_grad for p in disc.parameters())  # ...and unfrozen afterwards
    assert tok.final_layer.linear.weight.grad.abs().sum() > 0


def test_autoencoder_loss_with_perceptual_term(parts, lpips):
    tok, disc, x = parts
    loss = TokenizerLoss(PAPER.loss, replace(PAPER.prior, alpha=0.0), lpips=lpips)
    out = tok(x, step=0, max_steps=10)
    g = loss.autoencoder_loss(x, out, None, step=0, epoch=0)
    assert g.perceptual.item() > 0 and not g.gan_active
    assert g.total.item() == pytest.approx(
        (g.l1 + g.perceptual + 0.1 * g.vq).item(), rel=1e-5
    )  # alpha = 0: the prior term is dropped
    loss.train()
    assert not loss.lpips.training


def test_discriminator_loss_and_lecam_weight_switch(parts):
    tok, disc, x = parts
    recon = tok(x, step=0, max_steps=10).reconstruction
    results = {}
    for twice in (True, False):
        loss = TokenizerLoss(
            replace(PAPER.loss, perceptual_weight=0.0, lecam_weight_applied_twice=twice, label_noise=0.0),
            PAPER.prior,
        )
        d = loss.discriminator_loss(x, recon, disc)
        w = 0.001**2 if twice else 0.001
        assert d.total.item() == pytest.approx((d.bce + w * d.lecam).item(), rel=1e-6)
        results[twice] = d
    d = results[True]
    mr, mf = d.logits_real.item(), d.logits_fake.item()  # EMAs were 0 at the first call
    assert d.lecam.item() == pytest.approx(max(mr, 0) ** 2 + max(-mf, 0) ** 2, abs=1e-7)
    d.total.backward()
    assert disc.cls_token.grad is not None
    assert all(p.grad is None for p in tok.parameters())  # the reconstruction is detached


def test_gan_start_and_update_schedule():
    quirk = TokenizerLoss(replace(PAPER.loss, perceptual_weight=0.0, disc_start=2), PAPER.prior)
    fixed = TokenizerLoss(
        replace(PAPER.loss, perceptual_weight=0.0, disc_start=2, gan_start_compares_epoch=False), PAPER.prior
    )
    assert not quirk.gan_active(step=10, epoch=0)  # [quirk] the threshold is compared with the epoch
    assert quirk.gan_active(step=10, epoch=2)
    assert fixed.gan_active(step=10, epoch=0) and not fixed.gan_active(step=1, epoch=5)
    # D updates every d_update_every steps, from disc_start on: disc_self_start = -1 means disc_start, as in the
    # official loss (its D trains from epoch disc_start, not from step 0)
    assert [quirk.update_discriminator_now(step=s, epoch=2) for s in range(7)] == [
        True, False, False, False, False, True, False]
    assert not any(quirk.update_discriminator_now(step=s, epoch=1) for s in range(7))
    assert fixed.update_discriminator_now(step=5, epoch=0) and not fixed.update_discriminator_now(step=0, epoch=9)
    own = TokenizerLoss(replace(PAPER.loss, perceptual_weight=0.0, disc_start=2, disc_self_start=1), PAPER.prior)
    assert own.update_discriminator_now(step=0, epoch=1) and not own.update_discriminator_now(step=0, epoch=0)
    assert not own.gan_active(step=0, epoch=1)  # the generator's adversarial term still waits for disc_start


def test_autoencoder_loss_mse_term(parts):
    """loss.mse_weight adds the pixel MSE beside the L1 (0 in the paper preset: the official objective)."""
    tok, _, x = parts
    assert PAPER.loss.mse_weight == 0.0
    params = replace(PAPER.loss, perceptual_weight=0.0, mse_weight=2.0)
    out = tok(x, step=0, max_steps=10)
    g = TokenizerLoss(params, replace(PAPER.prior, alpha=0.0)).autoencoder_loss(x, out, None, step=0, epoch=0)
    mse = (x - out.reconstruction).square().mean()
    assert g.mse.item() == pytest.approx(mse.item(), rel=1e-5)
    assert g.total.item() == pytest.approx((g.l1 + 2.0 * mse + 0.1 * g.vq).item(), rel=1e-5)
