"""Tests for ddpm.evaluation.metrics: FD, KID/MMD, precision/recall and memorization against closed forms
and references."""

import math

import numpy as np
import pytest
import torch

from ddpm.evaluation.metrics import (
    frechet_distance,
    gaussian_frechet_distance,
    kid,
    memorization,
    mmd2_unbiased,
    nearest_neighbours,
    polynomial_kernel,
    precision_recall,
)


def exact_samples(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    """n rows whose sample mean is exactly ``mean`` and unbiased sample covariance exactly ``cov``."""
    z = torch.randn(n, mean.numel(), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    w = torch.linalg.cholesky(torch.cov(z.T))
    z = torch.linalg.solve_triangular(w, z.T, upper=False).T  # sample covariance now exactly I
    return z @ torch.linalg.cholesky(cov).T + mean


def test_fd_matches_closed_form_for_diagonal_covariances():
    g = torch.Generator().manual_seed(0)
    d = 8
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    s1 = torch.rand(d, generator=g, dtype=torch.float64) + 0.1
    s2 = torch.rand(d, generator=g, dtype=torch.float64) + 0.1
    a = exact_samples(500, mu1, torch.diag(s1), 1)
    b = exact_samples(300, mu2, torch.diag(s2), 2)
    # Commuting covariances: tr(Σ1 + Σ2 − 2(Σ1Σ2)^{1/2}) = Σ_i (√s1_i − √s2_i)².
    closed = float((mu1 - mu2).square().sum() + (s1.sqrt() - s2.sqrt()).square().sum())
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)


def test_fd_matches_closed_form_for_non_commuting_2x2():
    # For 2×2 PSD M: tr √M = √(tr M + 2 √det M). With M = Σ1^{1/2} Σ2 Σ1^{1/2}: tr M = tr(Σ1Σ2), det M = det Σ1 det Σ2.
    s1 = torch.tensor([[2.0, 0.3], [0.3, 0.5]], dtype=torch.float64)
    s2 = torch.tensor([[0.4, -0.2], [-0.2, 1.5]], dtype=torch.float64)
    mu1, mu2 = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([0.5, -1.0], dtype=torch.float64)
    tr_sqrt = math.sqrt(float(torch.trace(s1 @ s2)) + 2 * math.sqrt(float(torch.det(s1) * torch.det(s2))))
    closed = float((mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2)) - 2 * tr_sqrt
    assert gaussian_frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-12)
    a, b = exact_samples(200, mu1, s1, 3), exact_samples(400, mu2, s2, 4)
    assert frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)


def test_fd_self_zero_symmetric_and_robust_to_singular_covariance():
    g = torch.Generator().manual_seed(5)
    a = torch.randn(300, 16, generator=g, dtype=torch.float64)
    b = torch.randn(200, 16, generator=g, dtype=torch.float64) * 1.5 + 0.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    # Fewer samples than dimensions, and a dead (constant) feature: rank-deficient covariances.
    c = torch.randn(10, 64, generator=g, dtype=torch.float64)
    c[:, 0] = 0.0
    dd = torch.randn(12, 64, generator=g, dtype=torch.float64)
    dd[:, 0] = 0.0
    assert frechet_distance(c, c) == pytest.approx(0.0, abs=1e-8)
    v = frechet_distance(c, dd)
    assert math.isfinite(v) and v > 0
    assert frechet_distance(c, dd) == pytest.approx(frechet_distance(dd, c), rel=1e-8)
    with pytest.raises(ValueError, match="feature sizes differ"):
        frechet_distance(a, c)


