"""Sampling from the AR generator: guidance, token choice, KV-cache and reference loops, sharded videos.

Token choice (docs/model.md#sampling): logits -> classifier-free guidance ``uncond + s * (cond - uncond)``
(every step, the first one included; the batch is doubled with the null class) -> / temperature ->
optional top-k, then top-p filtering -> softmax (float32) -> one draw.

The draw is an inverse-CDF lookup of a uniform number that each row brings with it: row r at step t uses
``u[r, t]``. The uniforms of a sample are drawn once, up front, from that sample's own generator, so which
token a row gets depends on its own logits and its own stream only, never on the batch it shares or the
order of rows. Sharded sampling seeds sample i's generator from (seed, i): the video for index i is the
same whatever the shard size or the batch size (up to last-bit differences of batched matmuls, which move a
draw only if ``u`` falls within ~1e-7 of a CDF boundary).

Frame prediction (``generator.frame_prediction``, docs/model.md#frame-prediction): the condition of a row is
the tokens of its condition clip (b, seq_len) instead of a class id; the cache is prefilled with those + SEP
(seq_len + 1 positions) and seq_len tokens are generated. There is no null condition, so guidance is refused.

Axis letters: b batch, n tokens, v vocabulary; video b c t h w.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Iterator, NamedTuple, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from tqdm import tqdm

from larp.models.generator import LARPGenerator

# one generator for the whole batch, or one per row (per-sample streams)
Randomness = Union[torch.Generator, Sequence[torch.Generator]]

# SampleParams.dtype -> the autocast dtype of sampling (fp32: no autocast)
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


# --------------------------------------------------------------------------------------------------
# token choice


def cfg_mix(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond); scale 1 gives ``cond``."""
    return uncond + scale * (cond - uncond)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept), -inf elsewhere. (b, v)."""
    if k < 1:
        raise ValueError(f"top_k: must be >= 1 or None, got {k}")
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches ``p``. (b, v)."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p: must be in (0, 1] or None, got {p}")
    if p >= 1:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the strictly more likely tokens
    drop_sorted = mass_before >= p  # the most likely token always stays (mass_before = 0)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """Token r gets index i with cdf[i-1] <= u_r < cdf[i]: (b, v) probabilities, (b,) uniforms -> (b,) ids.

    The CDF is accumulated in float64 and u is scaled by its total, so zero-probability tokens (filtered
    out) are never chosen and rounding cannot push u past the end.
    """
    cdf = probs.cumsum(-1, dtype=torch.float64)
    u = u.to(device=cdf.device, dtype=torch.float64).reshape(*cdf.shape[:-1], 1) * cdf[..., -1:]
    idx = torch.searchsorted(cdf, u, right=True)[..., 0]
    return idx.clamp_(max=probs.shape[-1] - 1)


def choose_tokens(logits: Tensor, u: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Guided logits (b, v) and uniforms (b,) in [0, 1) -> token ids (b,) (int64)."""
    if temperature <= 0:
        raise ValueError(f"temperature: must be > 0, got {temperature}")
    logits = logits.float() if temperature == 1.0 else logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return inverse_cdf(logits.softmax(-1), u)


