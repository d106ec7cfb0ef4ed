"""The training objective: which timesteps are drawn, and how each one's error is weighted.

DDPM's objective (Ho et al. 2020, "L_simple") draws t uniformly from 0..T−1 and takes the plain
MSE between the network's output and its target (ε, x_0 or v). On the linear schedule half of those
draws land where SNR = ᾱ/(1−ᾱ) < 0.1, where there is little left to learn. Two published remedies keep
the forward process and change the emphasis:

- **Loss weights** per timestep. They are stated here as a weight w(t) on the x_0 error ‖x_0 − x̂_0‖²,
  the common currency of the three parametrisations; the weight on the network's own MSE is w(t) times
  ‖x_0 − x̂_0‖² / ‖target − output‖², which is 1/SNR for ε, 1/(1+SNR) for v and 1 for x_0
  (x̂_0 = (x_t − √(1−ᾱ) ε̂)/√ᾱ and x̂_0 = √ᾱ x_t − √(1−ᾱ) v̂).

  - ``min-snr`` (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting"):
    w(t) = min(SNR_t, γ), γ = 5 by default. For ε this is min(SNR, γ)/SNR: 1 at high noise, γ/SNR at
    low noise, so easy low-noise steps stop dominating the gradient.
  - ``p2`` (Choi et al. 2022, "Perception Prioritized Training"): ε-loss weight 1/(k + SNR)^γ with
    k = 1 and γ = 1 by default, i.e. w(t) = SNR/(1 + SNR)^γ.
  - ``none``: the plain MSE of whatever the network predicts (L_simple for ε).

- **Timestep sampling**: ``uniform`` (DDPM's), or ``laplace`` (Hang et al. 2024, "Improved Noise
  Schedule for Diffusion Training"): log-SNR λ is drawn from a Laplace density centred at ``loc`` with
  scale ``scale``; on a discrete schedule index t gets the Laplace mass of the λ-interval that rounds to
  it (edges halfway between neighbouring λ_t, the two end intervals open), so the draw concentrates
  where λ ≈ loc, the mid-noise steps.

  Either density can be drawn **stratified** (the "low-discrepancy sampler" of Kingma et al. 2021,
  "Variational Diffusion Models"): the B uniform numbers u behind a batch's draws are
  (u₀ + i/B) mod 1 for i = 0..B−1 with one u₀ ~ U[0, 1), in a random order, so each of the B equal slices
  of [0, 1) holds exactly one. Every single draw keeps the density, so the loss's expectation is unchanged;
  only the batch's spread over t is even, which lowers the variance of the batch's loss and gradient.

- **The objective itself** (``loss_type``): ``simple``, the MSE above (DDPM's L_simple); ``vlb``, the true
  variational bound L = L_T + Σ_{t≥1} L_{t−1} + L_0 (DDPM eq. 5; the terms of :func:`ddpm.likelihood.vlb_terms`,
  the same code as ``ddpm eval --nll``), estimated per image as T · L_t in bits/dim so that the batch mean is the
  bound less its constant L_T; ``hybrid`` (Nichol & Dhariwal 2021, "Improved DDPM", §3.1): L_simple + λ L_vlb,
  λ = ``vlb_weight`` = 0.001, where the bound term sees the network's mean through a stop-gradient, so it trains
  only the variance and L_simple alone trains the mean. ``hybrid`` needs a learned variance (its bound term has
  nothing else to train); ``vlb`` works with a fixed Σ (the DDPM paper's Table 2 rows "L, fixed isotropic Σ") or a
  learned one.

- **Loss-aware timesteps** (``importance``, improved DDPM §3.3): p_t ∝ √E[L_t²] over the last 10 losses seen at
  each t (:class:`LossHistory`), mixed with 0.1% of uniform, each image's loss weighted by 1/(T p_t) so the
  objective's expectation is unchanged; uniform until every t has 10 losses. The history is part of the training
  state, so a resumed run draws the same timesteps.

Every table is float64 of length T and indexed by t; the weights are cast to the loss's dtype at the end.
:class:`Objective` puts the choices of one run together: ``draw_t`` and ``loss`` are what training calls.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .diffusion import (
    LEARNED_VARIANCES,
    VARIANCES,
    extract,
    learned_log_variance,
    prediction_to_x0_eps,
    q_posterior,
    q_sample,
    split_output,
    training_target,
)
from .errors import ParameterError
from .likelihood import learned_variance_bounds, reverse_log_variance, vlb_terms
from .schedule import Schedule, log_snr, posterior_coefficients

LOSS_WEIGHTS = ("none", "min-snr", "p2")
T_SAMPLINGS = ("uniform", "laplace", "importance")
LOSS_TYPES = ("simple", "vlb", "hybrid")
DEFAULT_VLB_WEIGHT = 0.001  # λ of L_hybrid (improved DDPM §3.1)
DEFAULT_GAMMA = {"min-snr": 5.0, "p2": 1.0}


def snr(schedule: Schedule) -> Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t), float64 (T,)."""
    ab = schedule.alphas_cumprod
    return ab / (1 - ab)


