"""UCF-101: download the official archives (or the zip mirror), extract safely, normalise, index.

Result in ``out_dir`` (``data/raw/ucf101``)::

    archives/UCF101.rar (or UCF101_videos.zip), archives/UCF101TrainTestSplits-RecognitionTask.zip
    UCF-101/<Class>/v_<Class>_gGG_cCC.avi     13,320 videos, file names in classInd spelling
    ucfTrainTestlist/classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt
    index.csv                                 see larp.data.index
    download.json                             urls, digests, sizes, timings

The official RAR holds ``UCF-101/<Class>/...``; the GCS mirror zip holds a flat ``UCF101/v_*.avi`` (TFDS reads
``<zip>/UCF101/<file>``). Both are normalised by parsing each file name, so either gives the same tree.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from larp.data.archives import extract_rar, extract_zip, require_unar
from larp.data.index import (LISTS_DIR, SPLITS, VIDEO_NAME, VIDEOS_DIR, build_index, canonical,
                             read_class_ind, read_index, write_index)
from larp.download import ChecksumError, download_file, file_digests
from larp.files import atomic_write_json


@dataclass(frozen=True)
class Archive:
    url: str
    sha256: str | None  # pinned content hash; None = not known (the digest is recorded in download.json)
    md5: str | None = None  # only where an md5 is the one published digest
    size: int | None = None  # bytes, where published

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


# The RAR has no published sha256. Its md5 comes from third-party code (a PyTorch-Lightning UCF101DataModule)
# and is unverified here (docs/protocols.md#ucf-101): it is checked, and a mismatch says how to override it.
OFFICIAL_VIDEOS = Archive("https://www.crcv.ucf.edu/data/UCF101/UCF101.rar", sha256=None,
                          md5="6463accf4bbc20fa6418ab7f159e6149")
# sha256 and size from TFDS url_checksums/ucf101.txt.
SPLITS_ZIP = Archive("https://www.crcv.ucf.edu/data/UCF101/UCF101TrainTestSplits-RecognitionTask.zip",
                     sha256="5c0d1a53b8ed364a2ac830a73f405e51bece7d98ce1254fd19ed4a36b224bd27", size=113_943)
MIRROR_VIDEOS = Archive("https://storage.googleapis.com/thumos14_files/UCF101_videos.zip",
                        sha256="dabf56f573cd19c79e096563529fec8126a2a34e18e10c72eb621dd687532b0d",
                        size=6_960_400_115)
SOURCES = {"official": {"videos": OFFICIAL_VIDEOS, "splits": SPLITS_ZIP},
           "mirror": {"videos": MIRROR_VIDEOS, "splits": SPLITS_ZIP}}  # the mirror has videos only
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".mov")


def _log(msg: str) -> None:
    print(f"[ucf101] {msg}", file=sys.stderr)


def resolve_archives(source: str, urls: dict[str, str] | None = None, base_url: str | None = None,
                     checksums: dict[str, dict | None] | None = None) -> dict[str, Archive]:
    """The two archives ("videos", "splits") for ``source``, with optional overrides.

    ``base_url`` replaces everything before the file name of both URLs (e.g. a local server in tests);
    ``urls`` replaces whole URLs per key; ``checksums`` maps a key to ``{"sha256": ..., "md5": ...}``, or to
    None to skip verification (the digests are still recorded in download.json).
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {sorted(SOURCES)}, got {source!r}")
    out = dict(SOURCES[source])
    for key in (urls or {}):
        if key not in out:
            raise ValueError(f"urls: unknown key {key!r}, expected {sorted(out)}")
    for key, a in out.items():
        if base_url is not None:
            a = replace(a, url=base_url.rstrip("/") + "/" + a.filename)
        if urls and key in urls:
            a = replace(a, url=urls[key])
        if checksums is not None and key in checksums:
            c = checksums[key] or {}
            a = replace(a, sha256=c.get("sha256"), md5=c.get("md5"), size=None)
        out[key] = a
    return out


def _place_lists(staging: Path, out_dir: Path) -> None:
    found = sorted(staging.rglob("classInd.txt"))
    if len(found) != 1:
        raise ValueError(f"splits archive: expected exactly one classInd.txt, found {len(found)}")
    src = found[0].parent
    for k in SPLITS:
        for name in (f"trainlist0{k}.txt", f"testlist0{k}.txt"):
            if not (src / name).is_file():
                raise ValueError(f"splits archive: {name} is missing next to classInd.txt")
    dest = out_dir / LISTS_DIR
    if dest.exists():
        shutil.rmtree(dest)
    src.rename(dest)


