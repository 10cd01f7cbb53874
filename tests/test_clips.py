"""Clip dataset: train windows (length, padding, flip, determinism per (seed, epoch, i)) and eval clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from larp.data.clips import ClipDataset, nonoverlapping_clips
from larp.data.frames import FrameStore

SIZE = 8
COUNTS = [40, 10, 16, 33, 47, 5, 20, 64]  # frames per video; 10 and 5 need padding in train mode
SPLIT1 = ["train", "train", "test", "train", "test", "train", "train", "test"]


def frame(video: int, t: int) -> np.ndarray:
    """A frame that says which it is: channel 0 = video, channel 1 = t, channel 2 = column (shows flips)."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = video, t, np.arange(SIZE) * 10
    return img


@pytest.fixture(scope="module")
def frames_dir(tmp_path_factory) -> Path:
    """A frames dir in the `larp extract` format, written by hand (2 shards) so contents are known."""
    root = tmp_path_factory.mktemp("frames")
    rows, shards = [], {0: [], 1: []}
    for v, n in enumerate(COUNTS):
        k = v // 4
        start = sum(len(x) for x in shards[k])
        shards[k].append(np.stack([frame(v, t) for t in range(n)]))
        rows.append(
            {
                "video_id": f"v{v}",
                "path": f"UCF-101/C/v{v}.avi",
                "class_name": f"C{v % 3}",
                "label": v % 3,
                "split1": SPLIT1[v],
                "split2": "train",
                "split3": "train",
                "shard": f"shard-0000{k}.u8",
                "frame_start": start,
                "frame_count": n,
            }
        )
    for k, parts in shards.items():
        (root / f"shard-0000{k}.u8").write_bytes(np.concatenate(parts).tobytes())
    pd.DataFrame(rows).to_csv(root / "videos.csv", index=False)
    (root / "report.json").write_text(json.dumps({"size": SIZE}))
    return root


def decode_item(x: torch.Tensor) -> tuple[int, list[int], bool]:
    """(video, frame indices, flipped) back from a (c, t, h, w) item made of :func:`frame` images."""
    u8 = (x * 255).round().to(torch.uint8)
    cols = u8[2, 0, 0].tolist()
    flipped = cols == sorted(cols, reverse=True)
    assert flipped or cols == sorted(cols)
    return int(u8[0, 0, 0, 0]), u8[1, :, 0, 0].tolist(), flipped


def test_nonoverlapping_clips():
    assert nonoverlapping_clips([40, 10, 16, 33], 16) == [(0, 0), (0, 16), (2, 0), (3, 0), (3, 16)]
    assert len(nonoverlapping_clips(COUNTS, 16)) == sum(n // 16 for n in COUNTS)
    with pytest.raises(ValueError, match="frames"):
        nonoverlapping_clips([5], 0)


def test_frame_store(frames_dir):
    store = FrameStore(frames_dir)
    assert len(store) == 8 and store.size == SIZE
    v = store.video(5)
    assert (
        v.shape == (5, SIZE, SIZE, 3) and (v[:, 0, 0, 0] == 5).all() and list(v[:, 0, 0, 1]) == list(range(5))
    )
    padded = store.frames(1, 4, 16)  # 10 frames from 4: frames 4..9 then frame 9 repeated
    assert list(padded[:, 0, 0, 1]) == list(range(4, 10)) + [9] * 10
    with pytest.raises(IndexError, match="row 1"):
        store.frames(1, 10, 16)


def test_train_mode_windows_padding_and_determinism(frames_dir):
    ds = ClipDataset(frames_dir, split="train", mode="train", seed=3)
    train_rows = [i for i, s in enumerate(SPLIT1) if s == "train"]
    assert len(ds) == len(train_rows)
    flips = []
    for epoch in range(12):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            x, label = ds[i]
            assert x.shape == (3, 16, SIZE, SIZE) and x.dtype == torch.float32
            assert 0 <= float(x.min()) and float(x.max()) <= 1
            video, ts, flipped = decode_item(x)
            n = COUNTS[train_rows[i]]
            assert video == train_rows[i] and label == video % 3
            if n >= 16:
                assert ts == list(range(ts[0], ts[0] + 16)) and 0 <= ts[0] <= n - 16
            else:  # whole video, then its last frame repeated
                assert ts == list(range(n)) + [n - 1] * (16 - n)
            ref = ds.clip_ref(i)
            assert (ref.start, ref.flip) == (ts[0], flipped)
            flips.append(flipped)
    assert 0.3 < np.mean(flips) < 0.7  # one fair flip decision per clip

    again = ClipDataset(frames_dir, split="train", mode="train", seed=3)
    again.set_epoch(11)
    assert all(torch.equal(again[i][0], ds[i][0]) for i in range(len(ds)))  # same (seed, epoch, i)
    starts = lambda d: [d.clip_ref(i) for i in range(len(d))]
    again.set_epoch(5)
    assert starts(again) != starts(ds)  # another epoch draws other windows
    other = ClipDataset(frames_dir, split="train", mode="train", seed=4)
    other.set_epoch(11)
    assert starts(other) != starts(ds)
    no_flip = ClipDataset(frames_dir, split="train", mode="train", flip=False)
    assert not any(no_flip.clip_ref(i).flip for i in range(len(no_flip)))


def test_eval_mode_all_nonoverlapping_clips(frames_dir):
    ds = ClipDataset(frames_dir, split="test", mode="eval")
    test_rows = [i for i, s in enumerate(SPLIT1) if s == "test"]
    assert len(ds) == sum(COUNTS[r] // 16 for r in test_rows) == 1 + 2 + 4
    seen = []
    for i in range(len(ds)):
        x, label = ds[i]
        video, ts, flipped = decode_item(x)
        assert not flipped and ts[0] % 16 == 0 and ts == list(range(ts[0], ts[0] + 16))
        assert label == video % 3
        seen.append((video, ts[0]))
    assert seen == [(2, 0), (4, 0), (4, 16), (7, 0), (7, 16), (7, 32), (7, 48)]
    assert ClipDataset(frames_dir, split="train", split_index=2, mode="eval").__len__() == sum(
        n // 16 for n in COUNTS
    )


def test_read_specific_clip(frames_dir):
    ds = ClipDataset(frames_dir, split="all", mode="eval")
    video, ts, flipped = decode_item(ds.read_clip(7, 20, flip=True))
    assert (video, ts, flipped) == (7, list(range(20, 36)), True)


def test_items_do_not_depend_on_workers_and_epoch_reaches_persistent_workers(frames_dir):
    ds = ClipDataset(frames_dir, split="train", mode="train", seed=1)
    ds.set_epoch(2)
    serial = torch.cat([x for x, _ in DataLoader(ds, batch_size=2, num_workers=0)])
    loader = DataLoader(ds, batch_size=2, num_workers=2, persistent_workers=True)
    assert torch.equal(torch.cat([x for x, _ in loader]), serial)
    ds.set_epoch(7)
    parallel7 = torch.cat([x for x, _ in loader])  # the same worker processes, a new epoch
    assert torch.equal(parallel7, torch.stack([ds[i][0] for i in range(len(ds))]))
    assert not torch.equal(parallel7, serial)


def test_bad_arguments(frames_dir, tmp_path):
    with pytest.raises(ValueError, match="mode"):
        ClipDataset(frames_dir, mode="test")
    with pytest.raises(ValueError, match="split_index"):
        ClipDataset(frames_dir, split_index=4)
    with pytest.raises(FileNotFoundError, match="videos.csv"):
        ClipDataset(tmp_path)
