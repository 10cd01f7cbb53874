"""Where the tiny tokenizer's learning stalls: the holistic model against controls without learned routing.

Usage: python benchmarks/diagnose_tokenizer.py [--variants holistic patch-aligned patch-encoder holistic-encoder]
       [--steps 2000] [--eval-every 500] [--train-per-class 6] [--query-init-std 0.02] [--lr 1e-3]
       [--constant-lr] [--batch 8] [--qk-init-scale 1.0] [--tokenizer KEY=VALUE ...] [--threads 1] [--device cpu]
       [--seed 0] [--out results.json]

The quantiser is bypassed (the decoder gets the l2-normalised continuous bottleneck, as SVQ's straight-through
value would be without the codebook) and the loss is pixel MSE, so that only the autoencoder learns. Data: the
embedded dataset of the ``tiny`` preset (``--train-per-class`` overrides its training videos per class),
rendered in memory, centre-cropped and resized to the tokenizer's clip size; training clips every 4 frames of
the training videos (random horizontal flips), held-out clips the first ``tokenizer.frames`` frames of each test
video. Adam with the preset's betas, batch ``train_tokenizer.micro_batch`` (or ``--batch``), cosine to 1 %
(or constant).

Variants, all built from the same ``LARPTokenizer`` modules and weights initialisation:

* ``holistic``: the tokenizer itself: learned queries read the patches, patch queries read the latent tokens.
* ``patch-aligned``: the control without learned routing. Token *i* is the encoder's output at patch *i*
  (the queries are dropped) and the decoder gets token *i* at patch *i* (added to the patch query).
* ``patch-encoder``: the patch-aligned encoder with the holistic decoder (the decoder must route).
* ``holistic-encoder``: the holistic encoder with the patch-aligned decoder (the encoder must route); needs
  ``tokenizer.num_tokens`` equal to the number of patches, as the preset has.

Printed and written: held-out PSNR (and the PSNR of the batch just trained on) every ``--eval-every`` steps,
beside the per-clip mean-colour baseline of the same held-out clips, and how close to uniform the attention is:
the mean entropy (nats) of the attention rows of the positions each transformer keeps (the queries of a holistic
side, every patch of an aligned one) in its first block, against log(sequence length), the uniform attention's.
``--qk-init-scale`` multiplies the query and key weights of every block at initialisation (sharper attention
from the start: a check, not a setting of the tokenizer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from einops import rearrange

from larp.config import preset
from larp.data import embedded as E
from larp.eval.metrics import mean_colour_psnr_per_video, psnr_per_video
from larp.models import LARPTokenizer

VARIANTS = ("holistic", "patch-aligned", "patch-encoder", "holistic-encoder")


def clips(params, size: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training clips, held-out clips), float (n, c, t, size, size) in [0, 1]."""
    per_group, n_groups, test_groups = E.groups_layout(params.train_per_class, params.test_per_class)
    train, test = [], []
    for name in E.class_names(params.num_classes):
        for group in range(1, n_groups + 1):
            for clip in range(1, per_group + 1):
                x = torch.from_numpy(E.render(params, name, group, clip)).float().div(255).permute(3, 0, 1, 2)
                s = min(x.shape[2:])
                top, left = (x.shape[2] - s) // 2, (x.shape[3] - s) // 2
                x = x[:, :, top:top + s, left:left + s]
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                x = x.clamp(0, 1)
                if group in test_groups[0]:
                    test.append(x[:, :frames])
                else:
                    train += [x[:, t:t + frames] for t in range(0, x.shape[1] - frames + 1, 4)]
    return torch.stack(train), torch.stack(test)


def parts(model: LARPTokenizer, variant: str):
    """(encode, decode) of ``variant`` (module docstring): video -> bottleneck vectors, unit codes -> video."""

    def encode_patches(video):  # the encoder over the patches alone, one token per patch
        x = model.x_embedder(video) + model.encoder_patch_pe
        return model.bottleneck.in_linear(model.encoder(x))

    def decode_patches(codes):  # token i added to patch query i, the decoder over the patches alone
        x = model.bottleneck.out_linear(codes) + model.decoder_patch_query_embed
        return model.unpatchify(model.final_layer(model.decoder(x + model.decoder_patch_query_token_type_embed)))

    encode = encode_patches if variant in ("patch-aligned", "patch-encoder") else model.encode_latents
    decode = decode_patches if variant in ("patch-aligned", "holistic-encoder") else model.decode_codes
    return encode, decode


def autoencoder(model: LARPTokenizer, variant: str):
    """video -> reconstruction, the bottleneck l2-normalised and no quantiser."""
    encode, decode = parts(model, variant)
    return lambda video: decode(F.normalize(encode(video), dim=-1))