def test_kid_same_distribution_near_zero_and_shift_clearly_positive():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(600, 16, generator=g, dtype=torch.float64)
    b = torch.randn(600, 16, generator=g, dtype=torch.float64)
    mean, std = kid(a, b, subsets=30, subset_size=300, generator=torch.Generator().manual_seed(0))
    # std is the spread of one size-300 estimate; the mean over overlapping subsets is about as noisy.
    assert abs(mean) < 2 * std
    shifted = b + 0.5
    mean_s, std_s = kid(a, shifted, subsets=30, subset_size=300, generator=torch.Generator().manual_seed(0))
    assert mean_s > 10 * std_s and mean_s > 20 * abs(mean)


def test_mmd_estimator_is_unbiased():
    # (1) Same distribution: the average over many independent small samples is 0 within its standard
    # error, while the biased (V-statistic) version, which keeps the diagonals, is clearly positive.
    g = torch.Generator().manual_seed(7)
    reps, n, d = 2000, 6, 3
    x = torch.randn(reps, n, d, generator=g, dtype=torch.float64)
    y = torch.randn(reps, n, d, generator=g, dtype=torch.float64)
    u, v = [], []
    for i in range(reps):
        kxx, kyy, kxy = polynomial_kernel(x[i], x[i]), polynomial_kernel(y[i], y[i]), polynomial_kernel(x[i], y[i])
        u.append(mmd2_unbiased(kxx, kyy, kxy))
        v.append(float(kxx.mean() + kyy.mean() - 2 * kxy.mean()))
    u, v = torch.tensor(u), torch.tensor(v)
    se = float(u.std()) / math.sqrt(reps)
    assert abs(float(u.mean())) < 4 * se
    assert float(v.mean()) > 20 * se
    # (2) Subsets drawn without replacement keep the U-statistic unbiased: their average approaches the
    # full-set estimate, whatever the subset size.
    a = torch.randn(40, 4, generator=g, dtype=torch.float64)
    b = torch.randn(30, 4, generator=g, dtype=torch.float64) + 0.3
    full = mmd2_unbiased(polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b))
    mean, std = kid(a, b, subsets=2000, subset_size=10, generator=torch.Generator().manual_seed(1))
    assert mean == pytest.approx(full, abs=4 * std / math.sqrt(2000))


def test_kid_rejects_bad_subset_size():
    a = torch.randn(20, 4)
    with pytest.raises(ValueError, match="subset_size"):
        kid(a, a, subset_size=21)


def scipy_fd(a: torch.Tensor, b: torch.Tensor) -> float:
    """The textbook formula with scipy's general matrix square root (the reference FID implementations')."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    a, b = a.numpy(), b.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy_linalg.sqrtm(s1 @ s2)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def nuclear_fd(a: torch.Tensor, b: torch.Tensor) -> float:
    """Exact FD for any ranks: the eigenvalues of Σ1Σ2 (Σ = XᵀX/(n−1), X centred) are the squared singular
    values of X1 X2ᵀ/√((n1−1)(n2−1)), so tr (Σ1^½ Σ2 Σ1^½)^½ is that matrix's nuclear norm."""
    xa, xb = a - a.mean(0), b - b.mean(0)
    cross = torch.linalg.svdvals(xa @ xb.T).sum() / math.sqrt((len(a) - 1) * (len(b) - 1))
    tr = xa.square().sum() / (len(a) - 1) + xb.square().sum() / (len(b) - 1)
    return float((a.mean(0) - b.mean(0)).square().sum() + tr - 2 * cross)


def test_fd_matches_scipy_sqrtm_and_the_exact_low_rank_formula():
    g = torch.Generator().manual_seed(11)
    mix = torch.randn(16, 16, generator=g, dtype=torch.float64)
    a = torch.randn(400, 16, generator=g, dtype=torch.float64) @ mix
    b = torch.randn(300, 16, generator=g, dtype=torch.float64) @ mix.T * 0.7 + 0.2
    assert frechet_distance(a, b) == pytest.approx(scipy_fd(a, b), rel=1e-8)
    assert frechet_distance(a, b) == pytest.approx(nuclear_fd(a, b), rel=1e-9)
    # Rank-deficient: fewer samples than dimensions (ranks 29 and 39 of 64), as with Inception's 2048
    # features and a few hundred images. scipy's sqrtm of the singular product is still accurate here.
    c = torch.randn(30, 64, generator=g, dtype=torch.float64)
    d = torch.randn(40, 64, generator=g, dtype=torch.float64) * 1.3 + 0.1
    exact = nuclear_fd(c, d)
    assert frechet_distance(c, d) == pytest.approx(exact, rel=1e-7)  # round-off of the zero eigenvalues' roots
    assert frechet_distance(c, d) == pytest.approx(scipy_fd(c, d), rel=1e-5)


