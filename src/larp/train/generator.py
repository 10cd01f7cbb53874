"""`larp train-ar`: the AR generator's training task for the shared loop (docs/training.md#ar-training).

Class-conditional: sequence = [class embedding, z_0 .. z_1022] -> logits for z_0 .. z_1023 (cross-entropy,
mean). Frame prediction (``generator.frame_prediction``): sequence = [1024 condition tokens, SEP, z_0 .. z_1022]
-> the same 1024 logits/targets; the batch is (condition tokens, clip tokens). AdamW (0.9, 0.95), weight decay
on Linear weights only, cosine schedule with warm-up, bf16 autocast on GPU; class-label dropout (-> null
class) and token dropout inside the model. Trains on the pre-tokenized clips of `larp tokenize`; an epoch is one
clip per training video, drawn from that video's clips (as the official epoch: one random clip per video).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from larp.config import Params, ParamsError
from larp.data.tokens import TokenDataset
from larp.files import atomic_write_json, sha256_file
from larp.models.generator import LARPGenerator, load_generator  # noqa: F401  (public here too)
from larp.models.tokenizer import load_tokenizer
from larp.pipeline import STAGES
from larp.train.loop import Phase, StepContext, StepLoss, train
from larp.visualize import grid_png, to_uint8

METRICS = ("top1", "top5")


class OneClipPerVideo(torch.utils.data.Dataset):
    """The AR training epoch: item v is video v, as one of its pre-tokenized clips (start offset and flip)
    drawn uniformly each time it is loaded; the official trainer likewise visits every training video once per
    epoch with a fresh random clip and flip. So an epoch is (videos / global batch) steps, and a long video
    weighs as much as a short one. The draw uses the global torch generator, which the training loop seeds per
    (seed, epoch, item): the same clip after a resume, whatever the DataLoader workers.
    """

    def __init__(self, clips: TokenDataset) -> None:
        self.clips = clips
        rows = clips.clips["video_row"].to_numpy()
        order = np.argsort(rows, kind="stable")  # clip indices grouped by video, in clips.csv order
        self.video_rows, first, count = np.unique(rows[order], return_index=True, return_counts=True)
        self.order, self.first, self.count = order.tolist(), first.tolist(), count.tolist()

    def __len__(self) -> int:
        return len(self.video_rows)

    def __getitem__(self, v: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = int(torch.randint(self.count[v], ()))
        return self.clips[self.order[self.first[v] + k]]


class GeneratorTask:
    metric_names = METRICS

    def __init__(self, params: Params, decode=None, sample_conditions: torch.Tensor | None = None) -> None:
        self.p = params
        self.model = LARPGenerator(params.generator)
        self.modules: dict[str, nn.Module] = {"generator": self.model}
        self.decode = decode  # ids -> video, for the periodic samples (None: tokens only)
        # frame prediction: condition tokens (n, seq_len) of the periodic samples (None: no samples)
        self.sample_conditions = sample_conditions

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        t = self.p.train_ar
        groups = self.model.optim_groups(t.weight_decay)
        for g in groups:
            g["lr"] = t.lr
        fused = next(self.model.parameters()).is_cuda
        return {"ar": torch.optim.AdamW(groups, lr=t.lr, betas=t.betas, fused=fused)}

    def phases(self, step: int, epoch: int) -> list[Phase]:
        return [Phase("ar", self.loss)]

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor], ctx: StepContext) -> StepLoss:
        condition, tokens = batch  # class ids (b,), or frame-prediction condition tokens (b, seq_len)
        logits = ctx.modules["generator"](condition, tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        with torch.no_grad():
            top5 = logits.topk(5, dim=-1).indices
            top1 = (top5[..., 0] == tokens).float().mean()
            top5 = (top5 == tokens[..., None]).any(-1).float().mean()
        return StepLoss(loss, {"top1": top1, "top5": top5})

    @torch.no_grad()
    def sample(self, step: int, directory: Path) -> None:
        """A few samples, cfg 1.0 as the official training-time samples: one per class, or (frame prediction)
        one per row of ``sample_conditions``."""
        from larp.seeding import sample_generators

        device = next(self.model.parameters()).device
        if self.p.generator.frame_prediction:
            if self.sample_conditions is None:
                return
            condition = self.sample_conditions[:8].to(device)
        else:
            condition = torch.arange(min(8, self.p.generator.num_classes), device=device)
        n = len(condition)
        ids = self.model.generate(condition, cfg_scale=1.0, generator=sample_generators(self.p.sample.seed, range(n)))
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(ids.cpu(), directory / f"tokens-{step:07d}.pt")
        if self.decode is not None:
            grid_png(to_uint8(self.decode(ids).clamp(0, 1)), directory / f"samples-{step:07d}.png")


def run_key(params: Params, tokens_dir: Path) -> str:
    """Identity of a training run: the parameter groups the stage reads (larp.pipeline) and its tokens. A
    resume only continues the same run."""
    stage = "train_ar_fp" if params.generator.frame_prediction else "train_ar"
    relevant = {k: dataclasses.asdict(getattr(params, k)) for k in STAGES[stage].groups}
    blob = json.dumps(relevant, sort_keys=True) + sha256_file(Path(tokens_dir) / "clips.csv")
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def train_generator(tokens_dir: Path, weights_out: Path, params: Params, *, tokenizer_weights: Path | None = None,
                    run_root: Path | None = None, device: str | None = None, progress: bool = True) -> Path:
    """Train the AR generator on ``tokens_dir``; resumable; returns the run directory."""
    tokens_dir, weights_out = Path(tokens_dir), Path(weights_out)
    fp = params.generator.frame_prediction
    dataset = TokenDataset(tokens_dir, frame_prediction=fp)
    if not fp and int(dataset.labels.max()) >= params.generator.num_classes:
        raise ValueError(f"{tokens_dir}: labels up to {int(dataset.labels.max())} but generator.num_classes is "
                         f"{params.generator.num_classes}")
    for name, ids in (("token", dataset.tokens), ("condition token", dataset.cond_tokens)):
        if ids is not None and int(ids.max()) >= params.generator.vocab_size:
            raise ValueError(f"{tokens_dir}: {name} ids up to {int(ids.max())} exceed generator.vocab_size "
                             f"{params.generator.vocab_size}")
    decode = None
    if tokenizer_weights is not None:
        tok = load_tokenizer(tokenizer_weights, params)

        def decode(ids: torch.Tensor) -> torch.Tensor:
            return tok.to(ids.device).decode(ids)

    videos = OneClipPerVideo(dataset)
    if len(videos) < params.train_ar.global_batch:
        raise ParamsError(f"{tokens_dir}: {len(videos)} training videos, fewer than the AR global batch "
                          f"({params.train_ar.global_batch}, train_ar[_fp].global_batch): an epoch is one clip "
                          f"per video")
    run_dir = Path(run_root or weights_out.parent / "runs") / f"ar-{run_key(params, tokens_dir)}"
    # frame prediction: periodic samples continue the first clips of the data (fixed, so comparable over time)
    conditions = dataset.cond_tokens[:8].clone() if fp else None
    train(lambda dev: GeneratorTask(params, decode, conditions), videos, params.train_ar, run_dir, weights_out,
          device=device, progress=progress)
    atomic_write_json(run_dir / "done.json", {"weights": str(weights_out), "sha256": sha256_file(weights_out)})
    return run_dir
