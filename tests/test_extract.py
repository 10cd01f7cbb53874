"""Frame extraction: torchvision-exact resize + crop, bad files reported and skipped, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torchvision import transforms as T

import larp.data.extract as ex
from larp.config import preset
from larp.data.embedded import generate_embedded, render, write_video
from larp.data.extract import VideoDecodeError, decode_frames, extract_dataset, extract_frames
from larp.data.frames import FrameStore
from larp.data.index import build_index, write_index
from larp.files import sha256_file, sha256_tree

SMALL = replace(preset("tiny").embedded, num_classes=3, train_per_class=2, test_per_class=2, min_frames=8, max_frames=14)


def reference(frames: np.ndarray, size: int) -> np.ndarray:
    """LARP's transform of decoded frames: float /255, Resize(size, antialias) + CenterCrop, times 255."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = T.CenterCrop(size)(T.Resize(size, antialias=True)(x))
    return x.permute(0, 2, 3, 1).numpy() * 255


@pytest.mark.parametrize("hw,size", [((240, 320), 128), ((320, 240), 128), ((48, 64), 32)])
def test_extract_frames_matches_torchvision(tmp_path, hw, size):
    h, w = hw
    params = replace(preset("tiny").embedded, height=h, width=w, min_frames=12, max_frames=12)
    path = tmp_path / "v.avi"
    write_video(path, render(params, "SpinningSquare", 1, 1), fps=25)
    got = extract_frames(path, size)
    decoded = np.stack(list(decode_frames(path)))
    assert got.dtype == np.uint8 and got.shape == (12, size, size, 3)
    diff = np.abs(got.astype(np.float64) - reference(decoded, size))
    assert diff.mean() <= 1.0 and diff.max() <= 8.0, (diff.mean(), diff.max())


