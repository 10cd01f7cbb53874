"""gFVD / rFVD clip selection on a synthetic metadata table: counts, determinism, labels, errors."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from larp.eval.protocols import clips_hash, gfvd_real_clips, rfvd_clips


def table() -> pd.DataFrame:
    # 12 videos, 4 classes; split1: videos 0-2 of each class are test, others train (like groups g01-g07)
    rows = []
    frames = [40, 15, 16, 33, 100, 64, 31, 47, 17, 80, 5, 48]
    for i, nf in enumerate(frames):
        cls = i // 3
        rows.append(
            dict(
                video_id=f"v_C{cls}_g{i:02d}",
                label=cls,
                split1="test" if i % 3 == 0 else "train",
                split2="train",
                split3="test" if i % 2 else "train",
                num_frames=nf,
            )
        )
    return pd.DataFrame(rows)


def test_gfvd_index_counts_and_draw():
    t = table()
    train = t[t.split1 == "train"]
    expected_index = [
        (row, s) for row, nf in zip(train.index, train.num_frames) for s in range(0, nf // 16 * 16, 16)
    ]
    assert len(expected_index) == sum(nf // 16 for nf in train.num_frames) == 17
    clips = gfvd_real_clips(t, frames=16, num_clips=7, seed=42)
    assert list(clips.columns) == ["row", "video_id", "start", "label"] and len(clips) == 7
    picks = random.Random(42).sample(range(17), 7)  # LARP's draw, in draw order
    assert list(zip(clips.row, clips.start)) == [expected_index[p] for p in picks]
    assert (clips.label == t.label.iloc[clips.row].to_numpy()).all()
    assert (clips.video_id == t.video_id.iloc[clips.row].to_numpy()).all()
    assert (t.split1.iloc[clips.row] == "train").all()
    assert (clips.start + 16 <= t.num_frames.iloc[clips.row].to_numpy()).all()
    # all 17 clips: every non-overlapping clip exactly once
    full = gfvd_real_clips(t, frames=16, num_clips=17, seed=0)
    assert sorted(zip(full.row, full.start)) == sorted(expected_index)
    # deterministic, and the seed matters
    assert gfvd_real_clips(t, 16, 7, 42).equals(clips)
    assert not gfvd_real_clips(t, 16, 7, 43).equals(clips)
    # split 2 has every video as train
    assert len(gfvd_real_clips(t, 16, sum(nf // 16 for nf in t.num_frames), split=2)) == 27


def test_gfvd_too_many_clips_names_both_numbers():
    with pytest.raises(ValueError, match=r"num_clips=18.*only 17"):
        gfvd_real_clips(table(), frames=16, num_clips=18)


def test_rfvd_one_clip_per_train_video():
    t = table()
    clips = rfvd_clips(t, frames=16, seed=0)
    train = t[t.split1 == "train"]
    assert len(clips) == len(train) == 8 and list(clips.row) == list(train.index)  # table order
    nf = t.num_frames.iloc[clips.row].to_numpy()
    assert ((clips.start >= 0) & (clips.start <= np.maximum(nf - 16, 0))).all()
    assert (clips.start[nf <= 16] == 0).all()  # short videos start at 0 (padded by the loader)
    assert rfvd_clips(t, 16, seed=0).equals(clips)
    assert not rfvd_clips(t, 16, seed=1).start.equals(clips.start)
    sub = rfvd_clips(t, 16, seed=0, max_videos=3)
    assert len(sub) == 3 and list(sub.row) == sorted(sub.row)
    # a video's clip does not depend on max_videos
    merged = sub.merge(clips, on="row", suffixes=("_sub", "_all"))
    assert (merged.start_sub == merged.start_all).all()
    assert len(rfvd_clips(t, 16, seed=0, max_videos=100)) == 8


def test_clips_hash_is_stable_and_sensitive():
    clips = gfvd_real_clips(table(), 16, 7, 42)
    h = clips_hash(clips)
    assert h == clips_hash(clips.copy()) and len(h) == 64
    assert h != clips_hash(clips.iloc[::-1])  # order is part of the protocol
    changed = clips.copy()
    changed.loc[0, "start"] += 16
    assert h != clips_hash(changed)


def test_bad_tables():
    t = table()
    with pytest.raises(ValueError, match="num_frames"):
        gfvd_real_clips(t.drop(columns="num_frames"), num_clips=1)
    with pytest.raises(ValueError, match="split1"):
        gfvd_real_clips(t.assign(split1="val"), num_clips=1)
    with pytest.raises(ValueError, match="split must be"):
        rfvd_clips(t, split=4)
    with pytest.raises(ValueError, match="non-negative integers"):
        rfvd_clips(t.assign(num_frames=-1))
