"""The forward process and the conversions between what a network may predict.

All functions take image batches shaped (B, C, H, W) (any (B, ...) works) and a LongTensor ``t``
of shape (B,) with indices into the schedule. Schedule values are gathered in float64 and cast to
the images' dtype at the last moment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .schedule import Schedule, posterior_coefficients

PREDICTIONS = ("eps", "x0", "v")


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
    coef_x0, coef_xt, var, _ = posterior_coefficients(*(schedule.table(name, x0.device) for name in
                                                        ("alphas_cumprod", "alphas_cumprod_prev", "betas")))
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


def prediction_to_x0_eps(
    pred: Tensor, x_t: Tensor, alpha_bar: Tensor | float, prediction: str = "eps"
) -> tuple[Tensor, Tensor]:
    """Turn a network output of kind ``prediction`` ('eps', 'x0' or 'v') into (x_0, ε), both x_t's shape."""
    if prediction == "eps":
        return x0_from_eps(x_t, pred, alpha_bar), pred
    if prediction == "x0":
        return pred, eps_from_x0(x_t, pred, alpha_bar)
    if prediction == "v":
        return x0_from_v(x_t, pred, alpha_bar), eps_from_v(x_t, pred, alpha_bar)
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def training_target(x0: Tensor, noise: Tensor, t: Tensor, schedule: Schedule, prediction: str = "eps") -> Tensor:
    """What a network of kind ``prediction`` should output for x_t = q_sample(x0, t, noise): (B, C, H, W)."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from_eps_x0(noise, x0, extract(schedule.table("alphas_cumprod", x0.device), t, x0))
    raise ValueError(f"unknown prediction type {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
