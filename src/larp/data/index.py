"""The dataset index: one row per video of a raw dir in UCF-101 layout, written as ``index.csv``.

Layout read (``raw_dir`` = ``data/raw/<dataset>/``)::

    UCF-101/<ClassName>/v_<ClassName>_gGG_cCC.<ext>
    ucfTrainTestlist/classInd.txt                  "1 ApplyEyeMakeup" ... (1-based)
    ucfTrainTestlist/trainlist0K.txt               "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ucfTrainTestlist/testlist0K.txt                "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

Columns (exactly, in this order): ``video_id, path, class_name, label, group, clip, split1, split2, split3,
num_frames, fps, width, height``. ``path`` is relative to ``raw_dir``; ``label`` is LARP's label: the rank of the class
name in case-sensitive sorted order (see :func:`larp_labels`; it differs from classInd.txt for two pairs); ``splitK`` is "train" or "test". A split whose two list files are both absent (the embedded
dataset may ship only split 1) gets an empty column (NA, an empty cell in the CSV). ``num_frames`` is exact:
the number of frames PyAV decodes, not the container's estimate. A video that cannot be decoded keeps its
row with empty probe columns and a warning; the frame extractor reports and skips it.

The naming trap: UCF-101's list files spell one class ``HandStandPushups`` where the class folder (and the
mirror zip's file names) say ``HandstandPushups``; the official RAR's file names use the list spelling.
Names are compared after :func:`canonical`, and ``video_id`` always uses the classInd spelling.
"""

from __future__ import annotations

import os
import re
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from larp.files import atomic_path

COLUMNS = ["video_id", "path", "class_name", "label", "group", "clip", "split1", "split2", "split3",
           "num_frames", "fps", "width", "height"]
LISTS_DIR = "ucfTrainTestlist"
VIDEOS_DIR = "UCF-101"
SPLITS = (1, 2, 3)
VIDEO_NAME = re.compile(r"^v_(?P<cls>[A-Za-z0-9]+)_g(?P<group>\d+)_c(?P<clip>\d+)$")


def canonical(name: str) -> str:
    """Fix UCF-101's one spelling slip (lists: HandStandPushups; classInd and folder: HandstandPushups)."""
    return name.replace("HandStandPushups", "HandstandPushups")


def read_class_ind(path: str | Path) -> list[str]:
    """Class names in classInd.txt order (entry ``i`` has label ``i``); checks numbering 1..C, uniqueness."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} does not exist")
    names: list[str] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise ValueError(f"{path}:{lineno}: expected '<index> <ClassName>', got {line!r}")
        if int(fields[0]) != len(names) + 1:
            raise ValueError(f"{path}:{lineno}: expected index {len(names) + 1}, got {fields[0]}")
        if fields[1] in names:
            raise ValueError(f"{path}:{lineno}: class {fields[1]!r} listed twice")
        names.append(fields[1])
    if not names:
        raise ValueError(f"{path}: no classes")
    return names


def larp_labels(classes: list[str]) -> dict[str, int]:
    """Class name -> label as LARP assigns it: the rank in the case-sensitively sorted class names.

    LARP's loader (docs/protocols.md#labels) sorts the action names case-sensitively, and its released
    class-conditional generator was trained with those labels, so we use them too. The real classInd.txt is
    sorted case-insensitively: the two orders differ for Hammering/HammerThrow and JumpingJack/JumpRope
    (classInd 35/36 and 47/48 are LARP labels 35/34 and 47/46). classInd.txt still validates the lists.
    """
    return {c: i for i, c in enumerate(sorted(classes))}


def _scan_videos(videos_dir: Path, classes: list[str]) -> dict[str, dict]:
    """Map canonical video id -> row fields, from the files on disk."""
    if not videos_dir.is_dir():
        raise FileNotFoundError(f"video directory {videos_dir} does not exist")
    label = larp_labels(classes)
    rows: dict[str, dict] = {}
    for folder in sorted(videos_dir.iterdir()):
        if folder.name.startswith("."):
            continue
        if not folder.is_dir():
            raise ValueError(f"{folder}: expected only class folders in {videos_dir}")
        if folder.name not in label:
            raise ValueError(f"{folder}: folder is not a class of classInd.txt")
        for f in sorted(folder.iterdir()):
            if f.name.startswith(".") or not f.is_file():
                continue
            vid = canonical(f.stem)
            m = VIDEO_NAME.match(vid)
            if m is None or m["cls"] != folder.name:
                raise ValueError(f"{f}: expected a name like v_{folder.name}_gGG_cCC.<ext>")
            if vid in rows:
                raise ValueError(f"{f}: video id {vid} appears twice ({rows[vid]['path']})")
            rows[vid] = {"video_id": vid, "path": f.relative_to(videos_dir.parent).as_posix(),
                         "class_name": folder.name, "label": label[folder.name],
                         "group": int(m["group"]), "clip": int(m["clip"])}
    if not rows:
        raise ValueError(f"{videos_dir}: no videos found")
    return rows


def _read_list(path: Path, classes: list[str], videos: dict[str, dict]) -> list[str]:
    """Canonical video ids named by a train/test list; checks class folder and (train) label columns."""
    ids = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        fields = canonical(line).split()
        if not fields:
            continue
        cls, _, name = fields[0].replace("\\", "/").rpartition("/")
        vid = Path(name).stem
        if vid not in videos:
            raise ValueError(f"{path}:{lineno}: {fields[0]} is not in {VIDEOS_DIR}/ (missing video file)")
        if cls != videos[vid]["class_name"]:
            raise ValueError(f"{path}:{lineno}: {fields[0]} is filed under {cls!r}, "
                             f"but the video is in {videos[vid]['class_name']!r}")
        if len(fields) > 1 and int(fields[1]) != classes.index(cls) + 1:
            raise ValueError(f"{path}:{lineno}: label {fields[1]} for {vid}, but classInd.txt gives "
                             f"{classes.index(cls) + 1} to {cls}")
        ids.append(vid)
    return ids


def _split_column(lists_dir: Path, k: int, classes: list[str],
                  videos: dict[str, dict]) -> dict[str, str] | None:
    train, test = lists_dir / f"trainlist0{k}.txt", lists_dir / f"testlist0{k}.txt"
    if not train.exists() and not test.exists():
        return None
    for p in (train, test):
        if not p.is_file():
            raise FileNotFoundError(f"split {k}: {p} is missing (both train and test lists are needed)")
    member: dict[str, str] = {}
    for which, p in (("train", train), ("test", test)):
        for vid in _read_list(p, classes, videos):
            if vid in member:
                raise ValueError(f"{p}: {vid} is listed twice in split {k} (already as {member[vid]})")
            member[vid] = which
    absent = [v["path"] for vid, v in videos.items() if vid not in member]
    if absent:
        raise ValueError(f"split {k}: {len(absent)} video(s) are in neither {train.name} nor {test.name}, "
                         f"e.g. {absent[:3]}")
    return member


def probe_video(path: str | Path) -> dict:
    """Exact decoded frame count, fps, width, height of a video (PyAV); None-filled if undecodable."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "NONE"  # parallelism comes from processes
            n = sum(1 for _ in container.decode(stream))
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            return {"num_frames": n, "fps": float(rate) if rate else float("nan"),
                    "width": stream.codec_context.width, "height": stream.codec_context.height, "error": None}
    except (av.FFmpegError, IndexError, OSError) as e:
        return {"num_frames": None, "fps": None, "width": None, "height": None,
                "error": f"{type(e).__name__}: {e}"}