def attention_entropy(model: LARPTokenizer, video: torch.Tensor, variant: str) -> dict:
    """Mean entropy of the kept rows' attention in the first block of the encoder and of the decoder."""
    rows: dict[str, torch.Tensor] = {}

    def hook(name, kept):
        def fn(attn, inputs, _):
            q, k, _v = rearrange(attn.qkv(inputs[0]), "b n (three h e) -> three b h n e", three=3, h=attn.heads)
            a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)[:, :, -kept:]
            rows[name] = -(a * a.clamp_min(1e-12).log()).sum(-1).mean()
            rows[name + "_uniform"] = torch.tensor(math.log(a.shape[-1]))
        return fn

    c = model.config
    handles = [model.encoder.blocks[0].attn.register_forward_hook(hook("encoder", c.num_tokens if variant in (
        "holistic", "holistic-encoder") else c.num_patches)),
               model.decoder.blocks[0].attn.register_forward_hook(hook("decoder", c.num_patches))]
    try:
        with torch.no_grad():
            autoencoder(model, variant)(video)
    finally:
        for h in handles:
            h.remove()
    return {k: round(v.item(), 2) for k, v in rows.items()}


def run(variant: str, args) -> dict:
    p = preset("tiny")
    fields = {f.name: f.type for f in dataclasses.fields(p.tokenizer)}
    overrides = {}
    for item in args.tokenizer:
        key, _, value = item.partition("=")
        if key not in fields:
            raise SystemExit(f"--tokenizer {item}: no tokenizer field {key!r}")
        overrides[key] = type(getattr(p.tokenizer, key))(value)
    tok = dataclasses.replace(p.tokenizer, query_init_std=args.query_init_std, **overrides)
    tok.validate()
    emb = dataclasses.replace(p.embedded, train_per_class=args.train_per_class)
    if variant == "holistic-encoder" and tok.num_tokens != tok.num_patches:
        raise SystemExit(f"holistic-encoder: needs tokenizer.num_tokens == patches ({tok.num_patches})")
    train, test = (x.to(args.device) for x in clips(emb, tok.size, tok.frames))
    baseline = mean_colour_psnr_per_video(test).mean().item()
    torch.manual_seed(args.seed)
    model = LARPTokenizer(tok).to(args.device)
    with torch.no_grad():
        for block in [*model.encoder.blocks, *model.decoder.blocks]:
            block.attn.qkv.weight[: 2 * tok.width].mul_(args.qk_init_scale)
    ae = autoencoder(model, variant)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=tuple(p.train_tokenizer.betas))
    g = torch.Generator().manual_seed(args.seed)
    bs = args.batch or p.train_tokenizer.micro_batch
    curve, t0 = [], time.time()
    print(f"{variant}: {len(train)} training clips, {len(test)} held-out, mean-colour baseline {baseline:.2f} dB")
    for step in range(args.steps):
        decay = 1.0 if args.constant_lr else 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = args.lr * decay
        x = train[torch.randint(len(train), (bs,), generator=g).to(args.device)]
        flip = (torch.rand(bs, generator=g) < 0.5).to(args.device)
        x = torch.where(flip.view(-1, 1, 1, 1, 1), x.flip(-1), x)
        rec = ae(x)
        loss = (rec - x).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            with torch.no_grad():
                held_out = torch.cat([ae(test[i:i + 16]).clamp(0, 1) for i in range(0, len(test), 16)])
            entropy = attention_entropy(model, test[:8], variant)
            model.train()
            row = {"step": step + 1, "seconds": round(time.time() - t0, 1),
                   "train_batch_psnr": round(psnr_per_video(rec.detach().clamp(0, 1), x).mean().item(), 2),
                   "held_out_psnr": round(psnr_per_video(held_out, test).mean().item(), 2), "attention_entropy": entropy}
            curve.append(row)
            print(f"  step {row['step']:>6}  {row['seconds']:>7.1f} s  train batch {row['train_batch_psnr']:.2f} dB"
                  f"  held-out {row['held_out_psnr']:.2f} dB  attention entropy: encoder {entropy['encoder']:.2f}, "
                  f"decoder {entropy['decoder']:.2f} (uniform {entropy['encoder_uniform']:.2f}, "
                  f"{entropy['decoder_uniform']:.2f})", flush=True)
    return {"variant": variant, "n_train_clips": len(train), "n_held_out": len(test),
            "mean_colour_baseline_psnr": round(baseline, 2), "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--train-per-class", type=int, default=preset("tiny").embedded.train_per_class)
    ap.add_argument("--query-init-std", type=float, default=preset("tiny").tokenizer.query_init_std)
    ap.add_argument("--lr", type=float, default=preset("tiny").train_tokenizer.lr)
    ap.add_argument("--constant-lr", action="store_true")
    ap.add_argument("--batch", type=int, default=None, help="default: train_tokenizer.micro_batch")
    ap.add_argument("--qk-init-scale", type=float, default=1.0)
    ap.add_argument("--tokenizer", nargs="*", default=[], metavar="KEY=VALUE",
                    help="tokenizer sizes other than the preset's, e.g. size=16 num_tokens=16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda: the same runs, far more steps on a GPU")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"settings": {k: v for k, v in vars(args).items() if k != "out"},
               "runs": [run(v, args) for v in args.variants]}
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
