"""Public FVD API: feature statistics, Fréchet distance, bootstrap CI (implementation in larp.eval.fvd)."""

from __future__ import annotations

from larp.eval.fvd import (
    FeatureStats,
    FrechetTerms,
    bootstrap_fvd,
    compute_features,
    frechet_distance,
    frechet_distance_from_features,
    frechet_terms,
    fvd_report,
    load_features,
    save_features,
)

__all__ = [
    "FeatureStats",
    "FrechetTerms",
    "bootstrap_fvd",
    "compute_features",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_terms",
    "fvd_report",
    "load_features",
    "save_features",
]
