"""Typed, validated parameters: one dataclass per concern, two named presets, params.yaml overrides.

Resolution of the parameters a stage runs with, for one dataset:

    preset file src/larp/presets/<paper|tiny>.yaml (chosen per dataset in params.yaml ``presets:``)
      <- top-level groups of params.yaml (``prior: {alpha: 0.1}`` overrides the preset's value)

The preset files are the only place values live: the dataclasses declare keys and types and check ranges,
with no defaults, and a preset must list every key. An unknown or missing key, a value of the wrong type or an
out-of-range value raises :class:`ParamsError` naming the file and the dotted key, before any work starts.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

DATASETS = ("embedded", "ucf101", "k600")
PRESET_NAMES = ("paper", "tiny")  # src/larp/presets/<name>.yaml


class ParamsError(ValueError):
    """A parameter file or override is invalid; the message names the offending key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ParamsError(f"{key}: {msg}")


# --------------------------------------------------------------------------------------------------
# data


@dataclass
class DataParams:
    size: int  # frames are resized (short side, antialias) + centre-cropped to size x size
    frames: int  # clip length fed to the models
    shard_videos: int  # videos per frame shard (DVC then tracks tens of files, not thousands)
    workers: int  # extraction processes
    split: int  # official split whose train/test lists the stages use
    # datasets whose training videos the tokenizer learns from, concatenated (labels unused); empty = the
    # dataset being built alone. Paper: K600-train + UCF-101-train, as the released tokenizer
    # (docs/training.md#data-mix)
    tokenizer_datasets: tuple[str, ...]

    def validate(self) -> None:
        bad = [d for d in self.tokenizer_datasets if d not in DATASETS]
        _check(not bad, "data.tokenizer_datasets", f"unknown datasets {bad}; known: {list(DATASETS)}")
        _check(len(set(self.tokenizer_datasets)) == len(self.tokenizer_datasets), "data.tokenizer_datasets",
               f"lists a dataset twice: {list(self.tokenizer_datasets)}")
        _check(self.size >= 8, "data.size", f"must be >= 8, got {self.size}")
        _check(self.frames >= 1, "data.frames", f"must be >= 1, got {self.frames}")
        _check(self.shard_videos >= 1, "data.shard_videos", "must be >= 1")
        _check(self.workers >= 1, "data.workers", "must be >= 1")
        _check(self.split in (1, 2, 3), "data.split", f"must be 1, 2 or 3, got {self.split}")


@dataclass
class FrameStorage:
    """How `larp extract` stores one dataset's frames (larp.data.frames), and the largest frames it decodes.

    raw: exact uint8, 48 KiB per 128x128 frame (UCF-101: ~120 GB). jpeg: libjpeg-turbo at ``jpeg_quality``,
    ~7x smaller but lossy; the default for Kinetics-600, whose raw frames would take ~5 TB.
    """

    frame_format: Literal["raw", "jpeg"]
    jpeg_quality: int
    # source videos with larger frames are skipped (and reported) before any frame is decoded: decoding
    # costs memory in proportion (16000 x 16000 took ~5 GB). null = no limit
    max_pixels: int | None

    def validate(self, group: str = "storage") -> None:
        _check(1 <= self.jpeg_quality <= 100, f"{group}.jpeg_quality", f"must be in [1, 100], got {self.jpeg_quality}")
        _check(self.max_pixels is None or self.max_pixels >= 1, f"{group}.max_pixels",
               f"must be >= 1 or null, got {self.max_pixels}")


@dataclass
class StorageParams:
    """Frame storage per dataset: a group of its own, so that the download stages (which track the dataset
    groups) do not rerun when only the storage changes, and extraction tracks only this."""

    embedded: FrameStorage
    ucf101: FrameStorage
    k600: FrameStorage

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f"storage.{f.name}")


@dataclass
class UCF101Params:
    source: Literal["official", "mirror"]  # official RAR + split zip, or the zip mirror

    def validate(self) -> None:
        pass  # the Literal type is checked on load


@dataclass
class K600Params:
    """Kinetics-600 from the CVDF mirror's published part lists (see larp.data.k600)."""

    splits: tuple[str, ...]
    workers: int  # parts downloaded and extracted at once
    max_bad_fraction: float  # missing / truncated / undecodable clips tolerated before the stage fails
    keep_archives: bool

    def validate(self) -> None:
        _check(len(self.splits) >= 1 and set(self.splits) <= {"train", "val"}, "k600.splits",
               f"must be a non-empty subset of ['train', 'val'], got {list(self.splits)}")
        _check(self.workers >= 1, "k600.workers", "must be >= 1")
        _check(0 <= self.max_bad_fraction <= 1, "k600.max_bad_fraction", "must be in [0, 1]")


