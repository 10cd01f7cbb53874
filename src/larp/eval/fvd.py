"""FVD statistics and the Fréchet distance, in float64.

* ``FeatureStats``: streaming sums Σx, Σxxᵀ and N of detector features (float64), mergeable with ``+``, so
  sharded jobs give exactly the statistics of one pass. Covariance is the population one (/N), as LARP and
  StyleGAN-V use (TF-GAN divides by N-1; the difference is O(1/N)).
* ``frechet_distance``: ‖μ1-μ2‖² + tr Σ1 + tr Σ2 - 2 tr √(Σ1Σ2), with tr √(Σ1Σ2) = Σ √λ_i(Lᵀ Σ2 L) for any
  factor Σ1 = L Lᵀ (Lᵀ Σ2 L is similar to Σ1Σ2 and symmetric PSD, so a symmetric eigen-solver is valid on
  it; never on the non-symmetric product). L is the Cholesky factor of Σ1, or V Λ^½ from ``eigh(Σ1)`` when
  Σ1 is singular.
* ``frechet_distance_from_features``: the same number from raw features; when a set has fewer samples than
  dimensions it uses the exact low-rank identity tr √(Σ1Σ2) = ‖X̃ Ỹᵀ‖_* / √(nm) (X̃, Ỹ centred).
* ``bootstrap_fvd``: percentile confidence interval by resampling both feature sets.
* ``compute_features``: run a detector over an iterable of videos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from larp.files import atomic_path

STATS_FORMAT = 1  # bump when the .npz layout changes


def _as_f64_2d(features: np.ndarray | torch.Tensor, name: str = "features") -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a (n, d) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf")
    return x


class FeatureStats:
    """Running float64 moments of (n, d) feature batches.

    Raw sums lose relative precision ~ε·|μ|²/σ² in the covariance; for I3D logits (|μ|/σ of order 1-10) that
    is ~1e-14, far below the sampling noise, and it keeps merging exact (sums add).

    >>> s = FeatureStats(); s.update(np.ones((3, 4))); s.n, s.mean.shape, s.cov.shape
    (3, (4,), (4, 4))
    """

    def __init__(self, dim: int | None = None) -> None:
        self.dim = dim
        self.n = 0
        self.sum = None if dim is None else np.zeros(dim, np.float64)
        self.sum_outer = None if dim is None else np.zeros((dim, dim), np.float64)

    def update(self, features: np.ndarray | torch.Tensor) -> FeatureStats:
        x = _as_f64_2d(features)
        if self.dim is None:  # first batch fixes the dimension
            self.dim = x.shape[1]
            self.sum, self.sum_outer = np.zeros(self.dim), np.zeros((self.dim, self.dim))
        if x.shape[1] != self.dim:
            raise ValueError(f"features have dimension {x.shape[1]}, these stats have {self.dim}")
        self.n += x.shape[0]
        self.sum += x.sum(axis=0)
        self.sum_outer += x.T @ x
        return self

    def __add__(self, other: FeatureStats) -> FeatureStats:
        if not isinstance(other, FeatureStats):
            return NotImplemented
        if self.dim is None or other.dim is None:  # an empty side contributes nothing
            src = other if self.dim is None else self
            out = FeatureStats(src.dim)
            if src.dim is not None:
                out.n, out.sum, out.sum_outer = src.n, src.sum.copy(), src.sum_outer.copy()
            return out
        if self.dim != other.dim:
            raise ValueError(f"cannot merge stats of dimension {self.dim} and {other.dim}")
        out = FeatureStats(self.dim)
        out.n = self.n + other.n
        out.sum = self.sum + other.sum
        out.sum_outer = self.sum_outer + other.sum_outer
        return out

    def __radd__(self, other: object) -> FeatureStats:  # lets sum(list_of_stats) start from 0
        if isinstance(other, int) and other == 0:
            return self + FeatureStats()
        return NotImplemented

    def _require(self, k: int = 1) -> None:
        if self.n < k:
            raise ValueError(f"FeatureStats holds {self.n} samples, need at least {k}")

    @property
    def mean(self) -> np.ndarray:
        self._require()
        return self.sum / self.n

    @property
    def cov(self) -> np.ndarray:
        """Population covariance Σxxᵀ/N - μμᵀ, symmetrised against rounding."""
        self._require()
        mu = self.mean
        c = self.sum_outer / self.n - np.outer(mu, mu)
        return (c + c.T) / 2

    def save(self, path: str | Path) -> None:
        """Write an .npz atomically (keys: format, n, sum, sum_outer)."""
        self._require()
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, format=STATS_FORMAT, n=self.n, sum=self.sum, sum_outer=self.sum_outer)

    @staticmethod
    def load(path: str | Path) -> FeatureStats:
        with np.load(path) as z:
            missing = {"format", "n", "sum", "sum_outer"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: not a FeatureStats file (missing {sorted(missing)})")
            if int(z["format"]) != STATS_FORMAT:
                raise ValueError(f"{path}: stats format {int(z['format'])}, this code reads {STATS_FORMAT}")
            s = FeatureStats(int(z["sum"].shape[0]))
            s.n, s.sum, s.sum_outer = (
                int(z["n"]),
                z["sum"].astype(np.float64),
                z["sum_outer"].astype(np.float64),
            )
        return s

    @staticmethod
    def from_features(features: np.ndarray | torch.Tensor) -> FeatureStats:
        return FeatureStats().update(features)

    def __repr__(self) -> str:
        return f"FeatureStats(dim={self.dim}, n={self.n})"


def save_features(path: str | Path, features: np.ndarray) -> None:
    """Raw per-shard features as float32 .npy (exact for detector outputs), kept for the bootstrap."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise ValueError(f"features for {path}: expected (n, d), got shape {x.shape}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, x.astype(np.float32))


