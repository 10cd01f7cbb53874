"""Videos for people: a PNG grid of frames and MP4 files (training samples, generated samples)."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import torch
from einops import rearrange
from torchvision.io import encode_png

from larp.files import atomic_path, atomic_write_bytes


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """float (b, 3, t, h, w) in [0, 1] -> uint8 (b, t, h, w, 3), clamped and rounded to nearest.

    (The official sample.py computes FVD on the float clips and truncates only in the saved mp4s;
    rounding keeps uint8 within half a level of the float clip.)
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"video: expected float (b, 3, t, h, w), got {tuple(video.shape)}")
    x = video.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return rearrange(x, "b c t h w -> b t h w c").cpu().numpy()


def grid_png(videos: np.ndarray, path: str | Path, max_frames: int = 8) -> None:
    """One row per video, ``max_frames`` evenly spaced frames per row; uint8 (b, t, h, w, 3)."""
    b, t = videos.shape[:2]
    picks = np.linspace(0, t - 1, min(t, max_frames)).round().astype(int)
    grid = rearrange(torch.from_numpy(np.ascontiguousarray(videos[:, picks])), "b t h w c -> c (b h) (t w)")
    atomic_write_bytes(path, encode_png(grid.contiguous()).numpy().tobytes())


def write_mp4(video: np.ndarray, path: str | Path, fps: int = 8) -> None:
    """uint8 (t, h, w, 3) -> H.264-free MPEG-4 in MP4 (plays everywhere, needs no extra codec)."""
    t, h, w, _ = video.shape
    # yuv420p needs even sizes: pad by repeating the last row/column
    pad_h, pad_w = h % 2, w % 2
    if pad_h or pad_w:
        video = np.pad(video, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    with atomic_path(path) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        stream.codec_context.qscale = 2
        stream.codec_context.flags |= av.codec.context.Flags.qscale
        for img in video:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        out.mux(stream.encode())


def webm_bytes(video: np.ndarray, fps: int = 8, min_side: int = 96) -> bytes:
    """uint8 (t, h, w, 3) -> a VP8 WebM in memory, the frames enlarged by pixel repetition to at least
    ``min_side`` pixels (browsers blur small videos when they scale them up). VP8 is what every browser
    plays, Chromium builds without proprietary codecs included."""
    t, h, w, _ = video.shape
    k = max(1, -(-min_side // min(h, w)))
    video = np.repeat(np.repeat(video, k, axis=1), k, axis=2)
    video = np.pad(video, ((0, 0), (0, video.shape[1] % 2), (0, video.shape[2] % 2), (0, 0)), mode="edge")
    buf = io.BytesIO()
    with av.open(buf, "w", format="webm") as out:
        stream = out.add_stream("libvpx", rate=fps)
        stream.width, stream.height, stream.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        stream.options = {"crf": "10", "b:v": "1M", "deadline": "good", "cpu-used": "4"}
        for img in video:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")))
        out.mux(stream.encode())
    return buf.getvalue()
