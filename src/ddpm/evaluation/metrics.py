"""Sample-quality measures between feature sets: Fréchet distance, KID, precision/recall, memorization.

- :func:`frechet_distance` (FD, the measure behind FID, Heusel et al. 2017): the 2-Wasserstein distance
  between the Gaussians fitted to two feature sets (N, D) and (M, D).
- :func:`kid` (Kernel Inception Distance, Bińkowski et al. 2018): the unbiased estimator of MMD² with the
  cubic polynomial kernel k(x, y) = (xᵀy / D + 1)³, averaged over random subsets. Unlike FD it has no
  bias in the sample size, so small-N numbers can be compared with each other and with 0.
- :func:`precision_recall` (Kynkäänniemi et al. 2019): the share of generated samples inside the real
  set's k-nearest-neighbour balls (precision: are samples realistic?) and of real samples inside the
  generated set's balls (recall: is the data's variety covered?).
- :func:`nearest_neighbours` and :func:`memorization`: each generated sample's nearest training image,
  against the same distance for held-out real images (a model that copies is closer than real data is).

The features come from :mod:`.inception` (FID's network) or :mod:`.featurenet` (a small classifier).
Everything is computed in float64; random subsets take a ``torch.Generator``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _as_features(x: ArrayLike, name: str) -> Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().to("cpu", torch.float64)
    if t.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of features (N, D); got shape {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows to fit a covariance; got {t.shape[0]}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return t


def _check_pair(a: ArrayLike, b: ArrayLike) -> tuple[Tensor, Tensor]:
    a, b = _as_features(a, "a"), _as_features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: a is (N, {a.shape[1]}), b is (M, {b.shape[1]})")
    return a, b


def _sym_sqrt(s: Tensor) -> Tensor:
    """Square root of a symmetric PSD matrix via eigh; negative round-off eigenvalues are set to 0."""
    w, v = torch.linalg.eigh(0.5 * (s + s.T))
    return (v * w.clamp(min=0).sqrt()) @ v.T


def gaussian_frechet_distance(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    """Squared 2-Wasserstein distance between N(mu1, cov1) and N(mu2, cov2) (means (D,), covariances (D, D)).

    ‖μ1−μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}). The inner product is symmetrised and its
    trace-square-root taken from its eigenvalues (clamped at 0), so near-singular covariances (fewer
    samples than dimensions, dead features) give a finite, non-negative answer instead of the complex
    round-off that ``scipy.linalg.sqrtm`` of Σ1Σ2 produces there.
    """
    mu1, mu2 = (torch.as_tensor(np.asarray(m), dtype=torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(np.asarray(c), dtype=torch.float64) for c in (cov1, cov2))
    d = mu1.numel()
    if mu2.numel() != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"shapes do not match: mu1 {tuple(mu1.shape)}, mu2 {tuple(mu2.shape)}, "
            f"cov1 {tuple(s1.shape)}, cov2 {tuple(s2.shape)}; want (D,) and (D, D)"
        )
    r = _sym_sqrt(s1)  # Σ1^{1/2}
    m = r @ s2 @ r
    lam = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp(min=0)
    fd = (mu1 - mu2).square().sum() + torch.trace(s1) + torch.trace(s2) - 2 * lam.sqrt().sum()
    # The exact value is >= 0; only round-off (of order 1e-12 · tr Σ) can push it below.
    return max(float(fd), 0.0)


def frechet_distance(a: ArrayLike, b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to features ``a`` (N, D) and ``b`` (M, D).

    Means and unbiased (N−1) covariances in float64, then :func:`gaussian_frechet_distance`. With the
    feature network's features this is "FID" in a different feature space. FD is biased upwards at small
    N (the sample covariance's noise adds roughly tr-terms of order D/N), so compare FDs only at equal N.
    """
    a, b = _check_pair(a, b)
    return gaussian_frechet_distance(
        a.mean(0), torch.cov(a.T).reshape(a.shape[1], -1), b.mean(0), torch.cov(b.T).reshape(b.shape[1], -1)
    )


