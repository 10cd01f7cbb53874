"""Drawing tokens from the AR generator: guidance, token choice, the KV-cache and reference loops.

Token choice (docs/model.md#sampling): logits -> classifier-free guidance ``uncond + s * (cond - uncond)``
(every step, the first one included; the batch is doubled with the null class) -> / temperature ->
optional top-k, then top-p filtering -> softmax (float32) -> one draw.

The draw is an inverse-CDF lookup of a uniform number that each row brings with it: row r at step t uses
``u[r, t]``. The uniforms of a sample are drawn once, up front, from that sample's own generator, so which
token a row gets depends on its own logits and its own stream only, never on the batch it shares or the
order of rows (per-sample generators: :func:`larp.seeding.sample_generators`).

Frame prediction (``generator.frame_prediction``, docs/model.md#frame-prediction): the condition of a row is
the tokens of its condition clip (b, seq_len) instead of a class id; the cache is prefilled with those + SEP (seq_len + 1
positions) and seq_len tokens are generated. There is no null condition, so guidance is refused.

``model`` is a :class:`larp.models.generator.LARPGenerator` (typed ``nn.Module`` here: the model's
``generate`` method calls into this module, which therefore does not import the model). Sharded sampling of
videos builds on this in :mod:`larp.sample`.

Axis letters: b batch, n tokens, v vocabulary.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# one generator for the whole batch, or one per row (per-sample streams)
Randomness = Union[torch.Generator, Sequence[torch.Generator]]


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


def _check_sampling_args(model: nn.Module, condition: Tensor, cfg_scale: float) -> None:
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


def _guided(model: nn.Module, condition: Tensor, cfg_scale: float) -> tuple[bool, Tensor]:
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
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


DECODE_MODES = ("eager", "static", "compiled")


def compiled_decode_step(model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
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
def generate(model: nn.Module, condition: Tensor, *, cfg_scale: float = 1.0, temperature: float = 1.0,
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
def generate_reference(model: nn.Module, condition: Tensor, *, cfg_scale: float = 1.0,
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
def sequence_nll(model: nn.Module, condition: Tensor, tokens: Tensor) -> Tensor:
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
