"""`larp train-tokenizer`: the LARP tokenizer's training task for the shared loop
(docs/training.md#tokenizer-training).

One optimizer step = [discriminator phase on every ``d_update_every``-th step] + autoencoder phase (the GAN's G):
  G: L1 + LPIPS + 0.3 NS-GAN + 0.1 VQ + alpha prior, Adam(0.5, 0.9), lr 1e-4 (prior group: see prior.lr_mult)
  D: ns_smooth BCE + LeCam on (real, detached reconstruction), Adam(0.5, 0.9), lr 3e-5

Deviation (documented in the README): on discriminator steps the reconstruction D sees comes from its own
no-grad tokenizer pass (stochastic SVQ) instead of the autoencoder step's forward, so that gradient accumulation
never keeps graphs across micro-batches; it costs one extra forward every ``d_update_every`` steps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from larp.config import Params
from larp.data.clips import ClipDataset
from larp.eval.metrics import psnr_per_video
from larp.files import atomic_write_json, sha256_file
from larp.losses import LPIPS, LeCam, TokenizerLoss
from larp.models.discriminator import TransformerDiscriminator
from larp.models.tokenizer import LARPTokenizer, load_tokenizer  # noqa: F401  (public here too)
from larp.pipeline import STAGES
from larp.train.loop import Phase, StepContext, StepLoss, train
from larp.train.schedule import resolve_schedule
from larp.visualize import grid_png, to_uint8, write_mp4

METRICS = ("l1", "perceptual", "gan", "vq", "prior", "psnr", "code_usage", "code_perplexity", "prior_top1",
           "prior_top5", "ss_ratio", "d_bce", "d_lecam", "d_logits_real", "d_logits_fake")


class Critic(nn.Module):
    """The discriminator plus the LeCam EMA of its logits, so that both are checkpointed together."""

    def __init__(self, disc: TransformerDiscriminator, lecam: LeCam) -> None:
        super().__init__()
        self.net, self.lecam = disc, lecam

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


def psnr(video: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean over clips of the PSNR (dB), reconstruction clamped to [0, 1] as LARP logs it; an exact clip
    counts 100 dB (a finite log)."""
    return psnr_per_video(recon.detach().clamp(0, 1), video).clamp(max=100).mean().float()


class TokenizerTask:
    """Modules, optimizers and the per-micro-batch losses of tokenizer training."""

    metric_names = METRICS

    def __init__(self, params: Params, total_steps: int, preview: torch.Tensor | None,
                 lpips: LPIPS | None = None) -> None:
        self.p, self.total_steps = params, total_steps
        self.model = LARPTokenizer(params.tokenizer, params.prior)
        self.loss = TokenizerLoss(params.loss, params.prior, lpips=lpips)
        self.modules: dict[str, nn.Module] = {"tokenizer": self.model}
        if params.loss.gan_weight > 0:
            self.modules["discriminator"] = Critic(TransformerDiscriminator(params.discriminator), self.loss.lecam)
        self.preview = preview  # fixed clips reconstructed by sample()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        t = self.p.train_tokenizer
        device = next(self.model.parameters()).device
        self.loss.to(device)
        groups = [{"params": self.model.tokenizer_parameters(), "lr": t.lr, "lr_mult": 1.0}]
        if self.model.prior is not None:
            # [quirk] official: the scheduler writes the base lr into every group, so the prior's lr_mult has
            # no effect there; it applies only with prior.honor_lr_mult
            pp = self.p.prior
            groups.append({"params": list(self.model.prior.parameters()), "lr": t.lr,
                           "lr_mult": pp.lr_mult if pp.honor_lr_mult else 1.0})
        opts = {"g": torch.optim.Adam(groups, betas=t.betas)}
        if "discriminator" in self.modules:
            opts["d"] = torch.optim.Adam(self.modules["discriminator"].parameters(), lr=t.d_lr, betas=t.betas)
        return opts

    def phases(self, step: int, epoch: int) -> list[Phase]:
        d_step = "discriminator" in self.modules and self.loss.update_discriminator_now(step=step, epoch=epoch)
        return [Phase("d", self.discriminator_loss)] * d_step + [Phase("g", self.autoencoder_loss)]

    def autoencoder_loss(self, batch: tuple[torch.Tensor, torch.Tensor], ctx: StepContext) -> StepLoss:
        video = batch[0]
        out = ctx.modules["tokenizer"](video, step=ctx.step, max_steps=self.total_steps)
        g = self.loss.autoencoder_loss(video, out, ctx.modules.get("discriminator"), step=ctx.step, epoch=ctx.epoch)
        metrics = {"l1": g.l1, "perceptual": g.perceptual, "gan": g.gan, "vq": g.vq, "prior": g.prior,
                   "psnr": psnr(video, out.reconstruction), "code_usage": out.usage,
                   "code_perplexity": out.perplexity}
        if out.prior_top1 is not None:
            metrics.update(prior_top1=out.prior_top1, prior_top5=out.prior_top5, ss_ratio=out.ss_ratio)
        return StepLoss(g.total, metrics)

    generator_loss = autoencoder_loss  # the old name

    def discriminator_loss(self, batch: tuple[torch.Tensor, torch.Tensor], ctx: StepContext) -> StepLoss:
        video = batch[0]
        tokenizer = ctx.modules["tokenizer"]  # frozen plain module in this phase
        with torch.no_grad():
            recon = tokenizer.decode_codes(tokenizer.quantize(video, stochastic=True).quantized_st)
        d = self.loss.discriminator_loss(video, recon, ctx.modules["discriminator"])
        return StepLoss(d.total, {"d_bce": d.bce, "d_lecam": d.lecam, "d_logits_real": d.logits_real,
                                  "d_logits_fake": d.logits_fake})

    @torch.no_grad()
    def sample(self, step: int, directory: Path) -> None:
        """Reconstructions of fixed held-out clips: PNG grid (input row, reconstruction row), MP4s, PSNR."""
        if self.preview is None:
            return
        video = self.preview.to(next(self.model.parameters()).device)
        # [quirk] the official validation samples codes (stochastic SVQ) even in eval mode
        stochastic = self.p.train_tokenizer.stochastic_validation
        recon = self.model.decode_codes(self.model.quantize(video, stochastic=stochastic).quantized_st)
        pairs = torch.stack([video, recon.clamp(0, 1)], 1).flatten(0, 1)  # input, recon, input, recon...
        directory = Path(directory)
        grid_png(to_uint8(pairs), directory / f"recon-{step:07d}.png")
        write_mp4(to_uint8(recon[:1])[0], directory / f"recon-{step:07d}.mp4")
        atomic_write_json(directory / f"recon-{step:07d}.json", {
            "step": step, "psnr": float(psnr(video, recon)), "stochastic_svq": stochastic, "clips": len(video)})


