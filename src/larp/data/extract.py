"""`larp extract`: decode every video once, resize + centre-crop, store the frames in shards (raw or JPEG).

The resize is LARP's: torchvision ``Resize(size, antialias=True)`` (bilinear, short side) then
``CenterCrop(size)``, applied to the decoded RGB frames. We run torchvision's uint8 kernel, which is within
one grey level of LARP's float path and several times faster (docs/protocols.md#frame-extraction).

Output (see :mod:`larp.data.frames` for the shard format)::

    <out>/shard-00000.u8      frames of the first shard_videos videos (and .json: its record); with
                              frame_format jpeg: shard-00000.jpg + shard-00000.offsets.npy
    <out>/videos.csv          index.csv rows that decoded + shard, frame_start, frame_count
    <out>/report.json         counts, and every skipped file with the reason

Shards are written in index order, each one atomically, so a killed run resumes shard by shard and ends
with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import re
from pathlib import Path

import av
import numpy as np
import pandas as pd
import torch
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from larp.data.frames import FRAME_DTYPE, OFFSETS_EXT, SHARD_EXT, offsets_path, shard_name, shard_nbytes
from larp.files import atomic_path, atomic_write_json, atomic_write_text

CHUNK = 32  # frames resized per call: bounds memory on long videos, keeps the kernel vectorised


class VideoDecodeError(ValueError):
    """A file could not be decoded as a complete video; the message names the file and the reason.

    ``retry``: the failure says nothing about the file (the machine was short of memory), so a later run
    tries it again instead of reusing the skip.
    """

    def __init__(self, path: Path, reason: str, retry: bool = False):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason, self.retry = path, reason, retry


def resize_crop(frames: np.ndarray, size: int) -> np.ndarray:
    """(t, h, w, 3) uint8 -> (t, size, size, 3) uint8: short side to ``size`` (bilinear, antialias), crop."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)  # t c h w, channels-last memory: the fast uint8 kernel
    x = TF.resize(x, [size], antialias=True)
    x = TF.center_crop(x, [size, size])
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def _riff_truncated(path: Path) -> str | None:
    """For RIFF files (AVI): the reason if the file is shorter than its header says, else None."""
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF":
        return None
    declared = int.from_bytes(head[4:8], "little") + 8
    actual = path.stat().st_size
    return f"truncated: {actual} of {declared} bytes" if actual < declared else None


