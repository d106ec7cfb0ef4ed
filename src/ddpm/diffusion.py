"""The forward process and the conversions between what a network may predict.

All functions take image batches shaped (B, C, H, W) (any (B, ...) works) and a LongTensor ``t``
of shape (B,) with indices into the schedule. Schedule values are gathered in float64 and cast to
the images' dtype at the last moment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .schedule import Schedule, posterior_coefficients

PREDICTIONS = ("eps", "x0", "v", "mean")
# The reverse process's variance Σ_θ(x_t, t) = σ² I: fixed at β̃_t ("fixed-small") or β_t ("fixed-large") as in DDPM,
# or predicted by the network in C extra output channels, either as log σ² itself ("learned") or as v ∈ [-1, 1]
# interpolating log β̃_t and log β_t (Nichol & Dhariwal 2021, eq. 15: "learned-range").
VARIANCES = ("fixed-small", "fixed-large", "learned", "learned-range")
LEARNED_VARIANCES = ("learned", "learned-range")


def extract(table: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """Gather ``table[t]`` (table: (T,), t: (B,)) and shape it (B, 1, 1, ...) to broadcast over ``like``.

    The gather happens on ``like``'s device (pass a table already there, e.g. from :meth:`Schedule.table`,
    to avoid a copy). Index values are checked only when ``t`` is on the CPU: reading them back from an
    accelerator would stall it on every call, and its own indexing check catches them there.
    """
    if t.ndim != 1 or t.shape[0] != like.shape[0]:
        raise ValueError(f"t must be a 1-D tensor with one index per image ({like.shape[0]}); got {tuple(t.shape)}")
    if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= table.numel()):
        raise ValueError(f"timestep indices must lie in 0..{table.numel() - 1}; got {t.tolist()}")
    out = table.to(like.device)[t.to(like.device, dtype=torch.long)].to(like.dtype)
    return out.reshape(-1, *([1] * (like.ndim - 1)))


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, schedule: Schedule) -> Tensor:
    """Sample q(x_t | x_0) in closed form: x_t = √ᾱ_t · x_0 + √(1−ᾱ_t) · ε.

    x0, noise: (B, C, H, W); t: (B,) indices. Returns x_t, (B, C, H, W).
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}; got {tuple(noise.shape)}")
    ab = schedule.table("alphas_cumprod", x0.device)
    return extract(ab.sqrt(), t, x0) * x0 + extract((1 - ab).sqrt(), t, x0) * noise


def q_posterior(x0: Tensor, x_t: Tensor, t: Tensor, schedule: Schedule) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_{t−1} | x_t, x_0) (DDPM eq. 6–7).

    μ̃_t = √ᾱ_{t−1} β_t/(1−ᾱ_t) · x_0 + √α_t (1−ᾱ_{t−1})/(1−ᾱ_t) · x_t,  β̃_t = (1−ᾱ_{t−1})/(1−ᾱ_t) · β_t.
    At t = 0, ᾱ_{−1} = 1: the mean is x_0 and the variance 0.
    Returns (mean (B, C, H, W), variance (B, 1, 1, 1)).
    """
    coef_x0, coef_xt, var, _ = posterior_coefficients(
        *(schedule.table(name, x0.device) for name in ("alphas_cumprod", "alphas_cumprod_prev", "betas"))
    )
    mean = extract(coef_x0, t, x0) * x0 + extract(coef_xt, t, x_t) * x_t
    return mean, extract(var, t, x0)


# ---------------------------------------------------------------------------- conversions
# Each takes a_t = ᾱ_t already shaped to broadcast (a float tensor, or a python float), so that
# samplers working on a respaced schedule can use them without indices.


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """x_0 = (x_t − √(1−ᾱ) ε) / √ᾱ."""
    return (x_t - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar**0.5


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """ε = (x_t − √ᾱ x_0) / √(1−ᾱ)."""
    return (x_t - alpha_bar**0.5 * x0) / (1 - alpha_bar) ** 0.5


def v_from_eps_x0(eps: Tensor, x0: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022)."""
    return alpha_bar**0.5 * eps - (1 - alpha_bar) ** 0.5 * x0


