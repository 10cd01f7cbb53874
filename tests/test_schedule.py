"""The AR epoch is one clip per training video (as the official trainer), so the step counts of the paper runs
follow the official ones; `larp schedule` prints them. No data needed: counts come from numbers or an index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from larp.cli import main
from larp.config import frame_prediction_params, preset
from larp.data.index import COLUMNS, write_index
from larp.tokenize import TokenDataset, shard_path
from larp.train.generator import OneClipPerVideo
from larp.train.data_order import SeededItems, item_seed, micro_batches, seeded_globals
from larp.train.schedule import lr_multiplier, resolve_schedule

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"


def test_paper_ucf101_ar_schedule_is_the_official_one() -> None:
    """UCF-101 split-1 train: 9,537 videos at global batch 64 -> 149 steps/epoch; 3,000 epochs; 4 warm-up epochs."""
    s = resolve_schedule(9537, preset("paper").train_ar)
    assert s == (149, 447_000, 596, 64)
    t = preset("paper").train_ar
    assert lr_multiplier(0, s.warmup_steps, s.total_steps, t.min_lr_mult) == pytest.approx(0.01)
    assert lr_multiplier(596, s.warmup_steps, s.total_steps, t.min_lr_mult) == pytest.approx(1.0)
    mid = (596 + 447_000) // 2
    assert lr_multiplier(mid, s.warmup_steps, s.total_steps, t.min_lr_mult) == pytest.approx(0.505)
    assert lr_multiplier(447_000, s.warmup_steps, s.total_steps, t.min_lr_mult) == pytest.approx(0.01)


def test_paper_k600_frame_prediction_and_tokenizer_schedules() -> None:
    """K600 frame prediction: 75 epochs, 1 warm-up epoch, global batch 64 over the train videos (~390k: the
    official csv is not published, so the count is whatever the index holds); the tokenizer: K600 + UCF-101
    train videos at 128, 150 epochs, 8 warm-up epochs."""
    fp = frame_prediction_params(preset("paper")).train_ar
    assert resolve_schedule(390_000, fp) == (6093, 456_975, 6093, 64)
    assert resolve_schedule(390_000 + 9537, preset("paper").train_tokenizer) == (3121, 468_150, 24_968, 128)
    with pytest.raises(ValueError, match="fewer than train.global_batch"):
        resolve_schedule(63, preset("paper").train_ar)


def _schedule(capsys, *args: str) -> tuple[int, dict | str]:
    rc = main(["schedule", "--params", str(PARAMS_YAML), *args])
    out = capsys.readouterr()
    return rc, json.loads(out.out) if rc == 0 else out.err


def test_schedule_command(capsys) -> None:
    rc, got = _schedule(capsys, "--dataset", "ucf101", "--stage", "train_ar", "--videos", "9537")
    assert rc == 0
    assert (got["steps_per_epoch"], got["total_steps"], got["warmup_steps"], got["global_batch"]) == (149, 447000, 596, 64)
    rc, got = _schedule(capsys, "--dataset", "k600", "--stage", "train_ar_fp", "--videos", "390000")
    assert rc == 0 and (got["steps_per_epoch"], got["total_steps"], got["warmup_steps"]) == (6093, 456975, 6093)
    rc, err = _schedule(capsys, "--dataset", "ucf101", "--stage", "train_ar", "--videos", "0")
    assert rc == 2 and err.startswith("larp schedule: --videos must be >= 1")


def _index(path: Path, splits: list[str], frames: list[int | None]) -> None:
    n = len(splits)
    df = pd.DataFrame({
        "video_id": [f"v{i}" for i in range(n)], "path": [f"x/v{i}.avi" for i in range(n)], "class_name": "A",
        "label": 0, "group": pd.array([1] * n, dtype="Int64"), "clip": pd.array([1] * n, dtype="Int64"),
        "split1": splits, "split2": splits, "split3": splits, "num_frames": pd.array(frames, dtype="Int64"),
        "fps": pd.array([25.0] * n, dtype="Float64"), "width": pd.array([64] * n, dtype="Int64"),
        "height": pd.array([48] * n, dtype="Int64")})[COLUMNS]
    path.parent.mkdir(parents=True)
    write_index(df, path)


def test_schedule_counts_the_training_videos_of_the_index(tmp_path: Path, capsys) -> None:
    """Train-list videos that decode count; test-list videos and undecodable ones (no frame count) do not. The
    tokenizer's epoch is every dataset of its mix (paper: k600 + ucf101)."""
    _index(tmp_path / "ucf101" / "index.csv", ["train"] * 140 + ["test"] * 30 + ["train"], [40] * 170 + [None])
    _index(tmp_path / "k600" / "index.csv", ["train"] * 200 + ["test"] * 10, [300] * 210)
    rc, got = _schedule(capsys, "--dataset", "ucf101", "--stage", "train_ar", "--raw-root", str(tmp_path))
    assert rc == 0 and got["videos"] == 140 and got["steps_per_epoch"] == 2 and got["total_steps"] == 6000
    rc, got = _schedule(capsys, "--dataset", "ucf101", "--stage", "train_tokenizer", "--raw-root", str(tmp_path))
    assert rc == 0 and got["datasets"] == ["k600", "ucf101"] and got["videos"] == 340 and got["steps_per_epoch"] == 2
    rc, err = _schedule(capsys, "--dataset", "k600", "--stage", "train_ar_fp", "--raw-root", str(tmp_path / "none"))
    assert rc == 2 and err.count("\n") == 1 and "index.csv: no index of 'k600'" in err and "--videos" in err