def _check_pixels(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise VideoDecodeError(path, f"{width}x{height} = {width * height} pixels per frame, above the limit of "
                                     f"{max_pixels} (the max_pixels storage parameter); not decoded")


def decode_frames(path: str | Path, max_pixels: int | None = None):
    """Yield the decoded RGB frames of a video as uint8 (h, w, 3); raises VideoDecodeError on bad files.

    A file that ends before the frame count its container declares (truncated) is an error too, and so are
    frames of more than ``max_pixels`` pixels: refused from the stream's header, before any is decoded (a
    16000 x 16000 video took ~5 GB to decode), and checked again on each frame.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise VideoDecodeError(path, "empty file (0 bytes)")
        if reason := _riff_truncated(path):
            raise VideoDecodeError(path, reason)
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoDecodeError(path, "no video stream")
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1  # parallelism comes from processes, one per core
            _check_pixels(path, stream.codec_context.width, stream.codec_context.height, max_pixels)
            declared, n, is_riff = stream.frames, 0, container.format.name == "avi"
            for frame in container.decode(stream):
                _check_pixels(path, frame.width, frame.height, max_pixels)
                n += 1
                yield frame.to_ndarray(format="rgb24")
    except MemoryError as e:  # (PyAV's ENOMEM error is one too)
        raise VideoDecodeError(path, f"out of memory while decoding ({e}); retried on the next run", retry=True) from e
    except (av.error.FFmpegError, OSError) as e:
        raise VideoDecodeError(path, f"cannot decode: {e.strerror or e}") from e
    if n == 0:
        raise VideoDecodeError(path, "no frames decoded")
    # AVI frame counts include Xvid's dropped "N-VOP" frames, so only other containers are checked this way
    if declared and n < declared and not is_riff:
        raise VideoDecodeError(path, f"truncated: decoded {n} of {declared} frames")


def extract_frames(path: str | Path, size: int = 128, max_pixels: int | None = None) -> np.ndarray:
    """One video decoded, resized and centre-cropped as `larp extract` does: uint8 (t, size, size, 3)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    out, chunk = [], []
    for img in decode_frames(path, max_pixels):
        chunk.append(img)
        if len(chunk) == CHUNK:
            out.append(resize_crop(np.stack(chunk), size))
            chunk = []
    if chunk:
        out.append(resize_crop(np.stack(chunk), size))
    return np.concatenate(out)


# --------------------------------------------------------------------------------------------------
# the stage


def _init_worker() -> None:
    torch.set_num_threads(1)


def encode_jpegs(frames: np.ndarray, quality: int) -> tuple[bytes, np.ndarray]:
    """(t, h, w, 3) uint8 -> the frames as concatenated JPEG bytes and each frame's byte length."""
    from torchvision.io import encode_jpeg

    blobs = encode_jpeg(list(torch.from_numpy(frames).permute(0, 3, 1, 2)), quality=quality)
    return b"".join(b.numpy().tobytes() for b in blobs), np.array([len(b) for b in blobs], dtype=np.int64)


def _decode_job(job: tuple[str, int, str, int, int | None]) -> tuple[np.ndarray | tuple | None, dict]:
    """One video for the shard writer: raw frames, or (JPEG bytes, each frame's byte length), or None when
    it is skipped; and the entries of its record: the version of its source (taken before the decode, so
    that a file replaced meanwhile is redone next time) and why it was skipped."""
    path, size, frame_format, quality, max_pixels = job
    entries: dict = {"source": _source(Path(path))}
    try:
        frames = extract_frames(path, size, max_pixels)
    except MemoryError as e:  # resizing a long or large video
        return None, {**entries, "error": f"out of memory ({e}); retried on the next run", "retry": True}
    except VideoDecodeError as e:
        return None, {**entries, "error": e.reason, **({"retry": True} if e.retry else {})}
    if frame_format == "jpeg":  # encoded here, in the worker processes, where the parallelism is
        return encode_jpegs(frames, quality), entries
    return frames, entries


def _source(path: Path) -> dict | None:
    """What identifies a source file's version without reading it: its size and modification time."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _shard_is_valid(out_dir: Path, k: int, video_ids: list[str], sources: list[dict | None], size: int,
                    frame_format: str, quality: int, max_pixels: int | None) -> dict | None:
    """The shard's record if its files exist, match this index slice, its source files as they are now
    (size, mtime), the format and pixel limit, skipped no video for a passing reason (memory), and have the
    expected length."""
    rec_path, data_path = out_dir / shard_name(k, ".json"), out_dir / shard_name(k, SHARD_EXT[frame_format])
    if not (rec_path.is_file() and data_path.is_file()):
        return None
    try:
        rec = json.loads(rec_path.read_text())
    except ValueError:
        return None
    if rec.get("video_ids") != video_ids or rec.get("size") != size or rec.get("max_pixels") != max_pixels:
        return None
    if [v.get("source") for v in rec["videos"]] != sources or any(v.get("retry") for v in rec["videos"]):
        return None
    if rec.get("frame_format", "raw") != frame_format or (frame_format == "jpeg" and rec.get("jpeg_quality") != quality):
        return None
    n = sum(v["frame_count"] for v in rec["videos"])
    if frame_format == "raw":
        return rec if data_path.stat().st_size == shard_nbytes(n, size) else None
    try:
        offsets = np.load(offsets_path(data_path))
    except (OSError, ValueError):
        return None
    return rec if len(offsets) == n + 1 and offsets[-1] == data_path.stat().st_size else None


def extract_dataset(raw_dir: Path, out_dir: Path, size: int, shard_videos: int, workers: int,
                    frame_format: str = "raw", jpeg_quality: int = 95, max_pixels: int | None = None) -> dict:
    """Extract every video listed in ``raw_dir/index.csv`` into ``out_dir``; returns the report dict.

    Videos that cannot be decoded (corrupt, truncated, empty, not a video, frames above ``max_pixels``
    pixels) are skipped and listed in ``report.json``. Existing valid shards are kept, so a re-run after a
    kill resumes where it stopped; a shard is extracted again when one of its source files changed (size or
    mtime) or one of its videos was skipped for lack of memory. A video that decodes to another frame count
    than index.csv says is listed in the report, and videos.csv's ``num_frames`` is the stored count.
    ``frame_format``: "raw" (exact uint8) or "jpeg" (at ``jpeg_quality``), see :mod:`larp.data.frames`.
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    for name, value, low in (("size", size, 1), ("shard_videos", shard_videos, 1), ("workers", workers, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    if frame_format not in SHARD_EXT:
        raise ValueError(f"frame_format must be one of {sorted(SHARD_EXT)}, got {frame_format!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    if max_pixels is not None and max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1 or None, got {max_pixels}")
    ext = SHARD_EXT[frame_format]
    index_path = raw_dir / "index.csv"
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path}: index table not found (run `larp download` first)")
    index = pd.read_csv(index_path, dtype={"video_id": str, "path": str})
    missing = {"video_id", "path"} - set(index.columns)
    if missing:
        raise ValueError(f"{index_path}: missing columns {sorted(missing)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(".*.tmp"):  # temp files of a killed run
        stale.unlink()

    n_shards = max(1, -(-len(index) // shard_videos))
    slices = [index.iloc[k * shard_videos : (k + 1) * shard_videos] for k in range(n_shards)]
    # files of shards beyond this index's count (a smaller index than before) or of the other frame format
    keep = {ext, ".json"} | ({OFFSETS_EXT} if frame_format == "jpeg" else set())
    for old in out_dir.glob("shard-*"):
        if (m := re.fullmatch(r"shard-(\d{5})(\..+)", old.name)) and (int(m.group(1)) >= n_shards
                                                                   or m.group(2) not in keep):
            old.unlink()
    records: dict[int, dict] = {}
    for k, sl in enumerate(slices):
        sources = [_source(raw_dir / p) for p in sl["path"]]
        rec = _shard_is_valid(out_dir, k, sl["video_id"].tolist(), sources, size, frame_format, jpeg_quality,
                              max_pixels)
        if rec is not None:
            records[k] = rec
    pending = [k for k in range(n_shards) if k not in records]
    jobs = [(str(raw_dir / p), size, frame_format, jpeg_quality, max_pixels)
            for k in pending for p in slices[k]["path"]]
    index_frames = index["num_frames"] if "num_frames" in index.columns else pd.Series(pd.NA, index=index.index)

    bar = tqdm(total=len(index), initial=len(index) - len(jobs), desc="extract", unit="video")
    pool = mp.get_context("fork").Pool(workers, initializer=_init_worker) if workers > 1 and jobs else None
    try:
        results = pool.imap(_decode_job, jobs) if pool else map(_decode_job, jobs)
        for k in pending:
            videos, start, lengths = [], 0, [np.zeros(1, np.int64)]
            data_path = out_dir / shard_name(k, ext)
            with atomic_path(data_path) as tmp, open(tmp, "wb") as f:
                for row, vid, path in zip(slices[k].index, slices[k]["video_id"], slices[k]["path"]):
                    out, entries = next(results)
                    if out is None:
                        videos.append({"video_id": vid, "path": path, **entries, "frame_count": 0})
                    else:
                        if frame_format == "jpeg":
                            blob, sizes = out
                            f.write(blob)
                            lengths.append(sizes)
                            n = len(sizes)
                        else:
                            assert out.dtype == FRAME_DTYPE and out.shape[1:] == (size, size, 3)
                            f.write(out.tobytes())
                            n = len(out)
                        videos.append({"video_id": vid, "path": path, **entries, "frame_start": start,
                                       "frame_count": n})
                        if not pd.isna(expected := index_frames[row]) and int(expected) != n:
                            videos[-1]["index_frames"] = int(expected)
                        start += n
                    bar.update(1)
            if frame_format == "jpeg":
                with atomic_path(offsets_path(data_path)) as tmp, open(tmp, "wb") as f:
                    np.save(f, np.cumsum(np.concatenate(lengths)))
            # the record last: it marks the shard complete
            records[k] = {"size": size, "frame_format": frame_format, "max_pixels": max_pixels,
                          "video_ids": slices[k]["video_id"].tolist(), "videos": videos}
            if frame_format == "jpeg":
                records[k]["jpeg_quality"] = jpeg_quality
            atomic_write_json(out_dir / shard_name(k, ".json"), records[k])
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()

    # the tables, from the shard records only: identical bytes whether or not the run was interrupted
    rows, skipped, mismatches = [], [], []
    for k in range(n_shards):
        for v in records[k]["videos"]:
            if "error" in v:
                skipped.append({"path": v["path"], "reason": v["error"]})
            else:
                rows.append((v["video_id"], shard_name(k, ext), v["frame_start"], v["frame_count"]))
            if "index_frames" in v:
                mismatches.append({"path": v["path"], "index_frames": v["index_frames"],
                                   "decoded_frames": v["frame_count"]})
    where = pd.DataFrame(rows, columns=["video_id", "shard", "frame_start", "frame_count"])
    videos_table = index.merge(where, on="video_id", how="inner", validate="one_to_one")
    if "num_frames" in videos_table.columns:  # what the clip stages read: the frames that are stored
        videos_table["num_frames"] = videos_table["frame_count"]
    atomic_write_text(out_dir / "videos.csv", videos_table.to_csv(index=False))
    report = {
        "videos": len(index),
        "extracted": len(videos_table),
        "skipped": len(skipped),
        "frames": int(videos_table["frame_count"].sum()),
        "size": size,
        "shards": n_shards,
        "frame_format": frame_format,
        "jpeg_quality": jpeg_quality if frame_format == "jpeg" else None,
        "format": ("raw uint8 (frames, size, size, 3) per shard" if frame_format == "raw" else
                   f"one JPEG (quality {jpeg_quality}) per frame, concatenated per shard, byte offsets in "
                   f"shard-*{OFFSETS_EXT}") + "; rows located by videos.csv",
        "skipped_files": skipped,
        "max_pixels": max_pixels,
        "frame_count_mismatches": mismatches,
    }
    atomic_write_json(out_dir / "report.json", report)
    print(
        f"extracted {report['extracted']} of {report['videos']} videos ({report['frames']} frames, "
        f"{n_shards} shards); skipped {report['skipped']}" + (" (see report.json)" if skipped else "")
    )
    if mismatches:
        print(f"{len(mismatches)} videos decoded to fewer frames (or more) than index.csv says; the stored counts "
              f"are used (see report.json: frame_count_mismatches)")
    return report