@dataclass
class EmbeddedParams:
    """The self-generated dataset: shapes and textures moving in class-specific ways."""

    num_classes: int
    train_per_class: int
    test_per_class: int
    min_frames: int
    max_frames: int
    height: int  # deliberately not square: exercises resize + centre crop
    width: int
    fps: int
    seed: int

    def validate(self) -> None:
        _check(2 <= self.num_classes <= 12, "embedded.num_classes", "must be in [2, 12]")
        _check(self.train_per_class >= 1, "embedded.train_per_class", "must be >= 1")
        _check(self.test_per_class >= 0, "embedded.test_per_class", "must be >= 0")
        _check(1 <= self.min_frames <= self.max_frames, "embedded.min_frames", "must be in [1, max_frames]")
        _check(self.height >= 16 and self.width >= 16, "embedded.height", "height and width must be >= 16")
        _check(self.height % 2 == 0 and self.width % 2 == 0, "embedded.height", "height/width must be even (yuv420p)")
        _check(self.fps >= 1, "embedded.fps", "must be >= 1")


# --------------------------------------------------------------------------------------------------
# models


@dataclass
class TokenizerConfig:
    """LARP tokenizer architecture (paper preset: LARP-L-Long)."""

    frames: int
    size: int
    channels: int
    patch_t: int
    patch_hw: int
    width: int
    depth: int  # encoder and decoder each
    heads: int
    mlp_ratio: float
    # eps of the ViT blocks' LayerNorms. The official blocks are timm's `Block` with its default norm, which
    # was torch's nn.LayerNorm (eps 1e-5) up to timm 1.0.15 and timm's own LayerNorm (eps 1e-6) from 1.0.16
    # on; the official requirements do not pin timm and the released models date from 2024, so 1e-5
    norm_eps: float
    num_tokens: int  # holistic queries = tokens per clip
    code_dim: int
    codebook_size: int
    svq_temperature: float  # tau of softmax(cos / tau)
    query_init_std: float  # the training-time AR prior is the `prior` group

    def validate(self) -> None:
        _check(self.frames % self.patch_t == 0, "tokenizer.frames", "must be a multiple of tokenizer.patch_t")
        _check(self.size % self.patch_hw == 0, "tokenizer.size", "must be a multiple of tokenizer.patch_hw")
        _check(self.width % self.heads == 0, "tokenizer.width", "must be divisible by tokenizer.heads")
        _check(self.svq_temperature > 0, "tokenizer.svq_temperature", "must be > 0")
        _check(self.codebook_size >= 2, "tokenizer.codebook_size", "must be >= 2")
        _check(self.codebook_size <= 65536, "tokenizer.codebook_size", "must fit uint16 token storage (<= 65536)")
        _check(self.num_tokens >= 2, "tokenizer.num_tokens", "must be >= 2")
        _check(self.norm_eps > 0, "tokenizer.norm_eps", f"must be > 0, got {self.norm_eps}")

    @property
    def num_patches(self) -> int:
        return (self.frames // self.patch_t) * (self.size // self.patch_hw) ** 2


@dataclass
class DiscriminatorConfig:
    """Transformer discriminator (reproduce scripts: 512 wide, 8 heads, 12 layers)."""

    frames: int
    size: int
    channels: int
    patch_t: int
    patch_hw: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float
    norm_eps: float  # the ViT blocks' LayerNorm eps: timm's default, as tokenizer.norm_eps

    def validate(self) -> None:
        _check(self.width % self.heads == 0, "discriminator.width", "must be divisible by discriminator.heads")
        _check(self.norm_eps > 0, "discriminator.norm_eps", f"must be > 0, got {self.norm_eps}")
        _check(self.frames % self.patch_t == 0, "discriminator.frames", "must be a multiple of patch_t")
        _check(self.size % self.patch_hw == 0, "discriminator.size", "must be a multiple of patch_hw")


@dataclass
class GeneratorConfig:
    """Llama-style AR generator with learned absolute positions (paper preset: llama-abs-LP)."""

    depth: int
    width: int
    heads: int
    ffn_multiple_of: int  # SwiGLU hidden = round_up(int(2 * 4 * width / 3), multiple_of)
    vocab_size: int
    seq_len: int  # tokens per clip
    num_classes: int  # + 1 null class for classifier-free guidance
    token_dropout: float
    class_dropout: float
    resid_dropout: float
    ffn_dropout: float
    norm_eps: float
    init_std: float
    # frame-prediction variant (docs/model.md#frame-prediction): the condition is the tokens of the first
    # `cond_frames` frames repeat-padded to the clip length, + a SEP token (id vocab_size); no class embedding,
    # no CFG
    frame_prediction: bool
    cond_frames: int

    def validate(self) -> None:
        _check(self.cond_frames >= 1, "generator.cond_frames", f"must be >= 1, got {self.cond_frames}")
        for key, low in (("depth", 1), ("heads", 1), ("width", 1), ("vocab_size", 2), ("seq_len", 2)):
            _check(getattr(self, key) >= low, f"generator.{key}", f"must be >= {low}, got {getattr(self, key)}")
        _check(self.width % self.heads == 0, "generator.width", "must be divisible by generator.heads")
        for k in ("token_dropout", "class_dropout", "resid_dropout", "ffn_dropout"):
            v = getattr(self, k)
            _check(0.0 <= v < 1.0, f"generator.{k}", f"must be in [0, 1), got {v}")
        _check(self.num_classes >= 1, "generator.num_classes", "must be >= 1")

    @property
    def ffn_hidden(self) -> int:
        h = int(2 * 4 * self.width / 3)
        m = self.ffn_multiple_of
        return m * ((h + m - 1) // m)


# --------------------------------------------------------------------------------------------------
# losses and training


@dataclass
class PriorParams:
    """The training-time AR prior (gptc-S, docs/model.md#prior), all of it: whether it exists, its
    architecture, how it enters the tokenizer loss (docs/training.md#prior-loss), its learning rate.

    Only `larp train-tokenizer` builds it. Every stage that uses a trained tokenizer (tokenize, sample, rfvd,
    the report) builds the tokenizer without it and skips the stored ``prior_model.*`` weights.
    """

    enabled: bool  # false: no prior module at all (no weights, no compute, no prior metrics)
    depth: int
    width: int
    heads: int
    dropout: float
    # rows of the position table: official GPTC always builds max_seq_len = 1024, whatever the token count
    # (rows past tokenizer.num_tokens are unused); so weights of any released/official size import
    max_len: int
    # [quirk] official GPTC applies attention dropout even in eval mode; false = the usual behaviour
    attn_dropout_in_eval: bool
    # [quirk] official init overwrites GPTC's N(0, .02) with the tokenizer's xavier init; false keeps N(0, .02)
    xavier_init: bool
    # weight of the prior CE in the tokenizer loss, and nothing else. 0 with enabled: the prior is built and runs
    # (its CE and accuracy are logged) but adds nothing to the loss, so neither the tokenizer nor the prior
    # learns from it; enabled: false removes the module
    alpha: float
    n_rounds: int
    ss_max_ratio: float  # scheduled sampling: replacement probability reached...
    ss_peak_steps_ratio: float  # ...after this fraction of all training steps
    ce_temperature: float
    # the prior's optimizer group runs at train_tokenizer.lr x lr_mult when honor_lr_mult; [quirk] the
    # official scheduler overwrites every group's lr, so its lr_mult = 50 has no effect (honor_lr_mult: false)
    lr_mult: float
    honor_lr_mult: bool

    def validate(self) -> None:
        for key in ("depth", "width", "heads", "max_len", "n_rounds"):
            _check(getattr(self, key) >= 1, f"prior.{key}", f"must be >= 1, got {getattr(self, key)}")
        _check(self.width % self.heads == 0, "prior.width", "must be divisible by prior.heads")
        _check(0.0 <= self.dropout < 1.0, "prior.dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.alpha >= 0, "prior.alpha", f"must be >= 0, got {self.alpha}")
        _check(0 <= self.ss_max_ratio <= 1, "prior.ss_max_ratio", "must be in [0, 1]")
        _check(0 < self.ss_peak_steps_ratio <= 1, "prior.ss_peak_steps_ratio", "must be in (0, 1]")
        _check(self.ce_temperature > 0, "prior.ce_temperature", "must be > 0")
        _check(self.lr_mult > 0, "prior.lr_mult", f"must be > 0, got {self.lr_mult}")


@dataclass
class LossParams:
    """Tokenizer objective (docs/training.md#tokenizer-objective)."""

    l1_weight: float
    mse_weight: float  # pixel MSE beside the L1 (ours; 0 = official objective)
    perceptual_weight: float  # LPIPS-VGG; 0 = no LPIPS (no weights download)
    gan_weight: float
    vq_weight: float
    commit_weight: float
    codebook_weight: float
    lecam_weight: float
    lecam_ema_decay: float
    d_update_every: int
    disc_start: int  # the generator's adversarial term starts here
    disc_self_start: int  # the discriminator's own updates start here; < 0 = at disc_start (official)
    label_noise: float  # ns_smooth: |N(0,1)| * 0.15, clamped to [0.7, 1] / [0, 0.3]
    # [quirk] the official loss multiplies LeCam by its weight twice (effective 1e-6)
    lecam_weight_applied_twice: bool
    # [quirk] disc_start and disc_self_start are compared with the epoch, not the step
    gan_start_compares_epoch: bool

    def validate(self) -> None:
        for k in ("l1_weight", "mse_weight", "perceptual_weight", "gan_weight", "vq_weight", "lecam_weight"):
            _check(getattr(self, k) >= 0, f"loss.{k}", "must be >= 0")
        _check(self.d_update_every >= 1, "loss.d_update_every", "must be >= 1")
        _check(0 <= self.lecam_ema_decay < 1, "loss.lecam_ema_decay", "must be in [0, 1)")


@dataclass
class TrainParams:
    """One training run: the shared loop (tokenizer and AR generator both use it)."""

    epochs: int
    max_steps: int | None  # None: epochs x steps per epoch
    warmup_epochs: float
    lr: float
    d_lr: float  # discriminator (tokenizer only)
    betas: tuple[float, float]
    weight_decay: float
    min_lr_mult: float
    global_batch: int
    micro_batch: int  # per device and step; accumulation makes up the global batch
    amp: Literal["fp16", "bf16", "none"]
    compile: bool
    seed: int
    num_workers: int
    checkpoint_every: int  # steps
    log_every: int
    sample_every: int | None  # steps between sample videos; None = never
    # [quirk] tokenizer validation uses stochastic SVQ in the official trainer
    stochastic_validation: bool

    def validate(self, group: str = "train") -> None:
        _check(self.epochs >= 1, f"{group}.epochs", "must be >= 1")
        _check(self.max_steps is None or self.max_steps >= 1, f"{group}.max_steps", "must be >= 1 or null")
        _check(self.lr > 0, f"{group}.lr", f"must be > 0, got {self.lr}")
        _check(self.d_lr > 0, f"{group}.d_lr", "must be > 0")
        _check(self.weight_decay >= 0, f"{group}.weight_decay", "must be >= 0")
        _check(0 <= self.min_lr_mult <= 1, f"{group}.min_lr_mult", "must be in [0, 1]")
        _check(self.warmup_epochs >= 0, f"{group}.warmup_epochs", "must be >= 0")
        _check(self.micro_batch >= 1, f"{group}.micro_batch", "must be >= 1")
        _check(self.global_batch % self.micro_batch == 0, f"{group}.global_batch",
               f"must be a multiple of micro_batch ({self.micro_batch})")
        _check(self.checkpoint_every >= 1, f"{group}.checkpoint_every", "must be >= 1")
        _check(self.log_every >= 1, f"{group}.log_every", "must be >= 1")
        _check(self.sample_every is None or self.sample_every >= 1, f"{group}.sample_every", "must be >= 1 or null")
        _check(all(0 <= b < 1 for b in self.betas), f"{group}.betas", "must be in [0, 1)")


@dataclass
class TokenizeParams:
    clip_stride: int  # start offsets of the pre-tokenized clips (frames)
    flips: bool  # also store the horizontally flipped clips
    batch_size: int
    shard_clips: int

    def validate(self) -> None:
        _check(self.clip_stride >= 1, "tokenize.clip_stride", "must be >= 1")
        _check(self.batch_size >= 1, "tokenize.batch_size", "must be >= 1")
        _check(self.shard_clips >= 1, "tokenize.shard_clips", "must be >= 1")


@dataclass
class SampleParams:
    cfg_scale: float
    temperature: float
    top_k: int | None  # None = off
    top_p: float | None  # None = off
    batch_size: int
    shards: tuple[int, ...]  # sampling jobs the workflow fans out to: 0, 1, ..., S-1
    seed: int
    dtype: Literal["bf16", "fp16", "fp32"]
    # as the official sampler on GPUs: the AR weights cast to `dtype` (residual stream and guidance mix in it), the
    # tokenizer's to fp16 for decoding (fp32 for frame prediction); false: fp32 weights under autocast
    cast_weights: bool
    # frame prediction: the condition clip's tokens are drawn by stochastic SVQ (tokenizer.svq_temperature), as the
    # official evaluation of the released FP model (its tokenizer stays in eval mode without deterministic SVQ);
    # "argmax": the deterministic tokens the FP generator was trained on. Seeded per sample.
    fp_condition_svq: Literal["sampled", "argmax"]
    # decode step: eager; static (fixed shapes); compiled (static under torch.compile, CUDA graphs on a GPU:
    # the same samples, tested on CPU; its GPU speed is not measured yet, so eager stays the default)
    decode: Literal["eager", "static", "compiled"]
    # the gFVD ceiling: each shard also samples its videos from the generator at initialisation (random weights
    # seeded by `seed`; the same labels, tokenizer and settings), and `larp fvd` reports their FVD beside the
    # result (reference_points.ceiling_generator_at_init). It doubles the sampling time.
    ceiling: bool

    def validate(self) -> None:
        _check(self.cfg_scale >= 0, "sample.cfg_scale", "must be >= 0")
        _check(self.temperature > 0, "sample.temperature", "must be > 0")
        _check(self.top_k is None or self.top_k >= 1, "sample.top_k", "must be >= 1 or null")
        _check(self.top_p is None or 0 < self.top_p <= 1, "sample.top_p", "must be in (0, 1] or null")
        _check(self.batch_size >= 1, "sample.batch_size", "must be >= 1")
        _check(len(self.shards) >= 1 and list(self.shards) == list(range(len(self.shards))), "sample.shards",
               f"must list 0, 1, ..., S-1 (one entry per sampling job), got {list(self.shards)}")


@dataclass
class FVDParams:
    detector: Literal["i3d-torchscript", "i3d-kinetics400", "i3d-pretrained-400", "i3d-random"]
    num_clips: int  # gFVD: real clips drawn (and generated videos)
    clip_seed: int  # random.Random(42) selection of the real clips
    frames: int
    rfvd_seed: int  # which clip of each video the rFVD reconstructs
    rfvd_max_videos: int | None  # None = every split train video (9,537 for UCF-101)
    bootstrap: int  # bootstrap resamples for the confidence interval
    batch_size: int
    lpips: bool  # rFVD also reports LPIPS-VGG (needs the VGG16 + LPIPS weights)
    fp_num_clips: int  # FP-FVD: real clips drawn from the held-out (K600 val) split
    fp_resolution: int  # FP-FVD: generated and real clips are resized to this before the I3D

    def validate(self) -> None:
        _check(self.num_clips >= 2, "fvd.num_clips", "must be >= 2")
        _check(self.frames >= 9, "fvd.frames", "the I3D needs at least 9 frames")
        _check(self.bootstrap >= 0, "fvd.bootstrap", "must be >= 0")
        _check(self.batch_size >= 1, "fvd.batch_size", "must be >= 1")
        _check(self.rfvd_max_videos is None or self.rfvd_max_videos >= 2, "fvd.rfvd_max_videos", "must be >= 2 or null")
        _check(self.fp_num_clips >= 2, "fvd.fp_num_clips", "must be >= 2")
        _check(self.fp_resolution >= 8, "fvd.fp_resolution", "must be >= 8")


@dataclass
class StageResources:
    gpus: int  # per node; cpus and mem_mb too
    cpus: int
    mem_mb: int
    runtime: int  # minutes
    nodes: int  # > 1: one torchrun agent per node, c10d rendezvous (larp.launch); GPU stages only

    def validate(self, key: str = "resources") -> None:
        _check(self.gpus >= 0, f"{key}.gpus", "must be >= 0")
        _check(self.nodes >= 1, f"{key}.nodes", "must be >= 1")
        _check(self.nodes == 1 or self.gpus >= 1, f"{key}.nodes", "several nodes need gpus >= 1 (per node)")
        _check(self.cpus >= 1, f"{key}.cpus", "must be >= 1")
        _check(self.mem_mb >= 100, f"{key}.mem_mb", "must be >= 100")
        _check(self.runtime >= 1, f"{key}.runtime", "must be >= 1")


MULTI_NODE_STAGES = ("train_tokenizer", "tokenize", "train_ar", "train_ar_fp")  # they start torchrun (larp.launch)


@dataclass
class ResourcesParams:
    download: StageResources
    extract: StageResources
    train_tokenizer: StageResources
    tokenize: StageResources  # data-parallel shards over its GPUs
    train_ar: StageResources
    train_ar_fp: StageResources
    sample: StageResources
    fvd: StageResources

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f"resources.{f.name}")
            _check(getattr(self, f.name).nodes == 1 or f.name in MULTI_NODE_STAGES, f"resources.{f.name}.nodes",
                   f"must be 1: only {', '.join(MULTI_NODE_STAGES)} run across nodes")


# --------------------------------------------------------------------------------------------------
# all parameters of one run


@dataclass
class Params:
    data: DataParams
    ucf101: UCF101Params
    k600: K600Params
    embedded: EmbeddedParams
    storage: StorageParams
    tokenizer: TokenizerConfig
    discriminator: DiscriminatorConfig
    prior: PriorParams
    loss: LossParams
    train_tokenizer: TrainParams
    tokenize: TokenizeParams
    generator: GeneratorConfig
    train_ar: TrainParams
    train_ar_fp: TrainParams  # the frame-prediction generator (frame_prediction_params)
    sample: SampleParams
    fvd: FVDParams
    resources: ResourcesParams

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            sub = getattr(self, f.name)
            if isinstance(sub, TrainParams):
                sub.validate(f.name)
            else:
                sub.validate()
        # cross-group consistency: the models must see the clips the data stage produces
        t, d = self.tokenizer, self.discriminator
        _check(t.size == self.data.size, "tokenizer.size", f"must equal data.size ({self.data.size})")
        _check(t.frames == self.data.frames, "tokenizer.frames", f"must equal data.frames ({self.data.frames})")
        _check((d.size, d.frames) == (t.size, t.frames), "discriminator.size",
               "discriminator size/frames must equal the tokenizer's")
        if self.prior.enabled:
            _check(self.prior.max_len >= t.num_tokens, "prior.max_len",
                   f"must be >= tokenizer.num_tokens ({t.num_tokens}), got {self.prior.max_len}")
        _check(self.generator.seq_len == t.num_tokens, "generator.seq_len",
               f"must equal tokenizer.num_tokens ({t.num_tokens})")
        _check(self.generator.vocab_size == t.codebook_size, "generator.vocab_size",
               f"must equal tokenizer.codebook_size ({t.codebook_size})")
        _check(self.fvd.frames == self.data.frames, "fvd.frames", f"must equal data.frames ({self.data.frames})")
        if self.generator.frame_prediction:
            _check(self.generator.cond_frames < self.data.frames, "generator.cond_frames",
                   f"must be < data.frames ({self.data.frames}) for frame prediction, got {self.generator.cond_frames}")
        _check(self.fvd.fp_num_clips >= len(self.sample.shards), "sample.shards",
               f"{len(self.sample.shards)} sampling shards for fvd.fp_num_clips={self.fvd.fp_num_clips} clips")
        _check(self.fvd.num_clips >= len(self.sample.shards), "sample.shards",
               f"{len(self.sample.shards)} sampling shards for fvd.num_clips={self.fvd.num_clips} clips: "
               "some shards would be empty")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def tokenizer_datasets(params: Params, dataset: str) -> tuple[str, ...]:
    """The datasets whose training videos train ``dataset``'s tokenizer (``data.tokenizer_datasets``, or the
    dataset alone when that is empty)."""
    return params.data.tokenizer_datasets or (dataset,)


def frame_prediction_params(params: Params) -> Params:
    """The frame-prediction variant of a run: the same generator sizes with ``frame_prediction`` on, trained
    with ``train_ar_fp`` (docs/training.md#frame-prediction-training: 75 epochs, 1 warm-up epoch)."""
    out = copy.deepcopy(params)
    out.generator = dataclasses.replace(out.generator, frame_prediction=True)
    out.train_ar = out.train_ar_fp
    out.validate()
    return out


PRESETS_DIR = Path(__file__).parent / "presets"  # package data: found by editable and regular installs


def preset_path(name: str) -> Path:
    """The YAML file of preset ``name``: the single source of its values (the dataclasses have no defaults)."""
    if name not in PRESET_NAMES:
        raise ParamsError(f"preset: unknown preset {name!r}; choose one of {sorted(PRESET_NAMES)}")
    return PRESETS_DIR / f"{name}.yaml"


def read_preset_file(path: str | Path) -> dict[str, Any]:
    """The raw groups of a preset file (the workflows track them group by group)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: preset file not found")
    raw = _load_yaml(path)  # the same strict reading as params.yaml (duplicate keys, one-line syntax errors)
    _check(isinstance(raw, dict), str(path), "must be a mapping of parameter groups")
    return raw


@functools.cache
def _preset_groups(name: str) -> dict[str, Any]:
    return read_preset_file(preset_path(name))


def preset(name: str) -> Params:
    """The validated parameters of preset ``name``. Every key must be present: a missing, unknown, mistyped
    or out-of-range key raises :class:`ParamsError` naming the file and the dotted key."""
    path, groups = preset_path(name), copy.deepcopy(_preset_groups(name))
    try:
        p = _build(Params, groups, "")
        p.validate()
    except ParamsError as e:
        raise ParamsError(f"{path}: {e}") from None
    return p


# --------------------------------------------------------------------------------------------------
# strict construction from plain dicts


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            _check(type(None) in args, key, "must not be null")
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        _check(value in allowed, key, f"must be one of {list(allowed)}, got {value!r}")
        return value
    if origin is tuple and len(typing.get_args(tp)) == 2 and typing.get_args(tp)[1] is Ellipsis:
        _check(isinstance(value, (list, tuple)), key, f"must be a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        args = typing.get_args(tp)
        _check(isinstance(value, (list, tuple)) and len(value) == len(args), key,
               f"must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        _check(isinstance(value, dict), key, f"must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key)
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true/false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key,
               f"must be a number, got {value!r}")
        # every float parameter (weights, rates, temperatures...) must be finite: .inf or .nan would pass
        # range checks by accident or not at all and turn into infinite losses hours later
        _check(math.isfinite(value), key, f"must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise ParamsError(f"{key}: unsupported annotation {tp!r}")  # pragma: no cover


# keys that moved or went away: a parameter file still using one is told where it went (an unknown key, named)
MOVED_KEYS: dict[str, str] = {
    "tokenizer.use_prior": "prior.enabled",
    **{f"tokenizer.prior_{k}": f"prior.{k}" for k in ("depth", "width", "heads", "dropout", "max_len",
                                                      "attn_dropout_in_eval", "xavier_init")},
    "train_tokenizer.prior_lr_mult": "prior.lr_mult",
    "train_tokenizer.honor_prior_lr_mult": "prior.honor_lr_mult",
}
REMOVED_KEYS: dict[str, str] = {
    f"{g}.{k}": "unused (the generator has no prior; the tokenizer's is prior.lr_mult / prior.honor_lr_mult)"
    for g in ("train_ar", "train_ar_fp") for k in ("prior_lr_mult", "honor_prior_lr_mult")
}


def _old_key(key: str) -> str | None:
    """Where a key of an older layout went, or None for a key that never existed."""
    if key in MOVED_KEYS:
        return f"{key}: moved to {MOVED_KEYS[key]}"
    if key in REMOVED_KEYS:
        return f"{key}: removed, {REMOVED_KEYS[key]}"
    return None


def _build(cls: type, values: dict[str, Any], prefix: str, base: Any = None) -> Any:
    """Build ``cls`` from ``values`` on top of ``base`` (an instance), or from ``values`` alone (complete)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        old = [m for k in unknown if (m := _old_key(f"{where}{k}"))]
        if old:  # every old key of the group at once: a params.yaml is migrated in one go
            raise ParamsError("; ".join(old))
        raise ParamsError(f"{where}{unknown[0]}: unknown key (known: {', '.join(sorted(names))})")
    if base is None:  # a complete group (a preset file): no key may be missing
        missing = [n for n in sorted(names) if n not in values]
        if missing:
            where = f"{prefix}." if prefix else ""
            raise ParamsError(f"{where}{missing[0]}: missing key (a preset lists every key of every group)")
        return cls(**{k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in values.items()})
    obj = copy.deepcopy(base)
    for k, v in values.items():
        key = f"{prefix}.{k}" if prefix else k
        tp = hints[k]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            setattr(obj, k, _build(tp, v, key, getattr(obj, k)))
        else:
            setattr(obj, k, _coerce(v, tp, key))
    return obj


def apply_overrides(params: Params, overrides: dict[str, Any]) -> Params:
    """Return ``params`` with the nested ``overrides`` applied and validated."""
    out = _build(Params, overrides, "", params)
    out.validate()
    return out


def preset_section(section: str, names: dict[str, str], name: str, **overrides: Any) -> Any:
    """One model's config group (``section``: tokenizer, discriminator, generator) of the preset that the
    model preset ``name`` stands for (``names``: model preset -> preset), with field overrides checked as
    params.yaml overrides are (unknown keys and wrong types raise ParamsError, a ValueError), validated."""
    if name not in names:
        raise ValueError(f"{section} preset: unknown name {name!r}; choose one of {sorted(names)}")
    base = getattr(preset(names[name]), section)
    cfg = _build(type(base), overrides, section, base)
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------------------------------
# params.yaml


@dataclass
class ParamsFile:
    """params.yaml: the dataset `dvc repro` builds, the datasets it acquires for that, the preset of each
    dataset, and the overrides."""

    dataset: str
    presets: dict[str, str]
    overrides: dict[str, Any]
    path: Path
    datasets: tuple[str, ...] = ()  # what dvc.yaml downloads and extracts: `dataset` + its tokenizer's data
    preset: str = ""  # the preset of `dataset` and of every one of `datasets` (dvc.yaml tracks its file)

    def resolve(self, dataset: str | None = None) -> Params:
        name = dataset or self.dataset
        if name not in self.presets:
            raise ParamsError(f"presets.{name}: no preset chosen for dataset {name!r} in {self.path}")
        return apply_overrides(preset(self.presets[name]), self.overrides)


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key repeated in one mapping (PyYAML silently keeps the last value)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise ParamsError(f"{self.name}: duplicate key {key!r} on line {seen[key]} and line {line}")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _load_yaml(path: Path) -> Any:
    """The YAML document of ``path``; one-line errors naming the file (and line and column)."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        what = " ".join(x for x in (e.context, e.problem) if x)
        raise ParamsError(f"{path}: not valid YAML at {where}: {what}") from e
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ParamsError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from e


def read_params_file(path: str | Path) -> ParamsFile:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found")
    raw = _load_yaml(path)
    # an empty file is a mistake (a lost or truncated file), not "use the preset defaults"; an intentionally
    # empty override group is written `{}`
    _check(raw is not None, str(path), "empty parameter file (no YAML document); write `{}` for no overrides")
    _check(isinstance(raw, dict), str(path), "must be a mapping of parameter groups")
    raw = dict(raw)
    dataset = raw.pop("dataset", "embedded")
    _check(dataset in DATASETS, "dataset", f"must be one of {list(DATASETS)}, got {dataset!r}")
    presets = raw.pop("presets", {"embedded": "tiny", "ucf101": "paper", "k600": "paper"})
    _check(isinstance(presets, dict), "presets", "must map dataset names to preset names")
    for ds, pr in presets.items():
        _check(ds in DATASETS, f"presets.{ds}", f"unknown dataset; known: {list(DATASETS)}")
        _check(pr in PRESET_NAMES, f"presets.{ds}", f"unknown preset {pr!r}; choose one of {sorted(PRESET_NAMES)}")
    datasets = raw.pop("datasets", None)
    built_preset = raw.pop("preset", None)
    groups = {f.name for f in dataclasses.fields(Params)}
    for g, v in raw.items():
        _check(g in groups, g, "unknown parameter group (known: dataset, datasets, preset, presets, "
               f"{', '.join(sorted(groups))})")
        _check(isinstance(v, dict) or v is None, g, "must be a mapping")
    overrides = {g: (v or {}) for g, v in raw.items()}
    pf = ParamsFile(dataset=dataset, presets=presets, overrides=overrides, path=path)
    resolved = {ds: pf.resolve(ds) for ds in presets}  # validate against every preset now, before any work
    for ds, params in resolved.items():
        for other in tokenizer_datasets(params, ds):
            _check(other in presets, f"presets.{other}",
                   f"no preset chosen for {other!r}, which trains the tokenizer of {ds!r} (data.tokenizer_datasets)")
            o = resolved[other].data
            _check((o.size, o.frames) == (params.data.size, params.data.frames), "data.tokenizer_datasets",
                   f"{ds!r} ({params.data.size}px, {params.data.frames} frames) trains its tokenizer on {other!r}, "
                   f"extracted at {o.size}px, {o.frames} frames: the presets must agree")
    # dvc.yaml cannot compute the tokenizer's data mix, so it iterates this explicit list; it must be exact
    built = resolved[dataset] if dataset in resolved else pf.resolve(dataset)  # (raises: no preset)
    needed = list(dict.fromkeys([*tokenizer_datasets(built, dataset), dataset]))
    if datasets is None:
        datasets = needed
    _check(isinstance(datasets, list) and sorted(map(str, datasets)) == sorted(needed), "datasets",
           f"must list the datasets `dvc repro` downloads and extracts for dataset={dataset!r}: the dataset and its "
           f"tokenizer's training data (data.tokenizer_datasets), i.e. {needed}; got {datasets!r}")
    pf.datasets = tuple(datasets)
    # nor can it look up presets.<dataset>: it tracks the preset file named here, the one of every dataset it builds
    if built_preset is None:
        built_preset = presets[dataset]
    _check(built_preset == presets[dataset], "preset",
           f"must be the preset of dataset={dataset!r} (presets.{dataset}: {presets[dataset]}), got {built_preset!r}")
    other = sorted(ds for ds in pf.datasets if presets[ds] != built_preset)
    _check(not other, "preset", f"every dataset `dvc repro` builds must use the preset {built_preset!r} "
           f"(dvc.yaml tracks one preset file); {other} use another in presets")
    pf.preset = built_preset
    return pf


def load_params(path: str | Path = "params.yaml", dataset: str | None = None) -> Params:
    """Validated, typed parameters for ``dataset`` (default: the file's ``dataset``).

    Raises :class:`ParamsError` (a ``ValueError``) on unknown keys, wrong types or out-of-range values.
    """
    return read_params_file(path).resolve(dataset)
