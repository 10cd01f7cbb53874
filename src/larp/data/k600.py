"""Kinetics-600 train/val from the CVDF mirror: download the tar.gz parts, extract safely, index, report.

The mirror (github.com/cvdfoundation/kinetics-dataset, ``k600_downloader.sh``) publishes, per split, a list
file of part URLs (``<base>/<split>/k600_<split>_path.txt``, one ``.../<split>/part_N.tar.gz`` URL a line)
and the annotations ``<base>/annotations/<split>.txt`` (CSV, header ``label,youtube_id,time_start,time_end,
split``). It publishes no checksums: parts are verified only by a complete transfer (Content-Length, Range
resume) and a complete gzip/tar read; their sha256 is recorded in ``download.json`` so they can be pinned
(``checksums=``). Each part unpacks to clips named ``<youtube_id>_<start:06d>_<end:06d>.mp4``.

Result in ``out_dir`` (``data/raw/k600``)::

    archives/<split>/k600_<split>_path.txt, part_N.tar.gz     (deleted after extraction if not keep_archives)
    archives/<split>/.part_N.tar.gz.done                       extraction marker: a re-run skips the part
    annotations/<split>.txt
    <split>/<youtube_id>_<start:06d>_<end:06d>.mp4             flat, as the mirror's own extractor lays it out
    index.csv      the UCF-101 index format (larp.data.index.COLUMNS): video_id = clip id, path = <split>/<file>,
                   label = rank of the class name in the sorted class names of all loaded annotation files,
                   split1 = split2 = split3 = "train" | "test" (the val split; K600 has one split), group and
                   clip empty; good clips only
    report.json    every annotated clip that is missing, truncated or undecodable, with the reason
    download.json  list URLs, parts with sizes and sha256, counts (written last: marks the run complete)

The stage fails (:class:`K600BadClipsError`, after writing report.json) when the share of bad clips among the
annotated ones exceeds ``max_bad_fraction``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import pandas as pd
from tqdm import tqdm

from larp.data.archives import extract_tar
from larp.data.index import COLUMNS, probe_videos, read_index, write_index
from larp.download import download_file
from larp.files import atomic_write_json, sha256_file

MIRROR = "https://s3.amazonaws.com/kinetics/600"
SPLITS = ("train", "val")
SPLIT_COLUMN = {"train": "train", "val": "test"}  # split1 value: the index uses UCF-101's train/test words
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".webm", ".mov")
ANNOTATION_FIELDS = ("label", "youtube_id", "time_start", "time_end")


def list_url(split: str, base_url: str = MIRROR) -> str:
    return f"{base_url.rstrip('/')}/{split}/k600_{split}_path.txt"


def annotation_url(split: str, base_url: str = MIRROR) -> str:
    return f"{base_url.rstrip('/')}/annotations/{split}.txt"


class K600BadClipsError(RuntimeError):
    """Too many clips are missing, truncated or undecodable; ``bad`` lists them (also in report.json)."""

    def __init__(self, message: str, bad: list[dict]):
        super().__init__(message)
        self.bad = bad


def _log(msg: str) -> None:
    print(f"[k600] {msg}", file=sys.stderr)


def clip_id(youtube_id: str, start: float, end: float) -> str:
    """The mirror's file stem: ``<youtube_id>_<start:06d>_<end:06d>`` (times in whole seconds)."""
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}"


# --------------------------------------------------------------------------------------------------
# lists and annotations


def part_urls(list_file: Path, list_source: str, base_url: str | None) -> list[str]:
    """Part URLs of a list file. Relative lines resolve against the list's URL; with ``base_url``, URLs on
    the CVDF mirror are redirected there (a local server in tests, or another mirror)."""
    urls = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        url = urljoin(list_source, line)
        if base_url is not None and url.startswith(MIRROR + "/"):
            url = base_url.rstrip("/") + url[len(MIRROR):]
        if not url.endswith((".tar.gz", ".tgz", ".tar")):
            raise ValueError(f"{list_file}:{lineno}: expected a .tar.gz part URL, got {line!r}")
        urls.append(url)
    if not urls:
        raise ValueError(f"{list_file}: no part URLs")
    if len({u.rsplit('/', 1)[-1] for u in urls}) != len(urls):
        raise ValueError(f"{list_file}: two parts share a file name")
    return urls


