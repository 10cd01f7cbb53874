"""`larp sample`: videos from the AR generator, sharded; sample i is the same whatever shard or batch draws it.

Sharded sampling seeds sample i's generator from (seed, i) (:func:`larp.seeding.sample_generators`): the
video for index i is the same whatever the shard size or the batch size (up to last-bit differences of
batched matmuls, which move a draw only if ``u`` falls within ~1e-7 of a CDF boundary). Drawing the tokens
(guidance, token choice, the KV-cache loop) is :mod:`larp.models.generation`, re-exported here.

The stage (:func:`sample_shard`, :func:`sample_fp_shard`): shard k of S generates the protocol's indices
[k n / S, (k + 1) n / S) (gFVD: conditioned on the labels of the drawn real clips; FP-FVD: on the first frames
of each real clip), and `larp fvd` (larp.fvd) merges the shards.

Axis letters: b batch, n tokens, v vocabulary; video b c t h w.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from larp.config import Params, frame_prediction_params
from larp.data.clips import ClipDataset
from larp.devices import default_device
from larp.eval.protocols import CEILING_DIR, clips_hash, fp_clips, fp_fvd_shard, gfvd_clips, shard_range
from larp.files import atomic_path, atomic_write_json, sha256_file
from larp.models.generation import (  # noqa: F401  (the token drawing, public here too)
    DECODE_MODES,
    Randomness,
    cfg_mix,
    choose_tokens,
    compiled_decode_step,
    draw_uniforms,
    generate,
    generate_reference,
    inverse_cdf,
    sequence_nll,
    top_k_filter,
    top_p_filter,
)
from larp.models.generator import LARPGenerator, load_generator
from larp.models.tokenizer import load_tokenizer
from larp.provenance import provenance
from larp.seeding import sample_generators, sample_seed  # noqa: F401  (public here too)
from larp.tokenize import fp_condition
from larp.visualize import grid_png, to_uint8, write_mp4

# SampleParams.dtype -> the autocast dtype of sampling (fp32: no autocast)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# --------------------------------------------------------------------------------------------------
# sharded sampling of videos


class SampledTokens(NamedTuple):
    tokens: Tensor  # (n, seq_len) int64, in the order of the pairs
    nll: Tensor  # (n,) float32, per-sample NLL_sampled (nats per token)


class SampledVideos(NamedTuple):
    videos: np.ndarray  # (n, T, H, W, 3) uint8, in the order of the pairs
    nll: np.ndarray  # (n,) float32, per-sample NLL_sampled


# (sample index, condition): a class label, or with frame prediction the condition tokens (seq_len,)
Pair = tuple[int, Union[int, Tensor]]


def _check_pairs(pairs: Sequence[Pair], model: LARPGenerator) -> None:
    if len(pairs) == 0:
        raise ValueError("pairs: expected at least one (index, label) pair")
    c = model.cfg
    seen: set[int] = set()
    for j, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pairs[{j}]: expected an (index, label) pair, got {pair!r}")
        index, cond = int(pair[0]), pair[1]
        if index < 0:
            raise ValueError(f"pairs[{j}]: sample index must be >= 0, got {index}")
        if c.frame_prediction:
            if not isinstance(cond, Tensor) or cond.shape != (c.seq_len,):
                raise ValueError(f"pairs[{j}]: frame prediction expects (index, condition tokens of shape "
                                 f"({c.seq_len},)), got {type(cond).__name__} {tuple(getattr(cond, 'shape', ()))}")
        elif not 0 <= int(cond) < c.num_classes:
            raise ValueError(f"pairs[{j}]: label must be in [0, {c.num_classes}), got {int(cond)}")
        if index in seen:
            raise ValueError(f"pairs[{j}]: sample index {index} appears twice (it would repeat one sample)")
        seen.add(index)


def _autocast(device: torch.device, dtype: torch.dtype, weights: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype``, unless that is float32 or the ``weights`` are already in it (cast weights)."""
    if dtype == torch.float32 or weights == dtype:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def sampling_precision(model: LARPGenerator, tokenizer: torch.nn.Module, dtype: torch.dtype,
                       tokenizer_dtype: torch.dtype, *, cast_weights: bool) -> Callable[[Tensor], Tensor]:
    """Put both models in the precision of sampling; returns the ids -> float video decode function.

    ``cast_weights`` (the official sampler): the AR weights are cast to ``dtype``, so its residual stream, KV
    cache, logits and the guidance mix all run in it (the softmax in float32), and the tokenizer's weights to
    ``tokenizer_dtype`` for decoding. Otherwise the weights stay float32 and run under autocast to these dtypes
    (matmuls in them, norms, logits and the guidance mix in float32). Casting halves the weights' memory.
    """
    if cast_weights:
        model.to(dtype)
        tokenizer.to(tokenizer_dtype)
    weights = next(tokenizer.parameters()).dtype

    def decode(ids: Tensor) -> Tensor:
        with _autocast(ids.device, tokenizer_dtype, weights):
            return tokenizer.decode(ids).float()

    return decode