def make_raw(root: Path, bad: bool = False) -> Path:
    """The small embedded dataset + index.csv; with ``bad``, four broken files appended to the index."""
    generate_embedded(root, SMALL)
    index = build_index(root, progress=False, workers=1)
    if bad:
        good = root / "UCF-101/BouncingBall/v_BouncingBall_g01_c01.avi"
        broken = {
            "zero": b"",
            "text": b"this is not a video\n" * 50,
            "truncated": good.read_bytes()[: good.stat().st_size // 2],
            "garbage": bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
        }
        rows = []
        for i, (name, data) in enumerate(broken.items()):
            rel = f"UCF-101/BouncingBall/v_BouncingBall_g{90 + i}_c01.avi"
            (root / rel).write_bytes(data)
            rows.append({**index.iloc[0].to_dict(), "video_id": f"v_BouncingBall_g{90 + i}_c01", "path": rel})
        index = pd.concat([index.iloc[:3], pd.DataFrame(rows), index.iloc[3:]], ignore_index=True)
    write_index(index, root / "index.csv")
    return root


def test_extract_dataset_layout_and_contents(tmp_path):
    raw = make_raw(tmp_path / "raw")
    report = extract_dataset(raw, tmp_path / "frames", size=32, shard_videos=5, workers=1)
    index = pd.read_csv(raw / "index.csv")
    assert report["extracted"] == len(index) == 12 and report["skipped"] == 0
    assert sorted(p.name for p in (tmp_path / "frames").glob("shard-*.u8")) == [
        f"shard-0000{k}.u8" for k in range(3)
    ]
    store = FrameStore(tmp_path / "frames")
    assert store.size == 32 and list(store.table["video_id"]) == list(index["video_id"])
    assert (store.frame_counts == index["num_frames"].to_numpy()).all()  # every frame decoded
    for row in (0, 6, 11):
        np.testing.assert_array_equal(store.video(row), extract_frames(raw / index["path"][row], 32))


def test_bad_files_reported_and_skipped(tmp_path):
    raw = make_raw(tmp_path / "raw", bad=True)
    report = extract_dataset(raw, tmp_path / "frames", size=32, shard_videos=4, workers=2)
    assert report["videos"] == 16 and report["extracted"] == 12 and report["skipped"] == 4
    on_disk = json.loads((tmp_path / "frames" / "report.json").read_text())
    assert on_disk == report
    reasons = {Path(s["path"]).stem: s["reason"] for s in report["skipped_files"]}
    assert set(reasons) == {f"v_BouncingBall_g{90 + i}_c01" for i in range(4)}
    assert "empty" in reasons["v_BouncingBall_g90_c01"] and "truncated" in reasons["v_BouncingBall_g92_c01"]
    table = pd.read_csv(tmp_path / "frames" / "videos.csv")
    assert not table["video_id"].str.contains("_g9").any() and len(table) == 12
    for p in ("zero", "text"):
        with pytest.raises(VideoDecodeError, match="v_BouncingBall_g9"):
            extract_frames(raw / f"UCF-101/BouncingBall/v_BouncingBall_g{90 if p == 'zero' else 91}_c01.avi")


def test_kill_and_resume_gives_identical_bytes(tmp_path, monkeypatch):
    raw = make_raw(tmp_path / "raw", bad=True)
    extract_dataset(
        raw, tmp_path / "full", size=32, shard_videos=4, workers=2
    )  # resumed below with 1 worker: same bytes

    calls = {"n": 0}
    real = ex._decode_job

    def dies_in_second_shard(job):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt  # like Ctrl-C / SIGTERM mid-shard
        return real(job)

    monkeypatch.setattr(ex, "_decode_job", dies_in_second_shard)
    with pytest.raises(KeyboardInterrupt):
        extract_dataset(raw, tmp_path / "resumed", size=32, shard_videos=4, workers=1)
    done = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert done == ["shard-00000.json", "shard-00000.u8"]  # no partial shard, no tables yet
    (tmp_path / "resumed" / ".shard-00001.u8.abc.tmp").write_bytes(b"left by a SIGKILL")
    first = (tmp_path / "resumed" / "shard-00000.u8").stat().st_mtime_ns

    monkeypatch.setattr(ex, "_decode_job", lambda job: (calls.__setitem__("n", calls["n"] + 1), real(job))[1])
    calls["n"] = 0
    extract_dataset(raw, tmp_path / "resumed", size=32, shard_videos=4, workers=1)
    assert calls["n"] == 12  # shard 0 (4 videos) was not decoded again
    assert (tmp_path / "resumed" / "shard-00000.u8").stat().st_mtime_ns == first
    assert sha256_tree(tmp_path / "resumed") == sha256_tree(tmp_path / "full")
    assert not list((tmp_path / "resumed").glob(".*"))


KILL_SCRIPT = """
import sys, time
import larp.data.extract as ex
real = ex._decode_job
def slow(job):
    time.sleep(0.3)
    return real(job)
ex._decode_job = slow
ex.extract_dataset(sys.argv[1], sys.argv[2], size=32, shard_videos=3, workers=1)
"""


def test_sigkill_then_rerun_gives_identical_bytes(tmp_path):
    raw = make_raw(tmp_path / "raw")
    extract_dataset(raw, tmp_path / "full", size=32, shard_videos=3, workers=1)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(raw), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 50
    while not (out / "shard-00000.json").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "shard-00000.json").exists() and not (out / "videos.csv").exists()
    extract_dataset(raw, out, size=32, shard_videos=3, workers=1)
    assert sha256_tree(out) == sha256_tree(tmp_path / "full")
    assert sha256_file(out / "videos.csv") == sha256_file(tmp_path / "full" / "videos.csv")


def test_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="index.csv"):
        extract_dataset(tmp_path, tmp_path / "out", size=32, shard_videos=4, workers=1)
    with pytest.raises(ValueError, match="shard_videos"):
        extract_dataset(tmp_path, tmp_path / "out", size=32, shard_videos=0, workers=1)
    with pytest.raises(ValueError, match="size"):
        extract_frames(tmp_path / "x.avi", size=0)


# ---- JPEG frame storage (Kinetics-600's default) ----


