"""Schedules over optimisation steps: the learning rate (warm-up, then constant, cosine or linear decay) and the
EMA of the weights (with warm-up)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

HORIZON_AFTER = 20  # a --minutes run with a decaying LR measures its speed over this many steps


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema ← decay · ema + (1 − decay) · model, parameter by parameter; buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
        eb.copy_(mb)


def ema_decay_at(step: int, decay: float) -> float:
    """EMA warm-up: the average starts short and lengthens, min(decay, (1+n)/(10+n))."""
    return min(decay, (1 + step) / (10 + step))


def lr_at(step: int, cfg: TrainConfig, horizon: int | None = None) -> float:
    """The learning rate of optimisation step ``step`` (0-based).

    Linear warm-up to cfg.lr over cfg.warmup steps; then constant, or with cfg.lr_schedule 'cosine'
    lr · ½(1 + cos πp) or 'linear' lr · (1 − p), p = (step − warmup)/(horizon − warmup) clamped to [0, 1],
    so the rate reaches 0 at step ``horizon``. No horizon (not known yet) means no decay.
    """
    warm = 1.0 if cfg.warmup <= 0 else min(1.0, (step + 1) / cfg.warmup)
    if cfg.lr_schedule == "constant" or horizon is None:
        return cfg.lr * warm
    start = cfg.warmup if horizon > cfg.warmup else 0
    p = min(1.0, max(0.0, (step - start) / max(1, horizon - start)))
    decay = 0.5 * (1 + math.cos(math.pi * p)) if cfg.lr_schedule == "cosine" else 1 - p
    return cfg.lr * warm * decay


def budget_horizon(step: int, steps_per_s: float, seconds_left: float) -> int:
    """The step a run at ``step`` reaches in ``seconds_left`` at ``steps_per_s``: the decay horizon of a
    --minutes run (measured once per invocation, so such a run is reproducible only with --steps)."""
    return step + max(1, int(steps_per_s * max(0.0, seconds_left)))