def _batches(pairs: Sequence[Pair], batch_size: int) -> Iterator[Sequence[Pair]]:
    for start in range(0, len(pairs), batch_size):
        yield pairs[start : start + batch_size]


def _conditions(chunk: Sequence[Pair], model: LARPGenerator, device: torch.device) -> Tensor:
    """The batch's conditions: class ids (b,), or stacked condition tokens (b, seq_len)."""
    if model.cfg.frame_prediction:
        return torch.stack([c for _, c in chunk]).to(device=device, dtype=torch.long)
    return torch.tensor([int(lab) for _, lab in chunk], dtype=torch.long, device=device)


def iter_sample_batches(model: LARPGenerator, pairs: Sequence[Pair], *, cfg_scale: float,
                        temperature: float, top_k: int | None, top_p: float | None, seed: int,
                        batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32,
                        progress: bool = True, decode: str = "eager",
                        ) -> Iterator[tuple[Sequence[Pair], SampledTokens]]:
    """Yield (pairs of the batch, their tokens and NLL) batch by batch; sample i uses generator (seed, i).

    ``pairs``: (sample index, label), or with frame prediction (sample index, condition tokens (seq_len,)).
    ``dtype``: float32, or bfloat16/float16: the model's weights cast to it (:func:`sampling_precision`), or
    float32 weights under autocast to it; the KV cache uses it too.
    ``decode``: the decode step of :func:`generate` (eager, static or compiled).
    """
    _check_pairs(pairs, model)
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    device = torch.device(device)
    bar = tqdm(total=len(pairs), desc="sampling", unit="sample", disable=not progress)
    for chunk in _batches(pairs, batch_size):
        condition = _conditions(chunk, model, device)
        gens = sample_generators(seed, [i for i, _ in chunk])
        with _autocast(device, dtype, model.abs_pe.dtype):
            tokens = generate(model, condition, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                              top_p=top_p, generator=gens, cache_dtype=dtype, decode=decode)
            nll = sequence_nll(model, condition, tokens)
        bar.update(len(chunk))
        yield chunk, SampledTokens(tokens, nll)
    bar.close()


def sample_tokens(model: LARPGenerator, pairs: Sequence[Pair], *, cfg_scale: float,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, seed: int,
                  batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32,
                  progress: bool = True, decode: str = "eager") -> SampledTokens:
    """All of :func:`iter_sample_batches` concatenated on the CPU, in the order of ``pairs``."""
    parts = [s for _, s in iter_sample_batches(
        model, pairs, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
        batch_size=batch_size, device=device, dtype=dtype, progress=progress, decode=decode)]
    return SampledTokens(torch.cat([p.tokens.cpu() for p in parts]), torch.cat([p.nll.cpu() for p in parts]))


to_uint8_video = to_uint8  # the old name