def loss_weights(schedule: Schedule, prediction: str, weighting: str = "none", gamma: float | None = None) -> Tensor:
    """Per-timestep weights (T,) float64 on the MSE between the network's output and its ``prediction`` target.

    ``weighting`` is one of :data:`LOSS_WEIGHTS`; ``gamma`` None takes the weighting's default
    (:data:`DEFAULT_GAMMA`). ``none`` gives ones.
    """
    if weighting not in LOSS_WEIGHTS:
        raise ValueError(f"unknown loss weighting {weighting!r}; choose one of {', '.join(LOSS_WEIGHTS)}")
    s = snr(schedule)
    if weighting == "none":
        return torch.ones_like(s)
    g = DEFAULT_GAMMA[weighting] if gamma is None else float(gamma)
    if not (math.isfinite(g) and g > 0):
        raise ValueError(f"the {weighting} gamma must be a positive number; got {gamma!r}")
    w_x0 = s.clamp(max=g) if weighting == "min-snr" else s / (1 + s) ** g
    # ‖x0 − x̂0‖² per unit of the network's own squared error; a mean μ̃ = c_x0 x_0 + c_xt x_t carries c_x0 of it.
    c_x0 = posterior_coefficients(schedule.alphas_cumprod, schedule.alphas_cumprod_prev, schedule.betas)[0]
    per_unit = {"eps": 1 / s, "v": 1 / (1 + s), "x0": torch.ones_like(s), "mean": 1 / c_x0.square()}
    if prediction not in per_unit:
        raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(per_unit)}")
    return w_x0 * per_unit[prediction]


def timestep_probabilities(
    schedule: Schedule, sampling: str = "uniform", loc: float = 0.0, scale: float = 0.5
) -> Tensor:
    """The probability (T,) float64 of drawing each index t under ``sampling`` (see the module notes)."""
    T = schedule.timesteps
    if sampling in ("uniform", "importance"):  # importance: uniform until its history is full (LossHistory)
        return torch.full((T,), 1.0 / T, dtype=torch.float64)
    if sampling != "laplace":
        raise ValueError(f"unknown timestep sampling {sampling!r}; choose one of {', '.join(T_SAMPLINGS)}")
    if not (math.isfinite(scale) and scale > 0) or not math.isfinite(loc):
        raise ValueError(f"the Laplace density needs a finite loc and a positive scale; got {loc!r}, {scale!r}")
    lam = torch.as_tensor(log_snr(schedule.alphas_cumprod))  # decreasing in t
    # Interval of t: (edge[t+1], edge[t]] in λ, halfway to the neighbours; the ends reach ±∞.
    mid = 0.5 * (lam[1:] + lam[:-1])
    inf = torch.tensor([math.inf], dtype=torch.float64)
    upper, lower = torch.cat([inf, mid]), torch.cat([mid, -inf])

    def cdf(x: Tensor) -> Tensor:  # the Laplace(loc, scale) distribution function
        z = (x - loc) / scale
        return torch.where(z < 0, 0.5 * torch.exp(z.clamp(max=0)), 1 - 0.5 * torch.exp(-z.clamp(min=0)))

    p = cdf(upper) - cdf(lower)
    return p / p.sum()