def read_annotations(path: Path, split: str) -> pd.DataFrame:
    """Annotation CSV -> DataFrame(video_id, class_name, split); checks the header and duplicate clips."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = set(ANNOTATION_FIELDS) - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: annotation header must contain {list(ANNOTATION_FIELDS)}, "
                             f"got {reader.fieldnames} (missing {sorted(missing)})")
        rows = []
        for lineno, r in enumerate(reader, 2):
            try:
                vid = clip_id(r["youtube_id"], float(r["time_start"]), float(r["time_end"]))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{path}:{lineno}: bad youtube_id/time_start/time_end {r}") from e
            if not r["label"]:
                raise ValueError(f"{path}:{lineno}: empty label")
            rows.append((vid, r["label"].strip(), split))
    df = pd.DataFrame(rows, columns=["video_id", "class_name", "split"])
    dup = df["video_id"][df["video_id"].duplicated()]
    if len(dup):
        raise ValueError(f"{path}: clip(s) listed twice, e.g. {dup.head(3).tolist()}")
    if df.empty:
        raise ValueError(f"{path}: no clips")
    return df


# --------------------------------------------------------------------------------------------------
# parts: download + extract, in parallel


@dataclass(frozen=True)
class Part:
    split: str
    url: str
    archive: Path  # out_dir/archives/<split>/<name>

    @property
    def marker(self) -> Path:
        return self.archive.with_name(f".{self.archive.name}.done")


def _fetch_part(part: Part, out_dir: Path, sha256: str | None, keep_archive: bool, move_lock: threading.Lock,
                progress: bool) -> dict:
    """Download one part (resumable), extract it into ``out_dir/<split>/``, write its marker; its record."""
    if part.marker.is_file():
        return json.loads(part.marker.read_text())
    t = time.perf_counter()
    download_file(part.url, part.archive, sha256=sha256, progress=progress)
    digest = sha256 or sha256_file(part.archive)
    staging = out_dir / part.split / f".staging-{part.archive.name}"
    if staging.exists():
        shutil.rmtree(staging)  # left over from an interrupted run
    extract_tar(part.archive, staging)
    dest_dir, moved, ignored, duplicates = out_dir / part.split, [], [], []
    for f in sorted(p for p in staging.rglob("*") if p.is_file()):
        if f.suffix.lower() not in VIDEO_SUFFIXES:
            ignored.append(f.relative_to(staging).as_posix())
            continue
        with move_lock:  # parts share the split folder: a name clash keeps the first file
            dest = dest_dir / f.name
            # same size: this part's own file, moved by an interrupted earlier run of this part
            if dest.exists() and dest.stat().st_size != f.stat().st_size:
                duplicates.append(f.name)
                continue
            os.replace(f, dest)
        moved.append(f.name)
    shutil.rmtree(staging)
    record = {"url": part.url, "file": part.archive.name, "bytes": part.archive.stat().st_size,
              "sha256": digest, "clips": len(moved), "ignored": ignored, "duplicates": duplicates,
              "seconds": round(time.perf_counter() - t, 3)}
    atomic_write_json(part.marker, record)
    if not keep_archive:
        part.archive.unlink()
    return record


def _fetch_parts(parts: list[Part], out_dir: Path, checksums: dict[str, str], workers: int,
                 keep_archives: bool, progress: bool) -> list[dict]:
    """All parts through a thread pool (downloads are I/O bound; zlib and file I/O release the GIL)."""
    for split in {p.split for p in parts}:
        (out_dir / split).mkdir(parents=True, exist_ok=True)
    lock, records, failed = threading.Lock(), {}, []
    per_file_bars = progress and workers == 1  # concurrent byte bars would garble each other
    with ThreadPoolExecutor(workers) as pool, \
            tqdm(total=len(parts), desc="k600 parts", unit="part", disable=not progress) as bar:
        futures = {pool.submit(_fetch_part, p, out_dir, checksums.get(p.archive.name), keep_archives, lock,
                               per_file_bars): p for p in parts}
        for fut in as_completed(futures):
            p = futures[fut]
            try:
                records[p] = fut.result()
            except Exception as e:  # noqa: BLE001 - collected, reported together, first one chained
                failed.append((p, e))
            bar.update(1)
    if failed:
        lines = "\n".join(f"  {p.split}/{p.archive.name}: {type(e).__name__}: {e}" for p, e in failed)
        raise RuntimeError(f"{len(failed)} of {len(parts)} K600 part(s) failed (finished parts are kept; "
                           f"a re-run resumes the rest):\n{lines}") from failed[0][1]
    return [records[p] | {"split": p.split} for p in parts]


# --------------------------------------------------------------------------------------------------
# checking the clips


def container_truncation(path: str | Path) -> str | None:
    """Why a file is shorter than its own container structure says (RIFF size, MP4 box sizes), else None.

    Cheap (reads a few headers). It catches cuts that a decoder may pass over silently, e.g. an MP4 cut in
    its ``mdat`` whose index (``moov``) comes first still decodes, just with fewer frames.
    """
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "empty file (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] == b"RIFF" and len(head) >= 8:
            declared = int.from_bytes(head[4:8], "little") + 8
            return f"{size} of {declared} bytes (RIFF header)" if size < declared else None
        if head[4:8] not in (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide"):
            return None  # not an ISO-BMFF file: left to the decoder
        pos, boxes = 0, set()
        while pos < size:
            f.seek(pos)
            hdr = f.read(16)
            if len(hdr) < 8:
                return f"{size} bytes: box header cut at byte {pos}"
            box_size, kind = int.from_bytes(hdr[:4], "big"), hdr[4:8].decode("latin-1")
            if box_size == 1:
                if len(hdr) < 16:
                    return f"{size} bytes: box header cut at byte {pos}"
                box_size = int.from_bytes(hdr[8:16], "big")
            elif box_size == 0:  # the last box runs to the end of the file
                box_size = size - pos
            if box_size < 8:
                return f"corrupt box {kind!r} of size {box_size} at byte {pos}"
            if pos + box_size > size:
                return f"{size} of {pos + box_size} bytes (box {kind!r} ends past the end of the file)"
            boxes.add(kind)
            pos += box_size
        return None if "moov" in boxes else f"{size} bytes and no 'moov' box (index missing, cut before it)"


def check_clips(paths: list[Path], workers: int | None = None,
                progress: bool = True) -> list[dict]:
    """Per file: probe fields (num_frames, fps, width, height) and ``kind`` None | "truncated" |
    "undecodable" with ``reason``. Decoding is :func:`larp.data.index.probe_videos` (exact frame counts)."""
    probed = probe_videos(paths, workers, progress)
    out = []
    for p, r in zip(paths, probed):
        cut = container_truncation(p)
        if cut is not None:
            kind, reason = "truncated", cut
        elif r["error"]:
            kind, reason = "undecodable", r["error"]
        elif not r["num_frames"]:
            kind, reason = "undecodable", "no frames decoded"
        else:
            kind, reason = None, None
        out.append({**{k: r[k] for k in ("num_frames", "fps", "width", "height")}, "kind": kind,
                    "reason": reason})
    return out


# --------------------------------------------------------------------------------------------------
# the stage


def _already_complete(out_dir: Path, splits: tuple[str, ...], lists: dict[str, str],
                      max_bad_fraction: float) -> pd.DataFrame | None:
    record, index = out_dir / "download.json", out_dir / "index.csv"
    if not (record.is_file() and index.is_file() and (out_dir / "report.json").is_file()):
        return None
    rec = json.loads(record.read_text())
    if rec.get("splits") != list(splits) or rec.get("lists") != lists:
        return None
    if rec.get("bad_fraction", 1.0) > max_bad_fraction:
        return None  # a stricter threshold than the finished run passed: evaluate (and fail) again
    df = read_index(index)  # group/clip are empty for K600: nullable Int64
    if any(not (out_dir / p).is_file() for p in df["path"]):
        return None
    return df


def _validate(splits: tuple[str, ...], workers: int, max_bad_fraction: float) -> None:
    if not splits or len(set(splits)) != len(splits) or any(s not in SPLITS for s in splits):
        raise ValueError(f"splits must be distinct values from {SPLITS}, got {splits!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")


def download_k600(out_dir: str | Path, splits: tuple[str, ...] = SPLITS, *, base_url: str | None = None,
                  workers: int = 4, max_bad_fraction: float = 0.01, progress: bool = True,
                  checksums: dict[str, str] | None = None, keep_archives: bool = True,
                  probe_workers: int | None = None) -> pd.DataFrame:
    """Download, extract, check and index Kinetics-600 ``splits`` into ``out_dir``; returns the index.

    ``base_url`` replaces the mirror root ``https://s3.amazonaws.com/kinetics/600`` for the lists, the
    annotations and every part URL under it. ``workers`` parts are fetched and extracted at once.
    ``checksums``: part file name (``part_0.tar.gz``) -> sha256 to verify (the mirror publishes none).
    Bad clips (annotated but missing, truncated, undecodable) go to report.json and out of the index; the
    stage raises :class:`K600BadClipsError` if they are more than ``max_bad_fraction`` of the annotated clips.
    Idempotent: finished parts are never fetched again (markers), and a finished run with the same lists
    returns its index without any network access or probing.
    """
    out_dir, splits = Path(out_dir), tuple(splits)
    _validate(splits, workers, max_bad_fraction)
    root = MIRROR if base_url is None else base_url.rstrip("/")
    lists = {s: list_url(s, root) for s in splits}
    done = _already_complete(out_dir, splits, lists, max_bad_fraction)
    if done is not None:
        _log(f"{out_dir} is complete ({len(done)} clips indexed); nothing to do")
        return done
    (out_dir / "download.json").unlink(missing_ok=True)  # the tree is incomplete until this run finishes
    timings: dict[str, float] = {}

    t = time.perf_counter()
    parts, annotations = [], []
    for s in splits:
        lst = download_file(lists[s], out_dir / "archives" / s / f"k600_{s}_path.txt", sha256=None,
                            progress=False)
        parts += [Part(s, u, out_dir / "archives" / s / u.rsplit("/", 1)[-1])
                  for u in part_urls(lst, lists[s], base_url)]
        ann = download_file(annotation_url(s, root), out_dir / "annotations" / f"{s}.txt", sha256=None,
                            progress=False)
        annotations.append(read_annotations(ann, s))
    _log(f"{len(parts)} parts for {', '.join(splits)}")
    records = _fetch_parts(parts, out_dir, checksums or {}, workers, keep_archives, progress)
    timings["download_extract_s"] = time.perf_counter() - t

    t = time.perf_counter()
    ann = pd.concat(annotations, ignore_index=True)
    classes = sorted(ann["class_name"].unique())
    label = {c: i for i, c in enumerate(classes)}
    on_disk: dict[tuple[str, str], str] = {}
    for s in splits:
        for f in sorted((out_dir / s).iterdir()):
            if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in VIDEO_SUFFIXES:
                on_disk.setdefault((s, f.stem), f"{s}/{f.name}")
    ann["path"] = [on_disk.get((s, v)) for s, v in zip(ann["split"], ann["video_id"])]
    present = ann[ann["path"].notna()].reset_index(drop=True)
    checks = pd.DataFrame(check_clips([out_dir / p for p in present["path"]], probe_workers, progress),
                          index=present.index)
    present = pd.concat([present, checks], axis=1)
    bad = [{"video_id": r.video_id, "split": r.split, "path": None, "kind": "missing",
            "reason": "annotated but not in any part"} for r in ann[ann["path"].isna()].itertuples()]
    bad += [{"video_id": r.video_id, "split": r.split, "path": r.path, "kind": r.kind, "reason": r.reason}
            for r in present[present["kind"].notna()].itertuples()]
    annotated_keys = set(zip(ann["split"], ann["video_id"]))
    unlisted = sorted(p for k, p in on_disk.items() if k not in annotated_keys)
    fraction = len(bad) / len(ann)
    timings["check_s"] = time.perf_counter() - t

    kinds = ("missing", "truncated", "undecodable")
    report = {
        "annotated": len(ann), "indexed": len(ann) - len(bad), "bad": len(bad),
        "bad_fraction": fraction, "max_bad_fraction": max_bad_fraction, "passed": fraction <= max_bad_fraction,
        "per_split": {s: {"annotated": int((ann["split"] == s).sum()),
                          **{k: sum(b["split"] == s and b["kind"] == k for b in bad) for k in kinds}}
                      for s in splits},
        "unlisted_files": {"count": len(unlisted), "examples": unlisted[:20]},
        "duplicates": sorted(d for r in records for d in r["duplicates"]),
        "bad_clips": bad,
    }
    atomic_write_json(out_dir / "report.json", report)
    if fraction > max_bad_fraction:
        listing = "\n".join(f"  {b['split']}/{b['video_id']}: {b['kind']}: {b['reason']}" for b in bad[:50])
        more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
        raise K600BadClipsError(
            f"K600: {len(bad)} of {len(ann)} annotated clips are bad (fraction {fraction:.4f} > "
            f"max_bad_fraction {max_bad_fraction}); full list in {out_dir / 'report.json'}:\n{listing}{more}",
            bad)

    good = present[present["kind"].isna()].copy()
    good["label"] = good["class_name"].map(label).astype("int64")
    good["split1"] = good["split"].map(SPLIT_COLUMN)
    good["_order"] = good["split"].map({s: i for i, s in enumerate(SPLITS)})
    good = good.sort_values(["_order", "label", "video_id"]).reset_index(drop=True)
    df = pd.DataFrame({"video_id": good["video_id"].astype("string"), "path": good["path"].astype("string"),
                       "class_name": good["class_name"].astype("string"), "label": good["label"]})
    for col in ("group", "clip"):
        df[col] = pd.array([pd.NA] * len(df), dtype="Int64")
    # K600 has one official split: the same in every split column, so that data.split (UCF-101's choice of
    # split) never empties K600 when both feed the tokenizer
    for col in ("split1", "split2", "split3"):
        df[col] = good["split1"].astype("string")
    for col in ("num_frames", "width", "height"):
        df[col] = pd.array(good[col], dtype="Int64")
    df["fps"] = pd.array(good["fps"], dtype="Float64")
    df = df[COLUMNS]
    write_index(df, out_dir / "index.csv")

    atomic_write_json(out_dir / "download.json", {
        "splits": list(splits), "lists": lists, "mirror": root,
        "parts": records, "num_classes": len(classes), "labels": "rank of class name in sorted(all annotated "
        "class names of the loaded splits)", "indexed": len(df), "bad_fraction": fraction,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    _log(f"{len(df)} clips, {len(classes)} classes indexed in {out_dir / 'index.csv'}; "
         f"{len(bad)} bad ({fraction:.2%}), see report.json")
    return df
