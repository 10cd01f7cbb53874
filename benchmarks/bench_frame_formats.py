"""Frame storage formats: bytes per video and random 16-frame clip reads per second (one core).

Candidates, all holding the same extracted 128x128 RGB frames:
  raw    uint8 shard, memory-mapped; a clip is one slice (what `larp extract` writes)
  png    lossless PNG per frame, concatenated in a shard with an offset index (torchvision.io)
  zlib1  lossless zlib (level 1) over blocks of 16 frames, offset index; a clip inflates 1-2 blocks
  jpeg95 near-lossless JPEG (quality 95) per frame, same layout (libjpeg-turbo through torchvision.io)
on two contents: a UCF-like clip (320x240 MPEG-4 with a moving noise texture, hard to compress) and the
embedded dataset (flat shapes, easy to compress).

    python benchmarks/bench_frame_formats.py [--reads 300]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from torchvision.io import decode_jpeg, decode_png, encode_jpeg, encode_png

sys.path.insert(0, str(Path(__file__).parent))
from bench_extract import ucf_like_video

from larp.config import preset
from larp.data.embedded import render, write_video
from larp.data.extract import extract_frames

UCF_FRAMES = 13320 * 183  # UCF-101: 13,320 clips, about 183 frames each at 25 fps (27 hours)


class Raw:
    name = "raw"

    def __init__(self, frames: np.ndarray, path: Path):
        path.write_bytes(frames.tobytes())
        self.nbytes = path.stat().st_size
        self.map = np.memmap(path, np.uint8, "r", shape=frames.shape)

    def read(self, start: int, n: int) -> np.ndarray:
        return np.array(self.map[start : start + n])


class Encoded:
    """Per-frame compressed images in one shard file + an offset index; a clip decodes n frames."""

    def __init__(self, name: str, frames: np.ndarray, path: Path):
        self.name = name
        enc = (
            (lambda x: encode_png(x, compression_level=6))
            if name == "png"
            else (lambda x: encode_jpeg(x, quality=95))
        )
        blobs = [enc(torch.from_numpy(f).permute(2, 0, 1).contiguous()).numpy().tobytes() for f in frames]
        path.write_bytes(b"".join(blobs))
        self.offsets = np.cumsum([0] + [len(b) for b in blobs])
        self.nbytes = path.stat().st_size
        self.map = np.memmap(path, np.uint8, "r")
        self.decode = decode_png if name == "png" else decode_jpeg

    def read(self, start: int, n: int) -> np.ndarray:
        out = [
            self.decode(torch.from_numpy(np.array(self.map[self.offsets[i] : self.offsets[i + 1]])))
            for i in range(start, start + n)
        ]
        return torch.stack(out).permute(0, 2, 3, 1).numpy()


class Zlib:
    """Blocks of 16 frames, each zlib-compressed (level 1: fast), in one shard + an offset index."""

    name, block = "zlib1", 16

    def __init__(self, frames: np.ndarray, path: Path):
        blobs = [
            zlib.compress(frames[i : i + self.block].tobytes(), 1) for i in range(0, len(frames), self.block)
        ]
        path.write_bytes(b"".join(blobs))
        self.offsets = np.cumsum([0] + [len(b) for b in blobs])
        self.nbytes, self.shape = path.stat().st_size, frames.shape[1:]
        self.map = np.memmap(path, np.uint8, "r")

    def read(self, start: int, n: int) -> np.ndarray:
        first, last = start // self.block, (start + n - 1) // self.block
        raw = b"".join(
            zlib.decompress(self.map[self.offsets[b] : self.offsets[b + 1]]) for b in range(first, last + 1)
        )
        frames = np.frombuffer(raw, np.uint8).reshape(-1, *self.shape)
        return frames[start - first * self.block :][:n].copy()


def reads_per_second(store, total: int, reads: int, length: int = 16) -> float:
    rng = np.random.default_rng(0)
    starts = rng.integers(0, total - length + 1, reads)
    store.read(0, length)
    t0 = time.perf_counter()
    for s in starts:
        store.read(int(s), length)
    return reads / (time.perf_counter() - t0)


def contents(tmp: Path) -> dict[str, np.ndarray]:
    ucf = tmp / "ucf_like.avi"
    ucf_like_video(ucf, 300)
    emb = dataclasses.replace(preset("tiny").embedded, height=240, width=320, min_frames=300, max_frames=300)
    embedded = tmp / "embedded.avi"
    write_video(embedded, render(emb, "SpinningSquare", 1, 1), fps=25)
    return {"UCF-like": extract_frames(ucf, 128), "embedded": extract_frames(embedded, 128)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reads", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        print(
            "| content | format | bytes/frame | MB per 183-frame video | UCF-101 total GB | clip reads/s | "
            "abs err mean / max |\n|---|---|---|---|---|---|---|"
        )
        results = {}
        for content, frames in contents(tmp).items():
            stores = [
                Raw(frames, tmp / "raw.u8"),
                Zlib(frames, tmp / "zlib.bin"),
                Encoded("png", frames, tmp / "png.bin"),
                Encoded("jpeg95", frames, tmp / "jpeg.bin"),
            ]
            for s in stores:
                per_frame = s.nbytes / len(frames)
                rate = reads_per_second(s, len(frames), args.reads)
                err = np.abs(s.read(0, len(frames)).astype(int) - frames)
                results[content, s.name] = (per_frame, rate)
                print(
                    f"| {content} | {s.name} | {per_frame:.0f} | {per_frame * 183 / 1e6:.2f} | "
                    f"{per_frame * UCF_FRAMES / 1e9:.0f} | {rate:.0f} | {err.mean():.2f} / {err.max()} |"
                )
    for content in ("UCF-like", "embedded"):
        (rb, rr), (pb, pr) = results[content, "raw"], results[content, "png"]
        print(f"{content}: raw vs png: {rb / pb:.1f}x the bytes, {rr / pr:.0f}x the clip reads/s")


if __name__ == "__main__":
    main()