def load_features(paths: str | Path | Iterable[str | Path]) -> np.ndarray:
    """Concatenate one or more .npy feature shards (in the given order) into one (n, d) float32 array."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    if not paths:
        raise ValueError("load_features: no feature files given")
    parts = [np.load(p) for p in paths]
    for p, a in zip(paths, parts):
        if a.ndim != 2 or a.shape[1] != parts[0].shape[1]:
            raise ValueError(f"{p}: shape {a.shape} does not match {parts[0].shape[1]}-d features")
    return np.concatenate(parts).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------- Fréchet


class FrechetTerms(NamedTuple):
    mean_term: float  # ‖μ1 - μ2‖²
    trace1: float  # tr Σ1
    trace2: float  # tr Σ2
    trace_sqrt: float  # tr √(Σ1 Σ2)

    @property
    def distance(self) -> float:
        return self.mean_term + self.trace1 + self.trace2 - 2.0 * self.trace_sqrt


def _sum_sqrt_eigs(eigs: np.ndarray, scale: float) -> float:
    """Σ √λ over the PSD spectrum, dropping values below the solver's resolution (rounding noise,
    which would otherwise add ~√ε·scale per null direction)."""
    tol = eigs.size * np.finfo(np.float64).eps * max(scale, 0.0)
    return float(np.sqrt(np.where(eigs > tol, eigs, 0.0)).sum())


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """L with Σ = L Lᵀ: Cholesky when Σ is numerically positive definite (≈5× cheaper than an eigen-
    decomposition), else V Λ^½ from ``eigh`` with eigenvalues below resolution set to 0 (rank-deficient Σ)."""
    try:
        return np.linalg.cholesky(sigma)
    except np.linalg.LinAlgError:
        lam, v = np.linalg.eigh(sigma)
        lam = np.where(lam > lam.size * np.finfo(np.float64).eps * max(float(lam.max()), 0.0), lam, 0.0)
        return v * np.sqrt(lam)


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr √(Σ1 Σ2) for symmetric PSD Σ1, Σ2 (float64).

    With Σ1 = L Lᵀ, Lᵀ Σ2 L is similar to Σ1 Σ2 and symmetric PSD, so its eigenvalues come from the
    symmetric solver ``eigvalsh``; negative rounding noise is clipped.
    """
    factor = _psd_factor(sigma1)
    m = factor.T @ sigma2 @ factor
    m = (m + m.T) / 2
    eigs = np.linalg.eigvalsh(m)
    return _sum_sqrt_eigs(eigs, float(np.abs(eigs).max(initial=0.0)))