def probe_videos(paths: list[Path], workers: int | None = None, progress: bool = True) -> list[dict]:
    """:func:`probe_video` over many files in worker processes, results in input order."""
    workers = workers or min(8, os.cpu_count() or 1)
    bar = dict(total=len(paths), desc="probing videos", unit="video", disable=not progress)
    if workers == 1 or len(paths) < 2:
        return [probe_video(p) for p in tqdm(paths, **bar)]
    with ProcessPoolExecutor(workers) as pool:
        return list(tqdm(pool.map(probe_video, paths, chunksize=8), **bar))


def build_index(raw_dir: str | Path, probe: bool = True, workers: int | None = None,
                progress: bool = True) -> pd.DataFrame:
    """Index every video under ``raw_dir/UCF-101`` (see module docstring for layout and columns).

    Errors (ValueError/FileNotFoundError naming the file) when a video is in neither list of a split, a list
    names a video that is not on disk, a class folder is not in classInd.txt, or a file name does not parse.
    ``probe=False`` leaves num_frames/fps/width/height empty (fast, for checks of the lists alone).
    """
    raw_dir = Path(raw_dir)
    lists_dir = raw_dir / LISTS_DIR
    classes = read_class_ind(lists_dir / "classInd.txt")
    videos = _scan_videos(raw_dir / VIDEOS_DIR, classes)
    for k in SPLITS:
        member = _split_column(lists_dir, k, classes, videos)
        for vid, row in videos.items():
            row[f"split{k}"] = member[vid] if member is not None else pd.NA
    order = sorted(videos.values(), key=lambda r: (r["label"], r["group"], r["clip"], r["video_id"]))
    df = pd.DataFrame(order)
    if probe:
        results = probe_videos([raw_dir / p for p in df["path"]], workers, progress)
        failed = [(p, r["error"]) for p, r in zip(df["path"], results) if r["error"]]
        if failed:
            warnings.warn(f"{len(failed)} video(s) could not be decoded, e.g. {failed[:3]}", stacklevel=2)
        probed = pd.DataFrame(results)
    else:
        probed = pd.DataFrame(index=df.index, columns=["num_frames", "fps", "width", "height"])
    for col in ("num_frames", "width", "height"):
        df[col] = pd.array(probed[col], dtype="Int64")
    df["fps"] = pd.array(probed["fps"], dtype="Float64")
    for k in SPLITS:
        df[f"split{k}"] = df[f"split{k}"].astype("string")
    return df[COLUMNS]


def write_index(df: pd.DataFrame, path: str | Path) -> None:
    """Write the index CSV atomically (NA as an empty cell)."""
    if list(df.columns) != COLUMNS:
        raise ValueError(f"index columns must be {COLUMNS}, got {list(df.columns)}")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_index(path: str | Path) -> pd.DataFrame:
    """Read an index CSV with the dtypes :func:`build_index` produces."""
    dtypes = {"video_id": "string", "path": "string", "class_name": "string", "label": "int64",
              "group": "Int64", "clip": "Int64", "split1": "string", "split2": "string", "split3": "string",
              "num_frames": "Int64", "fps": "Float64", "width": "Int64", "height": "Int64"}
    df = pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in dtypes})
    if list(df.columns) != COLUMNS:
        raise ValueError(f"{path}: columns must be {COLUMNS}, got {list(df.columns)}")
    return df


def count_training_videos(path: str | Path, split: int) -> int:
    """Videos of split ``split``'s training list in an index that decode (the frame extractor skips the rest)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such index")
    df = read_index(path)
    return int(((df[f"split{split}"] == "train").fillna(False) & df["num_frames"].fillna(0).gt(0)).sum())