def stratified_uniforms(n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
    """(n,) float64 in [0, 1): (u₀ + i/n) mod 1 for i = 0..n−1, one u₀ ~ U[0, 1), randomly permuted.

    Each value alone is U[0, 1); together they put exactly one value in each slice [k/n, (k+1)/n).
    """
    u0 = torch.rand(1, generator=generator, device=device, dtype=torch.float64)
    grid = torch.arange(n, device=device, dtype=torch.float64) / n
    u = torch.remainder(u0 + grid, 1.0)
    return u[torch.randperm(n, generator=generator, device=device)]


def draw_timesteps(
    n: int,
    probabilities: Tensor | None,
    timesteps: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    stratified: bool = False,
) -> Tensor:
    """n indices (n,) int64: uniform from 0..T−1 when ``probabilities`` is None (DDPM's draw),
    else from the distribution ``probabilities`` (T,). ``stratified`` draws the n as one stratified set
    (:func:`stratified_uniforms`) through the same inverse distribution function."""
    if probabilities is None and not stratified:
        return torch.randint(0, timesteps, (n,), generator=generator, device=device)
    if stratified:
        u = stratified_uniforms(n, generator, device)
    else:
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if probabilities is None:
        return (u * timesteps).floor().long().clamp(max=timesteps - 1)
    cum = probabilities.to(device).cumsum(0)
    return torch.searchsorted(cum, u * cum[-1], right=True).clamp(max=timesteps - 1)


def diffusion_loss(output: Tensor, target: Tensor, t: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean over the batch of the (optionally t-weighted) per-image MSE; output, target (B, C, H, W), t (B,).

    ``weights`` None is the plain MSE (bit for bit ``F.mse_loss``); else ``weights`` (T,) from
    :func:`loss_weights` multiply each image's mean squared error.
    """
    if weights is None:
        return torch.nn.functional.mse_loss(output.float(), target.float())
    per_image = (output.float() - target.float()).square().flatten(1).mean(1)  # (B,)
    return (extract(weights, t, per_image) * per_image).mean()


class LossHistory:
    """The loss-aware timestep sampler of improved DDPM (§3.3, "importance sampling"): the last ``per_t`` losses
    seen at each of the T indices, and p_t ∝ √(mean of their squares), mixed with ``uniform`` of the uniform
    density; None (draw uniformly) until every index has ``per_t`` losses. Kept in the training state."""

    def __init__(self, timesteps: int, per_t: int = 10, uniform: float = 0.001) -> None:
        self.timesteps, self.per_t, self.uniform = timesteps, per_t, uniform
        self._values: list[list[float]] = [[] for _ in range(timesteps)]
        self._p: Tensor | None = None  # probabilities() since the last update

    def probabilities(self) -> Tensor | None:
        """p (T,) float64 on the CPU, or None while some index has fewer than ``per_t`` losses."""
        if self._p is None and all(len(v) == self.per_t for v in self._values):
            w = torch.tensor(self._values, dtype=torch.float64).square().mean(1).sqrt()
            self._p = (1 - self.uniform) * w / w.sum() + self.uniform / self.timesteps
        return self._p

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record the losses (n,) seen at indices t (n,), in order; each index keeps its newest ``per_t``."""
        self._p = None
        for ti, li in zip(t.tolist(), losses.tolist(), strict=True):
            kept = self._values[ti]
            kept.append(float(li))
            if len(kept) > self.per_t:
                del kept[0]

    def state_dict(self) -> dict[str, Tensor]:
        """The history as tensors: ``values`` (T, per_t) float64 (NaN where not yet seen) and ``counts`` (T,)."""
        values = torch.full((self.timesteps, self.per_t), math.nan, dtype=torch.float64)
        for ti, kept in enumerate(self._values):
            if kept:
                values[ti, : len(kept)] = torch.tensor(kept, dtype=torch.float64)
        return {"values": values, "counts": torch.tensor([len(v) for v in self._values], dtype=torch.int64)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`state_dict`."""
        values, counts = state["values"], state["counts"]
        if tuple(values.shape) != (self.timesteps, self.per_t):
            raise ValueError(f"a loss history of shape {tuple(values.shape)} does not fit T={self.timesteps}")
        self._values = [values[ti, : int(c)].tolist() for ti, c in enumerate(counts.tolist())]
        self._p = None


@dataclass(frozen=True)
class Objective:
    """One run's training objective: how its timesteps are drawn and the loss of a batch.

    ``t_probabilities`` (T,) None draws t uniformly (DDPM's draw); ``weights`` (T,) None is the plain MSE;
    ``stratified`` draws each batch's t as one stratified set; ``loss_type``, ``variance`` and ``vlb_weight`` choose
    the objective (see the module notes); ``history`` is the loss-aware sampler's state (``importance`` draws).
    Build it with :meth:`create` from the option names; the tables live on the device given there.
    """

    schedule: Schedule
    prediction: str = "eps"
    t_probabilities: Tensor | None = None
    weights: Tensor | None = None
    stratified: bool = False
    loss_type: str = "simple"
    variance: str = "fixed-small"
    vlb_weight: float = DEFAULT_VLB_WEIGHT
    history: LossHistory | None = None
    # log σ² of p_θ at each t, (T,) float64 each: the fixed table twice, or a learned variance's two ends (β̃_t, β_t)
    log_variances: tuple[Tensor, Tensor] | None = None

    @classmethod
    def create(
        cls,
        schedule: Schedule,
        prediction: str = "eps",
        loss_weight: str = "none",
        gamma: float | None = None,
        t_sampling: str = "uniform",
        laplace_loc: float = 0.0,
        laplace_scale: float = 0.5,
        device: torch.device | str = "cpu",
        stratified: bool = False,
        loss_type: str = "simple",
        variance: str = "fixed-small",
        vlb_weight: float = DEFAULT_VLB_WEIGHT,
    ) -> Objective:
        """The objective of :func:`loss_weights` ``loss_weight``, :func:`timestep_probabilities` ``t_sampling`` and
        ``loss_type`` with the reverse ``variance``."""
        check_objective(loss_type, variance, t_sampling, loss_weight, vlb_weight)
        probs = (
            None
            if t_sampling in ("uniform", "importance")
            else timestep_probabilities(schedule, t_sampling, laplace_loc, laplace_scale).to(device)
        )
        weights = None if loss_weight == "none" else loss_weights(schedule, prediction, loss_weight, gamma).to(device)
        history = LossHistory(schedule.timesteps) if t_sampling == "importance" else None
        log_variances = None
        if loss_type != "simple":  # the bound's σ² tables, on the device once
            tables = (
                learned_variance_bounds(schedule)
                if variance in LEARNED_VARIANCES
                else (reverse_log_variance(schedule, "posterior" if variance == "fixed-small" else "beta"),) * 2
            )
            log_variances = (tables[0].to(device), tables[1].to(device))
        return cls(
            schedule, prediction, probs, weights, stratified, loss_type, variance, vlb_weight, history, log_variances
        )

    def draw_t(self, n: int, generator: torch.Generator, device: torch.device | str = "cpu") -> Tensor:
        """n training timesteps (n,) int64, see :func:`draw_timesteps`."""
        probs = self.t_probabilities if self.history is None else self.history.probabilities()
        return draw_timesteps(n, probs, self.schedule.timesteps, generator, device, self.stratified)

    def loss(self, model: Callable[..., Tensor], x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None = None,
             memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:  # fmt: skip
        """The loss (scalar) of ``model`` on clean images x0 (B, C, H, W) at timesteps t (B,) with noise ε (B, C, H, W).

        x_t = q_sample(x0, t, ε) with **that** ε; the network's output on (x_t, t[, labels]) is compared to its
        target (ε, x0, v or μ̃) by :func:`diffusion_loss` with this objective's weights, or enters the bound.
        """
        return self.losses(model, x0, t, noise, labels, memory_format)[0]

    def losses(self, model: Callable[..., Tensor], x0: Tensor, t: Tensor, noise: Tensor, labels: Tensor | None = None,
               memory_format: torch.memory_format = torch.contiguous_format,
               ) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        """(the loss (scalar), each image's loss (B,) detached for the loss-aware sampler or None); see :meth:`loss`."""
        x_t = q_sample(x0, t, noise, self.schedule).contiguous(memory_format=memory_format)
        output = model(x_t, t) if labels is None else model(x_t, t, labels)
        pred, var_out = split_output(output, self.variance)
        if self.loss_type == "simple" and self.history is None:
            return diffusion_loss(
                pred, training_target(x0, noise, t, self.schedule, self.prediction), t, self.weights
            ), None
        per_image = torch.zeros(x0.shape[0], dtype=torch.float32, device=x0.device)
        if self.loss_type in ("simple", "hybrid"):
            target = training_target(x0, noise, t, self.schedule, self.prediction)
            mse = (pred.float() - target.float()).square().flatten(1).mean(1)  # (B,)
            per_image = per_image + (mse if self.weights is None else extract(self.weights, t, mse) * mse)
        if self.loss_type in ("vlb", "hybrid"):
            mean_pred = pred.detach() if self.loss_type == "hybrid" else pred  # hybrid: the bound trains Σ only
            bound = self.schedule.timesteps * self.vlb_bits(x0, x_t, t, mean_pred, var_out)
            per_image = per_image + (self.vlb_weight * bound if self.loss_type == "hybrid" else bound)
        importance: Tensor | float = 1.0
        probs = None if self.history is None else self.history.probabilities()
        if probs is not None:  # 1/(T p_t): the loss's expectation over t stays that of uniform draws
            importance = 1.0 / (self.schedule.timesteps * extract(probs.to(x0.device), t, per_image))
        return (importance * per_image).mean(), per_image.detach()

    def vlb_bits(self, x0: Tensor, x_t: Tensor, t: Tensor, pred: Tensor, var_out: Tensor | None) -> Tensor:
        """Each image's term L_t of the bound (B,) in bits/dim, float32, for the network's prediction ``pred`` and
        variance output ``var_out`` (B, C, H, W) at x_t (B, C, H, W), t (B,)."""
        x0, x_t, pred = x0.float(), x_t.float(), pred.float()
        ab = extract(self.schedule.table("alphas_cumprod", x0.device), t, x0)
        if self.prediction == "mean":
            model_mean = pred
        else:
            ab_prev = extract(self.schedule.table("alphas_cumprod_prev", x0.device), t, x0)
            x0_hat, _ = prediction_to_x0_eps(pred, x_t, ab, self.prediction, ab_prev)
            model_mean = q_posterior(x0_hat, x_t, t, self.schedule)[0]
        assert self.log_variances is not None  # tables built in Objective.create for the bound
        small, large = (extract(v, t, x0) for v in self.log_variances)
        log_var = learned_log_variance(var_out.float(), self.variance, small, large) if var_out is not None else small
        return vlb_terms(x0, x_t, t, model_mean, log_var, self.schedule) / (x0[0].numel() * math.log(2.0))


def check_objective(
    loss_type: str, variance: str, t_sampling: str, loss_weight: str = "none", vlb_weight: float = DEFAULT_VLB_WEIGHT
) -> None:
    """Reject a combination that cannot train, with a ``ParameterError`` naming the parameters."""
    if loss_type not in LOSS_TYPES:
        raise ParameterError(f"unknown {{loss}} {loss_type!r}: choose one of {', '.join(LOSS_TYPES)}")
    if variance not in VARIANCES:
        raise ParameterError(f"unknown {{variance}} {variance!r}: choose one of {', '.join(VARIANCES)}")
    if variance in LEARNED_VARIANCES and loss_type == "simple":
        raise ParameterError(f"a {variance} variance is trained only by the bound: pass {{loss}} hybrid (or vlb)")
    if loss_type == "hybrid" and variance not in LEARNED_VARIANCES:
        raise ParameterError(
            "{loss} hybrid trains a learned variance through its bound term: pass {variance} "
            "learned-range (or learned), or use {loss} vlb for the bound with a fixed variance"
        )
    if t_sampling == "importance" and loss_type == "simple":
        raise ParameterError(
            "{t_sampling} importance weighs timesteps by the history of the bound's terms: use it "
            "with {loss} vlb or hybrid"
        )
    if loss_type == "vlb" and loss_weight != "none":
        raise ParameterError(
            "{loss_weight} weighs the MSE of L_simple; the bound (loss vlb) has its own weights: drop {loss_weight}"
        )
    if not (math.isfinite(vlb_weight) and vlb_weight > 0):
        raise ParameterError(f"{{vlb_weight}} must be a positive number; got {vlb_weight!r}")
