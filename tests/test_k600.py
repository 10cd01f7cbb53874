"""Kinetics-600 acquisition against a local mirror of tiny real clips: parts, index, bad-clip report."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from micro import tiny_video

from larp.data.archives import UnsafeArchiveError, extract_tar
from larp.data.extract import extract_dataset
from larp.data.frames import FrameStore
from larp.data.index import COLUMNS
from larp.data.k600 import MIRROR, K600BadClipsError, container_truncation, download_k600, read_annotations
from larp.download import ChecksumError

CLASSES = ["zumba", "air drumming", "abseiling"]  # sorted: abseiling 0, air drumming 1, zumba 2
LABEL = {c: i for i, c in enumerate(sorted(CLASSES))}


def clip(i: int, split: str) -> dict:
    yt = f"{split[:2]}{i:09d}"  # 11 characters, like a YouTube id
    start = 10 * i
    return {"yt": yt, "start": start, "end": start + 10, "cls": CLASSES[i % 3], "frames": 6 + i,
            "name": f"{yt}_{start:06d}_{start + 10:06d}"}


TRAIN = [clip(i, "train") for i in range(6)]
VAL = [clip(i, "val") for i in range(4)]
MISSING = VAL[3]["name"]     # annotated, in no part
TRUNCATED = TRAIN[4]["name"]  # cut in half inside its part
GARBAGE = TRAIN[5]["name"]   # random bytes named .mp4
AVI = TRAIN[1]["name"]       # stored as .avi


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_mirror(root: Path) -> None:
    """``root/k600`` laid out like the CVDF mirror: lists (absolute mirror URLs), parts, annotations."""
    base = root / "k600"
    rng = np.random.default_rng(0)
    for split, clips in (("train", TRAIN), ("val", VAL)):
        files = {}
        for i, c in enumerate(clips):
            if c["name"] == MISSING:
                continue
            if c["name"] == GARBAGE:
                files[f"{c['name']}.mp4"] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
            elif c["name"] == AVI:
                files[f"{c['name']}.avi"] = tiny_video(c["frames"], i, "avi")
            else:
                data = tiny_video(c["frames"], i, "mp4")
                files[f"{c['name']}.mp4"] = data[: len(data) // 2] if c["name"] == TRUNCATED else data
        if split == "train":
            files["zz_unlisted_000000_000010.mp4"] = tiny_video(5, 99, "mp4")  # on disk, not annotated
        names = sorted(files)
        (base / split).mkdir(parents=True)
        for k, chunk in enumerate((names[::2], names[1::2])):
            # the second part nests its files in a folder: the layout inside a part must not matter
            prefix = "" if k == 0 else f"{split}/"
            (base / split / f"part_{k}.tar.gz").write_bytes(tar_gz({prefix + n: files[n] for n in chunk}))
        (base / split / f"k600_{split}_path.txt").write_text(
            "".join(f"{MIRROR}/{split}/part_{k}.tar.gz\n" for k in range(2)))
        (base / "annotations").mkdir(exist_ok=True)
        rows = "".join(f"{c['cls']},{c['yt']},{c['start']},{c['end']},{split}\n" for c in clips)
        (base / "annotations" / f"{split}.txt").write_text("label,youtube_id,time_start,time_end,split\n" + rows)


@pytest.fixture
def mirror(http_server):
    build_mirror(http_server.root)
    http_server.base = http_server.url_for("k600")
    return http_server


def part_requests(server) -> list[tuple[str, str | None]]:
    return [(r["path"], r["range"]) for r in server.requests if r["path"].endswith(".tar.gz")]


def test_download_index_report_and_extract(mirror, tmp_path):
    out = tmp_path / "k600"
    mirror.cut_once["k600/train/part_1.tar.gz"] = 400  # connection drops mid-part: resumed with Range
    df = download_k600(out, base_url=mirror.base, workers=2, max_bad_fraction=0.3, progress=False)

    assert ("k600/train/part_1.tar.gz", "bytes=400-") in part_requests(mirror)
    assert list(df.columns) == COLUMNS
    good = [c for c in TRAIN + VAL if c["name"] not in (MISSING, TRUNCATED, GARBAGE)]
    assert sorted(df["video_id"]) == sorted(c["name"] for c in good)
    by_id = df.set_index("video_id")
    for c in good:
        row = by_id.loc[c["name"]]
        split = "train" if c in TRAIN else "test"
        ext = ".avi" if c["name"] == AVI else ".mp4"
        assert row["path"] == f"{'train' if split == 'train' else 'val'}/{c['name']}{ext}"
        assert (out / row["path"]).is_file()
        assert (row["class_name"], row["label"], row["split1"]) == (c["cls"], LABEL[c["cls"]], split)
        assert (row["num_frames"], row["width"], row["height"], row["fps"]) == (c["frames"], 32, 24, 25.0)
    assert df[["group", "clip"]].isna().all().all()
    assert (df["split2"] == df["split1"]).all() and (df["split3"] == df["split1"]).all()
    assert list(df["split1"]) == sorted(df["split1"], key=["train", "test"].index)  # train rows first

    csv = pd.read_csv(out / "index.csv", keep_default_na=False)
    assert list(csv.columns) == COLUMNS and (csv[["group", "clip"]] == "").all().all()

    report = json.loads((out / "report.json").read_text())
    kinds = {b["video_id"]: b["kind"] for b in report["bad_clips"]}
    assert kinds == {MISSING: "missing", TRUNCATED: "truncated", GARBAGE: "undecodable"}
    assert report["annotated"] == 10 and report["indexed"] == 7 and report["bad_fraction"] == pytest.approx(0.3)
    assert report["unlisted_files"]["count"] == 1
    assert report["per_split"]["val"]["missing"] == 1 and report["per_split"]["train"]["truncated"] == 1

    # idempotent: a finished run answers from disk, with no request at all
    n = len(mirror.requests)
    again = download_k600(out, base_url=mirror.base, workers=2, max_bad_fraction=0.3, progress=False)
    assert len(mirror.requests) == n
    pd.testing.assert_frame_equal(again, df)

    # the index feeds `larp extract` and the clip dataset unchanged
    frames = tmp_path / "frames"
    rep = extract_dataset(out, frames, size=16, shard_videos=4, workers=1)
    assert rep["extracted"] == 7 and rep["skipped"] == 0
    store = FrameStore(frames)
    assert list(store.frame_counts) == list(df["num_frames"])
    assert (store.table["split1"] == "test").sum() == 3

    # the `larp extract` stage stores K600 as JPEG (storage.k600), and the training clips read it
    from larp import stages
    from larp.config import preset
    from larp.data.clips import ClipDataset

    stages.extract("k600", out, tmp_path / "frames_jpeg", preset("tiny"))
    jpeg = FrameStore(tmp_path / "frames_jpeg")
    assert jpeg.frame_format == "jpeg" and list(jpeg.frame_counts) == list(df["num_frames"])
    clips = ClipDataset(tmp_path / "frames_jpeg", split="train", mode="train", frames=16)
    assert len(clips) == 4 and clips[0][0].shape == (3, 16, 32, 32)


def test_threshold_fails_with_list_then_rerun_passes_without_refetching(mirror, tmp_path):
    out = tmp_path / "k600"
    with pytest.raises(K600BadClipsError) as err:
        download_k600(out, base_url=mirror.base, workers=2, max_bad_fraction=0.25, progress=False,
                      keep_archives=False)
    msg = str(err.value)
    assert "0.3000" in msg and "0.25" in msg and all(n in msg for n in (MISSING, TRUNCATED, GARBAGE))
    assert {b["kind"] for b in err.value.bad} == {"missing", "truncated", "undecodable"}
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] is False and len(report["bad_clips"]) == 3
    assert not (out / "index.csv").exists() and not (out / "download.json").exists()

    n_parts = len(part_requests(mirror))
    assert n_parts == 4
    assert not list((out / "archives").rglob("*.tar.gz")) and len(list((out / "archives").rglob(".*.done"))) == 4
    df = download_k600(out, base_url=mirror.base, workers=1, max_bad_fraction=0.3, progress=False)
    assert len(df) == 7 and len(part_requests(mirror)) == n_parts  # extracted parts are not fetched again


def test_interrupted_part_resumes_on_rerun(mirror, tmp_path):
    out = tmp_path / "k600"
    mirror.fail["k600/val/part_1.tar.gz"] = 404
    with pytest.raises(RuntimeError, match="val/part_1.tar.gz"):
        download_k600(out, splits=("val",), base_url=mirror.base, workers=1, progress=False)
    del mirror.fail["k600/val/part_1.tar.gz"]
    full = (mirror.root / "k600/val/part_1.tar.gz").read_bytes()
    (out / "archives/val/part_1.tar.gz.part").write_bytes(full[:300])  # what a killed run left behind
    before = len(mirror.requests)
    df = download_k600(out, splits=("val",), base_url=mirror.base, workers=1, max_bad_fraction=0.5,
                       progress=False)
    assert part_requests(mirror)[-1] == ("k600/val/part_1.tar.gz", "bytes=300-")
    assert [r["path"] for r in mirror.requests[before:]] == ["k600/val/part_1.tar.gz"]  # part_0 was done
    assert len(df) == 3 and set(df["split1"]) == {"test"}
    # val alone: labels are still ranks among the annotated class names (all three appear in val)
    assert dict(zip(df["class_name"], df["label"])) == {c["cls"]: LABEL[c["cls"]] for c in VAL[:3]}


def test_pinned_checksum_mismatch_fails(mirror, tmp_path):
    with pytest.raises(RuntimeError, match="part_0.tar.gz") as err:
        download_k600(tmp_path / "k", splits=("val",), base_url=mirror.base, workers=1, progress=False,
                      checksums={"part_0.tar.gz": "0" * 64})
    assert isinstance(err.value.__cause__, ChecksumError)


def test_bad_parameters_and_annotations(tmp_path):
    for kw in ({"splits": ("test",)}, {"splits": ()}, {"workers": 0}, {"max_bad_fraction": 1.5}):
        with pytest.raises(ValueError):
            download_k600(tmp_path, base_url="http://127.0.0.1:9", progress=False, **kw)
    bad = tmp_path / "val.txt"
    bad.write_text("label,youtube\nabseiling,abc\n")
    with pytest.raises(ValueError, match="time_start"):
        read_annotations(bad, "val")
    bad.write_text("label,youtube_id,time_start,time_end\nabseiling,abc,0,10\nabseiling,abc,0,10\n")
    with pytest.raises(ValueError, match="twice"):
        read_annotations(bad, "val")


def test_container_truncation(tmp_path):
    data = tiny_video(5, 0, "mp4")
    (tmp_path / "ok.mp4").write_bytes(data)
    (tmp_path / "cut.mp4").write_bytes(data[:-10])
    (tmp_path / "empty.mp4").write_bytes(b"")
    avi = tiny_video(5, 0, "avi")
    (tmp_path / "cut.avi").write_bytes(avi[: len(avi) - 50])
    assert container_truncation(tmp_path / "ok.mp4") is None
    assert "past the end" in container_truncation(tmp_path / "cut.mp4")
    assert container_truncation(tmp_path / "empty.mp4") == "empty file (0 bytes)"
    assert "RIFF" in container_truncation(tmp_path / "cut.avi")


# --------------------------------------------------------------------------------------------------
# extract_tar


def _tar(path: Path, add) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        add(tf)
    return path


def _file(tf: tarfile.TarFile, name: str, data: bytes = b"x") -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _special(tf: tarfile.TarFile, name: str, kind: bytes, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    tf.addfile(info)


@pytest.mark.parametrize("bad", [
    ("../evil.txt", None), ("/tmp/evil.txt", None), ("ok/../../evil.txt", None),
    ("link", tarfile.SYMTYPE), ("hard", tarfile.LNKTYPE), ("dev", tarfile.CHRTYPE), ("fifo", tarfile.FIFOTYPE),
])
def test_extract_tar_refuses_unsafe_members(tmp_path, bad):
    name, kind = bad

    def add(tf):
        _file(tf, "good.txt", b"fine")
        if kind is None:
            _file(tf, name, b"evil")
        else:
            _special(tf, name, kind, "../outside" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else "")

    archive = _tar(tmp_path / "a.tar.gz", add)
    target = tmp_path / "out" / "t"
    with pytest.raises(UnsafeArchiveError, match=repr(name).strip("'")):
        extract_tar(archive, target)
    assert not target.exists() and not list((tmp_path / "out").iterdir())  # staging removed too
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()


def test_extract_tar_good_and_truncated(tmp_path):
    archive = _tar(tmp_path / "a.tar.gz", lambda tf: (_file(tf, "d/one.bin", os.urandom(50_000)),
                                                      _file(tf, "two.txt", b"2")))
    target = extract_tar(archive, tmp_path / "t")
    assert (target / "two.txt").read_bytes() == b"2" and (target / "d/one.bin").stat().st_size == 50_000
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(tarfile.ReadError, match="cut.tar.gz"):
        extract_tar(cut, tmp_path / "t2")
    assert not (tmp_path / "t2").exists()
    with pytest.raises(FileExistsError):
        extract_tar(archive, tmp_path / "t")  # non-empty target