def sample_videos(generator_model: LARPGenerator, tokenizer_decode_fn: Callable[[Tensor], Tensor],
                  pairs: Sequence[Pair], *, cfg_scale: float, temperature: float = 1.0,
                  top_k: int | None = None, top_p: float | None = None, seed: int, batch_size: int,
                  device: torch.device | str, dtype: torch.dtype = torch.float32,
                  progress: bool = True, decode: str = "eager") -> SampledVideos:
    """Videos for (index, label) pairs (frame prediction: (index, condition tokens)): tokens ->
    ``tokenizer_decode_fn`` -> uint8. The decoded clip is the full generated clip (for frame prediction the
    context frames are regenerated, not pasted from the condition).

    ``tokenizer_decode_fn``: ids (b, seq_len) -> float video (b, 3, T, H, W) (clamped to [0, 1] here).
    Returns uint8 videos (n, T, H, W, 3) and the per-sample NLL, both in the order of ``pairs``. Sample i
    is the same whatever shard or batch it is drawn in (see the module docstring).
    """
    videos: list[np.ndarray] = []
    nlls: list[np.ndarray] = []
    for _, s in iter_sample_batches(generator_model, pairs, cfg_scale=cfg_scale, temperature=temperature,
                                    top_k=top_k, top_p=top_p, seed=seed, batch_size=batch_size, device=device,
                                    dtype=dtype, progress=progress, decode=decode):
        with torch.no_grad():
            video = tokenizer_decode_fn(s.tokens)
        videos.append(to_uint8(video))
        nlls.append(s.nll.cpu().numpy().astype(np.float32))
    return SampledVideos(np.concatenate(videos), np.concatenate(nlls))


# --------------------------------------------------------------------------------------------------
# `larp sample`: one shard of a protocol's generated videos


def _precision(gen, tok, params: Params, device: torch.device, tokenizer_dtype: torch.dtype):
    """(sampling dtype, decode function): ``sample.dtype`` and ``tokenizer_dtype`` on a GPU, with the weights cast
    to them when ``sample.cast_weights`` (the official sampler), else under autocast; float32 on a CPU."""
    on_gpu = device.type == "cuda"
    dtype = DTYPES[params.sample.dtype] if on_gpu else torch.float32
    decode = sampling_precision(gen, tok, dtype, tokenizer_dtype if on_gpu else torch.float32,
                                cast_weights=params.sample.cast_weights)
    return dtype, decode