def test_jpeg_store_reads_what_raw_stores_within_jpeg_error(tmp_path):
    raw = make_raw(tmp_path / "raw", bad=True)
    extract_dataset(raw, tmp_path / "raw_frames", size=32, shard_videos=5, workers=1)
    report = extract_dataset(raw, tmp_path / "jpeg", size=32, shard_videos=5, workers=2, frame_format="jpeg",
                             jpeg_quality=95)
    assert report["frame_format"] == "jpeg" and report["jpeg_quality"] == 95 and report["skipped"] == 4
    names = sorted(p.name for p in (tmp_path / "jpeg").glob("shard-*"))
    assert names == [f"shard-0000{k}{e}" for k in range(4) for e in (".jpg", ".json", ".offsets.npy")]
    exact, lossy = FrameStore(tmp_path / "raw_frames"), FrameStore(tmp_path / "jpeg")
    assert lossy.frame_format == "jpeg" and lossy.table.equals(
        exact.table.assign(shard=exact.table["shard"].str.replace(".u8", ".jpg")))
    raw_bytes = sum(p.stat().st_size for p in (tmp_path / "raw_frames").glob("*.u8"))
    jpeg_bytes = sum(p.stat().st_size for p in (tmp_path / "jpeg").glob("*.jpg"))
    assert jpeg_bytes < raw_bytes / 2
    for row in range(len(exact)):
        a, b = exact.video(row).astype(int), lossy.video(row).astype(int)
        # JPEG q95 with 4:2:0 chroma: small on average, up to ~70 grey levels at sharp colour edges
        assert a.shape == b.shape and np.abs(a - b).mean() < 3 and np.abs(a - b).max() <= 80
    # a clip that runs past the end repeats the last frame, as with raw frames; only its frames are decoded
    n = int(exact.frame_counts[2])
    np.testing.assert_array_equal(lossy.frames(2, n - 3, 6), lossy.video(2)[[n - 3, n - 2, n - 1, n - 1, n - 1, n - 1]])
    with pytest.raises(IndexError):
        lossy.frames(2, n, 4)


def test_jpeg_shards_resume_and_a_format_change_redoes_them(tmp_path):
    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "frames"
    extract_dataset(raw, out, size=32, shard_videos=5, workers=1, frame_format="jpeg")
    first = sha256_tree(out)
    (out / "shard-00001.offsets.npy").write_bytes(b"corrupt")  # an unusable shard is extracted again
    extract_dataset(raw, out, size=32, shard_videos=5, workers=1, frame_format="jpeg")
    assert sha256_tree(out) == first
    extract_dataset(raw, out, size=32, shard_videos=5, workers=1)  # raw now: no jpeg file is left behind
    assert sorted({p.suffix for p in out.glob("shard-*")}) == [".json", ".u8"]
    assert FrameStore(out).frame_format == "raw"
    with pytest.raises(ValueError, match="frame_format must be one of"):
        extract_dataset(raw, out, size=32, shard_videos=5, workers=1, frame_format="png")


# ---- reuse depends on the sources; frame counts; the pixel limit (issue 18) ----


def test_a_replaced_source_is_extracted_again(tmp_path):
    raw = make_raw(tmp_path / "raw", bad=True)
    out = tmp_path / "frames"
    first = extract_dataset(raw, out, size=32, shard_videos=4, workers=1)
    assert any("empty" in s["reason"] for s in first["skipped_files"])
    untouched = (out / "shard-00003.u8").stat().st_mtime_ns  # its videos' sources did not change
    # the broken file is replaced by a good video (the one its index row describes)
    good = raw / "UCF-101/BouncingBall/v_BouncingBall_g01_c01.avi"
    (raw / "UCF-101/BouncingBall/v_BouncingBall_g90_c01.avi").write_bytes(good.read_bytes())
    again = extract_dataset(raw, out, size=32, shard_videos=4, workers=1)
    assert again["extracted"] == first["extracted"] + 1 and again["skipped"] == 3
    assert "v_BouncingBall_g90_c01" in set(pd.read_csv(out / "videos.csv")["video_id"])
    assert (out / "shard-00003.u8").stat().st_mtime_ns == untouched
    # a source rewritten in place with the same size: its new mtime is noticed, its shard alone redone
    video = raw / pd.read_csv(raw / "index.csv")["path"][0]
    shard0 = (out / "shard-00000.u8").stat().st_mtime_ns
    stamp = video.stat().st_mtime_ns
    video.write_bytes(video.read_bytes())
    os.utime(video, ns=(stamp + 10**9, stamp + 10**9))
    extract_dataset(raw, out, size=32, shard_videos=4, workers=1)
    assert (out / "shard-00000.u8").stat().st_mtime_ns != shard0
    assert (out / "shard-00003.u8").stat().st_mtime_ns == untouched


