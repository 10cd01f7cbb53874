"""benchmarks/diagnose_tokenizer.py (the README's "Why the tiny tokenizer stalls" figures): its variants are the
tokenizer itself and the controls it claims, and a short run reports a held-out curve beside the baseline."""

from __future__ import annotations

import argparse
import math
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from larp.config import preset
from larp.models import LARPTokenizer

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnose_tokenizer.py"
spec = importlib.util.spec_from_file_location("diagnose_tokenizer", PATH)
diag = importlib.util.module_from_spec(spec)
spec.loader.exec_module(diag)


def _model() -> LARPTokenizer:
    torch.manual_seed(0)
    model = LARPTokenizer(preset("tiny").tokenizer)
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.02)  # the zero-initialised head hides routing
    return model.eval()


def test_the_holistic_variant_is_the_tokenizer_with_the_quantiser_bypassed():
    model = _model()
    x = torch.rand(2, 3, 16, 32, 32)
    with torch.no_grad():
        want = model.decode_codes(F.normalize(model.encode_latents(x), dim=-1))
        assert torch.equal(diag.autoencoder(model, "holistic")(x), want)


def _patch_change(model: LARPTokenizer, decode) -> torch.Tensor:
    """Per patch, how much the decoded video changes when only the last token's code is flipped."""
    codes = F.normalize(torch.randn(1, model.config.num_tokens, model.config.code_dim), dim=-1)
    other = codes.clone()
    other[:, -1] = -other[:, -1]
    gt, gh, gw = model.grid
    c = model.config
    with torch.no_grad():
        change = (decode(codes) - decode(other)).abs()
    return change.reshape(3, gt, c.patch_t, gh, c.patch_hw, gw, c.patch_hw).sum((0, 2, 4, 6)).flatten()


def test_the_patch_aligned_decoder_reads_token_i_at_patch_i():
    """Flipping the last token changes every patch through the holistic decoder (attention over the tokens); with
    the decoder's blocks removed, so that nothing mixes tokens, the patch-aligned decoder changes the last patch
    alone: token i is placed at patch i."""
    model = _model()
    assert (_patch_change(model, diag.parts(model, "holistic")[1]) > 0).all()
    model.decoder.blocks = torch.nn.ModuleList()
    aligned = _patch_change(model, diag.parts(model, "patch-aligned")[1])
    assert aligned[-1] > 0 and (aligned[:-1] == 0).all()


def test_a_short_run_reports_a_held_out_curve_beside_the_baseline():
    args = argparse.Namespace(steps=4, eval_every=2, train_per_class=2, query_init_std=0.02, lr=1e-3,
                              constant_lr=False, batch=None, qk_init_scale=1.0, tokenizer=[], device="cpu", seed=0)
    out = diag.run("patch-aligned", args)
    assert [r["step"] for r in out["curve"]] == [2, 4]
    assert 5 < out["mean_colour_baseline_psnr"] < 40
    assert all(0 < r["held_out_psnr"] < 60 for r in out["curve"])
    entropy = out["curve"][-1]["attention_entropy"]  # no queries in the aligned control: every patch row
    assert 0 < entropy["encoder"] <= entropy["encoder_uniform"] == pytest.approx(math.log(64), abs=0.01)
    assert out["n_held_out"] == 8 * preset("tiny").embedded.test_per_class