def sample_seed(seed: int, index: int, stream: str = "") -> int:
    """63-bit seed of sample ``index`` in the run seeded ``seed``; hashed, so nearby seeds are unrelated.
    ``stream`` names another random stream of the same sample (e.g. its frame-prediction condition)."""
    key = f"larp-sample:{seed}:{index}" if not stream else f"larp-sample:{stream}:{seed}:{index}"
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def sample_generators(seed: int, indices: Sequence[int], stream: str = "",
                      device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per sample index (on ``device``), seeded by :func:`sample_seed`."""
    return [torch.Generator(device).manual_seed(sample_seed(seed, int(i), stream)) for i in indices]


def draw_uniforms(generator: Randomness, batch: int, n: int, device: torch.device) -> Tensor:
    """(batch, n) float64 uniforms in [0, 1): row r from ``generator[r]``, or all rows from one generator."""
    if isinstance(generator, torch.Generator):
        u = torch.rand(batch, n, generator=generator, dtype=torch.float64, device=generator.device)
    else:
        if len(generator) != batch:
            raise ValueError(f"generator: expected one generator per row ({batch}), got {len(generator)}")
        u = torch.stack([torch.rand(n, generator=g, dtype=torch.float64, device=g.device) for g in generator])
    return u.to(device)


# --------------------------------------------------------------------------------------------------
# generation loops


def _check_sampling_args(model: LARPGenerator, condition: Tensor, cfg_scale: float) -> None:
    if model.cfg.frame_prediction:
        if cfg_scale != 1.0:
            raise ValueError(f"cfg_scale: frame prediction has no classifier-free guidance (no null condition); "
                             f"expected 1.0, got {cfg_scale}")
        n, v = model.cfg.seq_len, model.cfg.vocab_size
        if condition.ndim != 2 or condition.shape[0] == 0 or condition.shape[1] != n:
            raise ValueError(f"cond_tokens: expected a non-empty (b, {n}) tensor, got {tuple(condition.shape)}")
        if int(condition.min()) < 0 or int(condition.max()) >= v:
            raise ValueError(f"cond_tokens: ids must be in [0, {v}), got range "
                             f"[{int(condition.min())}, {int(condition.max())}]")
        return
    class_ids = condition
    if class_ids.ndim != 1 or class_ids.numel() == 0:
        raise ValueError(f"class_ids: expected a non-empty 1-D tensor, got shape {tuple(class_ids.shape)}")
    lo, hi = int(class_ids.min()), int(class_ids.max())
    if lo < 0 or hi > model.null_class:
        raise ValueError(f"class_ids: must be in [0, {model.null_class}] ({model.null_class} = null), "
                         f"got range [{lo}, {hi}]")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale: must be >= 0, got {cfg_scale}")


def _guided(model: LARPGenerator, condition: Tensor, cfg_scale: float) -> tuple[bool, Tensor]:
    """Whether guidance runs, and the conditions to feed: as given, or (2b,) = [cond; null] under guidance."""
    # at s = 1 the mix is exactly the conditional logits: skip the second half. (The official sampler guides
    # only when s > 1, silently ignoring 0 <= s < 1; the protocols use s = 1.25 and 1.0, where both agree.)
    guided = cfg_scale != 1.0 and not model.cfg.frame_prediction  # (FP with s != 1 is refused earlier)
    if not guided:
        return False, condition
    return True, torch.cat([condition, torch.full_like(condition, model.null_class)])


def _mix(logits: Tensor, guided: bool, cfg_scale: float) -> Tensor:
    if not guided:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return cfg_mix(cond, uncond, cfg_scale)


@contextlib.contextmanager
def _eval_mode(model: LARPGenerator) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


DECODE_MODES = ("eager", "static", "compiled")


def compiled_decode_step(model: LARPGenerator) -> Callable[[Tensor, Tensor], Tensor]:
    """``model.decode_step_static`` under ``torch.compile``, built once per model: one graph for every step
    (``fullgraph``: a graph break is an error); on CUDA with ``mode="reduce-overhead"`` (CUDA graphs), which
    is what a launch-bound decode loop needs."""
    fn = model.__dict__.get("_compiled_decode_step")
    if fn is None:
        mode = "reduce-overhead" if model.abs_pe.is_cuda else None
        fn = torch.compile(model.decode_step_static, mode=mode, fullgraph=True, dynamic=False)
        model.__dict__["_compiled_decode_step"] = fn
    return fn


@torch.no_grad()
def generate(model: LARPGenerator, condition: Tensor, *, cfg_scale: float = 1.0, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: Randomness,
             cache_dtype: torch.dtype | None = None, decode: str = "eager") -> Tensor:
    """Sample (b, seq_len) int64 token ids for ``condition`` with a static KV cache.

    ``condition``: class ids (b,), or with frame prediction the condition tokens (b, seq_len) (cfg_scale
    must then be 1). ``generator``: one torch.Generator for the batch, or one per row (then row r depends only on its own
    generator). ``cache_dtype``: dtype of the KV cache (default: the model's; pass the autocast dtype when
    running under autocast). The cache is installed for this call and removed afterwards.
    ``decode``: "eager" (the cache read up to the current length), "static" (fixed shapes: the whole cache
    under a mask) or "compiled" (static under ``torch.compile``; CUDA graphs on a GPU; the cache storage is
    kept on the model for the next call). Same samples up to floating-point summation order.
    """
    if decode not in DECODE_MODES:
        raise ValueError(f"decode: must be one of {DECODE_MODES}, got {decode!r}")
    _check_sampling_args(model, condition, cfg_scale)
    b, n = condition.shape[0], model.cfg.seq_len
    u = draw_uniforms(generator, b, n, condition.device)
    guided, feed = _guided(model, condition, cfg_scale)
    out = torch.empty(b, n, dtype=torch.long, device=condition.device)
    step = compiled_decode_step(model) if decode == "compiled" else model.decode_step_static
    pos = torch.zeros(1, dtype=torch.long, device=condition.device)
    with _eval_mode(model):
        cache = model.setup_cache(feed.shape[0], dtype=cache_dtype, reuse=decode == "compiled")
        if decode == "compiled":
            for t in (*cache.k, *cache.v):  # fixed addresses: CUDA graphs may update them in place
                torch._dynamo.mark_static_address(t)
        try:
            logits = model.prefill(feed)
            for t in range(n):
                tok = choose_tokens(_mix(logits, guided, cfg_scale), u[:, t], temperature=temperature,
                                    top_k=top_k, top_p=top_p)
                out[:, t] = tok
                if t + 1 < n:  # z_t enters at sequence position cond_len + t
                    x = torch.cat([tok, tok]) if guided else tok
                    if decode == "eager":
                        logits = model.decode_step(x, model.cond_len + t)
                    else:
                        pos.fill_(model.cond_len + t)
                        logits = step(x, pos)
                        cache.length = model.cond_len + t + 1
        finally:
            model.remove_cache()
    return out


@torch.no_grad()
def generate_reference(model: LARPGenerator, condition: Tensor, *, cfg_scale: float = 1.0,
                       temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                       generator: Randomness) -> Tensor:
    """The same sampler without a cache: every step re-runs the whole prefix (nanoGPT style).

    Quadratically slower; kept as the reference the cached path must match and as the benchmark baseline.
    """
    _check_sampling_args(model, condition, cfg_scale)
    b, n = condition.shape[0], model.cfg.seq_len
    u = draw_uniforms(generator, b, n, condition.device)
    guided, feed = _guided(model, condition, cfg_scale)
    out = torch.empty(b, n, dtype=torch.long, device=condition.device)
    with _eval_mode(model):
        for t in range(n):
            prefix = out[:, :t]
            logits = model(feed, torch.cat([prefix, prefix]) if guided else prefix)[:, -1]
            out[:, t] = choose_tokens(_mix(logits, guided, cfg_scale), u[:, t], temperature=temperature,
                                      top_k=top_k, top_p=top_p)
    return out


@torch.no_grad()
def sequence_nll(model: LARPGenerator, condition: Tensor, tokens: Tensor) -> Tensor:
    """Per-sample mean next-token cross-entropy (nats) of ``tokens`` (b, seq_len): eval mode, no guidance.

    This is the official ``NLL_sampled`` (teacher-forced CE of the model on its own samples, conditioned on
    the true label). The official report averages per-batch means, which equals the mean of these per-sample
    values when all batches are full. (For frame prediction the official value is None; ours is the same CE
    given the condition tokens.)
    """
    with _eval_mode(model):
        logits = model(condition, tokens[:, :-1])
    ce = F.cross_entropy(rearrange(logits, "b n v -> b v n"), tokens.long(), reduction="none")
    return ce.float().mean(-1)


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


def to_uint8_video(video: Tensor) -> Tensor:
    """Float (b, 3, t, h, w) in [0, 1] (clamped first) -> uint8 (b, t, h, w, 3), rounded to nearest.

    (The official sample.py computes FVD on the float clips and truncates only in the saved mp4s;
    rounding keeps uint8 within half a level of the float clip.)
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"decoded video: expected (b, 3, t, h, w), got {tuple(video.shape)}")
    v = (video.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return rearrange(v, "b c t h w -> b t h w c")


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
        videos.append(to_uint8_video(video).cpu().numpy())
        nlls.append(s.nll.cpu().numpy().astype(np.float32))
    return SampledVideos(np.concatenate(videos), np.concatenate(nlls))
