"""Which real clips an FVD compares against: the LARP gFVD and rFVD protocols on a metadata table.

The table is the dataset's ``index.csv`` / ``videos.csv`` (columns ``video_id, label, split1..3, num_frames``;
``splitK`` is "train" or "test"). Rows are used in table order, so the same table gives the same clips.

* gFVD (LARP ``sample.py``): index every non-overlapping ``frames``-long clip [k·frames, (k+1)·frames) of
  every split-K training video, in table order; draw
  ``random.Random(seed).sample(range(len(index)), num_clips)``.
  The drawn order matters: clip i's label conditions generated video i, and the clips are the real set.
* rFVD (LARP ``rfvd_evaluator``): every split-K training video, one ``frames``-long clip each, start drawn
  uniformly in [0, num_frames - frames] by a seeded numpy generator (LARP's start is unseeded). Videos shorter
  than ``frames`` get start 0 and are padded by repeating the last frame (LARP's loader does the same).

* FP-FVD (LARP ``sample.py --fp``, Kinetics-600 frame prediction): the gFVD index and draw over the videos of
  one split (``val``: the K600 index marks val videos ``split1 = "test"``), 50,000 clips with seed 42. Sample i
  is conditioned on real clip i (``larp.tokenize.fp_condition``) and the two sets are compared after
  :func:`resize_to` 64x64. Shard k of S generates ``fp_fvd_shard(clips, k, S)``: its own slice only (the
  official parallel jobs each generate the full ``num_samples_total``, a bug we do not copy).

All return a DataFrame with columns ``row`` (position in the table), ``video_id``, ``start``, ``label``.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pandas as pd
import torch
from einops import rearrange
from torchvision.transforms import Resize

from larp.config import Params
from larp.data.clips import clip_index
from larp.data.frames import FrameStore

CLIP_COLUMNS = ["row", "video_id", "start", "label"]
_REQUIRED = ("video_id", "label", "num_frames")

CEILING_DIR = "ceiling"  # the sub-directory of a sample shard holding the gFVD ceiling's samples (sample.ceiling)


def _train_rows(table: pd.DataFrame, split: int, which: str = "train") -> pd.DataFrame:
    """The split's training (or ``which="test"``) rows, in table order, with a ``row`` column (position in
    ``table``)."""
    if split not in (1, 2, 3):
        raise ValueError(f"split must be 1, 2 or 3, got {split!r}")
    col = f"split{split}"
    missing = [c for c in (*_REQUIRED, col) if c not in table.columns]
    if missing:
        raise ValueError(f"metadata table lacks column(s) {missing}; has {list(table.columns)}")
    bad = set(table[col].unique()) - {"train", "test"}
    if bad:
        raise ValueError(f"metadata column {col} must hold 'train' or 'test', found {sorted(map(str, bad))}")
    nf = pd.to_numeric(table["num_frames"], errors="coerce")
    if nf.isna().any() or (nf < 0).any() or (nf != nf.round()).any():
        raise ValueError("metadata column num_frames must hold non-negative integers")
    rows = table.assign(row=np.arange(len(table)), num_frames=nf.astype(np.int64))
    return rows[rows[col] == which]


def gfvd_real_clips(
    table: pd.DataFrame, frames: int = 16, num_clips: int = 10000, seed: int = 42, split: int = 1
) -> pd.DataFrame:
    """``num_clips`` real clips (and their labels) for class-conditional gFVD, in draw order."""
    return _draw_clips(_train_rows(table, split), frames, num_clips, seed, f"gFVD: split {split} training")


def held_out_clips(table: pd.DataFrame, frames: int = 16, split: int = 1) -> pd.DataFrame:
    """Every non-overlapping ``frames``-clip of the split's test videos, in table order (the class probe's real
    held-out set)."""
    return _clip_index(_train_rows(table, split, "test"), frames)


def _clip_index(videos: pd.DataFrame, frames: int) -> pd.DataFrame:
    """Every non-overlapping ``frames``-clip of ``videos`` (row, video_id, start, label): video j contributes
    clips k = 0..num_frames_j // frames - 1, videos in table order."""
    pos, start = clip_index(videos["num_frames"].to_numpy(), frames)
    src = videos.iloc[pos]
    return pd.DataFrame({"row": src["row"].to_numpy(), "video_id": src["video_id"].to_numpy(),
                         "start": start, "label": src["label"].to_numpy()})


def _draw_clips(videos: pd.DataFrame, frames: int, num_clips: int, seed: int, what: str) -> pd.DataFrame:
    """Index every non-overlapping ``frames``-clip of ``videos`` (in order), draw ``num_clips`` with
    ``random.Random(seed).sample``; the clips in draw order."""
    index = _clip_index(videos, frames)
    if num_clips > len(index):
        raise ValueError(
            f"{what} asks for num_clips={num_clips} clips but its videos hold only "
            f"{len(index)} non-overlapping {frames}-frame clips"
        )
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips}")
    pick = random.Random(seed).sample(range(len(index)), num_clips)
    return index.iloc[pick].reset_index(drop=True)


