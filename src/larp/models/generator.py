"""AR generator ``llama-abs-LP`` (docs/model.md#generator), class-conditional or frame-prediction
(docs/model.md#frame-prediction).

A Llama-style decoder (RMSNorm, fused-qkv multi-head attention, SwiGLU) with a *learned absolute* position
table instead of RoPE. N = ``seq_len`` = 1024 tokens per clip. The sequence starts with a condition of
C = ``cond_len`` positions, then the tokens:

    class-conditional (C = 1): position 0 = class embedding (id ``num_classes`` = null class for CFG)
    frame prediction (C = N + 1, ``cfg.frame_prediction``): positions 0..N-1 = the N tokens of the
        condition clip (first ``cond_frames`` frames, last one repeated), position N = SEP (id ``vocab_size``,
        the extra row of the token table); no class embedding
    position C + i = token z_i;  the logits at position C - 1 + i predict z_i

Training feeds [condition, z_0 .. z_{N-2}] (C + N - 1 positions, the length of ``abs_pe``) and scores
z_0 .. z_{N-1}. Generation fills a static KV cache: ``prefill`` (condition, plus optionally a token prefix)
and then one ``decode_step`` per token. The sampling loops (CFG, temperature, top-k/top-p) live in
:mod:`larp.models.generation` (``LARPGenerator.generate``; sharded sampling of videos: :mod:`larp.sample`).

Parameter names follow the official checkpoint (``tok_embeddings``, ``cls_embedding.embedding_table``,
``abs_pe``, ``layers.{i}.attention.wqkv`` ...), so released weights load without renaming.

Axis letters: b batch, n positions, h heads, d head dim, v vocabulary.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from larp.config import GeneratorConfig, Params, preset_section
from larp.models.generation import Randomness, generate
from larp.models.weights_io import load_weights

PRESETS = {"llama-abs-LP": "paper", "tiny": "tiny"}  # generator preset -> larp.config preset


def round_up(n: int, multiple: int) -> int:
    return multiple * ((n + multiple - 1) // multiple)


class RMSNorm(nn.Module):
    """x / rms(x) * weight, with the statistic computed in float32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # plain ops rather than F.rms_norm: their dtype under CUDA autocast is certain (float32 stays float32)
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases, dropout on the output."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache:
    """Static key/value store for all layers, installed for one (batch, length, dtype, device).

    ``k``/``v``: one (b, h, s, d) tensor per layer, s = max_len rounded up to a multiple of 8 (LlamaGen's
    alignment).
    ``length`` counts the positions written so far; ``batch`` is the batch of the running generation (<= the
    capacity, so a smaller last batch reuses the same storage). The storage starts zeroed: the static-shape
    step (:meth:`LARPGenerator.decode_step_static`) attends over all of it under a mask, and a masked
    position's value still enters the weighted sum with weight 0, which NaN garbage would poison.
    """

    def __init__(self, layers: int, batch_size: int, heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (batch_size, heads, round_up(max_len, 8), head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.max_len = max_len
        self.capacity = batch_size
        self.batch = batch_size
        self.length = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.k[0].dtype

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (b, h, n, d) at positions [start, start + n); return keys/values of [0, start + n)."""
        end = start + k.shape[2]
        kc, vc = self.k[layer][: self.batch], self.v[layer][: self.batch]
        kc[:, :, start:end] = k
        vc[:, :, start:end] = v
        return kc[:, :, :end], vc[:, :, :end]

    def write_at(self, layer: int, pos: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store one position's k, v (b, h, 1, d) at ``pos`` (a 1-element long tensor); return the whole
        storage (fixed shapes: what CUDA graphs and ``torch.compile`` need)."""
        kc, vc = self.k[layer][: self.batch], self.v[layer][: self.batch]
        kc.index_copy_(2, pos, k)
        vc.index_copy_(2, pos, v)
        return kc, vc


class Attention(nn.Module):
    """Multi-head causal self-attention, fused qkv projection, no biases, residual dropout."""

    def __init__(self, dim: int, heads: int, resid_dropout: float):
        super().__init__()
        self.heads = heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.resid_dropout = nn.Dropout(resid_dropout)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = rearrange(self.wqkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads).unbind(0)
        return q, k, v

    def _out(self, y: Tensor) -> Tensor:
        return self.resid_dropout(self.wo(rearrange(y, "b h n d -> b n (h d)")))

    def forward(self, x: Tensor) -> Tensor:
        """Whole sequence, causal: (b, n, dim) -> (b, n, dim)."""
        q, k, v = self._qkv(x)
        return self._out(F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def step(self, x: Tensor, cache: KVCache, layer: int, start: int | Tensor, mask: Tensor | None = None) -> Tensor:
        """New positions [start, start + n) against the cached prefix: (b, n, dim) -> (b, n, dim).

        With ``start`` a 1-element tensor (one new position) the shapes are static: the key/value is written
        at ``start`` and the query attends over the whole cache under ``mask`` (keys <= start).
        """
        q, k, v = self._qkv(x)
        if isinstance(start, Tensor):
            keys, values = cache.write_at(layer, start, k, v)
            y = F.scaled_dot_product_attention(q, keys.to(q.dtype), values.to(q.dtype), attn_mask=mask)
            return self._out(y)
        keys, values = cache.write(layer, start, k, v)
        keys, values = keys.to(q.dtype), values.to(q.dtype)  # cache dtype may differ from autocast's
        n = q.shape[2]
        if n == 1:  # one query sees the whole cached prefix: no mask
            y = F.scaled_dot_product_attention(q, keys, values)
        elif start == 0:
            y = F.scaled_dot_product_attention(q, keys, values, is_causal=True)
        else:  # a block of new queries after a cached prefix: query i sees keys <= start + i
            qpos = torch.arange(start, start + n, device=x.device)
            mask = torch.arange(start + n, device=x.device)[None, :] <= qpos[:, None]
            y = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self._out(y)


class Block(nn.Module):
    """Pre-norm block: h = x + attn(norm(x)); out = h + ffn(norm(h))."""

    def __init__(self, c: GeneratorConfig):
        super().__init__()
        self.attention_norm = RMSNorm(c.width, c.norm_eps)
        self.attention = Attention(c.width, c.heads, c.resid_dropout)
        self.ffn_norm = RMSNorm(c.width, c.norm_eps)
        self.feed_forward = SwiGLU(c.width, c.ffn_hidden, c.ffn_dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))

    def step(self, x: Tensor, cache: KVCache, layer: int, start: int | Tensor, mask: Tensor | None = None) -> Tensor:
        h = x + self.attention.step(self.attention_norm(x), cache, layer, start, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class ClassEmbedder(nn.Module):
    """Class label -> vector; in training mode each label is replaced by the null id with prob ``dropout``.

    The drop uses the global torch RNG, like ``nn.Dropout`` (the training loop seeds it per rank).
    """

    def __init__(self, num_classes: int, dim: int, dropout: float):
        super().__init__()
        self.null_class = num_classes
        self.dropout = dropout
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels: Tensor) -> Tensor:
        if self.training and self.dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        return self.embedding_table(labels)


class LARPGenerator(nn.Module):
    """Token generator (class-conditional, or frame prediction). ``cfg``: :class:`larp.config.GeneratorConfig`.

    ``condition`` everywhere is class ids (b,) in [0, num_classes], or with ``cfg.frame_prediction`` the
    condition clip's tokens (b, seq_len) in [0, vocab_size) (the SEP token is appended here).
    """

    def __init__(self, cfg: GeneratorConfig):
        super().__init__()
        cfg.validate()
        for key, low in (("depth", 1), ("heads", 1), ("width", 1), ("vocab_size", 2), ("seq_len", 2)):
            if getattr(cfg, key) < low:
                raise ValueError(f"generator.{key}: must be >= {low}, got {getattr(cfg, key)}")
        self.cfg = cfg
        fp = cfg.frame_prediction
        self.cond_len = cfg.seq_len + 1 if fp else 1  # official cls_token_num
        self.max_len = self.cond_len + cfg.seq_len - 1  # positions of a training sequence
        # frame prediction: no class embedding (no key in the state dict); the SEP token is an extra table row
        self.cls_embedding = None if fp else ClassEmbedder(cfg.num_classes, cfg.width, cfg.class_dropout)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size + int(fp), cfg.width)
        self.tok_dropout = nn.Dropout(cfg.token_dropout)
        # one row per position (official: max_seq_len + cls_token_num - 1)
        self.abs_pe = nn.Parameter(torch.zeros(1, self.max_len, cfg.width))
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = RMSNorm(cfg.width, cfg.norm_eps)
        self.output = nn.Linear(cfg.width, cfg.vocab_size, bias=False)
        self.cache: KVCache | None = None
        self.reset_parameters()

    # ---------------------------------------------------------------------------------------------
    # construction

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> LARPGenerator:
        """``"llama-abs-LP"`` (paper, 631.98M parameters) or ``"tiny"`` (CPU), with config field overrides."""
        return cls(preset_config(name, **overrides))

    def reset_parameters(self) -> None:
        """N(0, init_std) for every Linear/Embedding and ``abs_pe``, ones for norms, zeros for the head."""
        if self.abs_pe.is_meta:  # shape-only model (parameter counting): there are no values to set
            return
        std = self.cfg.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=std)
            elif isinstance(m, RMSNorm):
                nn.init.ones_(m.weight)
        nn.init.normal_(self.abs_pe, mean=0.0, std=std)
        nn.init.zeros_(self.output.weight)

    @property
    def null_class(self) -> int:
        return self.cfg.num_classes

    @property
    def sep_id(self) -> int:
        """Id of the SEP token ending a frame-prediction condition (the extra token-table row)."""
        return self.cfg.vocab_size

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def optim_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups: decay on Linear weights only; none on norms, embeddings, ``abs_pe`` (or biases)."""
        decay = [m.weight for m in self.modules() if isinstance(m, nn.Linear)]
        decay_ids = {id(p) for p in decay}
        rest = [p for p in self.parameters() if id(p) not in decay_ids]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]

    # ---------------------------------------------------------------------------------------------
    # training / teacher forcing

    def _check_inputs(self, condition: Tensor, tokens: Tensor | None, max_tokens: int) -> None:
        integer = (torch.int32, torch.int64)
        if self.cfg.frame_prediction:
            if condition.ndim != 2 or condition.shape[1] != self.cfg.seq_len or condition.dtype not in integer:
                raise ValueError(f"cond_tokens: expected an integer tensor (b, {self.cfg.seq_len}) (frame "
                                 f"prediction), got {tuple(condition.shape)} {condition.dtype}")
        elif condition.ndim != 1 or condition.dtype not in integer:
            raise ValueError(f"class_ids: expected a 1-D integer tensor, got {tuple(condition.shape)} "
                             f"{condition.dtype}")
        if tokens is None:
            return
        if tokens.ndim != 2 or tokens.shape[0] != condition.shape[0] or tokens.dtype not in integer:
            raise ValueError(f"tokens: expected an integer tensor (b={condition.shape[0]}, n), "
                             f"got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > max_tokens:
            raise ValueError(f"tokens: at most {max_tokens} tokens fit here (seq_len {self.cfg.seq_len}), "
                             f"got {tokens.shape[1]}")

    def _logits(self, h: Tensor) -> Tensor:
        # in the weights' dtype: float32 (also under autocast), or bf16 when the weights were cast to it
        return self.output(self.norm(h)).to(self.output.weight.dtype)

    def embed_condition(self, condition: Tensor) -> Tensor:
        """Condition -> (b, cond_len, width): the class embedding, or the condition tokens + SEP embedded."""
        if self.cls_embedding is not None:
            return self.cls_embedding(condition)[:, None]
        sep = torch.full_like(condition[:, :1], self.sep_id)
        return self.tok_embeddings(torch.cat([condition, sep], dim=1))

    def forward(self, condition: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits of the tokens (the condition positions' outputs are not computed).

        condition: class ids (b,) in [0, num_classes] (num_classes = null class), or frame-prediction
        condition tokens (b, seq_len); tokens: (b, n) fed after the condition, n <= seq_len - 1. Returns
        logits (b, n + 1, v) in the weights' dtype (float32 unless they were cast); row i predicts token i.
        Training feeds ``tokens[:, :-1]`` of a full sequence, giving (b, seq_len, v) aligned with the targets.
        """
        self._check_inputs(condition, tokens, self.cfg.seq_len - 1)
        x = torch.cat([self.embed_condition(condition), self.tok_embeddings(tokens)], dim=1)
        h = self.tok_dropout(x) + self.abs_pe[:, : x.shape[1]]
        for block in self.layers:
            h = block(h)
        return self._logits(h[:, self.cond_len - 1 :])

    def loss(self, condition: Tensor, tokens: Tensor) -> Tensor:
        """Mean next-token cross-entropy of full sequences ``tokens`` (b, seq_len) given their condition."""
        if tokens.ndim != 2 or tokens.shape[1] != self.cfg.seq_len:
            raise ValueError(f"tokens: expected (b, {self.cfg.seq_len}), got {tuple(tokens.shape)}")
        logits = self(condition, tokens[:, :-1])
        return F.cross_entropy(rearrange(logits, "b n v -> b v n"), tokens.long())

    # ---------------------------------------------------------------------------------------------
    # KV-cache inference

    def setup_cache(self, batch_size: int, *, dtype: torch.dtype | None = None, reuse: bool = False) -> KVCache:
        """Install a static cache for up to ``batch_size`` rows and all ``max_len`` positions.

        ``reuse``: keep the storage on the model and hand the same tensors to the next ``reuse`` call of the
        same size (compiled / CUDA-graph decoding needs fixed addresses; it then holds the memory).
        """
        p, c = self.abs_pe, self.cfg
        dtype = dtype or p.dtype
        spare = self.__dict__.get("_spare_cache") if reuse else None
        if spare is not None and (spare.capacity, spare.dtype, spare.k[0].device) == (batch_size, dtype, p.device):
            spare.batch, spare.length = batch_size, 0  # stale entries are finite and never attended to
            self.cache = spare
        else:
            self.cache = KVCache(c.depth, batch_size, c.heads, self.max_len, c.width // c.heads, dtype, p.device)
        if reuse:
            self.__dict__["_spare_cache"] = self.cache
        return self.cache

    def remove_cache(self) -> None:
        self.cache = None

    def _step(self, x: Tensor, start: int) -> Tensor:
        assert self.cache is not None
        h = self.tok_dropout(x) + self.abs_pe[:, start : start + x.shape[1]]
        for i, block in enumerate(self.layers):
            h = block.step(h, self.cache, i, start)
        self.cache.length = start + x.shape[1]
        return self._logits(h[:, -1])

    def prefill(self, condition: Tensor, tokens: Tensor | None = None) -> Tensor:
        """Start a generation: the condition (``cond_len`` positions), then ``tokens`` (b, n) if given, go
        into the cache.

        Returns logits (b, v) predicting token n (token 0 without a prefix), in the weights' dtype.
        """
        if self.cache is None:
            raise RuntimeError("prefill: no KV cache installed; call setup_cache(batch_size) first")
        self._check_inputs(condition, tokens, self.cfg.seq_len - 1)
        if condition.shape[0] > self.cache.capacity:
            name = "cond_tokens" if self.cfg.frame_prediction else "class_ids"
            raise ValueError(f"{name}: batch {condition.shape[0]} exceeds the cache capacity "
                             f"{self.cache.capacity}")
        self.cache.batch = condition.shape[0]
        x = self.embed_condition(condition)
        if tokens is not None:
            x = torch.cat([x, self.tok_embeddings(tokens)], dim=1)
        return self._step(x, 0)

    def decode_step(self, tokens: Tensor, pos: int) -> Tensor:
        """Feed token z_{i-1} (b,) at sequence position ``pos`` = cond_len + i - 1 (= the cache length);
        logits (b, v) of z_i. Class-conditional: pos = i."""
        cache = self.cache
        if cache is None:
            raise RuntimeError("decode_step: no KV cache installed; call setup_cache and prefill first")
        if pos != cache.length or not self.cond_len <= pos < self.max_len:
            raise ValueError(f"decode_step: pos must be the next free position {cache.length} "
                             f"(< {self.max_len} positions), got {pos}")
        if tokens.shape != (cache.batch,):
            raise ValueError(f"tokens: expected shape ({cache.batch},), got {tuple(tokens.shape)}")
        return self._step(self.tok_embeddings(tokens)[:, None], pos)

    def decode_step_static(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """:meth:`decode_step` with static shapes, for ``torch.compile`` / CUDA graphs: ``pos`` is a 1-element
        long tensor on the model's device (the next free position), so one compiled graph serves every step.

        No checks (they would break the graph): the caller keeps ``pos`` equal to ``cache.length`` and sets
        ``cache.length = pos + 1`` afterwards. Same logits as :meth:`decode_step` up to summation order.
        """
        cache = self.cache
        assert cache is not None
        h = self.tok_dropout(self.tok_embeddings(tokens)[:, None]) + self.abs_pe.index_select(1, pos)
        mask = (torch.arange(cache.k[0].shape[2], device=pos.device) <= pos)[None]  # (1, s): keys so far
        for i, block in enumerate(self.layers):
            h = block.step(h, cache, i, pos, mask)
        return self._logits(h[:, -1])

    def generate(self, condition: Tensor, *, cfg_scale: float = 1.0, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 generator: Randomness) -> Tensor:
        """Sample (b, seq_len) token ids with the KV cache; see :func:`larp.models.generation.generate`."""
        return generate(self, condition, cfg_scale=cfg_scale, temperature=temperature, top_k=top_k,
                        top_p=top_p, generator=generator)


# GeneratorConfig of a generator preset name with field overrides (checked as params.yaml overrides are)
preset_config = functools.partial(preset_section, "generator", PRESETS)


def load_generator(weights: Path, params: Params, device: str | torch.device = "cpu") -> LARPGenerator:
    """The trained generator of a ``train_ar`` weights file, in eval mode."""
    model = LARPGenerator(params.generator)
    load_weights(Path(weights), model, "generator")
    return model.to(device).eval()


__all__ = ["LARPGenerator", "GeneratorConfig", "KVCache", "RMSNorm", "SwiGLU", "load_generator", "preset_config"]
