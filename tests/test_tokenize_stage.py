"""`larp tokenize` (larp.tokenize): clip list, output files, round trip, flips, resume and data parallelism.

A tiny tokenizer is trained for a few steps once per module on a synthetic frames dataset (3 classes x
(3 train + 1 test) videos of 16-20 frames at 32x32); the tokenize output of one single-process run is
shared by the tests that only read it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from micro import make_frames, micro_params

from larp.config import Params
from larp.data.clips import ClipDataset
from larp.files import sha256_file
from larp.models.tokenizer import LARPTokenizer
from larp.tokenize import TokenDataset, clip_list, shard_path, tokenize_dataset
from larp.train.tokenizer import load_tokenizer, train_tokenizer

SHARD_CLIPS = 8


def tiny(**overrides: dict) -> Params:
    base = {
        # stride 2 over 16-20 frame videos: 1-3 offsets per video, x2 flips; 5 does not divide the shards
        "tokenize": {"clip_stride": 2, "flips": True, "batch_size": 5, "shard_clips": SHARD_CLIPS},
    }
    return micro_params(base, overrides)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("tokenize")
    frames = make_frames(root)
    params = tiny()
    weights = root / "tok.safetensors"
    torch.set_num_threads(1)
    train_tokenizer(frames, weights, params, progress=False)
    out = root / "tokens"
    clips = tokenize_dataset(frames, weights, out, params, device="cpu", progress=False)
    return {"root": root, "frames": frames, "weights": weights, "params": params, "out": out, "clips": clips}


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def stored_tokens(out: Path, clip: pd.Series) -> np.ndarray:
    return np.load(shard_path(out, int(clip["shard"])))[int(clip["offset"])]


# ---- the clip list ----


def test_clip_list_has_every_offset_and_both_flips(setup: dict) -> None:
    frames, params = setup["frames"], setup["params"]
    table = pd.read_csv(frames / "videos.csv")
    train = table[table["split1"] == "train"]
    expected = []
    for row, n in zip(train.index, train["frame_count"]):
        for start in range(0, n - 16 + 1, 2):  # every start at clip_stride that fits a 16-frame clip
            expected += [(row, start, False), (row, start, True)]
    clips = clip_list(frames, params)
    assert len(train) == 9
    assert len(clips) == len(expected) == sum(2 * ((n - 16) // 2 + 1) for n in train["frame_count"])
    assert list(zip(clips["video_row"], clips["start"], clips["flip"])) == expected
    assert (clips["label"].to_numpy() == train.loc[clips["video_row"], "label"].to_numpy()).all()
    assert (clips["video_id"].to_numpy() == train.loc[clips["video_row"], "video_id"].to_numpy()).all()
    assert (clips["shard"] * SHARD_CLIPS + clips["offset"]).tolist() == list(range(len(clips)))
    assert (clips["offset"] < SHARD_CLIPS).all()

    no_flips = clip_list(frames, tiny(tokenize={"flips": False}))
    assert len(no_flips) == len(expected) // 2 and not no_flips["flip"].any()
    assert len(clip_list(frames, tiny(tokenize={"clip_stride": 100}))) == 2 * len(train)  # start 0 only


# ---- the output ----


def test_output_files(setup: dict) -> None:
    out, clips, params = setup["out"], setup["clips"], setup["params"]
    n_shards = -(-len(clips) // SHARD_CLIPS)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["clips.csv", "tokenize.json", *(shard_path(out, k).name for k in range(n_shards))])
    for k in range(n_shards):
        a = np.load(shard_path(out, k))
        assert a.dtype == np.uint16 and a.shape == (int((clips["shard"] == k).sum()), 16)
        assert a.max() < params.tokenizer.codebook_size
    table = pd.read_csv(out / "clips.csv")
    assert list(table.columns) == ["video_row", "video_id", "label", "start", "flip", "shard", "offset"]
    pd.testing.assert_frame_equal(table, clips.reset_index(drop=True), check_dtype=False)
    meta = json.loads((out / "tokenize.json").read_text())
    assert meta["inputs"]["tokenizer"] == sha256_file(setup["weights"])
    assert meta["inputs"]["videos.csv"] == sha256_file(setup["frames"] / "videos.csv")
    assert meta["clips"] == len(clips) and meta["shards"] == n_shards and meta["num_tokens"] == 16
    assert meta["params"]["tokenize"]["clip_stride"] == 2 and "git" in meta and "versions" in meta

    ds = TokenDataset(out)
    assert len(ds) == len(clips)
    label, tokens = ds[3]
    assert label.dtype == torch.int64 and tokens.dtype == torch.int64 and tokens.shape == (16,)
    assert int(label) == int(clips["label"].iloc[3])


def test_round_trip_and_flips(setup: dict) -> None:
    """Decoding the stored ids == the tokenizer's own reconstruction; flipped rows encode flipped frames."""
    out, clips = setup["out"], setup["clips"]
    tok = load_tokenizer(setup["weights"], setup["params"])
    reader = ClipDataset(setup["frames"], split="all", mode="eval", frames=16)
    picks = [0, 1, len(clips) // 2, len(clips) // 2 + 1, len(clips) - 2, len(clips) - 1]
    flips_differ = 0
    for i in picks:
        c = clips.iloc[i]
        video = reader.read_clip(int(c["video_row"]), int(c["start"]), bool(c["flip"]))[None]
        if c["flip"]:
            plain = reader.read_clip(int(c["video_row"]), int(c["start"]))[None]
            assert torch.equal(video, plain.flip(-1))
        ids = torch.from_numpy(stored_tokens(out, c).astype(np.int64))[None]
        own = tok.encode(video)
        assert torch.equal(ids, own), f"clip {i}: stored ids differ from encode()"
        torch.testing.assert_close(tok.decode(ids), tok.decode(own), rtol=0, atol=1e-6)
        if c["flip"]:
            flips_differ += not torch.equal(ids, tok.encode(plain))
    # the flipped clips are really encoded from flipped frames (not a copy of the unflipped ids)
    assert flips_differ >= 1


# ---- resume and data parallelism ----


def test_resume_recomputes_only_the_missing_or_broken_shards(setup: dict, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tokens"
    shutil.copytree(setup["out"], out)
    before = files_of(setup["out"])
    shard_path(out, 1).unlink()
    broken = shard_path(out, 2)
    broken.write_bytes(broken.read_bytes()[:100])  # a truncated write
    (out / "clips.csv").unlink()
    untouched = {k: shard_path(out, k).stat().st_mtime_ns for k in (0, 3)}

    encoded: list[int] = []
    original = LARPTokenizer.encode

    def counting(self: LARPTokenizer, video: torch.Tensor) -> torch.Tensor:
        encoded.append(len(video))
        return original(self, video)

    monkeypatch.setattr(LARPTokenizer, "encode", counting)
    tokenize_dataset(setup["frames"], setup["weights"], out, setup["params"], device="cpu", progress=False)
    clips = setup["clips"]
    assert sum(encoded) == int(clips["shard"].isin([1, 2]).sum())
    assert {k: shard_path(out, k).stat().st_mtime_ns for k in (0, 3)} == untouched
    after = files_of(out)
    assert after.keys() == before.keys()
    assert {k: v for k, v in after.items() if k != "tokenize.json"} == {
        k: v for k, v in before.items() if k != "tokenize.json"}

    encoded.clear()  # a complete output is not recomputed at all
    tokenize_dataset(setup["frames"], setup["weights"], out, setup["params"], device="cpu", progress=False)
    assert encoded == []


def test_two_ranks_write_the_single_process_output(setup: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "tokens"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    tokenize_dataset(setup["frames"], setup["weights"], out, setup["params"], device="cpu", progress=False)
    n_shards = int(setup["clips"]["shard"].max()) + 1
    assert sorted(p.name for p in out.iterdir()) == [shard_path(out, k).name for k in range(0, n_shards, 2)]
    monkeypatch.setenv("RANK", "1")
    tokenize_dataset(setup["frames"], setup["weights"], out, setup["params"], device="cpu", progress=False)

    single, union = files_of(setup["out"]), files_of(out)
    assert union.keys() == single.keys()
    for name in single:
        if name != "tokenize.json":
            assert union[name] == single[name], name
    a, b = (json.loads(d["tokenize.json"]) for d in (single, union))
    for volatile in ("created", "git"):
        a.pop(volatile), b.pop(volatile)
    assert a == b


def test_too_many_classes_for_the_generator_fail_before_tokenizing(setup, tmp_path):
    # e.g. K600 (600 classes) under the UCF-101 generator (101): refused before any clip is encoded
    params = tiny(generator={"num_classes": 2})
    with pytest.raises(ValueError, match=r"labels up to 2, but the class-conditional generator has "
                                         r"generator.num_classes = 2"):
        tokenize_dataset(setup["frames"], setup["weights"], tmp_path / "tokens", params, device="cpu",
                         progress=False)
    assert not (tmp_path / "tokens").exists()
