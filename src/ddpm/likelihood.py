"""Likelihood: the variational bound of DDPM (Ho et al. 2020, eq. 5) in bits per dimension.

For 8-bit images x_0 scaled to [-1, 1], the negative log-likelihood of the model's reverse chain is bounded by

    L = L_T + Σ_{t≥1} L_{t−1} + L_0,   in the code's indices (t = 0..T−1, index 0 the least noisy step):
    prior    L_T  = KL(q(x_{T−1} | x_0) ‖ N(0, I)),
    term t ≥ 1    = KL(q(x_{t−1} | x_t, x_0) ‖ p_θ(x_{t−1} | x_t)),   x_t ~ q(x_t | x_0),
    term 0        = −log p_θ(x_0 | x_{t=0}), the discretized Gaussian decoder (256 bins of width 2/255).

p_θ(x_{t−1} | x_t) = N(μ_θ, σ_t² I) with μ_θ the posterior mean μ̃_t(x̂_0, x_t) of the model's x̂_0, exactly the
step of the ancestral sampler (``sample_ddpm``), and σ_t² that sampler's ``variance``: ``"posterior"`` σ_t² = β̃_t
(the paper's and improved-diffusion's "fixed small", this package's default) or ``"beta"`` σ_t² = β_t ("fixed
large"). The decoder at index 0 has no sampler counterpart (the last sampling step adds no noise); its scale is
√β̃ at index 1 for both choices, as in the DDPM and improved-diffusion code (their "fixed large" replaces β at
the first step by β̃ of the second "to get a better decoder log likelihood", and their "fixed small" clips β̃_0 = 0
to the same value), so the numbers are comparable with the paper's.

Bits per dimension = nats / (D · ln 2), D = C·H·W. A model that knows nothing of 8-bit data scores 8 bits/dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .denoiser import Callback, Denoised, Denoiser, Generators, make_denoiser, randn
from .diffusion import q_posterior
from .sampling import model_device
from .schedule import Schedule

VARIANCES = ("posterior", "beta", "learned")
BINS = 256  # 8-bit data: pixel k in 0..255 sits at k/127.5 − 1
HALF_BIN = 1.0 / (BINS - 1)  # half the distance between neighbouring levels in [-1, 1]


def normal_kl(mean1: Tensor | float, logvar1: Tensor | float, mean2: Tensor | float, logvar2: Tensor | float) -> Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats; any broadcastable shapes.

    KL = ½ (logvar2 − logvar1 + e^{logvar1 − logvar2} + (mean1 − mean2)² e^{−logvar2} − 1).
    """
    mean1, logvar1, mean2, logvar2 = (
        torch.as_tensor(v, dtype=torch.float64) if not isinstance(v, Tensor) else v
        for v in (mean1, logvar1, mean2, logvar2)
    )
    return 0.5 * (
        logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2).square() * torch.exp(-logvar2) - 1.0
    )


def quantize(x: Tensor) -> Tensor:
    """The nearest 8-bit level of each value of x (any shape, in [-1, 1]): round((x + 1) · 127.5) / 127.5 − 1."""
    return ((x + 1) * ((BINS - 1) / 2)).round().clamp(0, BINS - 1) / ((BINS - 1) / 2) - 1


