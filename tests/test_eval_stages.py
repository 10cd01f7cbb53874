"""`larp sample` / `larp fvd` / `larp rfvd` (larp.sample, larp.fvd, larp.rfvd) end to end on a tiny synthetic pipeline.

Once per module: synthetic frames (3 classes x (3 train + 1 test) videos, 16-20 frames, 32x32), a tiny
tokenizer (3 steps), its tokens, and a tiny AR generator (4 steps). The FVD detector is ``i3d-random``
(offline, seeded; its numbers are not comparable to papers). I3D on CPU costs ~2 s per clip, so the FVD
sets are 3 clips and the rFVD 2 videos.
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

from larp import fvd as fvd_stage
from larp.config import Params, ParamsError, apply_overrides
from larp.data.clips import ClipDataset
from larp.data.frames import FrameStore
from larp.eval.metrics import mean_colour_psnr_per_video, psnr_per_video
from larp.eval.protocols import clips_hash, gfvd_clips, held_out_clips, rfvd_clips
from larp.files import sha256_file
from larp.fvd import fvd_real, gfvd
from larp.rfvd import rfvd
from larp.sample import sample_shard
from larp.tokenize import tokenize_dataset
from larp.train.generator import train_generator
from larp.train.tokenizer import load_tokenizer, train_tokenizer


def tiny(**overrides: dict) -> Params:
    base = {
        "tokenize": {"clip_stride": 4, "batch_size": 8, "shard_clips": 64},
        "train_ar": {"max_steps": 4, "global_batch": 8, "micro_batch": 8, "checkpoint_every": 100,
                     "log_every": 1, "sample_every": None},
        "sample": {"batch_size": 2, "shards": [0, 1]},
        "train_ar_fp": {"max_steps": 4, "global_batch": 8, "micro_batch": 8, "checkpoint_every": 100,
                        "log_every": 1, "sample_every": None},
        "fvd": {"detector": "i3d-random", "num_clips": 3, "fp_num_clips": 3, "bootstrap": 5, "batch_size": 4,
                "rfvd_max_videos": 2, "lpips": False},
    }
    return micro_params(base, overrides)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    frames = make_frames(root)
    params = tiny()
    torch.set_num_threads(1)
    tok, ar = root / "tok.safetensors", root / "ar.safetensors"
    train_tokenizer(frames, tok, params, progress=False)
    tokenize_dataset(frames, tok, root / "tokens", params, device="cpu", progress=False)
    train_generator(root / "tokens", ar, params, progress=False)
    samples = root / "samples"
    for k in (0, 1):
        sample_shard(frames, tok, ar, k, samples / f"shard-{k:03d}", params, progress=False)
    return {"root": root, "frames": frames, "tok": tok, "ar": ar, "params": params, "samples": samples}


def merged(samples: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """All shards' videos in sample-index order, and the merged samples table."""
    dirs = sorted(samples.glob("shard-*"))
    tables = [pd.read_csv(d / "samples.csv") for d in dirs]
    videos = np.concatenate([np.load(d / "videos.npy") for d in dirs])
    table = pd.concat(tables, ignore_index=True)
    order = np.argsort(table["index"].to_numpy())
    return videos[order], table.iloc[order].reset_index(drop=True)


# ---- sampling ----


def test_sample_shards_cover_the_protocol(setup: dict) -> None:
    params, samples = setup["params"], setup["samples"]
    refs = gfvd_clips(setup["frames"], params)
    videos, table = merged(samples)
    assert videos.dtype == np.uint8 and videos.shape == (3, 16, 32, 32, 3)
    assert table["index"].tolist() == [0, 1, 2]
    assert table["label"].tolist() == refs["label"].tolist()  # sample i is conditioned on real clip i's label
    assert np.isfinite(table["nll"]).all() and (table["nll"] > 0).all()
    meta = [json.loads((samples / f"shard-{k:03d}" / "sample.json").read_text()) for k in (0, 1)]
    assert [m["indices"] for m in meta] == [[0, 1], [1, 3]]
    for m in meta:
        assert m["clips_hash"] == clips_hash(refs) and m["num_shards"] == 2
        assert m["inputs"] == {"tokenizer": sha256_file(setup["tok"]), "ar": sha256_file(setup["ar"])}


