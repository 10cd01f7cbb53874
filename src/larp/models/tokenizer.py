"""LARP holistic video tokenizer (docs/model.md#tokenizer) with its optional training-time AR prior
(section 2).

video (b, c, t, h, w) in [0, 1]
  -> patches + fixed 3D sin-cos -> concat learned queries -> ViT encoder (keep the query outputs)
  -> Linear(width -> d) -> SVQ -> Linear(d -> width) + fixed 1D sin-cos
  -> concat patch queries (fixed 3D sin-cos + one shared learned type vector)
  -> ViT decoder (keep the patch-query outputs) -> LayerNorm -> zero-initialised Linear -> unpatchify.
Token order = query index.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from einops import rearrange
from torch import Tensor, nn

from larp.config import Params, PriorParams, TokenizerConfig, preset, preset_section
from larp.models.layers import PatchEmbed3D, Transformer, sincos_1d, sincos_3d, xavier_linears_
from larp.models.prior import GPTCPrior, prior_loss, scheduled_sampling_ratio
from larp.models.svq import SVQ, SVQOutput
from larp.models.weights_io import load_weights

PRESETS = {"larp-l-long": "paper", "tiny": "tiny"}


class TokenizerOutput(NamedTuple):
    reconstruction: Tensor  # (b, c, t, h, w), raw (not clamped)
    indices: Tensor  # (b, n) int64
    vq_loss: Tensor  # () 0.25 commit + 1.0 codebook (the SVQ's default weights)
    commit: Tensor  # ()
    codebook: Tensor  # ()
    perplexity: Tensor  # () code-histogram perplexity of the batch
    usage: Tensor  # () fraction of codes used in the batch
    prior_loss: Tensor | None  # () unweighted prior CE, None when no prior ran
    prior_top1: Tensor | None
    prior_top5: Tensor | None
    ss_ratio: float | None  # scheduled-sampling ratio used by the prior


class Bottleneck(nn.Module):
    """in_linear (width -> d), the SVQ regulariser, out_linear (d -> width); official key names."""

    def __init__(self, width: int, code_dim: int, codebook_size: int, temperature: float) -> None:
        super().__init__()
        self.in_linear = nn.Linear(width, code_dim)
        self.regularizer = SVQ(codebook_size, code_dim, temperature)
        self.out_linear = nn.Linear(code_dim, width)


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.norm_final(x))


class LARPTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig, prior: PriorParams | None = None) -> None:
        """``prior`` is the training-time AR prior (the ``prior`` parameter group: architecture and loss
        settings). The prior module exists when ``prior`` is given and ``prior.enabled``; otherwise
        ``self.prior`` is None: the tokenizer as inference uses it (tokenize, sample, rFVD)."""
        super().__init__()
        config.validate()
        self.config = config
        self.prior_params = prior
        if prior is not None:
            prior.validate()
        c = config
        gt, gh = c.frames // c.patch_t, c.size // c.patch_hw
        self.grid = (gt, gh, gh)
        n_patches = c.num_patches

        self.x_embedder = PatchEmbed3D(c.channels, c.width, c.patch_t, c.patch_hw)
        self.register_buffer("encoder_patch_pe", sincos_3d(c.width, gt, gh, gh)[None], persistent=False)
        self.encoder_latent_query_embed = nn.Parameter(torch.randn(c.num_tokens, c.width) * c.query_init_std)
        self.encoder = Transformer(c.width, c.depth, c.heads, c.mlp_ratio, c.norm_eps)

        self.bottleneck = Bottleneck(c.width, c.code_dim, c.codebook_size, c.svq_temperature)

        self.register_buffer(
            "decoder_latent_pe", sincos_1d(c.width, torch.arange(c.num_tokens))[None], persistent=False
        )
        self.register_buffer(
            "decoder_patch_query_embed", sincos_3d(c.width, gt, gh, gh)[None], persistent=False
        )
        self.decoder_patch_query_token_type_embed = nn.Parameter(torch.randn(1, 1, c.width) * 0.02)
        self.decoder = Transformer(c.width, c.depth, c.heads, c.mlp_ratio, c.norm_eps)
        self.final_layer = FinalLayer(c.width, c.patch_t * c.patch_hw * c.patch_hw * c.channels)

        # global init: every Linear xavier-uniform / zero bias; then the output head is zeroed
        xavier_linears_(self)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        assert n_patches == self.encoder_patch_pe.shape[1]

        # built after the global init: GPTCPrior applies the (quirk) xavier overwrite itself when asked to
        self.prior_model: GPTCPrior | None = None
        if prior is not None and prior.enabled:
            if prior.max_len < c.num_tokens:
                raise ValueError(f"prior.max_len: must be >= tokenizer.num_tokens ({c.num_tokens}), "
                                 f"got {prior.max_len}")
            self.prior_model = GPTCPrior(
                c.code_dim,
                prior.max_len,
                prior.width,
                prior.depth,
                prior.heads,
                prior.dropout,
                prior.attn_dropout_in_eval,
                prior.xavier_init,
            )

    @property
    def prior(self) -> GPTCPrior | None:
        """The AR prior (state-dict prefix ``prior_model.`` like the official checkpoint), or None."""
        return self.prior_model

    # ----------------------------------------------------------------------------------------------
    # construction helpers

    @classmethod
    def from_preset(cls, name: str, *, prior: PriorParams | bool = True, **overrides: Any) -> LARPTokenizer:
        """``"larp-l-long"`` (paper) or ``"tiny"``; ``overrides`` replace TokenizerConfig fields. ``prior``:
        True = the preset's ``prior`` group, False = no prior, or the PriorParams to use."""
        config = preset_config(name, **overrides)
        if isinstance(prior, bool):
            prior = preset(PRESETS[name]).prior if prior else None
        return cls(config, prior)

    def num_params(self, include_prior: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not include_prior and self.prior is not None:
            n -= sum(p.numel() for p in self.prior.parameters())
        return n

    def tokenizer_parameters(self) -> list[nn.Parameter]:
        """Every parameter except the prior's (the optimizer's tokenizer group)."""
        prior_ids = {id(p) for p in self.prior.parameters()} if self.prior is not None else set()
        return [p for p in self.parameters() if id(p) not in prior_ids]

    def load_weights(self, path: str | Path, *, strict: bool = True) -> None:
        """Load tensors from ``.safetensors`` or a torch file read with ``weights_only=True`` (no code).

        A torch file may hold the state dict itself or under the key ``"model"``. Stored copies of the fixed
        sin-cos tables (the official checkpoint keeps them) are ignored, they are recomputed here; so are the
        ``prior_model.*`` weights when this tokenizer was built without a prior (:meth:`load_state_dict`).
        """
        state = read_state_dict(path)
        fixed = {name for name, _ in self.named_buffers()} - set(self.state_dict())
        state = {k: v for k, v in state.items() if k not in fixed}
        self.load_state_dict(state, strict=strict)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """nn.Module's, except that ``prior_model.*`` entries are skipped when this tokenizer has no prior: the
        prior is training-only, trained and released weights carry it, the tokenizer that inference builds
        does not."""
        if self.prior is None:
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith("prior_model.")}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ----------------------------------------------------------------------------------------------
    # encoder / decoder

    def _check_video(self, video: Tensor) -> None:
        c = self.config
        want = (c.channels, c.frames, c.size, c.size)
        if video.ndim != 5 or tuple(video.shape[1:]) != want:
            raise ValueError(
                f"LARPTokenizer: video must be (B, {', '.join(map(str, want))}) float in [0, 1], "
                f"got {tuple(video.shape)}"
            )
        if not video.is_floating_point():
            raise ValueError(f"LARPTokenizer: video must be a float tensor in [0, 1], got {video.dtype}")

    def encode_latents(self, video: Tensor) -> Tensor:
        """video (b, c, t, h, w) -> un-quantised bottleneck vectors (b, n, d)."""
        self._check_video(video)
        x = self.x_embedder(video) + self.encoder_patch_pe
        queries = self.encoder_latent_query_embed[None].expand(x.shape[0], -1, -1)
        return self.bottleneck.in_linear(self.encoder.forward_parallel(x, queries))

    def decode_codes(self, codes: Tensor) -> Tensor:
        """Quantised unit codes (b, n, d) -> reconstruction (b, c, t, h, w)."""
        out_linear = self.bottleneck.out_linear  # codes are float32 (the SVQ's); weights may be cast (fp16 decoding)
        x = out_linear(codes.to(out_linear.weight.dtype)) + self.decoder_latent_pe
        queries = self.decoder_patch_query_embed + self.decoder_patch_query_token_type_embed
        out = self.decoder.forward_parallel(x, queries.expand(x.shape[0], -1, -1))
        return self.unpatchify(self.final_layer(out))

    def unpatchify(self, patches: Tensor) -> Tensor:
        """Pixels per patch (b, n_patches, pt*ph*pw*c), patches in (t, h, w) order -> (b, c, t, h, w)."""
        gt, gh, gw = self.grid
        c = self.config
        return rearrange(
            patches,
            "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
            t=gt,
            h=gh,
            w=gw,
            pt=c.patch_t,
            ph=c.patch_hw,
            pw=c.patch_hw,
            c=c.channels,
        )

    def decode_from_indices(self, indices: Tensor) -> Tensor:
        """(b, n) int64 token ids -> reconstruction (b, c, t, h, w) (differentiable w.r.t. the decoder)."""
        if indices.ndim != 2 or indices.shape[1] != self.config.num_tokens:
            raise ValueError(
                f"LARPTokenizer: token ids must be (B, {self.config.num_tokens}), got {tuple(indices.shape)}"
            )
        return self.decode_codes(self.bottleneck.regularizer.lookup(indices))

    def quantize(
        self, video: Tensor, *, stochastic: bool | None = None, generator: torch.Generator | None = None
    ) -> SVQOutput:
        return self.bottleneck.regularizer(
            self.encode_latents(video), stochastic=stochastic, generator=generator
        )

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """video (b, c, t, h, w) float in [0, 1] -> token ids (b, n) int64 (argmax SVQ, deterministic)."""
        return self.quantize(video, stochastic=False).indices

    @torch.no_grad()
    def decode(self, indices: Tensor) -> Tensor:
        """token ids (b, n) -> reconstruction (b, c, t, h, w) (raw; clamp to [0, 1] for display/metrics)."""
        return self.decode_from_indices(indices)

    # ----------------------------------------------------------------------------------------------
    # training forward

    def forward(
        self,
        video: Tensor,
        *,
        step: int | None = None,
        max_steps: int | None = None,
        stochastic: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> TokenizerOutput:
        """Full pass. SVQ samples when ``stochastic`` (default: ``self.training``); the prior loss is computed
        when the prior exists and the module is training. ``step``/``max_steps`` set the scheduled-sampling
        ratio (required when the prior runs); ``generator`` (on the video's device) drives the SVQ and prior
        sampling."""
        run_prior = self.prior is not None and self.training
        if run_prior and (step is None or max_steps is None):
            raise ValueError(
                "LARPTokenizer.forward: step and max_steps are required in training mode with a prior "
                "(they set the scheduled-sampling ratio)"
            )
        q = self.quantize(video, stochastic=stochastic, generator=generator)
        recon = self.decode_codes(q.quantized_st)
        p_loss = top1 = top5 = ss = None
        if run_prior:
            pp = self.prior_params
            ss = scheduled_sampling_ratio(step, max_steps, pp.ss_max_ratio, pp.ss_peak_steps_ratio)
            out = prior_loss(
                self.prior,
                q.quantized_st,
                q.indices,
                self.bottleneck.regularizer.normalized_codebook(),
                ss_ratio=ss,
                n_rounds=pp.n_rounds,
                ce_temperature=pp.ce_temperature,
                generator=generator,
            )
            p_loss, top1, top5 = out.loss, out.top1, out.top5
        return TokenizerOutput(
            recon, q.indices, q.loss, q.commit, q.codebook, q.perplexity, q.usage, p_loss, top1, top5, ss
        )


# --------------------------------------------------------------------------------------------------


# TokenizerConfig of a tokenizer preset name with field overrides (checked as params.yaml overrides are)
preset_config = functools.partial(preset_section, "tokenizer", PRESETS)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Tensors only: safetensors, or torch.load(weights_only=True) which refuses pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    from larp.models.weights_io import load_state_dict_file

    return load_state_dict_file(path)


def load_tokenizer(weights: Path, params: Params, device: str | torch.device = "cpu") -> LARPTokenizer:
    """The trained tokenizer of a ``train_tokenizer`` weights file, in eval mode (argmax SVQ), without the
    training-time prior (its stored weights are skipped): reads ``params.tokenizer``, not ``params.prior``."""
    model = LARPTokenizer(params.tokenizer)
    load_weights(Path(weights), model, "tokenizer")
    return model.to(device).eval()
