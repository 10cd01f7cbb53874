"""UCF-101 acquisition end to end on tiny real videos: safe extraction, the index, download_ucf101."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from micro import tiny_video

from larp.data import archives
from larp.data.archives import UnsafeArchiveError, extract_rar, extract_zip
from larp.data.index import COLUMNS, build_index, probe_video, read_class_ind, read_index, write_index
from larp.data.ucf101 import download_ucf101
from larp.download import ChecksumError

# Hammering/HammerThrow: classInd (case-insensitive) order differs from a case-sensitive sort, as in UCF-101.
CLASSES = ["ApplyEyeMakeup", "Hammering", "HammerThrow", "HandstandPushups"]
GROUPS = (1, 2, 3)
HAS_UNAR = shutil.which("unar") is not None and shutil.which("lsar") is not None
needs_unar = pytest.mark.skipif(not HAS_UNAR, reason="unar/lsar not installed (apt-get install unar)")


def n_frames(label: int, group: int) -> int:
    return 8 + (label + group) % 3


def disk_name(cls: str, group: int) -> str:
    """File name as in the official RAR: HandstandPushups files use the list spelling (the naming trap)."""
    return f"v_{cls.replace('HandstandPushups', 'HandStandPushups')}_g{group:02d}_c01.avi"


def list_files(splits: tuple[int, ...] = (1, 2, 3)) -> dict[str, str]:
    """classInd + train/test lists; split k tests group k. Entries use the HandStandPushups spelling."""
    files = {"classInd.txt": "".join(f"{i + 1} {c}\r\n" for i, c in enumerate(CLASSES))}
    for k in splits:
        train = [f"{c}/{disk_name(c, g)} {i + 1}\r\n"
                 for i, c in enumerate(CLASSES) for g in GROUPS if g != k]
        test = [f"{c}/{disk_name(c, g)}\r\n" for c in CLASSES for g in GROUPS if g == k]
        files[f"trainlist0{k}.txt"], files[f"testlist0{k}.txt"] = "".join(train), "".join(test)
    return files


@pytest.fixture(scope="module")
def videos() -> dict[str, bytes]:
    """Relative path in the official layout -> tiny video bytes."""
    return {f"UCF-101/{c}/{disk_name(c, g)}": tiny_video(n_frames(i, g), seed=10 * i + g)
            for i, c in enumerate(CLASSES) for g in GROUPS}


def make_raw(root: Path, videos: dict[str, bytes], splits: tuple[int, ...] = (1, 2, 3)) -> Path:
    for rel, data in videos.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "ucfTrainTestlist").mkdir(parents=True)
    for name, text in list_files(splits).items():
        (root / "ucfTrainTestlist" / name).write_text(text)
    return root


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_rar4(path: Path, members: list[tuple[str, bytes, int]]) -> Path:
    """A RAR 4.x archive with stored (uncompressed) members: enough of the format for unar to read it."""
    def block(htype: int, flags: int, body: bytes) -> bytes:
        head = struct.pack("<BHH", htype, flags, 7 + len(body)) + body
        return struct.pack("<H", zlib.crc32(head) & 0xFFFF) + head

    out = [b"Rar!\x1a\x07\x00", block(0x73, 0, bytes(6))]
    for name, data, mode in members:
        raw = name.replace("/", "\\").encode()  # RAR stores DOS separators
        # pack size, unpacked size, host OS 3 (Unix), CRC32, DOS time, version 2.9, method 0x30 (store), attrs
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5B7C0000, 29, 0x30,
                           len(raw), mode) + raw
        out += [block(0x74, 0x8000, body), data]
    out.append(block(0x7B, 0x4000, b""))
    path.write_bytes(b"".join(out))
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the index ---------------------------------------------------------------------------------------------

def test_read_class_ind(tmp_path):
    p = tmp_path / "classInd.txt"
    p.write_text("1 A\n2 B\n\n")
    assert read_class_ind(p) == ["A", "B"]
    p.write_text("1 A\n3 B\n")
    with pytest.raises(ValueError, match=r"classInd.txt:2: expected index 2"):
        read_class_ind(p)
    p.write_text("1 A\n2 A\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_class_ind(p)


def test_build_index_official_layout(tmp_path, videos):
    raw = make_raw(tmp_path / "raw", videos)
    df = build_index(raw, workers=2, progress=False)
    assert list(df.columns) == COLUMNS and len(df) == len(CLASSES) * len(GROUPS)
    # LARP labels = case-sensitive sort: HammerThrow (T < i) comes before Hammering, unlike classInd.txt
    larp_order = sorted(CLASSES)
    assert larp_order.index("HammerThrow") < larp_order.index("Hammering")
    assert CLASSES.index("HammerThrow") > CLASSES.index("Hammering")
    for i, c in enumerate(CLASSES):
        rows = df[df["class_name"] == c]
        assert (rows["label"] == larp_order.index(c)).all() and list(rows["group"]) == list(GROUPS)
        assert list(rows["num_frames"]) == [n_frames(i, g) for g in GROUPS]  # exact decoded counts
    trap = df[df["class_name"] == "HandstandPushups"].iloc[0]
    assert trap["video_id"] == "v_HandstandPushups_g01_c01"  # canonical id ...
    assert trap["path"] == "UCF-101/HandstandPushups/v_HandStandPushups_g01_c01.avi"  # ... real file
    for k in (1, 2, 3):
        assert (df[f"split{k}"] == np.where(df["group"] == k, "test", "train")).all()
    assert (df["fps"] == 25).all() and (df["width"] == 32).all() and (df["height"] == 24).all()
    write_index(df, raw / "index.csv")
    pd.testing.assert_frame_equal(read_index(raw / "index.csv"), df, check_dtype=False)


def test_missing_split_lists_give_empty_columns(tmp_path, videos):
    raw = make_raw(tmp_path / "raw", videos, splits=(1,))
    df = build_index(raw, probe=False)
    assert df["split2"].isna().all() and df["split3"].isna().all() and df["num_frames"].isna().all()
    assert set(df["split1"]) == {"train", "test"}
    write_index(df, raw / "index.csv")
    back = read_index(raw / "index.csv")
    assert back["split2"].isna().all() and (back["split1"] == df["split1"]).all()
    (raw / "ucfTrainTestlist" / "trainlist02.txt").write_text("")
    with pytest.raises(FileNotFoundError, match="testlist02.txt"):
        build_index(raw, probe=False)


def test_index_errors_name_the_video(tmp_path, videos):
    raw = make_raw(tmp_path / "raw", videos)
    lists = raw / "ucfTrainTestlist"
    test1 = (lists / "testlist01.txt").read_text()
    (lists / "testlist01.txt").write_text(test1.replace("ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n", ""))
    with pytest.raises(ValueError, match="split 1: 1 video.*v_ApplyEyeMakeup_g01_c01.avi"):
        build_index(raw, probe=False)
    (lists / "testlist01.txt").write_text(test1 + "ApplyEyeMakeup/v_ApplyEyeMakeup_g09_c01.avi\n")
    with pytest.raises(ValueError, match="testlist01.txt:5: .*g09_c01.avi is not in UCF-101"):
        build_index(raw, probe=False)
    (lists / "testlist01.txt").write_text(test1)
    (raw / "UCF-101" / "Archery").mkdir()
    with pytest.raises(ValueError, match="Archery: folder is not a class"):
        build_index(raw, probe=False)


def test_probe_reports_undecodable_file(tmp_path, videos):
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF not really a video")
    res = probe_video(bad)
    assert res["num_frames"] is None and res["error"]
    good = tmp_path / "good.avi"
    good.write_bytes(next(iter(videos.values())))
    assert probe_video(good)["num_frames"] == n_frames(0, 1)


# --- safe extraction ---------------------------------------------------------------------------------------

def symlink_zip(path: Path, name: str, to: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, to)
    return path


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt", "symlink"])
def test_extract_zip_rejects_unsafe_members(tmp_path, member):
    archive = tmp_path / "a.zip"
    if member == "symlink":
        symlink_zip(archive, "link", "../../etc")
    else:
        write_zip(archive, {"ok.txt": b"fine", member: b"evil"})
    target = tmp_path / "deep" / "target"
    expected = "link" if member == "symlink" else member.replace(".", r"\.")
    with pytest.raises(UnsafeArchiveError, match=expected):
        extract_zip(archive, target)
    assert not target.exists() and list((tmp_path / "deep").iterdir()) == []  # no staging dir left
    assert not (tmp_path / "evil.txt").exists()


def test_extract_zip_and_target_rules(tmp_path):
    archive = write_zip(tmp_path / "a.zip", {"x/y.txt": b"hello", "z.txt": b"!"})
    out = extract_zip(archive, tmp_path / "out")
    assert (out / "x" / "y.txt").read_bytes() == b"hello" and (out / "z.txt").read_bytes() == b"!"
    with pytest.raises(FileExistsError, match="not an empty directory"):
        extract_zip(archive, tmp_path / "out")


@needs_unar
def test_extract_rar_with_unar(tmp_path):
    data = b"stored in a rar"
    rar = write_rar4(tmp_path / "a.rar", [("d/a.txt", data, stat.S_IFREG | 0o644)])
    assert (extract_rar(rar, tmp_path / "out") / "d" / "a.txt").read_bytes() == data
    # unar reads zips too: the same unar code path on a zip archive
    z = write_zip(tmp_path / "b.zip", {"q/r.txt": b"zip via unar"})
    assert (extract_rar(z, tmp_path / "out2") / "q" / "r.txt").read_bytes() == b"zip via unar"


@needs_unar
@pytest.mark.parametrize("member", ["../evil.txt", "symlink"])
def test_extract_rar_rejects_unsafe_members(tmp_path, member):
    ok = ("ok.txt", b"fine", stat.S_IFREG | 0o644)
    if member == "symlink":
        bad = ("l", b"../../etc", stat.S_IFLNK | 0o777)
    else:
        bad = (member, b"e", stat.S_IFREG | 0o644)
    rar = write_rar4(tmp_path / "a.rar", [ok, bad])
    with pytest.raises(UnsafeArchiveError, match="is a link" if member == "symlink" else r"'\.\./evil\.txt'"):
        extract_rar(rar, tmp_path / "t" / "out")
    assert not (tmp_path / "t").exists() or list((tmp_path / "t").iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_extract_rar_without_unar_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(archives.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match="apt-get install unar"):
        extract_rar(write_zip(tmp_path / "a.zip", {"a": b"a"}), tmp_path / "out")


# --- download_ucf101 against a local server ----------------------------------------------------------------

def serve_splits(root: Path) -> Path:
    return write_zip(root / "UCF101TrainTestSplits-RecognitionTask.zip",
                     {f"ucfTrainTestlist/{n}": t.encode() for n, t in list_files().items()})


def check_tree_and_index(out: Path, df: pd.DataFrame) -> None:
    assert len(df) == len(CLASSES) * len(GROUPS)
    assert (out / "UCF-101" / "HandstandPushups" / "v_HandstandPushups_g02_c01.avi").is_file()  # normalised
    assert not list(out.glob(".staging*")) and not list(out.glob(".UCF-101*"))
    order = sorted(CLASSES)  # rows come in label order; labels follow LARP's case-sensitive sort
    assert list(df["label"]) == [i for i in range(len(CLASSES)) for _ in GROUPS]
    assert list(df["class_name"]) == [c for c in order for _ in GROUPS]
    assert list(df["num_frames"]) == [n_frames(CLASSES.index(c), g) for c in order for g in GROUPS]
    assert (df["split2"] == np.where(df["group"] == 2, "test", "train")).all()
    assert all((out / p).is_file() for p in df["path"])
    pd.testing.assert_frame_equal(read_index(out / "index.csv"), df, check_dtype=False)


@needs_unar
def test_download_ucf101_official_rar(tmp_path, http_server, videos):
    rar = write_rar4(http_server.root / "UCF101.rar",
                     [(rel, data, stat.S_IFREG | 0o644) for rel, data in videos.items()])
    splits = serve_splits(http_server.root)
    sums = {"videos": {"sha256": sha(rar), "md5": hashlib.md5(rar.read_bytes()).hexdigest()},
            "splits": {"sha256": sha(splits)}}
    out = tmp_path / "ucf101"
    df = download_ucf101(out, base_url=http_server.url, checksums=sums, workers=1, progress=False)
    check_tree_and_index(out, df)
    rec = json.loads((out / "download.json").read_text())
    assert rec["archives"]["videos"]["url"] == http_server.url_for("UCF101.rar")
    assert rec["archives"]["videos"]["sha256"] == sha(rar)
    assert rec["archives"]["splits"]["bytes"] == splits.stat().st_size
    n = len(http_server.requests)
    again = download_ucf101(out, base_url=http_server.url, checksums=sums, workers=1, progress=False)
    assert len(http_server.requests) == n  # idempotent: nothing fetched again
    pd.testing.assert_frame_equal(again, df, check_dtype=False)


def test_download_ucf101_mirror_zip_resumes(tmp_path, http_server, videos):
    # the mirror zip is flat: UCF101/v_<Class>_gGG_cCC.avi, already in classInd spelling
    flat = {"UCF101/" + Path(rel).name.replace("HandStand", "Handstand"): data
            for rel, data in videos.items()}
    z = write_zip(http_server.root / "UCF101_videos.zip", flat)
    splits = serve_splits(http_server.root)
    http_server.cut_once["UCF101_videos.zip"] = z.stat().st_size // 2
    out = tmp_path / "ucf101"
    df = download_ucf101(out, "mirror", base_url=http_server.url, workers=1, progress=False,
                         checksums={"videos": {"sha256": sha(z)}, "splits": {"sha256": sha(splits)}})
    check_tree_and_index(out, df)
    assert [r["range"] for r in http_server.requests if r["path"] == "UCF101_videos.zip"] == \
        [None, f"bytes={z.stat().st_size // 2}-"]


def test_download_ucf101_rejects_corrupt_archive(tmp_path, http_server):
    splits = serve_splits(http_server.root)
    write_zip(http_server.root / "UCF101_videos.zip", {"UCF101/x.txt": b"x"})
    out = tmp_path / "ucf101"
    with pytest.raises(ChecksumError, match="expected 0{64}"):
        download_ucf101(out, "mirror", base_url=http_server.url, progress=False,
                        checksums={"videos": {"sha256": "0" * 64}, "splits": {"sha256": sha(splits)}})
    assert list((out / "archives").glob("UCF101_videos.zip.bad-*"))
    assert not (out / "UCF-101").exists() and not (out / "index.csv").exists()


def test_download_ucf101_official_needs_unar_before_downloading(tmp_path, http_server, monkeypatch):
    monkeypatch.setattr(archives.shutil, "which", lambda tool: None)
    with pytest.raises(RuntimeError, match="apt-get install unar"):
        download_ucf101(tmp_path / "ucf101", base_url=http_server.url, progress=False)
    assert http_server.requests == []


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_check_tree_rejects_links_left_by_an_extractor(tmp_path, kind):
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("s")
    if kind == "symlink":
        (root / "link").symlink_to(outside)
    else:
        os.link(outside, root / "link")
    expected = "'link' is a " + ("symlink" if kind == "symlink" else "hard link")
    with pytest.raises(UnsafeArchiveError, match=expected):
        archives.check_tree(tmp_path / "x.rar", root)
