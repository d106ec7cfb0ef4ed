"""Analytic oracles for tests and benchmarks: data distributions whose exact denoisers are known in closed form.

With data x_0 ~ N(μ, Σ) and x_t = √ᾱ x_0 + √(1−ᾱ) ε, the pair (x_0, x_t) is jointly Gaussian, so
E[ε | x_t] = √(1−ᾱ) (ᾱΣ + (1−ᾱ)I)^{-1} (x_t − √ᾱ μ) and E[x_0 | x_t] = μ + √ᾱ Σ (ᾱΣ + (1−ᾱ)I)^{-1} (x_t − √ᾱ μ).
Feeding these to a sampler isolates its own error from any network's. Points in d dimensions are laid
out as images (B, d, 1, 1). Everything is computed in float64 and cast to the input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .schedule import Schedule


def _flat(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).to(torch.float64)  # (B, d)


def gaussian_w2(mean: Tensor, cov: Tensor, mean2: Tensor, cov2: Tensor) -> float:
    """2-Wasserstein (= Fréchet) distance between N(mean, cov) and N(mean2, cov2); means (d,), covs (d, d).

    W2² = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1^{1/2} Σ2 Σ1^{1/2})^{1/2}); square roots via eigh in float64.
    """
    m1, m2 = mean.to(torch.float64), mean2.to(torch.float64)
    c1, c2 = cov.to(torch.float64), cov2.to(torch.float64)
    r1 = _psd_sqrt(c1)
    cross = _psd_sqrt(r1 @ c2 @ r1)
    w2sq = (m1 - m2).square().sum() + torch.trace(c1 + c2 - 2 * cross)
    return math.sqrt(max(w2sq.item(), 0.0))


def _psd_sqrt(c: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh((c + c.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def mean_cov(x: Tensor) -> tuple[Tensor, Tensor]:
    """Sample mean (d,) and unbiased covariance (d, d) of points x: (B, d, ...) flattened per row, float64."""
    f = _flat(x)
    return f.mean(0), torch.cov(f.T)


class GaussianOracle:
    """x_0 ~ N(μ, Σ) in ``d`` dimensions, Σ anisotropic (standard deviations ``std_min``..``std_max``, log-spaced)
    along randomly rotated axes. Points are shaped (B, d, 1, 1)."""

    def __init__(
        self, schedule: Schedule, d: int = 6, std_min: float = 0.05, std_max: float = 0.5, seed: int = 0
    ) -> None:
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
        self.d = d
        self.stds = torch.logspace(math.log10(std_min), math.log10(std_max), d, dtype=torch.float64)  # (d,)
        self.rotation = q  # (d, d), columns are Σ's eigenvectors
        self.cov = (q * self.stds.square()) @ q.T  # (d, d)
        self.mean = 0.3 * torch.randn(d, generator=g, dtype=torch.float64)  # (d,)
        self.schedule = schedule
        ab = schedule.alphas_cumprod  # (T,)
        eye = torch.eye(d, dtype=torch.float64)
        inv = torch.linalg.inv(ab[:, None, None] * self.cov + (1 - ab)[:, None, None] * eye)  # (T, d, d)
        self._eps_mat = (1 - ab).sqrt()[:, None, None] * inv  # E[ε|x_t] = M_t (x_t − √ᾱ μ)
        self._x0_mat = ab.sqrt()[:, None, None] * (self.cov @ inv)  # E[x_0|x_t] = μ + N_t (x_t − √ᾱ μ)
        self._ab = ab

    def _centered(self, x_t: Tensor, t: Tensor) -> Tensor:
        return _flat(x_t) - self._ab[t.cpu()].sqrt()[:, None] * self.mean  # (B, d)

    @staticmethod
    def _apply(mats: Tensor, t: Tensor, v: Tensor) -> Tensor:
        t = t.cpu()
        if bool((t == t[0]).all()):  # samplers call with one t per batch: one small matmul
            return v @ mats[t[0]].T
        return torch.einsum("bij,bj->bi", mats[t], v)

    def eps(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Exact E[ε | x_t], x_t: (B, d, 1, 1), t: (B,) → (B, d, 1, 1) in x_t's dtype."""
        out = self._apply(self._eps_mat, t, self._centered(x_t, t))
        return out.reshape(x_t.shape).to(x_t.dtype)

    def x0(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Exact E[x_0 | x_t], (B, d, 1, 1)."""
        out = self.mean + self._apply(self._x0_mat, t, self._centered(x_t, t))
        return out.reshape(x_t.shape).to(x_t.dtype)

    def v(self, x_t: Tensor, t: Tensor) -> Tensor:
        """Exact E[v | x_t] = √ᾱ E[ε|x_t] − √(1−ᾱ) E[x_0|x_t], (B, d, 1, 1)."""
        a = self._ab[t.cpu()].reshape(-1, *([1] * (x_t.ndim - 1)))
        out = a.sqrt() * self.eps(x_t, t).double() - (1 - a).sqrt() * self.x0(x_t, t).double()
        return out.to(x_t.dtype)

    def model(self, prediction: str = "eps") -> Callable[[Tensor, Tensor], Tensor]:
        """The exact predictor of kind 'eps', 'x0' or 'v' as a callable model(x_t, t)."""
        return {"eps": self.eps, "x0": self.x0, "v": self.v}[prediction]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n exact draws of x_0, (n, d, 1, 1) float64."""
        z = torch.randn(n, self.d, generator=generator, dtype=torch.float64)
        return (self.mean + (z * self.stds) @ self.rotation.T).reshape(n, self.d, 1, 1)

    def w2(self, x: Tensor) -> float:
        """W2 between the data distribution and the Gaussian fitted to samples x: (B, d, ...)."""
        m, c = mean_cov(x)
        return gaussian_w2(self.mean, self.cov, m, c)

    def w2_of(self, mean: Tensor, cov: Tensor) -> float:
        """W2 between the data distribution and N(mean, cov)."""
        return gaussian_w2(self.mean, self.cov, mean, cov)

    def prior_floor(self) -> float:
        """W2 of the *exact* probability-flow map from N(0, I) at index T−1 (rather than the true
        q(x_{T−1}) = N(√ᾱμ, ᾱΣ + (1−ᾱ)I)): the error every ODE sampler keeps because ᾱ_{T−1} > 0."""
        a = self._ab[-1].item()
        # Per eigen-direction the flow is affine: y_0 = μ + s/√(a s² + 1 − a) (y_T − √a μ).
        k = self.stds / (a * self.stds.square() + 1 - a).sqrt()  # (d,)
        mu_rot = self.rotation.T @ self.mean
        out_mean = self.rotation @ (mu_rot - k * a**0.5 * mu_rot)
        out_cov = (self.rotation * k.square()) @ self.rotation.T
        return self.w2_of(out_mean, out_cov)


def affine_gaussian(run: Callable[[Tensor], Tensor], d: int) -> tuple[Tensor, Tensor]:
    """Exact output law of a deterministic sampler that is affine in its start noise (true with these oracles).

    ``run`` maps x_T (B, d, 1, 1) float64 to samples (B, d, 1, 1). Probing it with 0 and the unit
    vectors gives out = A x_T + b; for x_T ~ N(0, I) the output is N(b, A Aᵀ). Returns (b (d,), AAᵀ (d, d)).
    """
    probes = torch.cat([torch.zeros(1, d), torch.eye(d)]).to(torch.float64).reshape(d + 1, d, 1, 1)
    out = _flat(run(probes))
    b = out[0]
    a = (out[1:] - b).T  # (d, d), column j = response to e_j
    return b, a @ a.T


class MixtureOracle:
    """Gaussian mixture: K isotropic components N(m_k, s² I) in d dims with weights w_k; points (B, d, 1, 1).

    The exact denoiser is the responsibility-weighted sum of the per-component Gaussian posteriors:
    E[x_0|x_t] = Σ_k r_k(x_t) (m_k + √ᾱ s²/(ᾱ s² + 1 − ᾱ) (x_t − √ᾱ m_k)), r_k ∝ w_k N(x_t; √ᾱ m_k, (ᾱs² + 1 − ᾱ) I).
    ``model(x_t, t, labels)`` is class-conditional: label k uses component k alone, −1 the whole mixture.
    """

    def __init__(self, schedule: Schedule, means: Tensor, weights: Tensor, std: float = 0.05) -> None:
        self.means = means.to(torch.float64)  # (K, d)
        self.weights = weights.to(torch.float64) / weights.sum()  # (K,)
        self.std = float(std)
        self.d = self.means.shape[1]
        self._ab = schedule.alphas_cumprod

    def _x0(self, x_t: Tensor, t: Tensor, labels: Tensor | None) -> Tensor:
        x = _flat(x_t)  # (B, d)
        a = self._ab[t.cpu()][:, None]  # (B, 1)
        var = a * self.std**2 + (1 - a)  # (B, 1) variance of x_t given the component
        diff = x[:, None, :] - a.sqrt()[:, :, None] * self.means[None]  # (B, K, d)
        logits = self.weights.log()[None] - 0.5 * diff.square().sum(-1) / var  # (B, K)
        if labels is not None:
            lab = labels.cpu()
            onehot = torch.full_like(logits, -math.inf)
            onehot[torch.arange(len(lab)), lab.clamp(min=0)] = 0.0
            logits = torch.where((lab >= 0)[:, None], onehot, logits)
        r = torch.softmax(logits, dim=1)  # (B, K)
        post = self.means[None] + (a.sqrt() * self.std**2 / var)[:, :, None] * diff  # (B, K, d)
        return (r[:, :, None] * post).sum(1)

    def model(self, x_t: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        """Exact ε-prediction E[ε | x_t (, label)], (B, d, 1, 1) in x_t's dtype."""
        a = self._ab[t.cpu()][:, None]
        eps = (_flat(x_t) - a.sqrt() * self._x0(x_t, t, labels)) / (1 - a).sqrt()
        return eps.reshape(x_t.shape).to(x_t.dtype)

    def nearest(self, x: Tensor) -> Tensor:
        """Index of the nearest component mean for each point x: (B, d, ...) → LongTensor (B,)."""
        return torch.cdist(_flat(x), self.means).argmin(1)
