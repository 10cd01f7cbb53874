"""Transformer discriminator of the LARP tokenizer GAN (docs/model.md#discriminator): one logit per clip.

video (b, c, t, h, w) -> Conv3d patches + fixed 3D sin-cos -> prepend a learned CLS token (no position) ->
pre-norm ViT blocks -> LayerNorm(eps 1e-6) on the CLS output -> Linear(width -> 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from larp.config import DiscriminatorConfig, preset_section
from larp.models.layers import PatchEmbed3D, Transformer, sincos_3d, xavier_linears_

PRESETS = {"larp-l-long": "paper", "tiny": "tiny"}


class TransformerDiscriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        config.validate()
        self.config = c = config
        gt, gh = c.frames // c.patch_t, c.size // c.patch_hw
        self.x_embedder = PatchEmbed3D(c.channels, c.width, c.patch_t, c.patch_hw)
        self.register_buffer("encoder_pos_embed", sincos_3d(c.width, gt, gh, gh)[None], persistent=False)
        self.cls_token = nn.Parameter(torch.empty(1, 1, c.width))
        self.transformer_encoder = Transformer(c.width, c.depth, c.heads, c.mlp_ratio, c.norm_eps)
        self.norm_final = nn.LayerNorm(c.width, eps=1e-6)
        self.fc = nn.Linear(c.width, 1)
        xavier_linears_(self)
        nn.init.xavier_uniform_(self.cls_token)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> TransformerDiscriminator:
        """``"larp-l-long"`` (512 wide, 8 heads, 12 layers) or ``"tiny"``; overrides replace config fields."""
        return cls(preset_section("discriminator", PRESETS, name, **overrides))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, video: Tensor) -> Tensor:
        """video (b, c, t, h, w) -> logits (b,)."""
        c = self.config
        want = (c.channels, c.frames, c.size, c.size)
        if video.ndim != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(
                f"Discriminator: video must be (B, {', '.join(map(str, want))}), got {tuple(video.shape)}"
            )
        x = self.x_embedder(video) + self.encoder_pos_embed
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.transformer_encoder(x)
        return self.fc(self.norm_final(x[:, 0]))[:, 0]


Discriminator = TransformerDiscriminator
