"""The embedded dataset: a small class-labelled video set generated from a seed, with no network.

Each class is one shape or texture moving in its own way (a bouncing ball, a spinning square, scrolling
stripes, ...), so a class can be told apart by appearance and by motion. Videos are written as real
MPEG-4 Part 2 ``.avi`` files (the codec and container of UCF-101) in exactly the UCF-101 layout::

    <out>/UCF-101/<Class>/v_<Class>_gGG_cCC.avi
    <out>/ucfTrainTestlist/classInd.txt                 "1 BlinkingChecker" ... (1-based, sorted)
    <out>/ucfTrainTestlist/trainlist0{1,2,3}.txt        "BlinkingChecker/v_BlinkingChecker_g02_c01.avi 1"
    <out>/ucfTrainTestlist/testlist0{1,2,3}.txt         "BlinkingChecker/v_BlinkingChecker_g01_c01.avi"

so the UCF-101 indexing and extraction code runs on it unchanged. Like UCF-101, the clips of one group
share a scene (background, colour, size) and the splits are made of whole groups: split 1 tests on the
lowest groups, splits 2 and 3 on the next blocks of groups. The same seed gives byte-identical files
(single-threaded encoder, fixed quantiser, bit-exact muxing).

Frames are rendered in float RGB (h w c) from signed distance functions with a one-pixel soft edge. The
objects are large (a fifth to a half of the short side) and the backgrounds smooth (a flat colour with a gentle
linear gradient), so that the moving objects stay several pixels wide in the 32x32 clips of the `tiny` preset
and make up most of what a reconstruction must get right beyond the clip's mean colour.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from larp.config import EmbeddedParams
from larp.files import atomic_path, atomic_write_text

# --------------------------------------------------------------------------------------------------
# drawing helpers: coordinates are in units of the short image side, origin top-left

Grid = tuple[np.ndarray, np.ndarray]  # (x, y), each (h, w)


def coverage(sdf: np.ndarray, px: float) -> np.ndarray:
    """Signed distance (negative inside, short-side units) -> soft coverage in [0, 1], 1 px edge."""
    return np.clip(0.5 - sdf / px, 0.0, 1.0)


def sd_circle(g: Grid, cx: float, cy: float, r: float) -> np.ndarray:
    return np.hypot(g[0] - cx, g[1] - cy) - r


def sd_box(g: Grid, cx: float, cy: float, hw: float, hh: float, angle: float = 0.0) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = g[0] - cx, g[1] - cy
    u, v = c * dx + s * dy, -s * dx + c * dy
    return np.maximum(np.abs(u) - hw, np.abs(v) - hh)


def sd_triangle(g: Grid, cx: float, cy: float, r: float) -> np.ndarray:
    """Equilateral triangle pointing up, circumradius r (max of three edge half-planes)."""
    dx, dy = g[0] - cx, g[1] - cy
    edges = (dy, 0.866 * dx - 0.5 * dy, -0.866 * dx - 0.5 * dy)  # outward normals . p
    return np.maximum(edges[0], np.maximum(edges[1], edges[2])) - r / 2


def rotate_uv(g: Grid, cx: float, cy: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = g[0] - cx, g[1] - cy
    return c * dx + s * dy, -s * dx + c * dy


def triangle_wave(x: float) -> float:
    """Period 1, range [0, 1]: 0 -> 1 -> 0 (ping-pong motion)."""
    x = x % 1.0
    return 2 * x if x < 0.5 else 2 - 2 * x


# --------------------------------------------------------------------------------------------------
# classes: each renderer returns (alpha (h, w), colour (h, w, 3) or (3,)) for time t (seconds)


@dataclass(frozen=True)
class Scene:
    """What a group's clips share, plus what varies per clip (phase, speed, start)."""

    aspect: float  # width in short-side units: x in [0, aspect], y in [0, 1] (portrait: top square only)
    px: float  # one pixel in short-side units
    colour: np.ndarray  # (3,) foreground colour
    colour2: np.ndarray  # (3,) second tone for two-tone shapes and textures
    size: float  # shape scale multiplier, ~1
    speed: float  # motion speed multiplier, ~1 (signed where direction matters)
    phase: float  # motion phase in [0, 1)
    x0: float  # start / anchor position in [0.3, 0.7] of the width
    y0: float  # start / anchor position in [0.3, 0.7] of the height


