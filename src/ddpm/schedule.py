"""Noise schedules: the β_t, α_t and ᾱ_t tables of a diffusion process.

Every table is a float64 1-D tensor of length T (``timesteps``). Index ``t`` runs over 0..T-1 and
index 0 is the least noisy step. Tables are kept in float64 because 1 − ᾱ_t near t = 0 and ᾱ_t near
t = T−1 lose most of their digits in float32; callers cast at the point of use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

SPACINGS = ("leading", "linspace", "trailing", "logsnr", "info")

# The spacing of spaced_timesteps, and of ddpm.sample() with steps < T, when none is given: the lowest W2 with an
# exact model (benchmarks/samplers.py; BENCHMARKS.md, "samplers.py").
DEFAULT_SPACING = "info"

# Data scale s of the "info" spacing: an upper bound on the standard deviation of the data along the
# directions a sampler must get right, in units where images lie in [-1, 1] (see spaced_timesteps).
INFO_SCALE = 8.0


def log_snr(alpha_bar: Tensor | float) -> Tensor | float:
    """log-SNR λ = log(ᾱ/(1−ᾱ)) = log ᾱ − log(1−ᾱ), with 1−ᾱ taken by log1p so small 1−ᾱ keeps its digits.

    ``alpha_bar`` is a tensor of any shape (float64 tables: the result has its shape) or a python float;
    ᾱ = 1 (the clean image) gives +inf. DPM-Solver's λ = log(α/σ) is half of it.
    """
    if isinstance(alpha_bar, Tensor):
        return torch.log(alpha_bar) - torch.log1p(-alpha_bar)
    return math.inf if alpha_bar >= 1.0 else math.log(alpha_bar) - math.log1p(-alpha_bar)


def posterior_coefficients(
    alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float, beta: Tensor | float | None = None
) -> tuple[Any, Any, Any, Any]:
    """The step t → s of the reverse chain, q(x_s | x_t, x_0), from ᾱ_t and ᾱ_s (DDPM eq. 6–7).

    ``alpha_bar`` is ᾱ_t, ``alpha_bar_prev`` the ᾱ of the next index down (1 after index 0): python floats
    for one step of a respaced chain, or float64 tables of one shape. β is the step's own
    β = 1 − ᾱ_t/ᾱ_s (so any decreasing subset of indices is a valid shorter chain) unless given.
    Returns (c_x0, c_xt, β̃, β) with the posterior mean μ̃ = c_x0 · x_0 + c_xt · x_t:
    c_x0 = √ᾱ_s β/(1−ᾱ_t), c_xt = √(1−β) (1−ᾱ_s)/(1−ᾱ_t), β̃ = (1−ᾱ_s)/(1−ᾱ_t) · β.
    At ᾱ_s = 1 the mean is x_0 and β̃ = 0.
    """
    if beta is None:
        beta = 1.0 - alpha_bar / alpha_bar_prev
    coef_x0 = alpha_bar_prev**0.5 * beta / (1 - alpha_bar)
    coef_xt = (1.0 - beta) ** 0.5 * (1 - alpha_bar_prev) / (1 - alpha_bar)
    return coef_x0, coef_xt, (1 - alpha_bar_prev) / (1 - alpha_bar) * beta, beta


@dataclass(frozen=True, eq=False)
class Schedule:
    """A discrete variance schedule.

    Build one with :meth:`linear` or :meth:`cosine`; ``Schedule(betas)`` takes any table of betas
    in (0, 1). ``kind`` and ``params`` only record how it was built, so that a checkpoint can
    rebuild it with :meth:`from_dict`.
    """

    betas: Tensor  # (T,) float64
    kind: str = "custom"
    params: dict[str, Any] = field(default_factory=dict)
    # Tables already copied to an accelerator, by (name, device): see :meth:`table`.
    _on_device: dict[tuple[str, torch.device], Tensor] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).flatten().clone()
        if betas.numel() < 1:
            raise ValueError("a schedule needs at least one timestep; got an empty table of betas")
        if not bool(((betas > 0) & (betas < 1)).all()):
            bad = betas[~((betas > 0) & (betas < 1))][0].item()
            raise ValueError(f"every beta must lie in (0, 1); got {bad!r}")
        object.__setattr__(self, "betas", betas)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(cls, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Schedule:
        """DDPM's schedule (Ho et al. 2020): β rises linearly from ``beta_start`` to ``beta_end``."""
        _check_timesteps(timesteps)
        for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
            if not 0.0 < float(value) < 1.0:
                raise ValueError(f"{name} must lie in (0, 1); got {value!r}")
        if beta_start > beta_end:
            raise ValueError(
                f"beta_start ({beta_start}) is larger than beta_end ({beta_end}); noise must not shrink "
                "over time: swap them"
            )
        betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        return cls(betas, "linear", {"timesteps": timesteps, "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def cosine(cls, timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> Schedule:
        """Nichol & Dhariwal (2021) eq. 17: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s)/(1 + s) · π/2).

        β_t = 1 − ᾱ(t+1)/ᾱ(t), capped at ``max_beta`` to avoid the singularity at t = T.
        """
        _check_timesteps(timesteps)
        if not 0.0 < max_beta < 1.0:
            raise ValueError(f"max_beta must lie in (0, 1); got {max_beta!r}")
        if s < 0:
            raise ValueError(f"the cosine offset s must be >= 0; got {s!r}")
        steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas, "cosine", {"timesteps": timesteps, "s": s, "max_beta": max_beta})

    # ------------------------------------------------------------------ tables
    @property
    def timesteps(self) -> int:
        """T, the number of steps."""
        return self.betas.numel()

    @property
    def alphas(self) -> Tensor:
        """α_t = 1 − β_t, float64 (T,)."""
        return 1.0 - self.betas

    @property
    def alphas_cumprod(self) -> Tensor:
        """ᾱ_t = ∏_{s≤t} α_s, float64 (T,)."""
        return torch.cumprod(self.alphas, dim=0)

    @property
    def alphas_cumprod_prev(self) -> Tensor:
        """ᾱ_{t−1} with ᾱ_{−1} = 1 (the clean image), float64 (T,)."""
        return torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])

    @property
    def posterior_variance(self) -> Tensor:
        """β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) · β_t (DDPM eq. 7), float64 (T,); β̃_0 = 0."""
        return posterior_coefficients(self.alphas_cumprod, self.alphas_cumprod_prev, self.betas)[2]

    def table(self, name: str, device: torch.device | str) -> Tensor:
        """The float64 table ``name`` (``"alphas_cumprod"``, ``"betas"``, ...) on ``device``, (T,).

        Tables are computed on the CPU (so every device sees the same numbers) and copied to another
        device once; the copy is kept, so a training step does not send the table again.
        """
        device = torch.device(device)
        if device.type == "cpu":
            return getattr(self, name)
        key = (name, device)
        if key not in self._on_device:
            self._on_device[key] = getattr(self, name).to(device)
        return self._on_device[key]

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description; custom tables are stored as lists of floats."""
        if self.kind in ("linear", "cosine"):
            return {"kind": self.kind, **self.params}
        return {"kind": "custom", "betas": self.betas.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        kind = d.pop("kind", None)
        if kind == "linear":
            return cls.linear(**d)
        if kind == "cosine":
            return cls.cosine(**d)
        if kind == "custom":
            return cls(torch.tensor(d["betas"], dtype=torch.float64))
        raise ValueError(f"unknown schedule kind {kind!r}; expected 'linear', 'cosine' or 'custom'")

    def __repr__(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.params.items() if k != "timesteps")
        return f"Schedule.{self.kind}(timesteps={self.timesteps}{', ' + extra if extra else ''})"


def _check_timesteps(timesteps: int) -> None:
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps must be an integer >= 1; got {timesteps!r}")


def spaced_timesteps(
    schedule: Schedule, steps: int, spacing: str = DEFAULT_SPACING, *, scale: float = INFO_SCALE
) -> Tensor:
    """Pick ``steps`` indices of the training schedule to sample with.

    Returns a LongTensor (steps,) of distinct indices in **decreasing** order. For steps >= 2 it starts
    at T−1 (except ``leading``) and always ends at index 0, so every sampler finishes on the least noisy
    step the model was trained on. A single step is taken at T−1: pure noise only matches the noisiest
    index, and one model call there gives x̂_0 = E[x_0 | x_T].

    - ``leading``: 0, c, 2c, ... with c = T // steps (DDIM's original choice; never reaches T−1).
    - ``linspace``: evenly spaced from T−1 down to 0, rounded.
    - ``trailing``: T−1, T−1−c, ... with c = T / steps, the last one replaced by 0 (so its final gap is
      about 2c; kept for comparison with diffusers, measured worse than ``linspace``).
    - ``logsnr``: evenly spaced in log-SNR = log(ᾱ/(1−ᾱ)) between index T−1 and index 0, each point
      rounded to the nearest index and nudged to keep the indices distinct. With networks trained on a CPU
      its steps at high noise give the stochastic samplers a lower FD (BENCHMARKS.md, "samplers_model.py"), so
      the CLI's ``DEFAULT_SAMPLER`` uses it.
    - ``info``, the default (:data:`DEFAULT_SPACING`): evenly spaced in u = ½ log(1 + s² · SNR),
      SNR = ᾱ/(1−ᾱ), s = ``scale`` (default :data:`INFO_SCALE` = 8), between index T−1 and index 0, rounded
      as for ``logsnr``. u is the mutual information I(x_0; x_t) per dimension of Gaussian data with
      standard deviation s, so equal steps in u are equal gains of information about x_0. Where
      σ/α = SNR^(−1/2) is below s, u ≈ ½ log SNR + log s and the points are log-SNR-uniform; where the noise
      swamps data of scale s (σ/α ≫ s), x̂_0 hardly moves and u ≈ s² · SNR / 2 packs that part of the
      schedule into one or two steps. s → ∞ gives ``logsnr``. It depends on the schedule and on s alone, not
      on the data; s = 8 is 8× the largest per-pixel standard deviation that data in [-1, 1] can have (1),
      and, like EDM's σ_max = 80, a bound rather than a fitted value.
    """
    if spacing == "info" and not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale (the data scale s of the 'info' spacing) must be a number > 0; got {scale!r}")
    T = schedule.timesteps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..{T} (the schedule's length); got {steps!r}")
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")
    if steps == T:
        return torch.arange(T - 1, -1, -1)
    if steps == 1:
        return torch.tensor([T - 1])
    if spacing == "leading":
        idx = torch.arange(steps) * (T // steps)
    elif spacing == "linspace":
        idx = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long()
    elif spacing == "trailing":
        idx = (T - 1 - torch.arange(steps, dtype=torch.float64) * (T / steps)).round().long()
        idx[-1] = 0
    else:  # logsnr and info: log-SNR targets, each rounded to the index with the nearest log-SNR
        lam = torch.as_tensor(log_snr(schedule.alphas_cumprod))  # decreasing in t
        if spacing == "logsnr":
            targets = torch.linspace(lam[0].item(), lam[-1].item(), steps, dtype=torch.float64)
        else:
            targets = _info_targets(lam, steps, scale)
        idx = _nearest_unique(lam, targets)
    idx = torch.unique(idx)  # sorted ascending
    if idx.numel() != steps:  # cannot happen for the rules above; guard against silent changes
        raise AssertionError(f"spacing {spacing!r} gave {idx.numel()} distinct indices for steps={steps}")
    return idx.flip(0)


def _info_targets(lam: Tensor, steps: int, scale: float) -> Tensor:
    """``steps`` log-SNR values (float64, decreasing) evenly spaced in u = ½ log(1 + s² SNR), s = ``scale``,
    from lam[0] to lam[-1] of the decreasing log-SNR table ``lam`` (T,)."""
    # (1) u = ½ log(1 + s² SNR), computed stably as ½ softplus(log SNR + 2 log s).
    u = 0.5 * torch.nn.functional.softplus(lam + 2 * math.log(scale))
    u_targets = torch.linspace(u[0].item(), u[-1].item(), steps, dtype=torch.float64)
    # (2) back to log SNR: SNR = (e^{2u} − 1)/s².
    return torch.log(torch.expm1(2 * u_targets)) - 2 * math.log(scale)


def _nearest_unique(lam: Tensor, targets: Tensor) -> Tensor:
    """Indices (ascending, distinct) of the entries of the decreasing table ``lam`` nearest the
    decreasing ``targets``; the first maps to 0 and the last to T−1.

    Rounding alone collides where λ changes fast per index (near t = 0), so a forward pass lifts each
    index to at least one above the previous, and caps it so that the remaining targets still fit.
    """
    T, K = lam.numel(), targets.numel()
    # lam is decreasing: search on −lam, which is increasing.
    pos = torch.searchsorted(-lam, -targets).clamp(1, T - 1)  # first index with lam <= target
    left_closer = (lam[pos - 1] - targets).abs() <= (lam[pos] - targets).abs()
    nearest = torch.where(left_closer, pos - 1, pos).tolist()
    chosen: list[int] = []
    for k, j in enumerate(nearest):
        lo = chosen[-1] + 1 if chosen else 0
        chosen.append(min(max(j, lo), T - K + k))
    chosen[0], chosen[-1] = 0, T - 1
    return torch.tensor(chosen)
