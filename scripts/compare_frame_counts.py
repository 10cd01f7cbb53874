"""Compare the two frame counters on real videos: ours (PyAV, every decoded frame; ``larp.data.index``) and
the official index's (decord's ``len(VideoReader(path))``).

The counts feed the evaluation clip draws: a video gives ``num_frames // 16`` gFVD clips and its random
clip starts lie in ``[0, num_frames - 16]``, so a count that differs moves the draw and one that crosses a
multiple of 16 changes the clip pool. Run it on your raw UCF-101 / K600 folders to see where the two
disagree on your copy (decord is not a dependency of larp: ``pip install decord``):

    python scripts/compare_frame_counts.py data/raw/ucf101 [--out counts.csv] [--workers 8]

Arguments are video files or folders (searched recursively for video files). Prints a JSON summary;
``--out`` writes every video's two counts. Exit status 0 whether or not the counts differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

VIDEO_SUFFIXES = {".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v"}


def decord_count(path: str) -> int | None:
    """decord's frame count (what the official index stores); None if decord cannot open the file."""
    import decord

    try:
        return len(decord.VideoReader(path, num_threads=1))
    except Exception:  # decord raises its own DECORDError and plain RuntimeErrors
        return None


def both_counts(path: str) -> dict:
    from larp.data.index import probe_video

    ours = probe_video(path)
    return {"path": path, "pyav": ours["num_frames"], "decord": decord_count(path)}


def videos_under(paths: list[str]) -> list[str]:
    found = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(str(f) for f in p.rglob("*") if f.suffix.lower() in VIDEO_SUFFIXES)
        elif p.is_file():
            found.append(str(p))
        else:
            raise SystemExit(f"compare_frame_counts: {p}: no such file or folder")
    return found


def summary(rows: list[dict], clip: int = 16) -> dict:
    both = [r for r in rows if r["pyav"] is not None and r["decord"] is not None]
    differ = [r for r in both if r["pyav"] != r["decord"]]
    crosses = [r for r in differ if r["pyav"] // clip != r["decord"] // clip]
    return {
        "videos": len(rows),
        "counted_by_both": len(both),
        "only_pyav": sum(r["pyav"] is not None and r["decord"] is None for r in rows),
        "only_decord": sum(r["decord"] is not None and r["pyav"] is None for r in rows),
        "differ": len(differ),
        f"differ_across_a_multiple_of_{clip}": len(crosses),
        "largest_differences": sorted(differ, key=lambda r: -abs(r["decord"] - r["pyav"]))[:10],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="video files or folders")
    ap.add_argument("--out", type=Path, help="CSV of path, pyav, decord")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    try:
        import decord  # noqa: F401
    except ImportError:
        print("compare_frame_counts: needs decord (pip install decord; not a larp dependency)", file=sys.stderr)
        return 2
    files = videos_under(args.paths)
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(both_counts, files, chunksize=8))
    if args.out:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.out, index=False)
    print(json.dumps(summary(rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
