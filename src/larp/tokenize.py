"""`larp tokenize`: the frozen tokenizer (eval mode, argmax SVQ) turns the training clips into token ids.

The official AR trainer re-tokenizes a fresh random clip with a random flip at every step. Pre-tokenizing
approximates that (deviation, README): every clip start offset at ``tokenize.clip_stride`` frames, each with
and without horizontal flip. Output (``data/tokens/<dataset>/``)::

    tokens-KKKKK.npy   uint16 (clips, num_tokens), written atomically, skipped on a re-run when complete
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
from larp.data.clips import ClipDataset
from larp.files import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from larp.provenance import provenance


def clip_list(frames_dir: Path, params: Params) -> pd.DataFrame:
    """All (video, start, flip) clips of the split's training videos, in a fixed order."""
    ds = ClipDataset(frames_dir, split="train", split_index=params.data.split, mode="eval",
                     frames=params.data.frames)
    table, counts = ds.store.table, ds.store.frame_counts
    stride, frames = params.tokenize.clip_stride, params.data.frames
    rows = []
    for row in ds.rows:
        last = max(int(counts[row]) - frames, 0)
        for start in range(0, last + 1, stride):
            for flip in ((False, True) if params.tokenize.flips else (False,)):
                rows.append((int(row), str(table["video_id"].iloc[row]), int(table["label"].iloc[row]), start,
                             flip))
    df = pd.DataFrame(rows, columns=["video_row", "video_id", "label", "start", "flip"])
    n = params.tokenize.shard_clips
    df["shard"], df["offset"] = np.arange(len(df)) // n, np.arange(len(df)) % n
    return df


def _rank_world() -> tuple[int, int]:
    for r, w in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if r in os.environ and w in os.environ:
            return int(os.environ[r]), int(os.environ[w])
    return 0, 1


def shard_path(out_dir: Path, k: int) -> Path:
    return out_dir / f"tokens-{k:05d}.npy"


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
    from larp.train.tokenizer import load_tokenizer

    frames_dir, weights, out_dir = Path(frames_dir), Path(weights), Path(out_dir)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world = _rank_world()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    clips = clip_list(frames_dir, params)
    if clips.empty:
        raise ValueError(f"{frames_dir}: no training clips (split {params.data.split})")
    model = load_tokenizer(weights, params, device)
    reader = ClipDataset(frames_dir, split="all", mode="eval", frames=params.data.frames)
    n_tok, bs = params.tokenizer.num_tokens, params.tokenize.batch_size
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = sorted(clips["shard"].unique())
    mine = [k for k in shards if k % world == rank]
    bar = tqdm(total=int(clips["shard"].isin(mine).sum()), desc=f"tokenize[{rank}/{world}]", unit="clip",
               disable=not progress)
    for k in mine:
        part = clips[clips["shard"] == k]
        path = shard_path(out_dir, k)
        if _shard_complete(path, len(part), n_tok):
            bar.update(len(part))
            continue
        ids = np.empty((len(part), n_tok), dtype=np.uint16)
        for i in range(0, len(part), bs):
            chunk = part.iloc[i:i + bs]
            video = torch.stack([reader.read_clip(r.video_row, r.start, r.flip) for r in chunk.itertuples()])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                ids[i:i + len(chunk)] = model.encode(video.to(device)).cpu().numpy().astype(np.uint16)
            bar.update(len(chunk))
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, ids)
    bar.close()
    if all(_shard_complete(shard_path(out_dir, k), int((clips["shard"] == k).sum()), n_tok) for k in shards):
        atomic_write_text(out_dir / "clips.csv", clips.to_csv(index=False))
        atomic_write_json(out_dir / "tokenize.json", provenance(
            {"tokenize": params.tokenize.__dict__, "data": params.data.__dict__},
            inputs={"tokenizer": sha256_file(weights), "videos.csv": sha256_file(frames_dir / "videos.csv")},
            clips=len(clips), shards=len(shards), num_tokens=n_tok, deterministic_svq=True))
    return clips


class TokenDataset(torch.utils.data.Dataset):
    """Items ``(class_id int64, tokens int64 (num_tokens,))`` of a tokenize output, held in memory."""

    def __init__(self, tokens_dir: str | Path) -> None:
        tokens_dir = Path(tokens_dir)
        table = tokens_dir / "clips.csv"
        if not table.is_file():
            raise FileNotFoundError(f"{table} not found: run `larp tokenize` first (or let it finish)")
        self.clips = pd.read_csv(table)
        shards = [np.load(shard_path(tokens_dir, k)) for k in sorted(self.clips["shard"].unique())]
        self.tokens = torch.from_numpy(np.concatenate(shards).astype(np.int64))
        self.labels = torch.from_numpy(self.clips["label"].to_numpy(np.int64).copy())
        if len(self.tokens) != len(self.clips):
            raise ValueError(f"{tokens_dir}: {len(self.tokens)} token rows for {len(self.clips)} clips")

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.labels[i], self.tokens[i]
