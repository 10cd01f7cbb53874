"""Frame-prediction AR variant (docs/model.md#frame-prediction, docs/protocols.md#fp-fvd): model layout, loss
alignment, KV-cache sampling, no CFG, overfitting, the condition clip, condition tokens in `larp tokenize`, FP
training, and the FP-FVD protocol pieces.

The variant is ``generator.frame_prediction = true`` on the same LARPGenerator / GeneratorTask / sampler.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from micro import make_frames, micro_params
from torchvision.transforms import Resize

from larp.config import Params
from larp.data.clips import ClipDataset
from larp.eval.protocols import clips_hash, fp_fvd_clips, fp_fvd_shard, gfvd_real_clips, resize_to
from larp.models.generator import LARPGenerator
from larp.sample import generate, generate_reference, sample_generators, sample_tokens, sequence_nll
from larp.tokenize import TokenDataset, cond_shard_path, fp_condition, shard_path, tokenize_dataset
from larp.train.generator import load_generator, run_key, train_generator
from larp.train.tokenizer import load_tokenizer, train_tokenizer


def tiny_fp(seq_len: int = 16, **overrides) -> LARPGenerator:
    """Tiny FP model with a random (not zero) output head, so logits carry information."""
    torch.manual_seed(0)
    m = LARPGenerator.from_preset("tiny", frame_prediction=True, seq_len=seq_len, **overrides)
    torch.nn.init.normal_(m.output.weight, std=0.3)
    return m


def rand_ids(m: LARPGenerator, b: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, m.cfg.vocab_size, (b, m.cfg.seq_len), generator=torch.Generator().manual_seed(seed))


# ---- model ----


def test_paper_fp_parameter_count_and_layout():
    """633.16M (docs/model.md#sizes): the class-conditional 631,975,680 - class table (102 x 1280) + SEP row (1280)
    + 1024 extra abs_pe rows (every name and shape: the ar-fp section of official_state_dict_keys.txt,
    tests/test_convert.py)."""
    with torch.device("meta"):
        m = LARPGenerator.from_preset("llama-abs-LP", frame_prediction=True)
    n = m.num_params()
    assert n == 631_975_680 - 102 * 1280 + 1280 + 1024 * 1280 == 633_157_120
    assert round(n / 1e6, 2) == 633.16
    sd = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert not any(k.startswith("cls_embedding") for k in sd)
    assert sd["tok_embeddings.weight"] == (8193, 1280) and sd["output.weight"] == (8192, 1280)
    assert sd["abs_pe"] == (1, 2048, 1280) and m.cond_len == 1025 and m.sep_id == 8192
    assert len(sd) == 214  # the 215 class-conditional entries minus the class table


def test_forward_alignment_and_loss_equal_a_manual_computation():
    m = tiny_fp().eval()
    b, n, v = 3, m.cfg.seq_len, m.cfg.vocab_size
    cond, z = rand_ids(m, b, 1), rand_ids(m, b, 2)
    logits = m(cond, z[:, :-1])
    assert logits.shape == (b, n, v) and logits.dtype == torch.float32
    # manual: [cond_0..cond_{n-1}, SEP, z_0..z_{n-2}] (2n positions) -> keep the logits at positions n..2n-1
    seq = torch.cat([cond, torch.full((b, 1), v), z[:, :-1]], dim=1)
    assert seq.shape[1] == m.abs_pe.shape[1] == 2 * n
    h = m.tok_embeddings(seq) + m.abs_pe
    for block in m.layers:
        h = block(h)
    manual = m.output(m.norm(h))[:, n:]
    torch.testing.assert_close(logits, manual, rtol=0, atol=1e-5)
    ce = -(manual.log_softmax(-1).gather(-1, z[..., None])[..., 0]).mean()
    torch.testing.assert_close(m.loss(cond, z), ce, rtol=1e-6, atol=1e-6)
    # causality: z_j reaches logits rows > j only; every condition token (and SEP) reaches every row
    z2 = z.clone()
    z2[:, 7] = (z2[:, 7] + 1) % v
    l2 = m(cond, z2[:, :-1])
    assert torch.equal(logits[:, :8], l2[:, :8]) and not torch.allclose(logits[:, 8], l2[:, 8])
    c2 = cond.clone()
    c2[:, -1] = (c2[:, -1] + 1) % v
    assert not torch.allclose(m(c2, z[:, :-1])[:, 0], logits[:, 0])
    with torch.no_grad():
        m.tok_embeddings.weight[v] += 1.0  # the SEP row is used
    assert not torch.allclose(m(cond, z[:, :-1]), logits)
    with pytest.raises(ValueError, match=r"cond_tokens: expected an integer tensor \(b, 16\)"):
        m(torch.tensor([0, 1, 2]), z[:, :-1])  # class ids are not a frame-prediction condition


def test_class_conditional_layout_is_unchanged():
    m = LARPGenerator.from_preset("tiny", seq_len=16)
    assert m.cond_len == 1 and m.abs_pe.shape[1] == 16 and m.tok_embeddings.num_embeddings == m.cfg.vocab_size
    assert m.cls_embedding is not None


def test_kv_cache_equals_full_forward():
    m = tiny_fp().to(torch.float64).eval()
    b, n = 3, m.cfg.seq_len
    cond, z = rand_ids(m, b, 3), rand_ids(m, b, 4)
    with torch.inference_mode():
        full = m(cond, z[:, :-1])
        m.setup_cache(b)
        assert m.cache.max_len == 2 * n
        cached = [m.prefill(cond)] + [m.decode_step(z[:, i - 1], m.cond_len + i - 1) for i in range(1, n)]
        torch.testing.assert_close(torch.stack(cached, 1), full, rtol=0, atol=1e-10)
        with pytest.raises(ValueError, match="next free position"):
            m.decode_step(z[:, 0], m.cond_len)  # the cache is full of this sequence


@pytest.mark.parametrize("filters", [{}, {"temperature": 0.8, "top_k": 20, "top_p": 0.9}])
def test_cached_generation_equals_the_reference_loop(filters):
    m = tiny_fp()
    cond = rand_ids(m, 4, 5)
    for gen in (lambda: torch.Generator().manual_seed(3), lambda: sample_generators(3, range(4))):
        fast = generate(m, cond, generator=gen(), **filters)
        slow = generate_reference(m, cond, generator=gen(), **filters)
        assert fast.shape == (4, m.cfg.seq_len) and torch.equal(fast, slow)
    # the condition matters (same streams, another condition -> other tokens)
    assert not torch.equal(generate(m, rand_ids(m, 4, 6), generator=sample_generators(3, range(4))), fast)


def test_cfg_is_refused_and_bad_conditions_are_reported():
    m = tiny_fp()
    cond = rand_ids(m, 2)
    for s in (1.25, 0.0):
        with pytest.raises(ValueError, match="cfg_scale: frame prediction has no classifier-free guidance"):
            generate(m, cond, cfg_scale=s, generator=torch.Generator())
        with pytest.raises(ValueError, match="cfg_scale"):
            sample_tokens(m, [(0, cond[0])], cfg_scale=s, seed=0, batch_size=1, device="cpu", progress=False)
    with pytest.raises(ValueError, match="cfg_scale"):
        generate_reference(m, cond, cfg_scale=2.0, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"cond_tokens: ids must be in \[0, 256\)"):
        generate(m, cond + 256, generator=torch.Generator())
    with pytest.raises(ValueError, match=r"cond_tokens: expected a non-empty \(b, 16\)"):
        generate(m, torch.tensor([1, 2]), generator=torch.Generator())
    with pytest.raises(ValueError, match=r"pairs\[0\]: frame prediction expects"):
        sample_tokens(m, [(0, 3)], cfg_scale=1.0, seed=0, batch_size=1, device="cpu", progress=False)


def test_sharded_sampling_per_sample_streams():
    m = tiny_fp()
    conds = rand_ids(m, 5, 7)
    pairs = [(10 + i, conds[i]) for i in range(5)]
    kw = {"cfg_scale": 1.0, "seed": 1, "device": "cpu", "progress": False}
    one = sample_tokens(m, pairs, batch_size=1, **kw)
    many = sample_tokens(m, pairs, batch_size=3, **kw)
    assert torch.equal(one.tokens, many.tokens) and torch.allclose(one.nll, many.nll, atol=1e-5)
    shard = sample_tokens(m, pairs[3:][::-1], batch_size=2, **kw)  # another shard, another order
    assert torch.equal(shard.tokens, one.tokens[3:].flip(0))
    torch.testing.assert_close(sequence_nll(m, conds, one.tokens), one.nll, rtol=0, atol=1e-5)


def test_tiny_fp_model_overfits_condition_target_pairs():
    """4 (condition, target) pairs; greedy decoding from each condition must give back its own target."""
    torch.manual_seed(0)
    m = LARPGenerator.from_preset("tiny", frame_prediction=True, seq_len=16, depth=2, token_dropout=0,
                                  resid_dropout=0, ffn_dropout=0)
    cond, z = rand_ids(m, 4, 8), rand_ids(m, 4, 9)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(150):
        loss = m.loss(cond, z)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
    out = generate(m, cond, top_k=1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, z)


# ---- the condition clip ----


def test_fp_condition_repeats_the_last_condition_frame():
    video = torch.rand(2, 3, 16, 4, 5, generator=torch.Generator().manual_seed(0))
    out = fp_condition(video, 5)
    assert out.shape == video.shape
    assert torch.equal(out[:, :, :5], video[:, :, :5])
    for t in range(5, 16):
        assert torch.equal(out[:, :, t], video[:, :, 4])
    assert torch.equal(fp_condition(video, 16), video)
    with pytest.raises(ValueError, match="cond_frames must be in"):
        fp_condition(video, 17)
    with pytest.raises(ValueError, match="expected a video"):
        fp_condition(video[0], 5)


def test_params_check_cond_frames():
    from larp.config import ParamsError

    with pytest.raises(ParamsError, match="generator.cond_frames: must be < data.frames"):
        micro_params({"generator": {"frame_prediction": True, "cond_frames": 16}})
    micro_params({"generator": {"cond_frames": 16}})  # unused without frame prediction
    with pytest.raises(ParamsError, match="generator.cond_frames"):
        micro_params({"generator": {"cond_frames": 0}})


# ---- tokenize + train with condition tokens ----


def fp_params(**overrides: dict) -> Params:
    base = {"tokenize": {"clip_stride": 4, "flips": True, "batch_size": 5, "shard_clips": 8},
            "generator": {"frame_prediction": True, "cond_frames": 5},
            "train_ar": {"max_steps": 30, "global_batch": 8, "micro_batch": 8, "checkpoint_every": 100,
                         "log_every": 1, "sample_every": 15}}
    return micro_params(base, overrides)


@pytest.fixture(scope="module")
def fp_setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("fp")
    frames = make_frames(root)
    params = fp_params()
    torch.set_num_threads(1)
    weights = root / "tok.safetensors"
    train_tokenizer(frames, weights, params, progress=False)
    out = root / "tokens"
    clips = tokenize_dataset(frames, weights, out, params, device="cpu", progress=False)
    return {"root": root, "frames": frames, "weights": weights, "params": params, "out": out, "clips": clips}


def test_tokenize_stores_the_condition_tokens(fp_setup: dict) -> None:
    out, clips, params = fp_setup["out"], fp_setup["clips"], fp_setup["params"]
    shards = sorted(clips["shard"].unique())
    assert len(shards) >= 2
    for k in shards:
        a, c = np.load(shard_path(out, k)), np.load(cond_shard_path(out, k))
        assert a.dtype == c.dtype == np.uint16 and a.shape == c.shape == ((clips["shard"] == k).sum(), 16)
    tok = load_tokenizer(fp_setup["weights"], params)
    reader = ClipDataset(fp_setup["frames"], split="all", mode="eval", frames=16)
    picks = [0, 1, len(clips) // 2, len(clips) - 1]
    for i in picks:
        r = clips.iloc[i]
        video = reader.read_clip(int(r["video_row"]), int(r["start"]), bool(r["flip"]))[None]
        cond = np.load(cond_shard_path(out, int(r["shard"])))[int(r["offset"])].astype(np.int64)
        target = np.load(shard_path(out, int(r["shard"])))[int(r["offset"])].astype(np.int64)
        assert torch.equal(torch.from_numpy(cond)[None], tok.encode(fp_condition(video, 5)))
        assert torch.equal(torch.from_numpy(target)[None], tok.encode(video))
    # the condition is not a copy of the clip's tokens (over all clips: a 3-step tokenizer maps many to one)
    assert any(not np.array_equal(np.load(cond_shard_path(out, k)), np.load(shard_path(out, k))) for k in shards)
    ds = TokenDataset(out, frame_prediction=True)
    c0, z0 = ds[0]
    r0 = clips.iloc[0]
    assert c0.shape == z0.shape == (16,) and c0.dtype == z0.dtype == torch.int64
    assert np.array_equal(c0.numpy(), np.load(cond_shard_path(out, int(r0["shard"])))[int(r0["offset"])])
    assert TokenDataset(out)[0][0].ndim == 0  # class-conditional items: (label, tokens)


def test_missing_condition_tokens_are_a_clear_error(fp_setup: dict, tmp_path: Path) -> None:
    plain = tmp_path / "tokens"
    plain.mkdir()
    for p in fp_setup["out"].iterdir():
        if not p.name.startswith("cond-"):
            (plain / p.name).write_bytes(p.read_bytes())
    with pytest.raises(FileNotFoundError, match="frame_prediction = true"):
        TokenDataset(plain, frame_prediction=True)


def test_fp_training_lowers_the_loss_and_samples_from_conditions(fp_setup: dict, tmp_path: Path) -> None:
    import csv

    params = fp_setup["params"]
    out = tmp_path / "ar.safetensors"
    run = train_generator(fp_setup["out"], out, params, tokenizer_weights=fp_setup["weights"], progress=False)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    loss = [float(r["loss_ar"]) for r in rows]
    assert len(loss) == 30 and np.mean(loss[-3:]) < np.mean(loss[:3]) - 0.5, loss
    ids = torch.load(run / "samples" / "tokens-0000015.pt", weights_only=True)
    assert ids.shape == (8, 16) and int(ids.max()) < 64  # one sample per stored condition (first 8 clips)
    assert (run / "samples" / "samples-0000030.png").is_file()
    model = load_generator(out, params)
    assert model.cls_embedding is None and model.abs_pe.shape[1] == 32
    # an FP run never shares its run directory with the class-conditional run of the same sizes
    plain = micro_params({"train_ar": params.train_ar.__dict__, "tokenize": params.tokenize.__dict__})
    assert run_key(plain, fp_setup["out"]) != run_key(params, fp_setup["out"])


# ---- FP-FVD protocol ----


def k600_like_table() -> pd.DataFrame:
    """5,000 val videos of 160 frames (10 clips each: exactly 50,000) after 300 train videos; some val videos
    shorter than one clip (0 clips)."""
    n_train, n_val = 300, 5000
    nf = [200] * n_train + [160] * n_val + [15] * 7
    split = ["train"] * n_train + ["test"] * (n_val + 7)
    return pd.DataFrame({"video_id": [f"v{i}" for i in range(len(nf))], "label": [i % 600 for i in range(len(nf))],
                         "split1": split, "split2": "", "split3": "", "num_frames": nf})


def test_fp_fvd_clips_protocol_counts_and_determinism():
    table = k600_like_table()
    clips = fp_fvd_clips(table)  # 16 frames, 50,000 clips, seed 42, val split
    assert len(clips) == 50_000 and list(clips.columns) == ["row", "video_id", "start", "label"]
    assert (table["split1"].iloc[clips["row"]] == "test").all()  # val videos only (K600 index: split1 "test")
    assert (clips["start"] % 16 == 0).all() and (clips["start"] + 16 <= 160).all()
    assert not clips.duplicated(["row", "start"]).any()  # the whole index, each clip once
    # the draw: random.Random(42).sample over the index (val videos in table order, clips k = 0..9 each)
    pick = random.Random(42).sample(range(50_000), 50_000)
    assert clips["row"].tolist()[:5] == [300 + p // 10 for p in pick[:5]]
    assert clips["start"].tolist()[:5] == [16 * (p % 10) for p in pick[:5]]
    assert clips_hash(fp_fvd_clips(table)) == clips_hash(clips)
    assert clips_hash(fp_fvd_clips(table, seed=43)) != clips_hash(clips)
    # the same index/draw as gFVD over the same videos
    swapped = table.assign(split1=table["split1"].map({"train": "test", "test": "train"}))
    assert clips_hash(gfvd_real_clips(swapped, num_clips=1000)) == clips_hash(fp_fvd_clips(table, num_clips=1000))
    with pytest.raises(ValueError, match="FP-FVD: val split asks for num_clips=50001"):
        fp_fvd_clips(table, num_clips=50_001)
    with pytest.raises(ValueError, match="split must be one of"):
        fp_fvd_clips(table, split="test")


def test_fp_fvd_shards_partition_the_draw():
    clips = fp_fvd_clips(k600_like_table(), num_clips=1003)
    parts = [fp_fvd_shard(clips, k, 4) for k in range(4)]
    assert [len(p) for p in parts] == [250, 251, 251, 251]  # each job its own slice, not the total
    merged = pd.concat(parts, ignore_index=True)
    assert merged["index"].tolist() == list(range(1003))
    assert clips_hash(merged) == clips_hash(clips)
    with pytest.raises(ValueError, match="shard 4 outside"):
        fp_fvd_shard(clips, 4, 4)


def test_resize_to_64_for_both_sets():
    video = torch.rand(2, 3, 16, 32, 40, generator=torch.Generator().manual_seed(0))
    small = resize_to(video, 64)
    assert small.shape == (2, 3, 16, 64, 64) and small.dtype == torch.float32
    frame = Resize((64, 64), antialias=True)(video[1, :, 7])
    torch.testing.assert_close(small[1, :, 7], frame, rtol=0, atol=0)
    down = resize_to(torch.rand(1, 3, 2, 128, 128), 64)  # downscaling (generated/real clips are 128x128)
    assert down.shape == (1, 3, 2, 64, 64)
    const = torch.full((1, 3, 2, 128, 128), 0.25)
    torch.testing.assert_close(resize_to(const, 64), torch.full((1, 3, 2, 64, 64), 0.25))
    with pytest.raises(ValueError, match="float video"):
        resize_to((video * 255).to(torch.uint8), 64)
