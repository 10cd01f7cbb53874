"""The extracted-frames store: uint8 frames in shards located by ``videos.csv``, raw or JPEG.

``videos.csv`` gives each video's ``shard``, ``frame_start`` and ``frame_count`` (frames counted from the start
of the shard), ``report.json`` the ``size`` and the ``frame_format``:

* raw (``shard-KKKKK.u8``): the frames of up to ``data.shard_videos`` videos concatenated in index order, as
  C-order uint8 (n, size, size, 3) with no header. Chosen by measurement (benchmarks/bench_frame_formats.py,
  128x128, one core): a random 16-frame clip read is a memory-mapped slice, ~10,000 reads/s, exact; lossless
  PNG or zlib is 1.4-2.9x smaller but ~30-50 reads/s. The price is disk: 48 KiB per frame, ~120 GB for
  UCF-101 at 128x128, ~5 TB for Kinetics-600 train.
* jpeg (``shard-KKKKK.jpg`` + ``shard-KKKKK.offsets.npy``): each frame a JPEG (libjpeg-turbo through
  torchvision) concatenated in the same order, frame i at bytes [offsets[i], offsets[i + 1]). ~7x smaller and
  ~100-150 clip reads/s per process, but lossy (q95: mean 1-3, max 40-70 grey levels at sharp colour edges); what
  Kinetics-600 uses by default.

Reading is lazy and per process: each process maps a shard the first time it needs it, and pickling
(DataLoader workers) drops the maps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

FRAME_DTYPE = np.dtype(np.uint8)
SHARD_EXT = {"raw": ".u8", "jpeg": ".jpg"}  # frame_format -> extension of the shard's frame file
OFFSETS_EXT = ".offsets.npy"  # jpeg: int64 byte offsets of the shard's frames (n + 1 entries)


def shard_name(k: int, ext: str) -> str:
    return f"shard-{k:05d}{ext}"


def offsets_path(shard_path: Path) -> Path:
    """The offsets file of a jpeg shard ``shard-KKKKK.jpg``."""
    return shard_path.with_name(shard_path.name.removesuffix(SHARD_EXT["jpeg"]) + OFFSETS_EXT)


def decode_jpegs(blobs: list[np.ndarray]) -> np.ndarray:
    """JPEG byte strings (uint8 arrays) -> (n, h, w, 3) uint8 frames."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    images = decode_jpeg([torch.from_numpy(b) for b in blobs], mode=ImageReadMode.RGB)
    return torch.stack(images).permute(0, 2, 3, 1).numpy()


def shard_nbytes(frames: int, size: int) -> int:
    return frames * size * size * 3 * FRAME_DTYPE.itemsize


class FrameStore:
    """Read-only access to ``<frames_dir>``: ``table`` (videos.csv) and ``video(row)`` (t, h, w, c) uint8."""

    def __init__(self, frames_dir: str | Path):
        self.dir = Path(frames_dir)
        table_path, report_path = self.dir / "videos.csv", self.dir / "report.json"
        for p in (table_path, report_path):
            if not p.is_file():
                raise FileNotFoundError(f"{p}: not found (run `larp extract` first)")
        report = json.loads(report_path.read_text())
        self.size: int = int(report["size"])
        self.frame_format: str = report.get("frame_format", "raw")
        if self.frame_format not in SHARD_EXT:
            raise ValueError(f"{report_path}: unknown frame_format {self.frame_format!r}")
        self.table = pd.read_csv(table_path, dtype={"video_id": str, "path": str, "class_name": str})
        need = {"shard", "frame_start", "frame_count", "label"}
        if missing := need - set(self.table.columns):
            raise ValueError(f"{table_path}: missing columns {sorted(missing)}")
        self._shard = self.table["shard"].to_numpy()
        self._start = self.table["frame_start"].to_numpy(np.int64)
        self.frame_counts = self.table["frame_count"].to_numpy(np.int64)
        self._maps: dict[str, np.memmap] = {}
        self._offsets: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.table)

    def __getstate__(self) -> dict:  # never pickle open maps into DataLoader workers
        return {**self.__dict__, "_maps": {}, "_offsets": {}}

    def _map(self, shard: str) -> np.ndarray:
        """The shard's frames (raw: (n, size, size, 3)) or bytes (jpeg: 1-D), memory-mapped."""
        if shard not in self._maps:
            path = self.dir / shard
            if self.frame_format == "raw":
                n = path.stat().st_size // shard_nbytes(1, self.size)
                self._maps[shard] = np.memmap(path, FRAME_DTYPE, "r", shape=(n, self.size, self.size, 3))
            else:
                self._maps[shard] = np.memmap(path, np.uint8, "r")
                self._offsets[shard] = np.load(offsets_path(path))
        return self._maps[shard]

    def _decoded(self, row: int, idx: np.ndarray) -> np.ndarray:
        """Frames ``idx`` (positions within video ``row``) of a jpeg store, each distinct frame decoded once."""
        shard = self._shard[row]
        data, first = self._map(shard), self._start[row]
        offs = self._offsets[shard]
        unique, inverse = np.unique(idx, return_inverse=True)
        frames = decode_jpegs([np.array(data[offs[first + i] : offs[first + i + 1]]) for i in unique])
        return frames[inverse] if len(unique) < len(idx) else frames

    def video(self, row: int) -> np.ndarray:
        """All frames of video ``row`` (position in videos.csv), (t, h, w, 3) uint8: a read-only view (raw)
        or freshly decoded frames (jpeg)."""
        if self.frame_format == "jpeg":
            return self._decoded(row, np.arange(self.frame_counts[row]))
        start = self._start[row]
        return self._map(self._shard[row])[start : start + self.frame_counts[row]]

    def frames(self, row: int, start: int, length: int) -> np.ndarray:
        """``length`` frames from ``start``, the last frame repeated past the end: a (t, h, w, 3) copy."""
        count = int(self.frame_counts[row])
        if not 0 <= start < count:
            raise IndexError(f"video row {row}: start {start} outside [0, {count})")
        idx = np.minimum(np.arange(start, start + length), count - 1)
        if self.frame_format == "jpeg":  # only the clip's frames are decoded, not the whole video
            return self._decoded(row, idx)
        v = self.video(row)
        if idx[-1] == start + length - 1:  # no padding needed: one contiguous slice
            return np.array(v[start : start + length])  # a private, writable copy
        return v[idx]  # fancy indexing copies
