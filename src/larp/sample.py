"""Sampling videos from the AR generator, sharded: sample i is the same whatever shard or batch draws it.

Sharded sampling seeds sample i's generator from (seed, i) (:func:`larp.seeding.sample_generators`): the
video for index i is the same whatever the shard size or the batch size (up to last-bit differences of
batched matmuls, which move a draw only if ``u`` falls within ~1e-7 of a CDF boundary). Drawing the tokens
(guidance, token choice, the KV-cache loop) is :mod:`larp.models.generation`, re-exported here.

Axis letters: b batch, n tokens, v vocabulary; video b c t h w.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, NamedTuple, Sequence, Union

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

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
from larp.models.generator import LARPGenerator
from larp.seeding import sample_generators, sample_seed  # noqa: F401  (public here too)
from larp.visualize import to_uint8

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