def polynomial_kernel(x: Tensor, y: Tensor, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> Tensor:
    """k(x, y) = (γ xᵀy + c)^degree for rows of x (N, D) and y (M, D) → (N, M); γ = 1/D by default."""
    g = 1.0 / x.shape[1] if gamma is None else gamma
    return (g * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(kxx: Tensor, kyy: Tensor, kxy: Tensor) -> float:
    """Unbiased MMD² from kernel matrices K_xx (m, m), K_yy (n, n), K_xy (m, n) (Gretton et al. 2012, eq. 3).

    The diagonals of K_xx and K_yy are left out, so the expectation is exactly MMD²(P, Q) (0 when P = Q).
    """
    m, n = kxx.shape[0], kyy.shape[0]
    if m < 2 or n < 2:
        raise ValueError(f"the unbiased MMD² needs at least 2 samples per set; got {m} and {n}")
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


def kid(
    a: ArrayLike,
    b: ArrayLike,
    degree: int = 3,
    subsets: int = 100,
    subset_size: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance between features ``a`` (N, D) and ``b`` (M, D): (mean, std) over subsets.

    Each of ``subsets`` rounds draws ``subset_size`` rows of ``a`` and of ``b`` without replacement and
    computes the unbiased MMD² with the polynomial kernel (xᵀy/D + 1)^degree (degree 3 is KID's).
    Every subset's estimate is unbiased, so the mean is too, at any subset size; ``std`` is the spread of
    single-subset estimates (the noise of one size-``subset_size`` measurement, not of the mean).
    ``subset_size`` None means min(1000, N, M). Values can be slightly negative when P ≈ Q.
    """
    a, b = _check_pair(a, b)
    if subsets < 1:
        raise ValueError(f"subsets must be at least 1; got {subsets!r}")
    size = min(1000, a.shape[0], b.shape[0]) if subset_size is None else int(subset_size)
    if not 2 <= size <= min(a.shape[0], b.shape[0]):
        raise ValueError(
            f"subset_size must lie in 2..{min(a.shape[0], b.shape[0])} (the smaller set's size); got {subset_size!r}"
        )
    vals = []
    for _ in range(subsets):
        x = a[torch.randperm(a.shape[0], generator=generator)[:size]]
        y = b[torch.randperm(b.shape[0], generator=generator)[:size]]
        vals.append(
            mmd2_unbiased(
                polynomial_kernel(x, x, degree), polynomial_kernel(y, y, degree), polynomial_kernel(x, y, degree)
            )
        )
    v = torch.tensor(vals, dtype=torch.float64)
    return float(v.mean()), float(v.std()) if subsets > 1 else 0.0


def _sq_dists(x: Tensor, y: Tensor) -> Tensor:
    """Squared Euclidean distances (N, M) between rows of x (N, D) and y (M, D), float64, clamped at 0."""
    d = x.square().sum(1, keepdim=True) + y.square().sum(1) - 2.0 * (x @ y.T)
    return d.clamp_(min=0.0)


def nearest_neighbours(
    queries: ArrayLike, keys: ArrayLike, exclude_self: bool = False, chunk: int = 1024
) -> tuple[Tensor, Tensor]:
    """For each row of ``queries`` (Q, D) its nearest row of ``keys`` (K, D): (distances (Q,), indices (Q,)).

    Euclidean distance in float64. ``exclude_self`` (queries and keys the same set) skips each row's own
    index: the leave-one-out distance to the rest of the set.
    """
    q, k = _as_features(queries, "queries"), _as_features(keys, "keys")
    if q.shape[1] != k.shape[1]:
        raise ValueError(f"feature sizes differ: queries (Q, {q.shape[1]}), keys (K, {k.shape[1]})")
    dist, index = [], []
    for i in range(0, q.shape[0], chunk):
        d = _sq_dists(q[i : i + chunk], k)  # (c, K)
        if exclude_self:
            rows = torch.arange(d.shape[0])
            d[rows, rows + i] = math.inf
        v, j = d.min(dim=1)
        dist.append(v.sqrt())
        index.append(j)
    return torch.cat(dist), torch.cat(index)


def _kth_neighbour_radii(x: Tensor, k: int, chunk: int) -> Tensor:
    """(N,) distance from each row of x (N, D) to its k-th nearest other row."""
    radii = []
    for i in range(0, x.shape[0], chunk):
        d = _sq_dists(x[i : i + chunk], x)
        rows = torch.arange(d.shape[0])
        d[rows, rows + i] = math.inf  # not its own neighbour
        radii.append(d.kthvalue(k, dim=1).values.sqrt())
    return torch.cat(radii)


def _share_covered(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> float:
    """Share of ``points`` (P, D) within distance radii[j] of some centre j (C, D)."""
    inside = 0
    for i in range(0, points.shape[0], chunk):
        d = _sq_dists(points[i : i + chunk], centres).sqrt()
        inside += int((d <= radii).any(dim=1).sum())
    return inside / points.shape[0]


def precision_recall(real: ArrayLike, fake: ArrayLike, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of features ``fake`` (N, D) against ``real`` (M, D).

    Each set's manifold is the union of balls around its points, each ball reaching the point's k-th
    nearest neighbour in its own set (k = 3 as in the paper). Precision: the share of fake points inside
    the real manifold; recall: the share of real points inside the fake manifold. Both lie in [0, 1];
    identical sets give 1 and 1. The paper compares equal-sized sets; the estimate depends on the sizes.
    """
    r, f = _check_pair(real, fake)
    if k < 1 or k >= min(r.shape[0], f.shape[0]):
        raise ValueError(f"k must lie in 1..{min(r.shape[0], f.shape[0]) - 1} (fewer than each set's size); got {k}")
    precision = _share_covered(f, r, _kth_neighbour_radii(r, k, chunk), chunk)
    recall = _share_covered(r, f, _kth_neighbour_radii(f, k, chunk), chunk)
    return precision, recall


def memorization(
    generated: ArrayLike, train: ArrayLike, held_out: ArrayLike | None = None, quantile: float = 0.01
) -> dict:
    """How close generated samples (N, D) come to the training set (M, D), against real data's closeness.

    The baseline is each held-out real sample's (T, D) distance to its nearest training sample; without
    ``held_out``, each training sample's distance to its nearest *other* training sample (leave-one-out).
    ``threshold`` is the baseline's ``quantile``: a real image is closer than that to a training image only
    a ``quantile`` share of the time, so ``share_closer`` (the share of generated samples under it) should
    be about ``quantile``; much more means samples copy training images.

    Returns a dict: ``distances`` (N,) and ``indices`` (N,) of each sample's nearest training sample,
    ``baseline`` (T,) or (M,), ``baseline_kind``, ``threshold``, ``share_closer``, ``quantile``.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must lie in (0, 1); got {quantile}")
    dist, idx = nearest_neighbours(generated, train)
    if held_out is not None:
        base, _ = nearest_neighbours(held_out, train)
        kind = "held-out to train"
    else:
        base, _ = nearest_neighbours(train, train, exclude_self=True)
        kind = "train to train, leave-one-out"
    threshold = float(torch.quantile(base, quantile))
    return {
        "distances": dist,
        "indices": idx,
        "baseline": base,
        "baseline_kind": kind,
        "threshold": threshold,
        "share_closer": float((dist < threshold).double().mean()),
        "quantile": quantile,
    }