def _log_sub_exp(log_big: Tensor, log_small: Tensor) -> Tensor:
    """log(e^log_big − e^log_small) for log_big ≥ log_small, without cancelling digits when they are close.

    Where the two are equal (both edges of a bin so deep in one tail that their log-CDFs round to the same number)
    the difference is taken as e^−69 of e^log_big instead of 0: finite, so that a gradient through the branch of
    ``torch.where`` that is not selected stays 0 instead of NaN (as a training loss needs)."""
    return log_big + torch.log(-torch.expm1((log_small - log_big).clamp(max=-1e-30)))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor | float) -> Tensor:
    """log P(bin of x) under N(mean, e^{2·log_scale}) discretized to the 256 levels of 8-bit data, in nats.

    x: (B, ...) in [-1, 1]; mean and log_scale broadcast to x. The bin of x is that of its nearest level
    c = k/127.5 − 1, [c − 1/255, c + 1/255], with the first bin open to −∞ and the last to +∞, so the
    probabilities of the 256 bins sum to one for every mean and scale (DDPM §3.3, eq. 13). Computed with the
    exact normal CDF in log space (log Φ, and log(Φ(b) − Φ(a)) taken in whichever tail holds both edges), so
    it stays finite and accurate where the bin lies far in a tail. Returns x's shape (float, mean's dtype).
    """
    log_scale = torch.as_tensor(log_scale, dtype=mean.dtype, device=mean.device)
    k = ((x + 1) * ((BINS - 1) / 2)).round().clamp(0, BINS - 1)  # the bin index of each value
    centre = k / ((BINS - 1) / 2) - 1
    inv_scale = torch.exp(-log_scale)
    a = (centre - HALF_BIN - mean) * inv_scale  # lower edge, standardized
    b = (centre + HALF_BIN - mean) * inv_scale  # upper edge, standardized
    log_cdf_b = torch.special.log_ndtr(b)  # log Φ(b)
    log_sf_a = torch.special.log_ndtr(-a)  # log (1 − Φ(a))
    # Inner bins: log(Φ(b) − Φ(a)) on the lower side, log(Φ(−a) − Φ(−b)) where both edges are above the mean.
    upper = a > 0
    inner = torch.where(
        upper,
        _log_sub_exp(log_sf_a, torch.special.log_ndtr(-b)),
        _log_sub_exp(log_cdf_b, torch.special.log_ndtr(a)),
    )
    return torch.where(k == 0, log_cdf_b, torch.where(k == BINS - 1, log_sf_a, inner))


def prior_kl(x0: Tensor, schedule: Schedule) -> Tensor:
    """L_T elementwise: KL(q(x_{T−1} | x_0) ‖ N(0, 1)) in nats, x0: (B, ...) → (B, ...) float64.

    q(x_{T−1} | x_0) = N(√ᾱ_{T−1} x_0, 1 − ᾱ_{T−1}); no model is involved.
    """
    a = schedule.alphas_cumprod[-1].item()
    x0 = x0.to(torch.float64)
    return normal_kl(
        math.sqrt(a) * x0,
        torch.tensor(math.log1p(-a), dtype=torch.float64, device=x0.device),
        torch.zeros((), dtype=torch.float64, device=x0.device),
        torch.zeros((), dtype=torch.float64, device=x0.device),
    )


def reverse_log_variance(schedule: Schedule, variance: str = "posterior") -> Tensor:
    """log σ_t² of p_θ(x_{t−1} | x_t) for t = 0..T−1, float64 (T,).

    ``"posterior"``: σ_t² = β̃_t; ``"beta"``: σ_t² = β_t (the two choices of ``sample_ddpm``). Index 0 is the
    decoder's variance: β̃ at index 1 for both (see the module docstring; β_0 when T = 1, where β̃_1 does not exist).
    """
    _check_variance(variance)
    table = schedule.posterior_variance.clone() if variance == "posterior" else schedule.betas.clone()
    table[0] = schedule.posterior_variance[1] if schedule.timesteps > 1 else schedule.betas[0]
    return table.log()


def learned_variance_bounds(schedule: Schedule) -> tuple[Tensor, Tensor]:
    """(log β̃_t with index 0 clipped to β̃_1, log β_t), float64 (T,) each: the two ends a ``learned-range`` network
    interpolates at step t (improved DDPM eq. 15, and improved-diffusion's tables)."""
    return reverse_log_variance(schedule, "posterior"), schedule.betas.log()


def _check_variance(variance: str) -> None:
    """Reject a reverse variance other than ``VARIANCES``."""
    if variance not in VARIANCES:
        raise ValueError(
            f"unknown reverse variance {variance!r}; choose 'posterior' (β̃_t, fixed small) "
            "or 'beta' (β_t, fixed large), or 'learned' for a network that predicts its variance"
        )