def _place_videos(staging: Path, out_dir: Path, classes: list[str]) -> int:
    """Move every ``v_<Class>_gGG_cCC`` video under ``staging`` to ``UCF-101/<Class>/`` (canonical names)."""
    tmp = out_dir / f".{VIDEOS_DIR}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    known, ignored, n = set(classes), [], 0
    for f in sorted(p for p in staging.rglob("*") if p.is_file()):
        m = VIDEO_NAME.match(canonical(f.stem))
        if f.suffix.lower() not in VIDEO_SUFFIXES or m is None:
            ignored.append(f.relative_to(staging).as_posix())
            continue
        if m["cls"] not in known:
            raise ValueError(f"videos archive: {f.relative_to(staging)} names class {m['cls']!r}, "
                             "which is not in classInd.txt")
        dest = tmp / m["cls"] / (canonical(f.stem) + f.suffix)
        if dest.exists():
            raise ValueError(f"videos archive: two files map to {dest.relative_to(tmp)}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        f.rename(dest)
        n += 1
    if ignored:
        warnings.warn(f"videos archive: ignored {len(ignored)} file(s) that are not UCF-101 videos, "
                      f"e.g. {ignored[:5]}", stacklevel=3)
    if n == 0:
        raise ValueError("videos archive: no v_<Class>_gGG_cCC videos found")
    final = out_dir / VIDEOS_DIR
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return n


def _extract(archive: Path, staging: Path, progress: bool) -> None:
    if staging.exists():
        shutil.rmtree(staging)  # left over from an interrupted run
    if archive.suffix.lower() == ".rar":
        extract_rar(archive, staging, progress=progress)
    else:
        extract_zip(archive, staging, progress=progress)


def _already_complete(out_dir: Path, wanted: dict[str, Archive]) -> pd.DataFrame | None:
    """The existing index if a previous run finished with the same archives and all its videos are present."""
    record, index = out_dir / "download.json", out_dir / "index.csv"
    if not (record.is_file() and index.is_file()):
        return None
    rec = json.loads(record.read_text())
    for key, a in wanted.items():
        got = rec.get("archives", {}).get(key, {})
        if got.get("url") != a.url or any(want is not None and got.get(name) != want
                                          for name, want in (("sha256", a.sha256), ("md5", a.md5))):
            return None
    df = read_index(index)
    if not (out_dir / LISTS_DIR / "classInd.txt").is_file():
        return None
    if any(not (out_dir / p).is_file() for p in df["path"]):
        return None
    return df


def download_ucf101(out_dir: str | Path, source: str = "official", urls: dict[str, str] | None = None, *,
                    base_url: str | None = None, checksums: dict[str, dict | None] | None = None,
                    probe: bool = True, workers: int | None = None, progress: bool = True,
                    keep_archives: bool = True) -> pd.DataFrame:
    """Download, verify, extract and index UCF-101 into ``out_dir``; returns the index (also ``index.csv``).

    ``source``: "official" (UCF101.rar, needs ``unar``) or "mirror" (the GCS zip). Overrides as in
    :func:`resolve_archives`. Idempotent: when ``download.json`` records a finished run with the same URLs and
    digests and every indexed video is present, nothing is downloaded, extracted or probed again.
    Archives stay in ``out_dir/archives`` unless ``keep_archives=False`` (then a re-run downloads again if the
    tree is incomplete).
    """
    out_dir = Path(out_dir)
    wanted = resolve_archives(source, urls, base_url, checksums)
    done = _already_complete(out_dir, wanted)
    if done is not None:
        _log(f"{out_dir} is complete ({len(done)} videos indexed); nothing to do")
        return done
    if any(a.filename.lower().endswith(".rar") for a in wanted.values()):
        require_unar()  # fail before a 6.5 GB download, not after
    (out_dir / "download.json").unlink(missing_ok=True)  # marks the tree incomplete until this run finishes

    timings: dict[str, float] = {}
    files: dict[str, Path] = {}
    t = time.perf_counter()
    for key, a in wanted.items():
        _log(f"downloading {a.url}")
        try:
            files[key] = download_file(a.url, out_dir / "archives" / a.filename, sha256=a.sha256, md5=a.md5,
                                       progress=progress)
        except ChecksumError as e:
            if a.md5 is None or a.md5 != OFFICIAL_VIDEOS.md5:
                raise
            raise ChecksumError(
                f"{e}\nThe md5 pinned for UCF101.rar comes from third-party code and is unverified. "
                f"If you trust the file, move {e.bad_path} to {out_dir / 'archives' / a.filename} and "
                "re-run with checksums={'videos': None}; download.json then records its sha256.",
                e.bad_path) from e
    timings["download_s"] = time.perf_counter() - t

    t = time.perf_counter()
    digests = {key: file_digests(p) for key, p in files.items()}  # recorded so the RAR's sha256 can be pinned
    timings["hash_s"] = time.perf_counter() - t

    t = time.perf_counter()
    staging = out_dir / ".staging-splits"
    _extract(files["splits"], staging, progress=False)
    _place_lists(staging, out_dir)
    shutil.rmtree(staging)
    classes = read_class_ind(out_dir / LISTS_DIR / "classInd.txt")
    staging = out_dir / ".staging-videos"
    _log(f"extracting {files['videos'].name} (UCF101.rar: several minutes)")
    _extract(files["videos"], staging, progress)
    n = _place_videos(staging, out_dir, classes)
    shutil.rmtree(staging)
    timings["extract_s"] = time.perf_counter() - t

    t = time.perf_counter()
    df = build_index(out_dir, probe=probe, workers=workers, progress=progress)
    write_index(df, out_dir / "index.csv")
    timings["index_s"] = time.perf_counter() - t

    atomic_write_json(out_dir / "download.json", {
        "source": source,
        "archives": {key: {**asdict(a), "filename": a.filename, "bytes": files[key].stat().st_size,
                           **digests[key]} for key, a in wanted.items()},
        "num_videos": n,
        "num_classes": len(classes),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })
    if not keep_archives:
        for p in files.values():
            p.unlink()
    _log(f"{n} videos, {len(classes)} classes indexed in {out_dir / 'index.csv'}")
    return df