def test_shard_count_does_not_change_the_samples(setup: dict, tmp_path: Path) -> None:
    """Each sample has its own seeded stream: 2 shards and 3 shards give the same videos per index."""
    params = tiny(fvd={"num_clips": 5}, sample={"batch_size": 2})
    runs = {}
    for n in (2, 3):
        p = apply_overrides(params, {"sample": {"shards": list(range(n))}})
        for k in range(n):
            sample_shard(setup["frames"], setup["tok"], setup["ar"], k, tmp_path / f"s{n}" / f"shard-{k:03d}",
                         p, progress=False)
        runs[n] = merged(tmp_path / f"s{n}")
    (v2, t2), (v3, t3) = runs[2], runs[3]
    assert t2["index"].tolist() == t3["index"].tolist() == list(range(5))
    assert t2["label"].tolist() == t3["label"].tolist()
    np.testing.assert_array_equal(v2, v3)
    np.testing.assert_allclose(t2["nll"], t3["nll"], rtol=1e-5)
    assert len(np.unique(v2.reshape(5, -1), axis=0)) > 1  # not one video repeated


def test_static_decode_step_gives_the_same_shard(setup: dict, tmp_path: Path) -> None:
    """sample.decode reaches the sampler: the fixed-shape step draws the same videos on the CPU."""
    params = tiny(sample={"decode": "static"})
    sample_shard(setup["frames"], setup["tok"], setup["ar"], 1, tmp_path / "shard-001", params, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "shard-001" / "videos.npy"),
                                  np.load(setup["samples"] / "shard-001" / "videos.npy"))
    assert json.loads((tmp_path / "shard-001" / "sample.json").read_text())["params"]["sample"]["decode"] == "static"


def test_more_shards_than_samples_is_a_clear_error(setup: dict, tmp_path: Path) -> None:
    # caught when the parameters are loaded, before any sampling work
    with pytest.raises(ParamsError, match=r"sample\.shards: 3 sampling shards for fvd\.num_clips=2"):
        tiny(fvd={"num_clips": 2}, sample={"shards": [0, 1, 2]})
    # and by the stage itself for a shard index outside sample.shards
    with pytest.raises(ValueError, match=r"shard 5 outside \[0, 2\)"):
        sample_shard(setup["frames"], setup["tok"], setup["ar"], 5, tmp_path / "shard-005", setup["params"],
                     progress=False)
    assert not (tmp_path / "shard-005").exists()


def test_each_shard_holds_the_ceiling_samples_of_the_generator_at_initialisation(setup: dict, tmp_path: Path) -> None:
    params = setup["params"]
    assert params.sample.ceiling  # the tiny preset measures the gFVD ceiling
    videos, table = merged(setup["samples"])
    ceil_dirs = sorted(setup["samples"].glob("shard-*/ceiling"))
    assert len(ceil_dirs) == 2
    ceil = np.concatenate([np.load(d / "videos.npy") for d in ceil_dirs])
    ceil_table = pd.concat([pd.read_csv(d / "samples.csv") for d in ceil_dirs])
    assert ceil.shape == videos.shape and ceil.dtype == np.uint8 and not np.array_equal(ceil, videos)
    assert ceil_table["label"].tolist() == table["label"].tolist()  # the same conditioning labels
    assert "at initialisation" in json.loads((ceil_dirs[0] / "sample.json").read_text())["generator"]
    # the initial weights come from sample.seed alone: one shard of all samples gives the same videos
    one = tiny(sample={"shards": [0]})
    sample_shard(setup["frames"], setup["tok"], setup["ar"], 0, tmp_path / "all", one, progress=False)
    assert np.array_equal(np.load(tmp_path / "all" / "ceiling" / "videos.npy"), ceil)
    # a shard without its ceiling samples is refused by `larp fvd` when sample.ceiling is on
    broken = tmp_path / "samples"
    shutil.copytree(setup["samples"], broken)
    shutil.rmtree(broken / "shard-001" / "ceiling")
    with pytest.raises(ValueError, match=r"shard-001: no ceiling/videos.npy although sample.ceiling is true"):
        gfvd("embedded", setup["frames"], broken, tmp_path / "fvd.json", params, progress=False)
    assert not (tmp_path / "fvd.json").exists()


