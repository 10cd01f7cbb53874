"""Loader throughput: training clips (16 x 128 x 128, random window + flip) per second per worker.

Writes a frames dir in the `larp extract` format (raw uint8 or JPEG shards, videos.csv, report.json) and
reads it through ClipDataset + DataLoader with 0 (main process), 1 and 2 workers. Goal: >= 20 clips/s per core.
The frames are smooth random images (8x8 noise upsampled, plus grain), so JPEG sizes are video-like.

    python benchmarks/bench_loader.py [--videos 48] [--frames 64] [--epochs 3] [--frame-format raw|jpeg]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from larp.data.clips import ClipDataset
from larp.data.extract import encode_jpegs
from larp.data.frames import SHARD_EXT, offsets_path, shard_name

GOAL = 20.0


def write_frames_dir(root: Path, videos: int, frames: int, size: int, shard_videos: int = 16,
                     frame_format: str = "raw") -> int:
    """The frames dir; returns the bytes of its shard files."""
    rng = np.random.default_rng(0)
    rows, nbytes, ext = [], 0, SHARD_EXT[frame_format]
    for k in range(-(-videos // shard_videos)):
        ids = range(k * shard_videos, min(videos, (k + 1) * shard_videos))
        coarse = rng.integers(0, 256, (len(ids) * frames, 8, 8, 3)).repeat(size // 8, 1).repeat(size // 8, 2)
        data = np.clip(coarse + rng.normal(0, 4, coarse.shape), 0, 255).astype(np.uint8)
        path = root / shard_name(k, ext)
        if frame_format == "jpeg":
            blob, lengths = encode_jpegs(data, quality=95)
            path.write_bytes(blob)
            np.save(offsets_path(path), np.concatenate([[0], np.cumsum(lengths)]))
        else:
            path.write_bytes(data.tobytes())
        nbytes += path.stat().st_size
        rows += [
            {
                "video_id": f"v{v}",
                "label": v % 10,
                "split1": "train",
                "shard": shard_name(k, ext),
                "frame_start": j * frames,
                "frame_count": frames,
            }
            for j, v in enumerate(ids)
        ]
    pd.DataFrame(rows).to_csv(root / "videos.csv", index=False)
    (root / "report.json").write_text(json.dumps({"size": size, "frame_format": frame_format}))
    return nbytes


def clips_per_second(ds: ClipDataset, workers: int, epochs: int, batch: int) -> float:
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )
    for _ in loader:  # warm-up epoch: worker start, page cache
        pass
    n, t0 = 0, time.perf_counter()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for x, _ in loader:
            assert x.shape[1:] == (3, 16, ds.store.size, ds.store.size)
            n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=48)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--frame-format", default="raw", choices=sorted(SHARD_EXT))
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        nbytes = write_frames_dir(Path(tmp), args.videos, args.frames, args.size, frame_format=args.frame_format)
        ds = ClipDataset(tmp, split="train", mode="train", seed=0)
        print(
            f"{args.videos} videos x {args.frames} frames at {args.size}^2, {args.frame_format} "
            f"({nbytes / (args.videos * args.frames):,.0f} bytes/frame), batch {args.batch}, "
            f"{args.epochs} epochs, torch threads 1"
        )
        print("| workers | clips/s | clips/s per worker |\n|---|---|---|")
        per_core = []
        for workers in (0, 1, 2):
            rate = clips_per_second(ds, workers, args.epochs, args.batch)
            per = rate / max(workers, 1)
            per_core.append(per)
            print(f"| {workers or 'main process'} | {rate:.0f} | {per:.0f} |")
    print(f"ratio clips/s per core / goal ({GOAL:.0f}) = {min(per_core) / GOAL:.1f} (worst row; goal >= 1.0)")


if __name__ == "__main__":
    main()