def _check_moments(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(
            f"{name}: mean of shape {mu.shape} and covariance of shape {sigma.shape} do not match"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mean or covariance contains NaN or inf")
    scale = float(np.abs(sigma).max(initial=0.0))
    if float(np.abs(sigma - sigma.T).max(initial=0.0)) > 1e-10 * scale:
        raise ValueError(f"{name}: covariance is not symmetric")
    return mu, (sigma + sigma.T) / 2


def frechet_terms(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> FrechetTerms:
    mu1, sigma1 = _check_moments(mu1, sigma1, "set 1")
    mu2, sigma2 = _check_moments(mu2, sigma2, "set 2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature dimensions differ: {mu1.shape[0]} vs {mu2.shape[0]}")
    diff = mu1 - mu2
    return FrechetTerms(
        float(diff @ diff),
        float(np.trace(sigma1)),
        float(np.trace(sigma2)),
        trace_sqrt_product(sigma1, sigma2),
    )


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(μ1, Σ1) and N(μ2, Σ2), float64 throughout."""
    return frechet_terms(mu1, sigma1, mu2, sigma2).distance


def frechet_distance_stats(a: FeatureStats, b: FeatureStats) -> float:
    return frechet_distance(a.mean, a.cov, b.mean, b.cov)


def _centred(x: np.ndarray) -> np.ndarray:
    return x - x.mean(axis=0, keepdims=True)


def frechet_terms_from_features(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> FrechetTerms:
    """Fréchet terms of two feature sets (population covariances). Exact low-rank path when n or m < d."""
    x, y = _as_f64_2d(x, "set 1"), _as_f64_2d(y, "set 2")
    (n, d), (m, d2) = x.shape, y.shape
    if d != d2:
        raise ValueError(f"feature dimensions differ: {d} vs {d2}")
    if min(n, m) >= d:
        return frechet_terms(
            x.mean(0), np.cov(x, rowvar=False, bias=True), y.mean(0), np.cov(y, rowvar=False, bias=True)
        )
    xc, yc = _centred(x), _centred(y)
    diff = x.mean(0) - y.mean(0)
    # Σ1 = X̃ᵀX̃/n, Σ2 = ỸᵀỸ/m: the non-zero λ(Σ1Σ2) are σ²(X̃Ỹᵀ)/(nm), so tr √ = ‖X̃Ỹᵀ‖_* / √(nm).
    sv = np.linalg.svd(xc @ yc.T, compute_uv=False)
    tr_sqrt = _sum_sqrt_eigs(sv**2, float(sv.max(initial=0.0)) ** 2) / float(np.sqrt(n * m))
    return FrechetTerms(float(diff @ diff), float((xc * xc).sum() / n), float((yc * yc).sum() / m), tr_sqrt)


def frechet_distance_from_features(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    return frechet_terms_from_features(x, y).distance


# ---------------------------------------------------------------------------------------------- bootstrap


def _weighted_moments(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population covariance of x with integer multiplicities w (a bootstrap resample)."""
    n = w.sum()
    mu = (w @ x) / n
    xc = x - mu
    cov = (xc * w[:, None]).T @ xc / n
    return mu, (cov + cov.T) / 2


def bootstrap_fvd(
    feats_a: np.ndarray | torch.Tensor,
    feats_b: np.ndarray | torch.Tensor,
    B: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Bootstrap distribution of the Fréchet distance between two feature sets.

    Each of the B replicates resamples set A (n rows) and set B (m rows) independently, with replacement,
    at their original sizes, and recomputes the distance. Returns ``fvd`` (point estimate on the full sets),
    ``mean``, ``std`` (replicate standard deviation), ``ci_low``/``ci_high`` (2.5/97.5 percentiles), ``B``,
    ``seed`` and ``resampled`` (a sentence saying what was resampled). The bootstrap mean sits above the point
    estimate (the Fréchet distance is biased upwards at finite N); use the CI width, not the mean.
    """
    a, b = _as_f64_2d(feats_a, "feats_a"), _as_f64_2d(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")
    if B < 2:
        raise ValueError(f"bootstrap B must be >= 2, got {B}")
    point = frechet_distance(
        a.mean(0), np.cov(a, rowvar=False, bias=True), b.mean(0), np.cov(b, rowvar=False, bias=True)
    )
    rng = np.random.default_rng(seed)
    reps = np.empty(B, np.float64)
    for i in tqdm(range(B), desc="bootstrap FVD", disable=not progress):
        wa = np.bincount(rng.integers(0, len(a), len(a)), minlength=len(a)).astype(np.float64)
        wb = np.bincount(rng.integers(0, len(b), len(b)), minlength=len(b)).astype(np.float64)
        reps[i] = frechet_distance(*_weighted_moments(a, wa), *_weighted_moments(b, wb))
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {
        "fvd": point,
        "mean": float(reps.mean()),
        "std": float(reps.std(ddof=1)),
        "ci_low": float(lo),
        "ci_high": float(hi),
        "B": B,
        "seed": seed,
        "resampled": "both feature sets independently, with replacement, at their original sizes; "
        "95% percentile interval",
    }


def fvd_report(feats_real: np.ndarray, feats_gen: np.ndarray, bootstrap: int = 100, seed: int = 0) -> dict:
    """Everything a results file needs about one FVD: the value, its terms, set sizes and (when
    ``bootstrap`` >= 2) the bootstrap CI. Merge with ``Detector.info()`` and provenance."""
    terms = frechet_terms_from_features(feats_real, feats_gen)
    out = {
        "fvd": terms.distance,
        "n_real": len(feats_real),
        "n_gen": len(feats_gen),
        "terms": terms._asdict(),
        "covariance": "population (/N)",
    }
    if bootstrap >= 2:
        out["bootstrap"] = bootstrap_fvd(feats_real, feats_gen, B=bootstrap, seed=seed)
    return out


# ---------------------------------------------------------------------------------------------- features


def _batches(videos: Iterable[torch.Tensor | np.ndarray], batch_size: int) -> Iterable[torch.Tensor]:
    """Re-batch an iterable of (B, C, T, H, W) or (C, T, H, W) videos into chunks of ``batch_size``."""
    buf: list[torch.Tensor] = []
    count = 0
    for v in videos:
        v = torch.as_tensor(v)
        if v.dtype == torch.uint8:  # before batching, so uint8 and float items can be mixed
            v = v.float() / 255.0
        if v.ndim == 4:
            v = v.unsqueeze(0)
        if v.ndim != 5:
            raise ValueError(f"videos must be (B, C, T, H, W) or (C, T, H, W), got shape {tuple(v.shape)}")
        buf.append(v)
        count += v.shape[0]
        while count >= batch_size:
            cat = torch.cat(buf)
            yield cat[:batch_size]
            rest = cat[batch_size:]
            buf, count = ([rest] if len(rest) else []), len(rest)
    if count:
        yield torch.cat(buf)


def compute_features(
    detector: Callable[[torch.Tensor], torch.Tensor],
    videos: Iterable[torch.Tensor | np.ndarray],
    batch_size: int = 32,
    progress: bool = True,
) -> np.ndarray:
    """Detector features of every video, in order: (n, d) float32.

    ``videos`` yields float (B, C, T, H, W) / (C, T, H, W) in [0, 1], or uint8 in [0, 255] (divided by 255).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[np.ndarray] = []
    for batch in tqdm(_batches(videos, batch_size), desc="I3D features", unit="batch", disable=not progress):
        out.append(torch.as_tensor(detector(batch)).detach().float().cpu().numpy())
    if not out:
        raise ValueError("compute_features: the video iterable was empty")
    return np.concatenate(out)