@pytest.fixture()
def token_dir(tmp_path: Path) -> Path:
    """A token store of 5 videos with 1, 2, 4, 6 and 8 clips (offsets x flips); token row i holds i."""
    counts = [1, 2, 4, 6, 8]
    rows = [(v, s // 2, s % 2 == 1) for v, c in enumerate(counts) for s in range(c)]
    clips = pd.DataFrame(rows, columns=["video_row", "start", "flip"])
    clips.insert(1, "video_id", [f"v{v}" for v in clips["video_row"]])
    clips.insert(2, "label", clips["video_row"] % 3)
    clips["shard"], clips["offset"] = 0, np.arange(len(clips))
    clips.to_csv(tmp_path / "clips.csv", index=False)
    np.save(shard_path(tmp_path, 0), np.repeat(np.arange(len(clips), dtype=np.uint16)[:, None], 4, axis=1))
    return tmp_path


def test_one_clip_per_video_draws_each_videos_clips_uniformly(token_dir: Path) -> None:
    clips = TokenDataset(token_dir)
    videos = OneClipPerVideo(clips)
    assert len(clips) == 21 and len(videos) == 5
    video_of = clips.clips["video_row"].to_numpy()
    seen: dict[int, list[int]] = {v: [] for v in range(5)}
    for seed in range(800):
        for v in range(5):
            with seeded_globals(item_seed(3, seed, v)):
                label, tokens = videos[v]
            clip = int(tokens[0])
            assert video_of[clip] == v and int(label) == v % 3
            seen[v].append(clip)
    for v, picks in seen.items():  # every clip of the video, about equally often
        got = np.bincount(picks, minlength=21)[video_of == v]
        assert got.min() > 0 and got.max() - got.min() < 0.5 * 800 / len(got) + 5, (v, got)
    again = SeededItems(videos)[(4, item_seed(3, 0, 4))]  # the same seed, the same clip
    assert torch.equal(again[1], SeededItems(videos)[(4, item_seed(3, 0, 4))][1])


def test_an_epoch_visits_every_video_once(token_dir: Path) -> None:
    """With the loop's sampler: one epoch = len(videos) // global_batch steps, each video at most once."""
    videos = OneClipPerVideo(TokenDataset(token_dir))
    batches = micro_batches(videos, seed=0, global_batch=5, micro_batch=5, num_workers=0, rank=0, world_size=1,
                            start_step=0)
    labels, tokens = next(batches)
    clip_video = TokenDataset(token_dir).clips["video_row"].to_numpy()
    assert sorted(clip_video[tokens[:, 0].numpy()].tolist()) == [0, 1, 2, 3, 4]
    resumed = micro_batches(videos, seed=0, global_batch=5, micro_batch=5, num_workers=0, rank=0, world_size=1,
                            start_step=1)
    assert torch.equal(next(batches)[1], next(resumed)[1])  # step 1 is the same whether resumed or not
    batches.close(), resumed.close()


def test_fewer_videos_than_a_global_batch_is_a_clear_error(token_dir: Path, tmp_path: Path) -> None:
    from micro import micro_params

    from larp.config import ParamsError
    from larp.train.generator import train_generator

    params = micro_params({"train_ar": {"global_batch": 8, "micro_batch": 8}})
    with pytest.raises(ParamsError, match="5 training videos, fewer than the AR global batch"):
        train_generator(token_dir, tmp_path / "ar.safetensors", params, progress=False)