def test_precision_recall_on_point_clouds_with_known_overlap():
    g = torch.Generator().manual_seed(12)
    a = torch.randn(600, 2, generator=g, dtype=torch.float64)
    # Identical sets: every point lies in its own ball.
    assert precision_recall(a, a) == (1.0, 1.0)
    # Two samples of one distribution: both high (only the sparse tails fall outside).
    b = torch.randn(600, 2, generator=g, dtype=torch.float64)
    p, r = precision_recall(a, b)
    assert p > 0.9 and r > 0.9
    # Disjoint clouds: nothing of one lies in the other's manifold.
    assert precision_recall(a, b + 20.0) == (0.0, 0.0)
    # The fake set covers one of the real set's two modes: every fake is realistic (precision ≈ 1) but
    # only that mode's half of the real data is covered (recall ≈ 0.5).
    real = torch.cat(
        [
            torch.randn(500, 2, generator=g, dtype=torch.float64) - 10,
            torch.randn(500, 2, generator=g, dtype=torch.float64) + 10,
        ]
    )
    fake = torch.randn(1000, 2, generator=g, dtype=torch.float64) - 10
    p, r = precision_recall(real, fake)
    assert p > 0.95 and 0.45 < r < 0.5
    p2, r2 = precision_recall(fake, real)  # roles swapped: the asymmetry swaps too
    assert 0.45 < p2 < 0.5 and r2 > 0.95
    with pytest.raises(ValueError, match="k must lie"):
        precision_recall(a[:3], a[:3], k=3)


def test_nearest_neighbours_and_memorization():
    g = torch.Generator().manual_seed(13)
    train = torch.randn(200, 8, generator=g, dtype=torch.float64)
    held = torch.randn(200, 8, generator=g, dtype=torch.float64)
    dist, idx = nearest_neighbours(train[[5, 17]] + 1e-3, train, chunk=7)
    assert idx.tolist() == [5, 17]
    assert torch.allclose(dist, torch.full((2,), 1e-3 * math.sqrt(8), dtype=torch.float64), rtol=1e-6)
    brute = torch.cdist(held, train).min(1)
    dist, idx = nearest_neighbours(held, train, chunk=64)
    assert torch.allclose(dist, brute.values, rtol=1e-9) and torch.equal(idx, brute.indices)
    loo, loo_idx = nearest_neighbours(train, train, exclude_self=True, chunk=64)
    assert (loo > 0).all() and not torch.equal(loo_idx, torch.arange(200))
    # A model that copies: half the samples are training images plus tiny noise.
    copies = train[:50] + 1e-3 * torch.randn(50, 8, generator=g, dtype=torch.float64)
    fresh = torch.randn(50, 8, generator=g, dtype=torch.float64)
    report = memorization(torch.cat([copies, fresh]), train, held)
    assert report["baseline_kind"] == "held-out to train" and report["baseline"].shape == (200,)
    assert 0.5 <= report["share_closer"] <= 0.55
    assert torch.equal(report["indices"][:50], torch.arange(50))
    # A model that does not copy: about the quantile's share, as for real held-out data.
    honest = memorization(torch.randn(2000, 8, generator=g, dtype=torch.float64), train, quantile=0.05)
    assert honest["baseline_kind"].startswith("train to train") and honest["share_closer"] < 0.1
