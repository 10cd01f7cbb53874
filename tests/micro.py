"""A micro pipeline for the stage tests: a 12-video embedded dataset and the tiny preset shrunk further."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np

from dataclasses import replace

from larp.config import Params, apply_overrides, preset
from larp.data.embedded import generate_embedded
from larp.data.extract import extract_dataset
from larp.data.index import build_index, write_index

MICRO = {
    "tokenizer": {"width": 32, "depth": 1, "heads": 4, "num_tokens": 16, "code_dim": 8, "codebook_size": 64},
    "prior": {"depth": 1, "width": 32, "heads": 4},
    "discriminator": {"width": 32, "depth": 1, "heads": 4},
    "train_tokenizer": {"max_steps": 3, "global_batch": 4, "micro_batch": 4, "checkpoint_every": 100,
                        "log_every": 1, "sample_every": None},
    "generator": {"depth": 1, "width": 32, "heads": 4, "ffn_multiple_of": 16, "vocab_size": 64, "seq_len": 16,
                  "num_classes": 3},
}


def micro_params(*layers: dict) -> Params:
    """The tiny preset with MICRO and then each of ``layers`` (params groups) applied on top."""
    merged: dict = {}
    for layer in (MICRO, *layers):
        for group, values in layer.items():
            merged[group] = {**merged.get(group, {}), **values}
    return apply_overrides(preset("tiny"), merged)


def make_frames(root: Path) -> Path:
    """3 classes x (3 train + 1 test) videos of 16-20 frames, extracted at 32 x 32; returns the frames dir."""
    raw, frames = root / "raw", root / "frames"
    generate_embedded(raw, replace(preset("tiny").embedded, num_classes=3, train_per_class=3, test_per_class=1, min_frames=16,
                                          max_frames=20, height=32, width=40))
    write_index(build_index(raw, workers=1, progress=False), raw / "index.csv")
    extract_dataset(raw, frames, size=32, shard_videos=4, workers=1)
    return frames


def tiny_video(frames: int, seed: int, fmt: str = "avi") -> bytes:
    """A real MPEG-4 part 2 video (container ``fmt``: avi, mp4), 32x24 at 25 fps, ``frames`` frames of noise."""
    buf = io.BytesIO()
    rng = np.random.default_rng(seed)
    with av.open(buf, "w", format=fmt) as out:
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        for _ in range(frames):
            img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(s.encode())
    return buf.getvalue()
