"""`larp tokenize`: the frozen tokenizer (eval mode, argmax SVQ) turns the training clips into token ids.

The official AR trainer re-tokenizes a fresh random clip with a random flip at every step. Pre-tokenizing
approximates that (deviation, README): every clip start offset at ``tokenize.clip_stride`` frames, each with
and without horizontal flip; an AR epoch then draws one of each video's clips (``larp.train.generator.OneClipPerVideo``). Output (``data/tokens/<dataset>/``)::

    tokens-KKKKK.npy   uint16 (clips, num_tokens), written atomically, skipped on a re-run when complete
    cond-KKKKK.npy     frame prediction only (``generator.frame_prediction``): uint16 (clips, num_tokens),
                       the tokens of each clip's condition clip ``fp_condition(clip, generator.cond_frames)``
    clips.csv          one row per clip: video_row, video_id, label, start, flip, shard, offset
    tokenize.json      tokenizer weights sha256, parameters, provenance

Data parallel: with torchrun (or ``SLURM_PROCID``/``SLURM_NTASKS`` tasks) rank r writes the shards k with
k % world == r; the clip list is a pure function of the frames table, so any process can write clips.csv once
all shards exist (the last rank to finish does, and a single-process re-run completes a partial output).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from larp.config import Params
from larp.data.clips import ClipDataset, clip_index
from larp.data.tokens import TokenDataset, cond_shard_path, shard_path  # noqa: F401  (public here too)
from larp.devices import default_device
from larp.files import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from larp.models.tokenizer import load_tokenizer
from larp.provenance import provenance


def fp_condition(video: torch.Tensor, cond_frames: int) -> torch.Tensor:
    """Frame-prediction condition clip: the first ``cond_frames`` frames, the last of them repeated to the
    clip length (docs/model.md#frame-prediction). (b, c, T, h, w) -> (b, c, T, h, w)."""
    if video.ndim != 5:
        raise ValueError(f"fp_condition: expected a video (b, c, t, h, w), got shape {tuple(video.shape)}")
    t = video.shape[2]
    if not 1 <= cond_frames <= t:
        raise ValueError(f"fp_condition: cond_frames must be in [1, {t}] (clip length), got {cond_frames}")
    pad = video[:, :, cond_frames - 1 : cond_frames].expand(-1, -1, t - cond_frames, -1, -1)
    return torch.cat([video[:, :, :cond_frames], pad], dim=2)


def clip_list(frames_dir: Path, params: Params) -> pd.DataFrame:
    """All (video, start, flip) clips of the split's training videos, in a fixed order: videos in table order,
    starts every ``tokenize.clip_stride`` frames (a video shorter than a clip: start 0), unflipped then flipped."""
    ds = ClipDataset(frames_dir, split="train", split_index=params.data.split, mode="eval",
                     frames=params.data.frames)
    table, counts = ds.store.table, ds.store.frame_counts
    pos, start = clip_index(counts[ds.rows], params.data.frames, params.tokenize.clip_stride, keep_short=True)
    flips = (False, True) if params.tokenize.flips else (False,)
    rows = np.repeat(ds.rows[pos].astype(np.int64), len(flips))
    df = pd.DataFrame({"video_row": rows, "video_id": table["video_id"].to_numpy()[rows].astype(str),
                       "label": table["label"].to_numpy()[rows].astype(np.int64),
                       "start": np.repeat(start, len(flips)), "flip": np.tile(flips, len(pos))})
    n = params.tokenize.shard_clips
    df["shard"], df["offset"] = np.arange(len(df)) // n, np.arange(len(df)) % n
    return df


def _rank_world() -> tuple[int, int]:
    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and w in os.environ:
            return int(os.environ[r]), int(os.environ[w])
    return 0, 1


def _shard_paths(out_dir: Path, k: int, params: Params) -> list[Path]:
    paths = [shard_path(out_dir, k)]
    return paths + [cond_shard_path(out_dir, k)] if params.generator.frame_prediction else paths


def _shard_complete(path: Path, clips: int, num_tokens: int) -> bool:
    if not path.is_file():
        return False
    try:
        a = np.load(path, mmap_mode="r")
    except (ValueError, OSError):
        return False
    return a.shape == (clips, num_tokens) and a.dtype == np.uint16


def tokenize_dataset(frames_dir: Path, weights: Path, out_dir: Path, params: Params, *,
                     device: str | None = None, progress: bool = True) -> pd.DataFrame:
    """Tokenize every training clip (see the module docstring); returns the clip table."""
    frames_dir, weights, out_dir = Path(frames_dir), Path(weights), Path(out_dir)
    device = torch.device(device) if device else default_device()
    rank, world = _rank_world()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    clips = clip_list(frames_dir, params)
    if clips.empty:
        raise ValueError(f"{frames_dir}: no training clips (split {params.data.split})")
    n_cls = params.generator.num_classes
    if not params.generator.frame_prediction and int(clips["label"].max()) >= n_cls:
        # fail before hours of tokenization, not at train-ar (e.g. K600's 600 classes under the UCF-101 preset)
        raise ValueError(f"{frames_dir}: labels up to {int(clips['label'].max())}, but the class-conditional "
                         f"generator has generator.num_classes = {n_cls}; K600's protocol is frame prediction "
                         f"(`larp tokenize --fp`, target results/fvd_k600_fp.json)")
    model = load_tokenizer(weights, params, device)
    reader = ClipDataset(frames_dir, split="all", mode="eval", frames=params.data.frames)
    n_tok, bs = params.tokenizer.num_tokens, params.tokenize.batch_size
    fp, cond_frames = params.generator.frame_prediction, params.generator.cond_frames
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = sorted(clips["shard"].unique())
    mine = [k for k in shards if k % world == rank]
    bar = tqdm(total=int(clips["shard"].isin(mine).sum()), desc=f"tokenize[{rank}/{world}]", unit="clip",
               disable=not progress)
    for k in mine:
        part = clips[clips["shard"] == k]
        paths = _shard_paths(out_dir, k, params)
        if all(_shard_complete(p, len(part), n_tok) for p in paths):
            bar.update(len(part))
            continue
        ids = [np.empty((len(part), n_tok), dtype=np.uint16) for _ in paths]  # clip tokens (+ condition)
        for i in range(0, len(part), bs):
            chunk = part.iloc[i:i + bs]
            video = torch.stack([reader.read_clip(r.video_row, r.start, r.flip) for r in chunk.itertuples()])
            video = video.to(device)
            inputs = [video, fp_condition(video, cond_frames)] if fp else [video]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                for out, x in zip(ids, inputs):
                    out[i:i + len(chunk)] = model.encode(x).cpu().numpy().astype(np.uint16)
            bar.update(len(chunk))
        for path, a in zip(paths, ids):
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.save(f, a)
    bar.close()
    if all(_shard_complete(p, int((clips["shard"] == k).sum()), n_tok)
           for k in shards for p in _shard_paths(out_dir, k, params)):
        atomic_write_text(out_dir / "clips.csv", clips.to_csv(index=False))
        atomic_write_json(out_dir / "tokenize.json", provenance(
            {"tokenize": params.tokenize.__dict__, "data": params.data.__dict__},
            inputs={"tokenizer": sha256_file(weights), "videos.csv": sha256_file(frames_dir / "videos.csv")},
            clips=len(clips), shards=len(shards), num_tokens=n_tok, deterministic_svq=True,
            frame_prediction=fp, cond_frames=cond_frames if fp else None))
    return clips
