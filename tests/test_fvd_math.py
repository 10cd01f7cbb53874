"""Fréchet distance vs scipy.linalg.sqrtm, FeatureStats merging/saving, bootstrap, compute_features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from larp.eval.fvd import (
    compute_features,
    frechet_distance_from_features,
    frechet_terms,
    fvd_report,
    load_features,
    save_features,
    trace_sqrt_product,
)
from larp.fvd import FeatureStats, bootstrap_fvd, frechet_distance


def scipy_fd(mu1, s1, mu2, s2) -> float:
    root = scipy.linalg.sqrtm(s1 @ s2)
    root = root[0] if isinstance(root, tuple) else root
    return float(np.real(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root)))


def gaussian_features(rng, n, d, scale=1.0, shift=0.0):
    spectrum = np.exp(-np.arange(d) / (d / 8))  # decaying spectrum, like real features
    mix = np.linalg.qr(rng.standard_normal((d, d)))[0] * np.sqrt(spectrum)
    return shift + scale * rng.standard_normal((n, d)) @ mix.T


def moments(x):
    return x.mean(0), np.cov(x, rowvar=False, bias=True)


@pytest.mark.parametrize("d", [8, 64, 400])
def test_random_matches_scipy(d):
    rng = np.random.default_rng(d)
    a, b = gaussian_features(rng, 3 * d, d), gaussian_features(rng, 3 * d, d, scale=1.3, shift=0.2)
    ours, ref = frechet_distance(*moments(a), *moments(b)), scipy_fd(*moments(a), *moments(b))
    assert ours == pytest.approx(ref, rel=1e-9)
    assert isinstance(ours, float) and ours > 0.1


def test_commuting_closed_form():
    # Σ1 = Q diag(a) Qᵀ, Σ2 = Q diag(b) Qᵀ commute: tr √(Σ1Σ2) = Σ √(a_i b_i), FD = |Δμ|² + Σ (√a_i - √b_i)².
    rng = np.random.default_rng(0)
    d = 50
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    a, b = rng.uniform(0.1, 5, d), rng.uniform(0.1, 5, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, (s1 + s1.T) / 2, mu2, (s2 + s2.T) / 2) == pytest.approx(exact, rel=1e-12)
    terms = frechet_terms(mu1, (s1 + s1.T) / 2, mu2, (s2 + s2.T) / 2)
    assert terms.trace_sqrt == pytest.approx(np.sqrt(a * b).sum(), rel=1e-12)


def test_identical_sets_give_zero():
    rng = np.random.default_rng(1)
    x = gaussian_features(rng, 500, 400)
    mu, s = moments(x)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-8 * np.trace(s)
    assert abs(frechet_distance_from_features(x, x)) < 1e-8 * np.trace(s)


def test_fewer_samples_than_dims():
    # N < d: both covariances are rank-deficient (rank N-1). The exact low-rank path, the covariance path and
    # scipy must agree; scipy's sqrtm of a singular product is only accurate to ~1e-6.
    rng = np.random.default_rng(2)
    x, y = gaussian_features(rng, 60, 200), gaussian_features(rng, 90, 200, shift=0.1)
    low_rank = frechet_distance_from_features(x, y)
    via_cov = frechet_distance(*moments(x), *moments(y))
    assert via_cov == pytest.approx(low_rank, rel=1e-9)
    assert scipy_fd(*moments(x), *moments(y)) == pytest.approx(low_rank, rel=1e-5)
    xc, yc = x - x.mean(0), y - y.mean(0)  # nuclear-norm identity, written out independently
    nuc = np.linalg.norm(xc @ yc.T, "nuc") / np.sqrt(len(x) * len(y))
    assert trace_sqrt_product(*[np.cov(z, rowvar=False, bias=True) for z in (x, y)]) == pytest.approx(
        nuc, rel=1e-9
    )


def test_rank_deficient_features():
    # features living in a 30-dim subspace of R^100, N > d
    rng = np.random.default_rng(3)
    basis = rng.standard_normal((30, 100))
    x, y = rng.standard_normal((400, 30)) @ basis, 1.1 * rng.standard_normal((500, 30)) @ basis + 0.05
    ours = frechet_distance(*moments(x), *moments(y))
    assert ours == pytest.approx(scipy_fd(*moments(x), *moments(y)), rel=1e-6)
    assert ours == pytest.approx(frechet_distance_from_features(x, y), rel=1e-9)
    assert ours > 0


def test_never_eigvalsh_of_the_product():
    # eigvalsh on the non-symmetric Σ1Σ2 reads only one triangle: a wrong answer our code must not give.
    rng = np.random.default_rng(4)
    a, b = gaussian_features(rng, 300, 100), gaussian_features(rng, 300, 100, scale=2.0)
    s1, s2 = moments(a)[1], moments(b)[1]
    wrong = np.sqrt(np.clip(np.linalg.eigvalsh(s1 @ s2), 0, None)).sum()
    right = np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2)))
    assert abs(wrong - right) > 1e-3 * right  # the trap is real on this input
    assert trace_sqrt_product(s1, s2) == pytest.approx(right, rel=1e-9)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(np.zeros(2), np.array([[1.0, 2.0], [0.0, 1.0]]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))


def test_stats_merge_equals_one_pass(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 40)) * 3 + 7
    whole = FeatureStats().update(x)
    shards = [FeatureStats().update(part) for part in np.array_split(x, 7)]
    merged = sum(shards)
    assert merged.n == 1000 and merged.dim == 40
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-13)
    np.testing.assert_allclose(merged.cov, whole.cov, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(whole.cov, np.cov(x, rowvar=False, bias=True), rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(whole.mean, x.mean(0), rtol=1e-13)
    # streaming updates on one object equal the sum of shards too
    stream = FeatureStats()
    for part in np.array_split(x, 3):
        stream.update(torch.from_numpy(part))  # torch float64 input is accepted
    np.testing.assert_allclose(stream.sum_outer, whole.sum_outer, rtol=1e-13)
    # save / load round trip, merge of loaded shards
    paths = []
    for i, s in enumerate(shards):
        paths.append(tmp_path / f"shard{i}.npz")
        s.save(paths[-1])
    loaded = sum((FeatureStats.load(p) for p in paths), FeatureStats())
    assert loaded.n == 1000
    np.testing.assert_array_equal(loaded.sum, merged.sum)
    np.testing.assert_array_equal(loaded.sum_outer, merged.sum_outer)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes left no temp files


def test_stats_errors(tmp_path):
    s = FeatureStats().update(np.ones((4, 3)))
    with pytest.raises(ValueError, match="dimension 5"):
        s.update(np.ones((2, 5)))
    with pytest.raises(ValueError, match="merge"):
        _ = s + FeatureStats().update(np.ones((2, 5)))
    with pytest.raises(ValueError, match="need at least 1"):
        _ = FeatureStats().mean
    with pytest.raises(ValueError, match=r"\(n, d\)"):
        s.update(np.ones(3))
    np.savez(tmp_path / "bad.npz", a=1)
    with pytest.raises(ValueError, match="not a FeatureStats"):
        FeatureStats.load(tmp_path / "bad.npz")


def test_feature_files_roundtrip(tmp_path):
    rng = np.random.default_rng(6)
    a, b = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal((3, 4)).astype(np.float32)
    save_features(tmp_path / "a.npy", a)
    save_features(tmp_path / "b.npy", b)
    np.testing.assert_array_equal(
        load_features([tmp_path / "a.npy", tmp_path / "b.npy"]), np.concatenate([a, b])
    )
    save_features(tmp_path / "c.npy", np.ones((2, 5)))
    with pytest.raises(ValueError, match="does not match"):
        load_features([tmp_path / "a.npy", tmp_path / "c.npy"])


def test_bootstrap_ci():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((400, 16)), rng.standard_normal((400, 16)) + 0.5
    r = bootstrap_fvd(a, b, B=50, seed=3)
    assert set(r) >= {"fvd", "mean", "std", "ci_low", "ci_high", "B", "resampled"}
    assert r["fvd"] == pytest.approx(frechet_distance(*moments(a), *moments(b)))
    assert r["ci_low"] < r["fvd"] < r["ci_high"] and r["std"] > 0
    # the true distance is 16 * 0.25 = 4: the interval should be around it, and reasonably tight at n=400
    assert r["ci_low"] < 4.6 and r["ci_high"] > 3.4 and r["ci_high"] - r["ci_low"] < 4
    assert bootstrap_fvd(a, b, B=50, seed=3) == r  # seeded => reproducible
    assert bootstrap_fvd(a, b, B=50, seed=4)["ci_low"] != r["ci_low"]
    with pytest.raises(ValueError, match="B must be"):
        bootstrap_fvd(a, b, B=1)
    rep = fvd_report(a, b, bootstrap=20, seed=1)
    assert rep["fvd"] == pytest.approx(r["fvd"], rel=1e-10) and rep["n_real"] == rep["n_gen"] == 400
    assert rep["bootstrap"]["B"] == 20 and "bootstrap" not in fvd_report(a, b, bootstrap=0)


def test_compute_features_rebatches_in_order():
    seen = []

    def detector(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x.mean(dim=(1, 2, 3, 4), keepdim=False)[:, None].repeat(1, 3)

    vids = [torch.full((2, 3, 9, 4, 4), float(i) / 10) for i in range(3)] + [torch.full((3, 9, 4, 4), 0.9)]
    vids.append(np.full((1, 3, 9, 4, 4), 255, np.uint8))  # uint8 input is scaled to [0, 1]
    f = compute_features(detector, vids, batch_size=4, progress=False)
    assert seen == [4, 4] and f.shape == (8, 3) and f.dtype == np.float32
    np.testing.assert_allclose(f[:, 0], [0, 0, 0.1, 0.1, 0.2, 0.2, 0.9, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        compute_features(detector, [], batch_size=4, progress=False)