def test_a_video_skipped_for_lack_of_memory_is_retried(tmp_path, monkeypatch):
    import errno

    import av

    raw = make_raw(tmp_path / "raw")
    out = tmp_path / "frames"
    victim = pd.read_csv(raw / "index.csv")["path"][5]
    real = ex.av.open

    def short_of_memory(path, *args, **kwargs):
        if str(path).endswith(victim):
            raise av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(ex.av, "open", short_of_memory)
    first = extract_dataset(raw, out, size=32, shard_videos=4, workers=1)
    assert first["skipped"] == 1 and "memory" in first["skipped_files"][0]["reason"]
    monkeypatch.setattr(ex.av, "open", real)
    again = extract_dataset(raw, out, size=32, shard_videos=4, workers=1)
    assert again["skipped"] == 0 and again["extracted"] == 12


def test_fewer_frames_than_the_index_says_is_reported_and_the_stored_count_rules(tmp_path, capsys):
    from micro import tiny_video

    raw = make_raw(tmp_path / "raw")
    index = pd.read_csv(raw / "index.csv")
    (raw / index["path"][2]).write_bytes(tiny_video(3, seed=1))  # the index still says num_frames >= 8
    report = extract_dataset(raw, tmp_path / "frames", size=32, shard_videos=4, workers=1)
    assert report["frame_count_mismatches"] == [
        {"path": index["path"][2], "index_frames": int(index["num_frames"][2]), "decoded_frames": 3}]
    assert "fewer frames" in capsys.readouterr().out
    store = FrameStore(tmp_path / "frames")
    assert store.frame_counts[2] == 3
    # the clip stages read num_frames: it is the stored count, not the index's
    assert (store.table["num_frames"].to_numpy() == store.frame_counts).all()
    from larp.eval.protocols import rfvd_clips

    for seed in range(20):  # every clip of the short video lies within its 3 stored frames
        clips = rfvd_clips(store.table, frames=2, seed=seed, split=1)
        assert (clips["start"][clips["row"] == 2] + 2 <= 3).all()


def test_frames_above_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    raw = make_raw(tmp_path / "raw")
    video = raw / pd.read_csv(raw / "index.csv")["path"][0]
    decoded = []
    real = ex.av.open

    def counting(*args, **kwargs):
        container = real(*args, **kwargs)
        inner = container.decode

        def decode(*a, **k):
            for frame in inner(*a, **k):
                decoded.append(1)
                yield frame
        return type("C", (), {"__enter__": lambda s: s, "__exit__": lambda s, *e: container.close(),
                              "streams": container.streams, "format": container.format,
                              "decode": staticmethod(decode)})()

    monkeypatch.setattr(ex.av, "open", counting)
    with pytest.raises(VideoDecodeError, match=r"64x48 = 3072 pixels per frame, above the limit of 3000") as e:
        list(decode_frames(video, max_pixels=3000))
    assert str(video) in str(e.value) and not decoded
    assert len(list(decode_frames(video, max_pixels=3072))) > 0
    monkeypatch.setattr(ex.av, "open", real)
    out = tmp_path / "frames"
    report = extract_dataset(raw, out, size=32, shard_videos=4, workers=1, max_pixels=3000)
    assert report["extracted"] == 0 and all("pixels" in s["reason"] for s in report["skipped_files"])
    again = extract_dataset(raw, out, size=32, shard_videos=4, workers=1)  # a higher limit: extracted now
    assert again["extracted"] == 12


def test_pixel_limit_is_a_tracked_storage_parameter(tmp_path):
    from larp import stages
    from larp.config import ParamsError, apply_overrides, preset

    raw = make_raw(tmp_path / "raw")
    params = apply_overrides(preset("tiny"), {"storage": {"embedded": {"max_pixels": 1000}}})
    stages.extract("embedded", raw, tmp_path / "frames", params)
    report = json.loads((tmp_path / "frames" / "report.json").read_text())
    assert report["extracted"] == 0 and "max_pixels" in report["skipped_files"][0]["reason"]
    assert preset("paper").storage.k600.max_pixels >= 3840 * 2160  # 4K UHD passes by default
    with pytest.raises(ParamsError, match="storage.ucf101.max_pixels"):
        apply_overrides(preset("tiny"), {"storage": {"ucf101": {"max_pixels": 0}}})
