"""Extraction speed per core: `larp.data.extract_frames` against the ffmpeg CLI on the same file.

Both decode the same UCF-like video (320x240 MPEG-4 AVI, 25 fps) with one thread, scale the short side to
128 and centre-crop 128x128 to RGB. ffmpeg scales in YUV with swscale (bilinear); we scale decoded RGB with
torchvision's antialiased kernel (LARP's transform). Goal: ours >= 0.8x ffmpeg's frames/s.

    python benchmarks/bench_extract.py [--frames 300] [--repeats 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from larp.config import preset
from larp.data.embedded import render, write_video
from larp.data.extract import extract_dataset, extract_frames


def ucf_like_video(path: Path, frames: int) -> None:
    """A moving shape over a scrolling noise texture: detail and motion close to a UCF-101 clip."""
    params = dataclasses.replace(preset("tiny").embedded, height=240, width=320, min_frames=frames, max_frames=frames)
    video = render(params, "BouncingBall", 1, 1).astype(np.int16)
    texture = np.random.default_rng(0).integers(-24, 25, (240, 640, 3), dtype=np.int16)
    texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1)) // 2  # some spatial correlation
    for t in range(frames):
        video[t] += texture[:, 2 * t % 320 : 2 * t % 320 + 320]
    write_video(path, np.clip(video, 0, 255).astype(np.uint8), fps=25, qscale=4)


def run_ffmpeg(path: Path, size: int, limit: int | None = None) -> int:
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-threads",
        "1",
        "-filter_threads",
        "1",
        "-i",
        str(path),
        *(["-frames:v", str(limit)] if limit else []),
        "-vf",
        f"scale=-2:{size}:flags=bilinear,crop={size}:{size}",
        "-f",
        "rawvideo",
        "-pix_fmt",
        "rgb24",
        "-threads",
        "1",
        "-",
    ]
    out = subprocess.run(cmd, check=True, capture_output=True).stdout
    return len(out) // (size * size * 3)


def best_fps(fn, repeats: int) -> tuple[float, int]:
    best, n = float("inf"), 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        best = min(best, time.perf_counter() - t0)
    return n / best, n


def stage_fps(video: Path, tmp: Path, size: int, copies: int, workers: int) -> float:
    """Frames/s of the whole `larp extract` stage (pool, shards, tables) on ``copies`` of the video."""
    raw = tmp / f"raw{workers}"
    (raw / "UCF-101").mkdir(parents=True)
    paths = []
    for i in range(copies):
        (raw / "UCF-101" / f"v{i}.avi").symlink_to(video)
        paths.append(f"UCF-101/v{i}.avi")
    pd.DataFrame({"video_id": [f"v{i}" for i in range(copies)], "path": paths}).to_csv(
        raw / "index.csv", index=False
    )
    t0 = time.perf_counter()
    report = extract_dataset(raw, tmp / f"frames{workers}", size=size, shard_videos=4, workers=workers)
    return report["frames"] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--copies", type=int, default=8, help="videos in the whole-stage runs")
    args = ap.parse_args()
    if shutil.which("ffmpeg") is None:
        raise SystemExit("ffmpeg not found on PATH (apt-get install -y ffmpeg)")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "v_Synthetic_g01_c01.avi"
        ucf_like_video(path, args.frames)
        run_ffmpeg(path, args.size), extract_frames(path, args.size)  # warm caches
        ours, n_ours = best_fps(lambda: len(extract_frames(path, args.size)), args.repeats)
        ref, n_ref = best_fps(lambda: run_ffmpeg(path, args.size), args.repeats)
        # the CLI pays process start-up per file; measured on a 1-frame run to report the rate without it
        startup = 1 / best_fps(lambda: run_ffmpeg(path, args.size, limit=1), args.repeats)[0]
        ref_steady = args.frames / (args.frames / ref - startup)
        size_kb = path.stat().st_size / 1024
        stage = {w: stage_fps(path, Path(tmp), args.size, args.copies, w) for w in (1, 2)}
    assert n_ours == n_ref == args.frames, (n_ours, n_ref)
    print(
        f"video: 320x240 mpeg4 avi, {args.frames} frames, {size_kb:.0f} KiB; "
        f"output {args.size}x{args.size} RGB; "
        f"1 thread each, best of {args.repeats}"
    )
    print("| path | frames/s per core |\n|---|---|")
    print(f"| ffmpeg CLI (decode + scale + crop, rgb24) | {ref:.0f} |")
    print(f"| larp extract_frames (PyAV + torchvision antialias) | {ours:.0f} |")
    print(f"| ffmpeg CLI without its start-up ({startup * 1000:.0f} ms per file) | {ref_steady:.0f} |")
    for w, fps in stage.items():
        print(
            f"| `larp extract` stage, {w} worker(s), {args.copies} videos | {fps / w:.0f} (total {fps:.0f}) |"
        )
    print(
        f"ratio ours / ffmpeg = {ours / ref:.2f} (goal >= 0.80); "
        f"without ffmpeg start-up {ours / ref_steady:.2f}"
    )


if __name__ == "__main__":
    main()
