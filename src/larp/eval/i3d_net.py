"""The I3D network (Inception-v1 inflated to 3-D) in PyTorch, with TF 'SAME' padding, and its input resize.

Detectors built on it (which weights, how they are called) are :mod:`larp.eval.i3d`; the Kinetics-400
weights conversion is :mod:`larp.eval.i3d_kinetics400`.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

MIN_FRAMES = 9  # three stride-2 temporal reductions then a 2-frame average pool need t >= 9
RESOLUTION = 224
NUM_CLASSES = 400

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