Renderer = Callable[[Grid, float, Scene], tuple[np.ndarray, np.ndarray]]


def bouncing_ball(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    r = 0.2 * s.size
    x = r + (s.aspect - 2 * r) * triangle_wave(s.phase + 0.25 * abs(s.speed) * t)
    y = 1 - r - 0.6 * abs(math.sin(math.pi * (s.phase + 1.6 * abs(s.speed) * t)))
    return coverage(sd_circle(g, x, y, r), s.px), s.colour


def spinning_square(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    cx, cy, a = s.x0 * s.aspect, s.y0, 2 * math.pi * (s.phase + 0.5 * s.speed * t)
    u, _ = rotate_uv(g, cx, cy, a)
    half = 0.25 * s.size
    alpha = coverage(sd_box(g, cx, cy, half, half, a), s.px)
    colour = np.where((u > 0)[..., None], s.colour, s.colour2)  # two-tone, so the rotation is visible
    return alpha, colour


def sliding_triangle(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    r = 0.3 * s.size
    span = s.aspect + 2 * r
    x = -r + (s.phase * span + 0.5 * s.speed * t * span) % span  # wraps around horizontally
    return coverage(sd_triangle(g, x, s.y0, r), s.px), s.colour


def pulsing_ring(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    r = 0.24 * s.size * (1 + 0.35 * math.sin(2 * math.pi * (s.phase + 1.2 * abs(s.speed) * t)))
    d = np.abs(sd_circle(g, s.x0 * s.aspect, s.y0, r)) - 0.08
    return coverage(d, s.px), s.colour


def orbiting_dot(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    a = 2 * math.pi * (s.phase + 0.7 * s.speed * t)
    x, y = s.aspect / 2 + 0.25 * math.cos(a), 0.5 + 0.25 * math.sin(a)
    return coverage(sd_circle(g, x, y, 0.15 * s.size), s.px), s.colour


def scrolling_stripes(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    period = 0.4 * s.size
    w = (g[0] + g[1]) / math.sqrt(2) - (s.phase + 0.6 * s.speed * t) * period * 4
    d = (np.abs((w / period) % 1.0 - 0.5) - 0.25) * period  # stripes half a period wide
    return coverage(d, s.px), s.colour


def blinking_checker(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    cx, cy, half = s.x0 * s.aspect, s.y0, 0.3 * s.size
    cell = half
    on = math.floor(s.phase * 4 + 4 * abs(s.speed) * t) % 2  # inverts 4x a second
    checker = ((np.floor((g[0] - cx) / cell) + np.floor((g[1] - cy) / cell)) % 2 == on)[..., None]
    alpha = coverage(sd_box(g, cx, cy, half, half), s.px)
    return alpha, np.where(checker, s.colour, s.colour2)


def zigzag_cross(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    arm, thick = 0.22 * s.size, 0.08 * s.size
    x = arm + (s.aspect - 2 * arm) * triangle_wave(s.phase + 0.3 * abs(s.speed) * t)
    y = arm + (1 - 2 * arm) * triangle_wave(0.5 * s.phase + 1.1 * abs(s.speed) * t)
    d = np.minimum(sd_box(g, x, y, arm, thick), sd_box(g, x, y, thick, arm))
    return coverage(d, s.px), s.colour


def shaking_diamond(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    x = s.x0 * s.aspect + 0.12 * math.sin(2 * math.pi * (s.phase + 3.0 * abs(s.speed) * t))
    return coverage(sd_box(g, x, s.y0, 0.15 * s.size, 0.15 * s.size, math.pi / 4), s.px), s.colour


def falling_bar(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    y = -0.1 + ((s.phase + 0.6 * abs(s.speed) * t) % 1.0) * 1.2
    return coverage(sd_box(g, s.aspect / 2, y, s.aspect, 0.06 * s.size), s.px), s.colour


def swinging_pendulum(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    a = 0.7 * math.sin(2 * math.pi * (s.phase + 0.6 * abs(s.speed) * t))
    px_, py_, length = s.aspect / 2, 0.05, 0.65
    bx, by = px_ + length * math.sin(a), py_ + length * math.cos(a)
    u, v = rotate_uv(g, (px_ + bx) / 2, (py_ + by) / 2, -a)
    rod = np.maximum(np.abs(u) - 0.015, np.abs(v) - length / 2)
    d = np.minimum(rod, sd_circle(g, bx, by, 0.1 * s.size))
    return coverage(d, s.px), s.colour


def expanding_waves(g: Grid, t: float, s: Scene) -> tuple[np.ndarray, np.ndarray]:
    period = 0.2 * s.size
    r = np.hypot(g[0] - s.x0 * s.aspect, g[1] - s.y0) - (s.phase + 0.8 * abs(s.speed) * t) * period * 3
    d = (np.abs((r / period) % 1.0 - 0.5) - 0.2) * period
    return coverage(d, s.px), s.colour


# definition order decides which classes a smaller num_classes keeps; classInd.txt lists them sorted
CLASSES: dict[str, Renderer] = {
    "BouncingBall": bouncing_ball,
    "SpinningSquare": spinning_square,
    "SlidingTriangle": sliding_triangle,
    "PulsingRing": pulsing_ring,
    "OrbitingDot": orbiting_dot,
    "ScrollingStripes": scrolling_stripes,
    "BlinkingChecker": blinking_checker,
    "ZigzagCross": zigzag_cross,
    "ShakingDiamond": shaking_diamond,
    "FallingBar": falling_bar,
    "SwingingPendulum": swinging_pendulum,
    "ExpandingWaves": expanding_waves,
}


def class_names(num_classes: int) -> list[str]:
    """The classes of a dataset with ``num_classes`` classes, in classInd order (sorted, like UCF-101)."""
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f"num_classes must be in [1, {len(CLASSES)}], got {num_classes}")
    return sorted(list(CLASSES)[:num_classes])


# --------------------------------------------------------------------------------------------------
# scenes, rendering, encoding


def hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    k = (np.array([5.0, 3.0, 1.0]) + h * 6) % 6
    return v - v * s * np.clip(np.minimum(k, 4 - k), 0, 1)


def make_scene(params: EmbeddedParams, class_id: int, group: int, clip: int) -> tuple[Scene, np.ndarray]:
    """Scene of one clip + its static background (h, w, 3). Group-level draws are shared by its clips."""
    h, w = params.height, params.width
    grng = np.random.default_rng([params.seed, class_id, group])
    crng = np.random.default_rng([params.seed, class_id, group, clip])
    hue = class_id / len(CLASSES) + grng.uniform(-0.02, 0.02)  # colour is part of a class's look
    colour = hsv_to_rgb(hue % 1.0, grng.uniform(0.7, 1.0), grng.uniform(0.8, 1.0))
    colour2 = hsv_to_rgb((hue + 0.5) % 1.0, grng.uniform(0.3, 0.6), grng.uniform(0.5, 0.8))
    # background: a dark base colour + a gentle linear gradient (a "room" shared by the group)
    yy, xx = np.mgrid[0:h, 0:w] / min(h, w)
    bg = np.broadcast_to(grng.uniform(0.05, 0.3, size=3), (h, w, 3)).copy()
    direction = grng.uniform(0, 2 * np.pi)
    bg += grng.uniform(-0.1, 0.1, size=3) * (np.cos(direction) * xx + np.sin(direction) * yy)[..., None]
    scene = Scene(
        aspect=w / min(h, w) if w >= h else 1.0,
        px=1.0 / min(h, w),
        colour=colour,
        colour2=colour2,
        size=float(grng.uniform(0.85, 1.15)),
        speed=float(crng.uniform(0.8, 1.25) * crng.choice([-1.0, 1.0])),
        phase=float(crng.uniform(0, 1)),
        x0=float(crng.uniform(0.35, 0.65)),
        y0=float(crng.uniform(0.35, 0.65)),
    )
    return scene, np.clip(bg, 0, 1)


def render(params: EmbeddedParams, name: str, group: int, clip: int) -> np.ndarray:
    """One clip as uint8 (t, h, w, c); length drawn from [min_frames, max_frames]."""
    class_id = list(CLASSES).index(name)
    scene, bg = make_scene(params, class_id, group, clip)
    lrng = np.random.default_rng([params.seed, class_id, group, clip, 1])
    t_len = int(lrng.integers(params.min_frames, params.max_frames + 1))
    yy, xx = np.mgrid[0 : params.height, 0 : params.width] / min(params.height, params.width)
    grid: Grid = (xx + 0.5 * scene.px, yy + 0.5 * scene.px)  # pixel centres
    frames = np.empty((t_len, params.height, params.width, 3), np.uint8)
    for i in range(t_len):
        alpha, colour = CLASSES[name](grid, i / params.fps, scene)
        img = bg * (1 - alpha[..., None]) + colour * alpha[..., None]
        frames[i] = np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)
    return frames


def write_video(path: Path, frames: np.ndarray, fps: int, qscale: int = 3) -> None:
    """MPEG-4 Part 2 in AVI (the UCF-101 codec), deterministic: 1 thread, fixed quantiser, bit-exact."""
    _, h, w, _ = frames.shape
    with (
        atomic_path(path) as tmp,
        av.open(str(tmp), "w", format="avi", options={"fflags": "+bitexact"}) as out,
    ):
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        cc = stream.codec_context
        cc.thread_count = 1
        cc.flags |= av.codec.context.Flags.qscale | av.codec.context.Flags.bitexact
        cc.qscale = qscale
        for img in frames:
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())


# --------------------------------------------------------------------------------------------------
# layout


def groups_layout(train_per_class: int, test_per_class: int) -> tuple[int, int, list[list[int]]]:
    """(clips per group, number of groups, test groups of splits 1..3), groups 1-based.

    Clips come in pairs (like UCF-101's several clips per group) when both counts are even, else one
    per group. Split 1 tests on the lowest groups; splits 2 and 3 on the next blocks (wrapping around).
    """
    per_group = 2 if train_per_class % 2 == 0 and test_per_class % 2 == 0 else 1
    n_groups = (train_per_class + test_per_class) // per_group
    n_test = test_per_class // per_group
    tests = [sorted(((k * n_test + j) % n_groups) + 1 for j in range(n_test)) for k in range(3)]
    return per_group, n_groups, tests


def generate_embedded(out_dir: Path, params: EmbeddedParams) -> None:
    """Write the embedded dataset (videos + split lists, UCF-101 layout) under ``out_dir``."""
    params.validate()
    out_dir = Path(out_dir)
    names = class_names(params.num_classes)
    per_group, n_groups, test_groups = groups_layout(params.train_per_class, params.test_per_class)
    trains: list[list[str]] = [[], [], []]
    tests: list[list[str]] = [[], [], []]
    jobs = [(n, g, c) for n in names for g in range(1, n_groups + 1) for c in range(1, per_group + 1)]
    for name, g, c in tqdm(jobs, desc="embedded videos", unit="video"):
        rel = f"{name}/v_{name}_g{g:02d}_c{c:02d}.avi"
        write_video(out_dir / "UCF-101" / rel, render(params, name, g, c), params.fps)
        label = names.index(name) + 1
        for k in range(3):
            if g in test_groups[k]:
                tests[k].append(rel)
            else:
                trains[k].append(f"{rel} {label}")
    lists = out_dir / "ucfTrainTestlist"
    atomic_write_text(lists / "classInd.txt", "".join(f"{i} {n}\n" for i, n in enumerate(names, 1)))
    for k in range(3):
        atomic_write_text(lists / f"trainlist0{k + 1}.txt", "".join(f"{line}\n" for line in trains[k]))
        atomic_write_text(lists / f"testlist0{k + 1}.txt", "".join(f"{line}\n" for line in tests[k]))
