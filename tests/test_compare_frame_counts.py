"""scripts/compare_frame_counts.py (PyAV vs decord frame counts): the parts that need no decord."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from micro import tiny_video

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_frame_counts.py"
spec = importlib.util.spec_from_file_location("compare_frame_counts", SCRIPT)
cfc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cfc)


def test_summary_counts_differences_and_crossings_of_16():
    rows = [{"path": "a", "pyav": 64, "decord": 97}, {"path": "b", "pyav": 40, "decord": 41},
            {"path": "c", "pyav": 30, "decord": 30}, {"path": "d", "pyav": None, "decord": 12}]
    s = cfc.summary(rows)
    assert (s["videos"], s["counted_by_both"], s["only_decord"], s["only_pyav"]) == (4, 3, 1, 0)
    assert s["differ"] == 2 and s["differ_across_a_multiple_of_16"] == 1  # 40 -> 41 stays in 2 clips
    assert [r["path"] for r in s["largest_differences"]] == ["a", "b"]


def test_videos_are_found_and_counted_by_pyav(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "v.avi").write_bytes(tiny_video(21, seed=0))
    (tmp_path / "notes.txt").write_text("not a video")
    files = cfc.videos_under([str(tmp_path)])
    assert files == [str(tmp_path / "x" / "v.avi")]
    from larp.data.index import probe_video

    assert probe_video(files[0])["num_frames"] == 21
    with pytest.raises(SystemExit, match="no such file"):
        cfc.videos_under([str(tmp_path / "missing")])