def vlb_terms(
    x0: Tensor, x_t: Tensor, t: Tensor, model_mean: Tensor, model_log_variance: Tensor | float, schedule: Schedule
) -> Tensor:
    """The bound's term L_t of each image at its own index, in nats summed over dimensions: (B,).

    x0: the data (on the 8-bit grid), x_t: a draw of q(x_t | x_0), model_mean: the mean μ_θ(x_t, t) of
    p_θ(x_{t−1} | x_t), all (B, C, H, W); t (B,) indices; ``model_log_variance`` log σ² broadcastable to x0 (a
    number, (B, 1, 1, 1) from a table, or (B, C, H, W) from a network). For t ≥ 1 KL(q(x_{t−1} | x_t, x_0) ‖
    N(μ_θ, σ²)); for t = 0 the discretized decoder −log p_θ(x_0 | x_t) with mean μ_θ (= x̂_0 there). Computed in
    x0's dtype: float64 for ``ddpm eval --nll``, float32 as a training loss (differentiable in μ_θ and σ²).
    """
    log_var = torch.as_tensor(model_log_variance, dtype=x0.dtype, device=x0.device).expand_as(x0)
    first = t == 0
    out = torch.empty(x0.shape[0], dtype=x0.dtype, device=x0.device)
    # Each row takes one of the two formulas, computed on its rows only: the other one's value there may be
    # infinite (β̃_0 = 0; a decoder bin far in a tail), and its gradient, though multiplied by zero, would be NaN.
    if bool(first.any()):
        out[first] = (
            -discretized_gaussian_log_likelihood(x0[first], model_mean[first], 0.5 * log_var[first]).flatten(1).sum(1)
        )
    rest = ~first
    if bool(rest.any()):
        true_mean, true_var = q_posterior(x0[rest], x_t[rest], t[rest], schedule)
        out[rest] = normal_kl(true_mean, true_var.log(), model_mean[rest], log_var[rest]).flatten(1).sum(1)
    return out


def vb_term(x0_hat: Tensor, x0: Tensor, x_t: Tensor, t: int, schedule: Schedule, log_variance: Tensor) -> Tensor:
    """One term of the bound for every image at one index t, in nats summed over dimensions: (B,) float64.

    x0_hat: the model's x̂_0 at (x_t, t), x0: the data (on the 8-bit grid), x_t: a draw of q(x_t | x_0), all
    (B, C, H, W); ``log_variance`` is :func:`reverse_log_variance` (T,), or log σ² of a network that predicts it
    (B, C, H, W). The model's mean is the posterior mean μ̃_t(x̂_0, x_t) (x̂_0 itself at t = 0); see :func:`vlb_terms`.
    """
    x0_hat, x0, x_t = (v.to(torch.float64) for v in (x0_hat, x0, x_t))
    tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
    log_var = log_variance[t].item() if log_variance.ndim == 1 else log_variance.to(torch.float64)
    model_mean = x0_hat if t == 0 else q_posterior(x0_hat, x_t, tt, schedule)[0]
    return vlb_terms(x0, x_t, tt, model_mean, log_var, schedule)


@dataclass
class VariationalBound:
    """The bound per image, in bits/dim (float64, on the CPU). B images, T steps.

    ``total`` (B,) = ``prior`` (B,) + ``terms.sum(1)``; ``terms`` (B, T): column 0 the decoder −log p(x_0 | x_0's
    least noisy latent), column t ≥ 1 the KL of step t. ``terms.mean(0)`` shows where the bound is spent.
    """

    total: Tensor
    prior: Tensor
    terms: Tensor

    def summary(self) -> dict[str, Any]:
        """Mean bits/dim with its standard error over the images, the means of the parts, and each image's total
        (``per_image_bits_per_dim``, B values in image order: two models bounded on the same images and noise are
        compared image by image, whose spread is far smaller than either's standard error). JSON-ready."""
        n = self.total.numel()
        stderr = self.total.std().item() / math.sqrt(n) if n > 1 else float("nan")
        return {
            "bits_per_dim": self.total.mean().item(),
            "bits_per_dim_stderr": stderr,
            "prior_bits_per_dim": self.prior.mean().item(),
            "decoder_bits_per_dim": self.terms[:, 0].mean().item(),
            "num_images": n,
            "timesteps": self.terms.shape[1],
            "per_image_bits_per_dim": self.total.tolist(),
        }


