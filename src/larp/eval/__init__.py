"""Evaluation: I3D detectors, FVD statistics, clip-selection protocols, reconstruction metrics."""

from larp.eval.fvd import FeatureStats, bootstrap_fvd, compute_features, frechet_distance
from larp.eval.i3d import Detector, load_detector
from larp.eval.metrics import psnr_per_video, ssim_per_video
from larp.eval.protocols import clips_hash, gfvd_real_clips, rfvd_clips

__all__ = [
    "Detector",
    "FeatureStats",
    "bootstrap_fvd",
    "clips_hash",
    "compute_features",
    "frechet_distance",
    "gfvd_real_clips",
    "load_detector",
    "psnr_per_video",
    "rfvd_clips",
    "ssim_per_video",
]