def _as_dirs(frames: Path | Sequence[Path]) -> list[Path]:
    return [Path(frames)] if isinstance(frames, (str, Path)) else [Path(f) for f in frames]


def run_key(params: Params, frames: Path | Sequence[Path]) -> str:
    """Identity of a training run: the parameter groups the stage reads (larp.pipeline) and its data. A resume
    only continues the same run."""
    relevant = {k: dataclasses.asdict(getattr(params, k)) for k in STAGES["train_tokenizer"].groups}
    blob = json.dumps(relevant, sort_keys=True) + "".join(sha256_file(d / "videos.csv") for d in _as_dirs(frames))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def training_clips(frames: Path | Sequence[Path], params: Params) -> Dataset:
    """Random training clips of the split's training videos of every frames directory, concatenated (as the
    official ``a.csv+b.csv``: each video once per epoch, whatever dataset it comes from)."""
    parts = [ClipDataset(d, split="train", split_index=params.data.split, mode="train", frames=params.data.frames,
                         flip=True, seed=None)  # per-item seeding by the loop
             for d in _as_dirs(frames)]
    for d, part in zip(_as_dirs(frames), parts):
        if not len(part):
            raise ValueError(f"{d}: no training videos in split {params.data.split} (videos.csv column "
                             f"split{params.data.split})")
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def preview_clips(frames_dir: Path, params: Params, n: int = 4) -> torch.Tensor | None:
    """A fixed handful of held-out (split test, falling back to train) clips for the periodic samples."""
    for split in ("test", "train"):
        ds = ClipDataset(frames_dir, split=split, split_index=params.data.split, mode="eval",
                         frames=params.data.frames)
        if len(ds):
            picks = torch.linspace(0, len(ds) - 1, min(n, len(ds))).round().long().tolist()
            return torch.stack([ds[i][0] for i in picks])
    return None


def train_tokenizer(frames: Path | Sequence[Path], weights_out: Path, params: Params, *,
                    run_root: Path | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Train the tokenizer on the split's training videos of one frames directory or several (a data mix,
    see :func:`training_clips`); resumable; returns the run directory.

    ``weights_out`` receives the safetensors weights (``tokenizer.*``, ``discriminator.*``); the run directory
    (checkpoints, metrics.csv, samples/) is ``run_root/tokenizer-<run key>`` so that a changed parameter starts
    a new run instead of resuming an incompatible one. The preview clips come from the first directory.
    """
    dirs, weights_out = _as_dirs(frames), Path(weights_out)
    t = params.train_tokenizer
    dataset = training_clips(dirs, params)
    steps = resolve_schedule(len(dataset), t).total_steps  # (the prior's scheduled sampling needs it)
    preview = preview_clips(dirs[0], params)
    run_dir = Path(run_root or weights_out.parent / "runs") / f"tokenizer-{run_key(params, dirs)}"
    train(lambda dev: TokenizerTask(params, steps, preview), dataset, t, run_dir, weights_out, device=device,
          progress=progress)
    return run_dir