def _check_images(x0: Tensor) -> None:
    if x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(f"x0 must be a batch of images (B, C, H, W) with B >= 1; got shape {tuple(x0.shape)}")
    if not x0.is_floating_point():
        raise ValueError(f"x0 must be floating point images in [-1, 1]; got dtype {x0.dtype}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 holds NaN or infinite values; the bound needs images in [-1, 1]")
    lo, hi = x0.min().item(), x0.max().item()
    if lo < -1 - HALF_BIN or hi > 1 + HALF_BIN:
        raise ValueError(
            f"x0 must be images scaled to [-1, 1] (8-bit pixel p as p/127.5 − 1); its values span [{lo:.4g}, {hi:.4g}]"
        )


@torch.no_grad()
def bits_per_dim(
    model: Callable[..., Tensor],
    x0: Tensor,
    schedule: Schedule,
    prediction: str = "eps",
    variance: str | None = None,
    clip_x0: bool = True,
    labels: Tensor | None = None,
    guidance: float | None = None,
    batch_size: int = 64,
    generator: Generators = None,
    progress: bool = False,
    callback: Callback = None,
    device: torch.device | str | None = None,
    learned_variance: str | None = None,
) -> VariationalBound:
    """The DDPM variational bound on −log p(x_0) of every image, in bits/dim (Ho et al. 2020, Table 1's NLL).

    Args:
        model: ``model(x_t, t[, labels])`` as for :func:`ddpm.sample`, in eval mode; called through the samplers'
            own wrapper (``make_denoiser``) at every index t = T−1, ..., 0: T · ⌈B / batch_size⌉ calls.
        x0: (B, C, H, W) images in [-1, 1], taken to their nearest 8-bit level (p/127.5 − 1) first, so the bound
            is that of the 8-bit image; the model sees x_t in x0's floating dtype.
        schedule: the training schedule (all T steps are used; a subset would not be the paper's bound).
        prediction: what the model predicts, ``"eps"``, ``"x0"``, ``"v"`` or ``"mean"``.
        variance: the reverse variance σ_t², ``"posterior"`` (β̃_t) or ``"beta"`` (β_t), as the model is sampled
            (``sample_ddpm``'s ``variance``); ``"learned"`` the network's own (the default with
            ``learned_variance``, else ``"posterior"``).
        clip_x0: clamp x̂_0 to [-1, 1] as the samplers do: the bound of the chain the ancestral sampler draws
            from (any function of x_t gives a valid reverse chain; improved-diffusion's ``calc_bpd_loop`` clips).
        labels, guidance: class labels (B,) and guidance weight; batch_size: images per model call.
        generator: draws of x_t ~ q(x_t | x_0); one generator per image (``image_generators(seed, range(B))``)
            makes image i's numbers independent of ``batch_size``.
        progress, callback: a tqdm bar; a function called after every model call with {"batch", "t", "calls",
            "total_calls"}.
        device: where the model runs (default: its parameters'); the bound's own arithmetic is float64 on the CPU.
        learned_variance: ``"learned"`` or ``"learned-range"`` for a network with 2C outputs, as for ``sample``.

    Returns:
        :class:`VariationalBound` with ``total`` (B,), ``prior`` (B,), ``terms`` (B, T) in bits/dim.
    """
    variance = variance or ("learned" if learned_variance is not None else "posterior")
    gens = _check_bound_args(x0, variance, batch_size, generator, labels, learned_variance)
    device, dtype = model_device(model) if device is None else device, x0.dtype  # dtype: what the model sees
    to_bits = 1.0 / (x0[0].numel() * math.log(2.0))
    log_variance = None if variance == "learned" else reverse_log_variance(schedule, variance)
    x0 = quantize(x0.detach().to("cpu", torch.float64))  # the bound's arithmetic: float64 on the CPU (any device)
    terms = torch.empty(x0.shape[0], schedule.timesteps, dtype=torch.float64)
    denoiser = partial(make_denoiser, model, schedule, prediction, clip_x0, guidance=guidance,
                       learned_variance=learned_variance)  # fmt: skip
    starts = range(0, x0.shape[0], batch_size)
    with _reporting(len(starts) * schedule.timesteps, progress, callback) as report:
        for b, start in enumerate(starts):
            sl = slice(start, start + batch_size)
            denoise = denoiser(labels=None if labels is None else labels[sl])
            draws = generator if gens is None else gens[sl]
            batch = _batch_terms(denoise, x0[sl], draws, schedule, log_variance, dtype, device, partial(report, b))
            terms[sl] = batch * to_bits
    prior = prior_kl(x0, schedule).flatten(1).sum(1) * to_bits
    return VariationalBound(total=prior + terms.sum(1), prior=prior, terms=terms)


