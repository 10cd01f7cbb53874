"""The extracted-frames store: raw uint8 shards located by ``videos.csv``.

Shard ``shard-KKKKK.u8`` is the frames of up to ``data.shard_videos`` videos, concatenated in index
order, as C-order uint8 (n, size, size, 3) with no header; ``videos.csv`` gives each video's ``shard``,
``frame_start`` and ``frame_count``, ``report.json`` the ``size``. Raw bytes were chosen by measurement
(benchmarks/bench_frame_formats.py, 128x128, one core): a random 16-frame clip read is a memory-mapped
slice, ~10,000 reads/s, exact; lossless PNG or zlib per frame/block is 1.4-2.9x smaller but ~30-50 reads/s,
and JPEG q95 is ~7x smaller, ~100-150 reads/s, but not exact (max error ~50 grey levels at colour edges).
The price is disk: 48 KiB per frame, ~120 GB for UCF-101 at 128x128. Reading is lazy and per process:
each process maps a shard the first time it needs it, and pickling (DataLoader workers) drops the maps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

FRAME_DTYPE = np.dtype(np.uint8)


def shard_name(k: int, ext: str) -> str:
    return f"shard-{k:05d}{ext}"


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
        self.size: int = int(json.loads(report_path.read_text())["size"])
        self.table = pd.read_csv(table_path, dtype={"video_id": str, "path": str, "class_name": str})
        need = {"shard", "frame_start", "frame_count", "label"}
        if missing := need - set(self.table.columns):
            raise ValueError(f"{table_path}: missing columns {sorted(missing)}")
        self._shard = self.table["shard"].to_numpy()
        self._start = self.table["frame_start"].to_numpy(np.int64)
        self.frame_counts = self.table["frame_count"].to_numpy(np.int64)
        self._maps: dict[str, np.memmap] = {}

    def __len__(self) -> int:
        return len(self.table)

    def __getstate__(self) -> dict:  # never pickle open maps into DataLoader workers
        return {**self.__dict__, "_maps": {}}

    def _map(self, shard: str) -> np.ndarray:
        if shard not in self._maps:
            path = self.dir / shard
            n = path.stat().st_size // shard_nbytes(1, self.size)
            self._maps[shard] = np.memmap(path, FRAME_DTYPE, "r", shape=(n, self.size, self.size, 3))
        return self._maps[shard]

    def video(self, row: int) -> np.ndarray:
        """All frames of video ``row`` (position in videos.csv): a read-only (t, h, w, 3) uint8 view."""
        start = self._start[row]
        return self._map(self._shard[row])[start : start + self.frame_counts[row]]

    def frames(self, row: int, start: int, length: int) -> np.ndarray:
        """``length`` frames from ``start``, the last frame repeated past the end: a (t, h, w, 3) copy."""
        v = self.video(row)
        if not 0 <= start < len(v):
            raise IndexError(f"video row {row}: start {start} outside [0, {len(v)})")
        idx = np.minimum(np.arange(start, start + length), len(v) - 1)
        if idx[-1] == start + length - 1:  # no padding needed: one contiguous slice
            return np.array(v[start : start + length])  # a private, writable copy
        return v[idx]  # fancy indexing copies