FP_SPLITS = {"train": "train", "val": "test"}  # split -> its value in the index's split1 column (K600)


def fp_fvd_clips(
    table: pd.DataFrame, frames: int = 16, num_clips: int = 50000, seed: int = 42, split: str = "val"
) -> pd.DataFrame:
    """``num_clips`` real clips for FP-FVD, in draw order: the gFVD index/draw over the ``split`` videos
    (``val``: rows with ``split1 == "test"``, as the K600 index marks them)."""
    if split not in FP_SPLITS:
        raise ValueError(f"FP-FVD split must be one of {sorted(FP_SPLITS)}, got {split!r}")
    return _draw_clips(_train_rows(table, 1, FP_SPLITS[split]), frames, num_clips, seed, f"FP-FVD: {split} split")


def shard_range(n: int, shard: int, num_shards: int) -> range:
    """Positions [k n / S, (k + 1) n / S) of ``n`` items: shard k of S (sizes differ by at most one)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} outside [0, {num_shards}) (sample.shards)")
    return range(shard * n // num_shards, (shard + 1) * n // num_shards)


def fp_fvd_shard(clips: pd.DataFrame, shard: int, num_shards: int) -> pd.DataFrame:
    """Shard ``shard`` of ``num_shards``: draw positions :func:`shard_range` of ``clips``, with an ``index``
    column (the position in the full draw: the sample index that seeds that sample's stream)."""
    idx = np.asarray(shard_range(len(clips), shard, num_shards))
    return clips.iloc[idx].reset_index(drop=True).assign(index=idx)


def resize_to(video: torch.Tensor, size: int) -> torch.Tensor:
    """Float video (b, c, t, h, w) -> (b, c, t, size, size), every frame by torchvision ``Resize((size, size),
    antialias=True)`` (bilinear): the FP-FVD protocol applies it to generated and real clips alike."""
    if video.ndim != 5 or not video.is_floating_point():
        raise ValueError(f"resize_to: expected a float video (b, c, t, h, w), got {tuple(video.shape)} {video.dtype}")
    if size < 1:
        raise ValueError(f"resize_to: size must be >= 1, got {size}")
    b = video.shape[0]
    frames = Resize((size, size), antialias=True)(rearrange(video, "b c t h w -> (b t) c h w"))
    return rearrange(frames, "(b t) c h w -> b c t h w", b=b)


def rfvd_clips(
    table: pd.DataFrame, frames: int = 16, seed: int = 0, split: int = 1, max_videos: int | None = None
) -> pd.DataFrame:
    """One clip per split-K training video (table order). ``max_videos`` keeps a seeded random subset (still
    in table order, so a subset spans all classes); a video's start does not depend on ``max_videos``."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    train = _train_rows(table, split)
    rng = np.random.default_rng(seed)
    span = np.maximum(train["num_frames"].to_numpy() - frames, 0)
    starts = rng.integers(0, span + 1)  # one draw per video, whatever max_videos is
    keep = np.arange(len(train))
    if max_videos is not None:
        if max_videos < 1:
            raise ValueError(f"max_videos must be >= 1 or None, got {max_videos}")
        if max_videos < len(train):
            keep = np.sort(rng.choice(len(train), size=max_videos, replace=False))
    src = train.iloc[keep]
    return pd.DataFrame(
        {
            "row": src["row"].to_numpy(),
            "video_id": src["video_id"].to_numpy(),
            "start": starts[keep].astype(np.int64),
            "label": src["label"].to_numpy(),
        }
    )


def clips_hash(clips: pd.DataFrame) -> str:
    """sha256 of the clip list (row, video_id, start, label per line, in order): provenance and cache key."""
    missing = [c for c in CLIP_COLUMNS if c not in clips.columns]
    if missing:
        raise ValueError(f"clip table lacks column(s) {missing}")
    h = hashlib.sha256(b"larp-clips-v1\n")
    for r, v, s, lab in zip(clips["row"], clips["video_id"], clips["start"], clips["label"]):
        h.update(f"{int(r)},{v},{int(s)},{int(lab)}\n".encode())
    return h.hexdigest()


# the protocols' clips of a dataset, from its frames table and the parameters


def gfvd_clips(frames_dir: Path, params: Params) -> pd.DataFrame:
    """The gFVD protocol's real clips (row, video_id, start, label), in draw order."""
    table = FrameStore(frames_dir).table
    return gfvd_real_clips(table, frames=params.data.frames, num_clips=params.fvd.num_clips,
                           seed=params.fvd.clip_seed, split=params.data.split)


def fp_clips(frames_dir: Path, params: Params) -> pd.DataFrame:
    """The FP-FVD protocol's real clips: ``fvd.fp_num_clips`` drawn with ``fvd.clip_seed`` from all
    non-overlapping clips of the held-out videos (K600 val; the split's test list for other datasets)."""
    table = FrameStore(frames_dir).table
    return fp_fvd_clips(table, frames=params.data.frames, num_clips=params.fvd.fp_num_clips,
                        seed=params.fvd.clip_seed, split="val")