def x0_from_v(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """x_0 = √ᾱ x_t − √(1−ᾱ) v."""
    return alpha_bar**0.5 * x_t - (1 - alpha_bar) ** 0.5 * v


def eps_from_v(x_t: Tensor, v: Tensor, alpha_bar: Tensor | float) -> Tensor:
    """ε = √(1−ᾱ) x_t + √ᾱ v."""
    return (1 - alpha_bar) ** 0.5 * x_t + alpha_bar**0.5 * v


def x0_from_mean(x_t: Tensor, mean: Tensor, alpha_bar: Tensor | float, alpha_bar_prev: Tensor | float) -> Tensor:
    """x_0 from the posterior mean μ̃ = c_x0 x_0 + c_xt x_t of the step t → t−1 (DDPM eq. 7): (μ̃ − c_xt x_t) / c_x0.

    ``alpha_bar_prev`` is ᾱ_{t−1} (1 at index 0, where μ̃ = x_0). c_x0 = √ᾱ_{t−1} β_t/(1−ᾱ_t) is about 1e-4 at the
    noisiest steps of the linear schedule, so an error in μ̃ there is an error 1e4 times larger in x_0: the reason
    the DDPM paper found μ̃ prediction worse than ε prediction (its Table 2).
    """
    c_x0, c_xt, _, _ = posterior_coefficients(alpha_bar, alpha_bar_prev)
    return (mean - c_xt * x_t) / c_x0


def prediction_to_x0_eps(
    pred: Tensor,
    x_t: Tensor,
    alpha_bar: Tensor | float,
    prediction: str = "eps",
    alpha_bar_prev: Tensor | float | None = None,
) -> tuple[Tensor, Tensor]:
    """Turn a network output of kind ``prediction`` ('eps', 'x0', 'v' or 'mean') into (x_0, ε), both x_t's shape.

    ``mean`` (μ̃ of the step t → t−1) also needs ``alpha_bar_prev`` = ᾱ_{t−1} of the training schedule.
    """
    if prediction == "eps":
        return x0_from_eps(x_t, pred, alpha_bar), pred
    if prediction == "x0":
        return pred, eps_from_x0(x_t, pred, alpha_bar)
    if prediction == "v":
        return x0_from_v(x_t, pred, alpha_bar), eps_from_v(x_t, pred, alpha_bar)
    if prediction == "mean":
        if alpha_bar_prev is None:
            raise ValueError("a mean prediction needs alpha_bar_prev (ᾱ_{t−1}) to give x_0")
        x0 = x0_from_mean(x_t, pred, alpha_bar, alpha_bar_prev)
        return x0, eps_from_x0(x_t, x0, alpha_bar)
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def training_target(x0: Tensor, noise: Tensor, t: Tensor, schedule: Schedule, prediction: str = "eps") -> Tensor:
    """What a network of kind ``prediction`` should output for x_t = q_sample(x0, t, noise): (B, C, H, W)."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_eps_x0(noise, x0, extract(schedule.table("alphas_cumprod", x0.device), t, x0))
    if prediction == "mean":
        return q_posterior(x0, q_sample(x0, t, noise, schedule), t, schedule)[0]
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


# ---------------------------------------------------------------------------- the reverse variance


def check_variance(variance: str) -> None:
    """Reject a reverse variance other than :data:`VARIANCES`."""
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")


def output_channels(channels: int, variance: str) -> int:
    """The network's output channels for images of ``channels``: twice as many when it learns its variance."""
    check_variance(variance)
    return 2 * channels if variance in LEARNED_VARIANCES else channels


def split_output(out: Tensor, variance: str) -> tuple[Tensor, Tensor | None]:
    """(prediction (B, C, H, W), variance output (B, C, H, W) or None) of a network output (B, C or 2C, H, W)."""
    if variance not in LEARNED_VARIANCES:
        return out, None
    pred, var_out = out.chunk(2, dim=1)
    return pred, var_out


def learned_log_variance(
    var_out: Tensor, variance: str, log_small: Tensor | float, log_large: Tensor | float
) -> Tensor:
    """log σ² of p_θ(x_{t−1} | x_t) from the network's variance output (B, C, H, W), x_t's shape.

    ``learned``: the output is log σ² itself. ``learned-range`` (improved DDPM eq. 15): v ∈ [-1, 1] mapped to
    frac = (v + 1)/2 and log σ² = frac · log β_t + (1 − frac) · log β̃_t, with ``log_small`` = log β̃_t and
    ``log_large`` = log β_t of the step taken (broadcastable to the output), so a respaced chain interpolates its
    own bounds. v is not clamped: the network may leave the range, as in improved-diffusion.
    """
    if variance == "learned":
        return var_out
    if variance != "learned-range":
        raise ValueError(f"{variance!r} is not a learned variance; choose one of {', '.join(LEARNED_VARIANCES)}")
    frac = (var_out + 1) / 2
    return frac * log_large + (1 - frac) * log_small
