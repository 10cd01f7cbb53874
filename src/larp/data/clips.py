"""Clips of extracted videos for training and evaluation (docs/protocols.md#clip-sampling).

* ``mode="train"``: one item per video, a random window of ``frames`` consecutive frames at native fps
  (start uniform in [0, n - frames]; a shorter video is padded by repeating its last frame) and one
  horizontal-flip decision per clip.
* ``mode="eval"``: one item per non-overlapping clip [frames * i, frames * (i + 1)) of every video, no flip.

Items are ``(video, label)``: video float (c, t, h, w) in [0, 1], label the 0-based class. The random draws
of item i come from ``(seed, epoch, i)`` only, so they do not depend on which DataLoader worker reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset

from larp.data.frames import FrameStore


class ClipRef(NamedTuple):
    """Which clip an item is: video row in videos.csv, first frame, whether it is mirrored."""

    row: int
    start: int
    flip: bool


def clip_index(num_frames: Sequence[int] | np.ndarray, frames: int, stride: int | None = None, *,
               keep_short: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Every ``frames``-long clip of the videos with ``num_frames`` frames, starts every ``stride`` frames
    (default ``frames``: the non-overlapping clips [k·frames, (k+1)·frames)), videos in order, starts ascending.

    Returns (position of the video in ``num_frames``, start) as two int64 arrays. A video shorter than a clip
    has no clip, unless ``keep_short``: then one at start 0 (read padded by repeating its last frame).
    The one place where clip positions are computed: training-data lists, the FVD protocols, eval datasets.
    """
    stride = frames if stride is None else stride
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    last = np.asarray(num_frames, dtype=np.int64).reshape(-1) - frames  # the last possible start
    if keep_short:
        last = np.maximum(last, 0)
    per_video = np.where(last >= 0, last // stride + 1, 0)
    video = np.repeat(np.arange(len(per_video)), per_video)
    k = np.arange(len(video)) - np.repeat(np.cumsum(per_video) - per_video, per_video)  # clip k of its video
    return video, k * stride


def nonoverlapping_clips(num_frames: Sequence[int], frames: int) -> list[tuple[int, int]]:
    """All (video row, start) of the non-overlapping ``frames``-long clips: sum of floor(n / frames) items."""
    video, start = clip_index(num_frames, frames)
    return list(zip(video.tolist(), start.tolist()))


def to_video_tensor(frames: np.ndarray, flip: bool = False) -> torch.Tensor:
    """uint8 (t, h, w, c) -> float (c, t, h, w) in [0, 1], mirrored left-right if ``flip``."""
    x = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "t h w c -> c t h w").float().div_(255)
    return x.flip(-1) if flip else x


class ClipDataset(Dataset):
    """``frames``-long clips of the videos of one split, in train or eval mode (see module docstring)."""

    def __init__(
        self,
        frames_dir: str | Path,
        split: str = "train",
        split_index: int = 1,
        mode: str = "train",
        frames: int = 16,
        flip: bool = True,
        seed: int | None = 0,
    ):
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if split_index not in (1, 2, 3):
            raise ValueError(f"split_index must be 1, 2 or 3, got {split_index}")
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        self.store = FrameStore(frames_dir)
        table = self.store.table
        if split == "all":
            self.rows = np.arange(len(table))
        else:
            column = f"split{split_index}"
            if column not in table.columns:
                raise ValueError(f"{self.store.dir / 'videos.csv'}: no column {column!r}")
            self.rows = np.flatnonzero(table[column].to_numpy() == split)
        self.labels = table["label"].to_numpy(np.int64)
        self.mode, self.frames, self.flip, self.seed = mode, frames, flip, seed
        counts = self.store.frame_counts[self.rows]
        self.clips = (
            [(int(self.rows[i]), s) for i, s in nonoverlapping_clips(counts, frames)]
            if mode == "eval"
            else []
        )
        # shared memory: set_epoch in the main process reaches persistent DataLoader workers too
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return len(self.clips) if self.mode == "eval" else len(self.rows)

    def clip_ref(self, i: int) -> ClipRef:
        """The clip item ``i`` is in the current epoch (drawn from (seed, epoch, i) in train mode)."""
        if not 0 <= i < len(self):
            raise IndexError(f"item {i} outside [0, {len(self)})")
        if self.mode == "eval":
            row, start = self.clips[i]
            return ClipRef(row, start, False)
        row = int(self.rows[i])
        # seed None: draw from numpy's global generator, which the training loop seeds per (seed, epoch, item)
        rng = (np.random.default_rng([self.seed, self.epoch, i]) if self.seed is not None
               else np.random.default_rng(np.random.randint(0, 2**31)))
        start = int(rng.integers(0, max(int(self.store.frame_counts[row]) - self.frames, 0) + 1))
        flip = bool(rng.random() < 0.5) and self.flip
        return ClipRef(row, start, flip)

    def read_clip(self, row: int, start: int, flip: bool = False) -> torch.Tensor:
        """A specific clip, float (c, t, h, w) in [0, 1]: ``frames`` frames of video ``row`` from ``start``.

        Used by the tokenize and FVD stages with the refs of :meth:`clip_ref` or :func:`nonoverlapping_clips`.
        """
        return to_video_tensor(self.store.frames(row, start, self.frames), flip)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        ref = self.clip_ref(i)
        return self.read_clip(ref.row, ref.start, ref.flip), int(self.labels[ref.row])
