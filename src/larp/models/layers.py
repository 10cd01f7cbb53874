"""Building blocks shared by the tokenizer encoder/decoder and the discriminator.

Axis letters: video ``b c t h w``; tokens ``b n d``. Fixed sin-cos positions (docs/model.md#positional-encodings;
MAE convention): 1D = [sin(p w), cos(p w)] with w_i = 1 / 10000^(i / (D/2)); 2D = first half from the column
(w) index, second half from the row (h) index, tokens row-major; 3D = 2D broadcast over t plus a full-width 1D
table of the temporal index, flattened in (t, h, w) order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

# --------------------------------------------------------------------------------------------------
# fixed sin-cos position tables (computed in float64, returned as float32)


def sincos_1d(dim: int, positions: Tensor, base: float = 10000.0) -> Tensor:
    """(len,) positions -> (len, dim) table: sin half first, then cos."""
    if dim % 2:
        raise ValueError(f"sincos_1d: dim must be even, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / base**omega  # (dim/2,)
    out = positions.to(torch.float64).reshape(-1)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_2d(dim: int, h: int, w: int) -> Tensor:
    """(h*w, dim) table, row-major tokens; channels [: dim/2] encode the column, [dim/2 :] the row."""
    if dim % 4:
        raise ValueError(f"sincos_2d: dim must be a multiple of 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.cat([sincos_1d(dim // 2, cols.reshape(-1)), sincos_1d(dim // 2, rows.reshape(-1))], dim=1)


def sincos_3d(dim: int, t: int, h: int, w: int) -> Tensor:
    """(t*h*w, dim) table: 2D table of (h, w) plus a full-width 1D table of t (added, not concatenated)."""
    spatial = sincos_2d(dim, h, w)  # (h*w, dim)
    temporal = sincos_1d(dim, torch.arange(t))  # (t, dim)
    return rearrange(temporal[:, None, :] + spatial[None, :, :], "t n d -> (t n) d")


# --------------------------------------------------------------------------------------------------
# init helpers


def xavier_linears_(module: nn.Module) -> None:
    """xavier-uniform weight and zero bias for every nn.Linear below ``module`` (the official global init)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# patchifier


class PatchEmbed3D(nn.Module):
    """Conv3d, kernel = stride = (pt, ph, pw): video (b, c, t, h, w) -> tokens (b, n, d), (t, h, w) order."""

    def __init__(self, channels: int, width: int, patch_t: int, patch_hw: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(
            channels,
            width,
            kernel_size=(patch_t, patch_hw, patch_hw),
            stride=(patch_t, patch_hw, patch_hw),
            bias=True,
        )
        # xavier on the weight viewed as (width, c*pt*ph*pw), like a linear layer on flattened patches
        nn.init.xavier_uniform_(self.proj.weight.view(width, -1))
        nn.init.zeros_(self.proj.bias)

    def forward(self, video: Tensor) -> Tensor:
        return rearrange(self.proj(video), "b d t h w -> b (t h w) d")


# --------------------------------------------------------------------------------------------------
# pre-norm ViT block (timm vision_transformer.Block semantics: qkv without bias, proj with bias)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"Attention: width {width} must be divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = rearrange(self.qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.heads)
        y = F.scaled_dot_product_attention(q, k, v)  # full bidirectional attention, no mask
        return self.proj(rearrange(y, "b h n e -> b n (h e)"))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """x + attn(LN(x)); x + mlp(LN(x)), no LayerScale/drop-path. ``eps``: the LayerNorms' eps (the official
    blocks take timm's default, see ``TokenizerConfig.norm_eps``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of Blocks with no final norm (the official ``transformer_encoder_parallel`` body)."""

    def __init__(self, width: int, depth: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([Block(width, heads, mlp_ratio, eps) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward_parallel(self, context: Tensor, queries: Tensor) -> Tensor:
        """In-context "parallel" decoding: run on concat[context, queries] and keep the query positions.

        context (b, m, d), queries (b, n, d) -> (b, n, d).
        """
        n = queries.shape[1]
        return self(torch.cat([context, queries], dim=1))[:, -n:]


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily set requires_grad False on the modules' parameters (gradients still flow through them to
    their inputs, as for D in the G step); the parameters that required grad do again afterwards."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