def _write_shard(out_dir: Path, videos: np.ndarray, table: pd.DataFrame, mp4s: int, meta: dict) -> None:
    """A sample shard: videos.npy (uint8 n,T,H,W,3), samples.csv (``index`` first), a PNG grid and the first
    ``mp4s`` videos as MP4 for people, and sample.json (provenance). Every file is written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "videos.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, videos)
    with atomic_path(out_dir / "samples.csv") as tmp:
        table.to_csv(tmp, index=False)
    if len(videos):
        grid_png(videos[:8], out_dir / "grid.png")
        for i in range(min(mp4s, len(videos))):
            write_mp4(videos[i], out_dir / f"sample-{int(table['index'].iloc[i]):06d}.mp4")
    atomic_write_json(out_dir / "sample.json", meta)


def sample_shard(frames_dir: Path, tokenizer_weights: Path, ar_weights: Path, shard: int, out_dir: Path,
                 params: Params, *, progress: bool = True) -> None:
    """Generate shard ``shard`` of the gFVD set: videos.npy (uint8 n,T,H,W,3), samples.csv, previews."""
    t0 = time.time()
    out_dir = Path(out_dir)
    clips = gfvd_clips(frames_dir, params)
    idx = shard_range(len(clips), shard, len(params.sample.shards))  # non-empty: Params.validate checks it
    pairs = [(i, int(clips["label"].iloc[i])) for i in idx]
    device = default_device()
    gen = load_generator(ar_weights, params, device)
    tok = load_tokenizer(tokenizer_weights, params, device)
    s = params.sample
    inputs = {"tokenizer": sha256_file(tokenizer_weights), "ar": sha256_file(ar_weights)}  # once: both draws
    shard_clips = clips_hash(clips)

    def draw(model: LARPGenerator, out: Path, mp4s: int, **what: str) -> None:
        dtype, decode = _precision(model, tok, params, device, torch.float16)  # the official decoder: fp16
        res = sample_videos(model, decode, pairs, cfg_scale=s.cfg_scale, temperature=s.temperature,
                            top_k=s.top_k, top_p=s.top_p, seed=s.seed, batch_size=s.batch_size, device=device,
                            dtype=dtype, progress=progress, decode=s.decode)
        table = pd.DataFrame({"index": [i for i, _ in pairs], "label": [c for _, c in pairs], "nll": res.nll})
        _write_shard(out, res.videos, table, mp4s=mp4s, meta=provenance(
            {"sample": dataclasses.asdict(s)}, inputs=inputs,
            shard=shard, num_shards=len(s.shards), indices=[idx.start, idx.stop], num_samples=len(pairs),
            clips_hash=shard_clips, seconds=round(time.time() - t0, 2), **what))

    if s.ceiling:  # first, so that the shard's own sample.json (written last) means the whole shard is there
        draw(initial_generator(params, device), out_dir / CEILING_DIR, mp4s=0,
             generator="at initialisation (random weights from sample.seed), not the `ar` weights")
    draw(gen, out_dir, mp4s=2)


def initial_generator(params: Params, device: torch.device) -> LARPGenerator:
    """The generator at initialisation (the gFVD ceiling's sampler): random weights from ``sample.seed``, the
    same on every shard and machine (built on the CPU under its own seed, the global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.sample.seed)
        model = LARPGenerator(params.generator)
    return model.to(device).eval()


def fp_condition_tokens(tok, clip: torch.Tensor, index: int, params: Params) -> torch.Tensor:
    """Condition tokens (num_tokens,) of sample ``index`` from its real clip (c, t, h, w): the first
    ``generator.cond_frames`` frames repeated to the clip length, tokenized in fp32 as the official sampler does.
    ``sample.fp_condition_svq`` "sampled" draws them by stochastic SVQ, as the official evaluation, from the
    sample's own stream (the same whatever the shard); "argmax" takes the deterministic ones."""
    sampled = params.sample.fp_condition_svq == "sampled"
    g = sample_generators(params.sample.seed, [index], "fp-condition", clip.device)[0] if sampled else None
    with torch.no_grad():
        return tok.quantize(fp_condition(clip[None], params.generator.cond_frames), stochastic=sampled,
                            generator=g).indices[0]


def sample_fp_shard(frames_dir: Path, tokenizer_weights: Path, ar_weights: Path, shard: int, out_dir: Path,
                    params: Params, *, progress: bool = True) -> None:
    """Shard ``shard`` of the FP-FVD set: each sample continues the first ``generator.cond_frames`` frames of
    its real clip (repeated to 16 frames, tokenized by :func:`fp_condition_tokens`, + SEP); the whole clip is
    generated (no CFG), in the precision of ``sample.cast_weights`` (the tokenizer in fp32, as official). Each shard
    generates only its own slice (the official code gave every parallel job the total count)."""
    t0 = time.time()
    params = frame_prediction_params(params)
    out_dir = Path(out_dir)
    clips = fp_clips(frames_dir, params)
    part = fp_fvd_shard(clips, shard, len(params.sample.shards))
    device = default_device()
    gen = load_generator(ar_weights, params, device)
    tok = load_tokenizer(tokenizer_weights, params, device)
    reader = ClipDataset(frames_dir, split="all", mode="eval", frames=params.data.frames)
    pairs = [(int(r.index), fp_condition_tokens(tok, reader.read_clip(int(r.row), int(r.start)).to(device),
                                                int(r.index), params))
             for r in tqdm(part.itertuples(), total=len(part), desc="conditions", disable=not progress)]
    s = params.sample
    dtype, decode = _precision(gen, tok, params, device, torch.float32)  # official: the FP tokenizer stays fp32
    res = sample_videos(gen, decode, pairs, cfg_scale=1.0,
                        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, seed=s.seed,
                        batch_size=s.batch_size, device=device, dtype=dtype, progress=progress, decode=s.decode)
    table = pd.DataFrame({"index": part["index"], "video_id": part["video_id"], "start": part["start"],
                          "nll": res.nll})
    _write_shard(out_dir, res.videos, table, mp4s=1, meta=provenance(
        {"sample": dataclasses.asdict(s), "cond_frames": params.generator.cond_frames},
        inputs={"tokenizer": sha256_file(tokenizer_weights), "ar": sha256_file(ar_weights)},
        shard=shard, num_shards=len(s.shards), indices=[int(part["index"].min()), int(part["index"].max()) + 1],
        num_samples=len(part), clips_hash=clips_hash(clips), seconds=round(time.time() - t0, 2)))