def _check_bound_args(
    x0: Tensor,
    variance: str,
    batch_size: int,
    generator: Generators,
    labels: Tensor | None,
    learned_variance: str | None,
) -> list[torch.Generator] | None:
    """Validate :func:`bits_per_dim`'s arguments for x0 (B, C, H, W); returns the per-image generators, if a list."""
    _check_variance(variance)
    if variance == "learned" and learned_variance is None:
        raise ValueError("variance='learned' needs a network that predicts its variance: pass learned_variance=")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1; got {batch_size!r}")
    _check_images(x0)
    n = x0.shape[0]
    gens: list[torch.Generator] | None = None
    if generator is not None and not isinstance(generator, torch.Generator):
        gens = list(generator)
        if len(gens) != n:
            raise ValueError(f"got {len(gens)} generators for {n} images; pass one per image or a single one")
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"labels must be a LongTensor of shape ({n},); got {tuple(labels.shape)}")
    return gens


def _batch_terms(
    denoise: Denoiser,
    x0: Tensor,
    generator: Generators,
    schedule: Schedule,
    log_variance: Tensor | None,
    dtype: torch.dtype,
    device: torch.device | str,
    on_call: Callable[[int], None],
) -> Tensor:
    """Every term of the bound for one batch, in nats: x0 (b, C, H, W) float64 on the CPU → (b, T) float64.

    Column t ≥ 1 is KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)), column 0 the decoder's −log p(x_0|x_t), each
    with its own draw of x_t. ``log_variance`` (T,) is the fixed σ² table, or None for the network's own. The model
    runs on ``device`` with x_t in ``dtype``; ``on_call(t)`` follows each call.
    """
    ab = schedule.alphas_cumprod.tolist()
    log_small, log_large = learned_variance_bounds(schedule)
    out = torch.empty(x0.shape[0], schedule.timesteps, dtype=torch.float64)
    for t in range(schedule.timesteps - 1, -1, -1):
        # (1) x_t ~ q(x_t | x_0) (eq. 4), a fresh draw for every t as each term is its own expectation.
        noise = randn(x0.shape, generator, "cpu", torch.float64)
        x_t = (math.sqrt(ab[t]) * x0 + math.sqrt(1 - ab[t]) * noise).to(dtype)
        # (2) the model's x̂_0 exactly as a sampler sees it (prediction type, clipping, guidance).
        denoised = denoise(x_t.to(device), t)
        log_var = (
            log_variance
            if log_variance is not None
            else cast(Denoised, denoised)
            .log_variance(log_small[t].item(), log_large[t].item())
            .to("cpu", torch.float64)
        )
        # (3) KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) for t ≥ 1, the decoder's −log p(x_0|x_t) at t = 0.
        out[:, t] = vb_term(denoised[0].to("cpu", torch.float64), x0, x_t, t, schedule, log_var)
        on_call(t)
    return out


@contextmanager
def _reporting(total_calls: int, progress: bool, callback: Callback) -> Iterator[Callable[[int, int], None]]:
    """``report(batch, t)``, to call after every model call: it advances a tqdm bar (with ``progress``, closed on
    exit) and calls ``callback`` with {"batch", "t", "calls", "total_calls"}."""
    bar = tqdm(total=total_calls, desc="variational bound", unit="call", leave=False) if progress else None
    calls = 0

    def report(batch: int, t: int) -> None:
        nonlocal calls
        calls += 1
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback({"batch": batch, "t": t, "calls": calls, "total_calls": total_calls})

    try:
        yield report
    finally:
        if bar is not None:
            bar.close()