# ---- gFVD ----


def test_gfvd_result_provenance_and_real_features(setup: dict, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    params = setup["params"]
    calls: list[str] = []
    compute = fvd_stage.compute_features

    def counting(detector, videos, **kw):
        calls.append(detector.name)
        return compute(detector, videos, **kw)

    monkeypatch.setattr(fvd_stage, "compute_features", counting)
    out = tmp_path / "results" / "fvd.json"
    r = gfvd("embedded", setup["frames"], setup["samples"], out, params, progress=False)
    # the real clips once, the held-out clips (class probe) once, each of the 2 shards and each shard's ceiling once
    assert len(calls) == 6
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    # the class probe: fitted on the real clips' features, scored on the samples and the held-out clips
    acc = r["class_accuracy"]
    held = held_out_clips(FrameStore(setup["frames"]).table, frames=16, split=1)
    assert acc["n_samples"] == 3 and acc["n_real_train"] == 3 and acc["n_real_test"] == len(held) > 0
    assert acc["samples"] in (0.0, 1 / 3, 2 / 3, 1.0) and 0 <= acc["real_test"] <= 1
    assert acc["chance"] == 1 / gfvd_clips(setup["frames"], params)["label"].nunique() and "nearest class mean" in acc["classifier"]
    floor = r["reference_points"]["floor_real_train_vs_real_test"]
    assert floor["n_real_train"] == 3 and floor["n_real_test"] == len(held) and np.isfinite(floor["value"])
    # the ceiling: the generator at initialisation sampled the same labels; its FVD and probe accuracy
    ceiling = r["reference_points"]["ceiling_generator_at_init"]
    assert ceiling["n_generated"] == 3 and np.isfinite(ceiling["value"]) and ceiling["value"] != r["value"]
    assert ceiling["ci95"][0] <= ceiling["ci95"][1] and ceiling["class_accuracy"] in (0.0, 1 / 3, 2 / 3, 1.0)

    refs = gfvd_clips(setup["frames"], params)
    assert r["metric"] == "gFVD" and r["dataset"] == "embedded"
    assert np.isfinite(r["value"]) and r["value"] >= 0 and r["value"] == r["fvd"]["fvd"]
    assert len(r["ci95"]) == 2 and r["ci95"][0] <= r["ci95"][1]
    assert r["fvd"]["bootstrap"]["B"] == 5
    assert r["n_generated"] == r["n_real"] == 3
    assert r["protocol"]["num_clips"] == 3 and r["protocol"]["seed"] == params.fvd.clip_seed
    assert r["protocol_params"] == {"frames": 16, "resolution": 32, "split": 1,
                                    "clips_hash": clips_hash(refs)}
    det = fvd_stage.load_detector("i3d-random")
    assert r["detector"] == {"detector": "i3d-random", "detector_sha256": det.sha256,
                             "comparable_to_papers": False}
    assert r["comparable_to_papers"] is False
    assert r["checkpoints"] == {"tokenizer": sha256_file(setup["tok"]), "ar": sha256_file(setup["ar"])}
    prov = json.loads(out.read_text())["provenance"]
    assert prov["params"] == json.loads(json.dumps(params.to_dict()))
    assert "commit" in prov["git"] and "dirty" in prov["git"] and prov["created"]
    assert prov["versions"]["torch"] and prov["versions"]["numpy"] == np.__version__
    assert r["wall_time_s"] > 0 and np.isfinite(r["nll_sampled"])

    # the stage writes its declared output and nothing else, and a rerun gives the same result
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == [Path("results"), Path("results/fvd.json")]
    assert r["real_features"] is None
    again = gfvd("embedded", setup["frames"], setup["samples"], out, params, progress=False)
    assert again["value"] == r["value"] and sorted(tmp_path.rglob("*")) == [out.parent, out]

    # `larp fvd-real` stores the real clips' features (the only file it writes); scoring with them computes
    # only the 2 generated shards
    real = tmp_path / "real" / "ucf.npz"
    real.parent.mkdir()
    calls.clear()
    fvd_real(setup["frames"], real, params, progress=False)
    assert len(calls) == 1 and [p.name for p in real.parent.iterdir()] == ["ucf.npz"]
    calls.clear()
    r2 = gfvd("embedded", setup["frames"], setup["samples"], out, params, real_features=real, progress=False)
    assert len(calls) == 5 and r2["real_features"] == str(real)  # the 2 shards, their ceilings, the held-out clips
    assert r2["class_accuracy"] == r["class_accuracy"]
    assert r2["value"] == pytest.approx(r["value"], rel=1e-9)

    # features of other real clips (or data, detector) are refused, naming the file and what differs
    with np.load(real) as f:
        key = {**json.loads(str(f["key"])), "clips": "0" * 16}
        np.savez(tmp_path / "other.npz", features=f["features"], key=np.str_(json.dumps(key)))
    with pytest.raises(ParamsError, match=r"other\.npz: real features of other clips than this evaluation's"):
        gfvd("embedded", setup["frames"], setup["samples"], out, params, real_features=tmp_path / "other.npz",
             progress=False)


def test_gfvd_refuses_a_missing_shard(setup: dict, tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    shutil.copytree(setup["samples"], samples)
    shutil.rmtree(samples / "shard-001")
    with pytest.raises(ValueError, match=r"found 1 shard directories, sample\.shards expects 2"):
        gfvd("embedded", setup["frames"], samples, tmp_path / "fvd.json", setup["params"],
             progress=False)
    assert not (tmp_path / "fvd.json").exists()


def test_gfvd_refuses_shards_of_another_protocol(setup: dict, tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    shutil.copytree(setup["samples"], samples)
    other = tiny(fvd={"clip_seed": 7})  # same number of clips, a different real set
    assert clips_hash(gfvd_clips(setup["frames"], other)) != clips_hash(
        gfvd_clips(setup["frames"], setup["params"]))
    shutil.rmtree(samples / "shard-001")
    sample_shard(setup["frames"], setup["tok"], setup["ar"], 1, samples / "shard-001", other, progress=False)
    with pytest.raises(ValueError, match="another protocol"):
        gfvd("embedded", setup["frames"], samples, tmp_path / "fvd.json", setup["params"],
             progress=False)
    # and shards whose indices do not tile 0..n-1 (e.g. sampled with another num_clips)
    more = tiny(fvd={"num_clips": 5})
    sample_shard(setup["frames"], setup["tok"], setup["ar"], 1, samples / "shard-001", more, progress=False)
    with pytest.raises(ValueError, match=r"not exactly indices 0\.\.2"):
        gfvd("embedded", setup["frames"], samples, tmp_path / "fvd.json", setup["params"],
             progress=False)


def test_gfvd_refuses_shards_of_other_checkpoints_or_sampling_settings(setup: dict, tmp_path: Path) -> None:
    samples = tmp_path / "samples"
    shutil.copytree(setup["samples"], samples)
    params = setup["params"]
    hotter = tiny(sample={"cfg_scale": 2.0})
    sample_shard(setup["frames"], setup["tok"], setup["ar"], 1, samples / "shard-001", hotter, progress=False)
    with pytest.raises(ValueError, match=r"shard-001: sampled with other sample params \['cfg_scale'\]"):
        gfvd("embedded", setup["frames"], samples, tmp_path / "fvd.json", params,
             progress=False)
    # the sample batch size does not change the samples, so it is no reason to refuse
    bigger = tiny(sample={"batch_size": 7})
    sample_shard(setup["frames"], setup["tok"], setup["ar"], 1, samples / "shard-001", bigger, progress=False)
    np.testing.assert_array_equal(np.load(samples / "shard-001" / "videos.npy"),
                                  np.load(setup["samples"] / "shard-001" / "videos.npy"))
    # another AR checkpoint for shard 1 (trained 1 step more)
    other_ar = tmp_path / "ar2.safetensors"
    train_generator(setup["root"] / "tokens", other_ar, tiny(train_ar={"max_steps": 5}),
                    run_root=tmp_path / "runs", progress=False)
    sample_shard(setup["frames"], setup["tok"], other_ar, 1, samples / "shard-001", params, progress=False)
    with pytest.raises(ValueError, match="shard-001: sampled from other checkpoints"):
        gfvd("embedded", setup["frames"], samples, tmp_path / "fvd.json", params,
             progress=False)
    assert not (tmp_path / "fvd.json").exists()


# ---- rFVD ----


def test_rfvd_reports_psnr_ssim_and_no_lpips_when_off(setup: dict, tmp_path: Path) -> None:
    params = setup["params"]
    out = tmp_path / "rfvd.json"
    r = rfvd("embedded", setup["frames"], setup["tok"], out, params, progress=False)
    assert json.loads(out.read_text())["value"] == r["value"]
    assert r["metric"] == "rFVD" and r["n_real"] == r["n_generated"] == 2 and np.isfinite(r["value"])
    assert r["lpips"] is None and "fvd.lpips" in r["lpips_note"]
    assert 0 < r["ssim"] <= 1 and r["comparable_to_papers"] is False
    assert r["checkpoints"] == {"tokenizer": sha256_file(setup["tok"])}
    # PSNR: mean over the protocol's clips of the argmax-SVQ reconstruction's per-video PSNR
    refs = rfvd_clips(FrameStore(setup["frames"]).table, frames=16, seed=params.fvd.rfvd_seed, split=1,
                      max_videos=2)
    assert r["protocol_params"]["clips_hash"] == clips_hash(refs)
    reader = ClipDataset(setup["frames"], split="all", mode="eval", frames=16)
    video = torch.stack([reader.read_clip(int(c.row), int(c.start)) for c in refs.itertuples()])
    tok = load_tokenizer(setup["tok"], params)
    ids = tok.encode(video)
    recon = tok.decode(ids).clamp(0, 1)
    assert r["psnr"] == pytest.approx(float(psnr_per_video(recon, video).mean()), rel=1e-5)
    # beside it, on the same clips: the per-clip mean-colour baseline and the share of the codebook used
    assert r["psnr_mean_colour_baseline"] == pytest.approx(float(mean_colour_psnr_per_video(video).mean()), rel=1e-5)
    assert r["codebook_usage"] == len(ids.unique()) / params.tokenizer.codebook_size
    # and the same figures on every non-overlapping clip of the held-out (test) videos
    test = ClipDataset(setup["frames"], split="test", mode="eval", frames=16)
    held = torch.stack([test[i][0] for i in range(len(test))])
    held_ids = tok.encode(held)
    h = r["held_out"]
    assert h["clips"] == len(test) > 0 and h["svq"] == "argmax"
    assert h["psnr"] == pytest.approx(float(psnr_per_video(tok.decode(held_ids).clamp(0, 1), held).mean()), rel=1e-5)
    assert h["psnr_mean_colour_baseline"] == pytest.approx(float(mean_colour_psnr_per_video(held).mean()), rel=1e-5)
    assert h["codebook_usage"] == len(held_ids.unique()) / params.tokenizer.codebook_size


# ---- frame prediction ----


def test_fp_sampling_and_fp_fvd(setup: dict, tmp_path: Path) -> None:
    """FP chain at stage level: condition tokens, FP generator, sharded FP samples, FP-FVD at 64 x 64."""
    from larp.config import frame_prediction_params
    from larp.eval.protocols import fp_clips
    from larp.fvd import fp_fvd
    from larp.sample import sample_fp_shard

    params = setup["params"]
    fp = frame_prediction_params(params)
    tokenize_dataset(setup["frames"], setup["tok"], tmp_path / "tokens_fp", fp, device="cpu", progress=False)
    assert (tmp_path / "tokens_fp" / "cond-00000.npy").is_file()
    ar_fp = tmp_path / "ar_fp.safetensors"
    train_generator(tmp_path / "tokens_fp", ar_fp, fp, progress=False)
    samples = tmp_path / "samples_fp"
    for k in (0, 1):
        sample_fp_shard(setup["frames"], setup["tok"], ar_fp, k, samples / f"shard-{k}", params, progress=False)
    refs = fp_clips(setup["frames"], params)
    assert len(refs) == 3  # every clip of the held-out videos
    table = pd.concat([pd.read_csv(samples / f"shard-{k}" / "samples.csv") for k in (0, 1)])
    assert sorted(table["index"]) == [0, 1, 2] and list(table["video_id"]) == list(refs["video_id"])
    videos = np.load(samples / "shard-0" / "videos.npy")
    assert videos.dtype == np.uint8 and videos.shape[1:] == (16, 32, 32, 3)
    out = tmp_path / "fvd_fp.json"
    r = fp_fvd("embedded", setup["frames"], samples, out, params)
    saved = json.loads(out.read_text())
    assert saved["metric"] == "FP-FVD" and saved["n_generated"] == saved["n_real"] == 3
    assert saved["protocol"]["detector_input_resolution"] == 64 and saved["protocol"]["cfg_scale"] == 1.0
    assert saved["comparable_to_papers"] is False and np.isfinite(r["value"])
    assert saved["checkpoints"] == {"tokenizer": sha256_file(setup["tok"]), "ar": sha256_file(ar_fp)}


def test_fp_condition_tokens_are_sampled_per_sample_or_argmax(setup: dict) -> None:
    """The official FP evaluation draws the condition tokens (stochastic SVQ at the tokenizer's tau); each sample
    from its own stream, so a shard gets the same tokens whatever else ran before; "argmax" is `encode`."""
    from dataclasses import replace

    from larp.config import frame_prediction_params
    from larp.sample import fp_condition_tokens
    from larp.tokenize import fp_condition

    params = frame_prediction_params(setup["params"])
    assert params.sample.fp_condition_svq == "sampled"
    tok = load_tokenizer(setup["tok"], params)
    clip = ClipDataset(setup["frames"], split="all", mode="eval", frames=16).read_clip(0, 0)
    argmax = tok.encode(fp_condition(clip[None], params.generator.cond_frames))[0]
    argmax_params = replace(params, sample=replace(params.sample, fp_condition_svq="argmax"))
    assert torch.equal(fp_condition_tokens(tok, clip, 7, argmax_params), argmax)
    torch.manual_seed(1)
    first = fp_condition_tokens(tok, clip, 7, params)
    torch.manual_seed(2)  # the global stream does not matter
    assert torch.equal(fp_condition_tokens(tok, clip, 7, params), first)
    draws = torch.stack([fp_condition_tokens(tok, clip, i, params) for i in range(20)])
    assert (draws != argmax).any(), "tau = 0.03 never moved a token off the argmax"
    assert len({tuple(d.tolist()) for d in draws}) > 1  # each sample index has its own draw
    seed_params = replace(params, sample=replace(params.sample, seed=params.sample.seed + 1))
    assert not all(torch.equal(fp_condition_tokens(tok, clip, i, seed_params), draws[i]) for i in range(20))
