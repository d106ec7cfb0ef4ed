"""The learning rate and the EMA over optimisation steps, against their closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.train import TrainConfig
from ddpm.train.schedules import budget_horizon, ema_decay_at, ema_update, lr_at


def test_ema_is_the_closed_form_average_of_the_trained_weights():
    """After N updates, ema_N = Σ_n w_n θ_n over the weights θ_0 (the start) .. θ_N, with
    β_n = min(decay, (1+n)/(10+n)), w_0 = Π_{m<N} β_m and w_n = (1 − β_{n−1}) Π_{m=n}^{N−1} β_m; buffers are copied.
    The decay cap binds from n = 35 on, so both parts of the warm-up are covered."""

    decay, n_steps = 0.8, 60
    assert ema_decay_at(0, decay) == 0.1 and ema_decay_at(34, decay) < decay == ema_decay_at(35, decay)
    gen = torch.Generator().manual_seed(0)
    thetas = [torch.randn(3, 4, generator=gen, dtype=torch.float64) for _ in range(n_steps + 1)]
    raw = torch.nn.Linear(4, 3, bias=False).double()
    raw.register_buffer("count", torch.zeros(()))
    ema = torch.nn.Linear(4, 3, bias=False).double()
    ema.register_buffer("count", torch.zeros(()))
    with torch.no_grad():
        raw.weight.copy_(thetas[0])
        ema.weight.copy_(thetas[0])
        for n in range(n_steps):
            raw.weight.copy_(thetas[n + 1])
            raw.count.fill_(n + 1)
            ema_update(ema, raw, ema_decay_at(n, decay))
    betas = [min(decay, (1 + m) / (10 + m)) for m in range(n_steps)]
    weights = [float(np.prod(betas))] + [(1 - betas[n - 1]) * float(np.prod(betas[n:])) for n in range(1, n_steps + 1)]
    assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    expected = sum(w * th for w, th in zip(weights, thetas, strict=True))
    torch.testing.assert_close(ema.weight, expected, rtol=0, atol=1e-12)
    assert float(ema.count) == n_steps


def test_lr_schedules_against_their_closed_forms():
    cfg = TrainConfig(out="x", lr=1e-3, warmup=10, lr_schedule="cosine")
    assert lr_at(4, cfg, 110) == pytest.approx(1e-3 * 5 / 10)  # warm-up is unchanged
    assert lr_at(10, cfg, 110) == pytest.approx(1e-3)
    assert lr_at(60, cfg, 110) == pytest.approx(0.5e-3)  # halfway in cosine
    assert lr_at(35, cfg, 110) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(110, cfg, 110) == 0.0 and lr_at(500, cfg, 110) == 0.0
    assert lr_at(60, cfg, None) == pytest.approx(1e-3)  # horizon not measured yet: no decay
    lin = TrainConfig(out="x", lr=1e-3, warmup=0, lr_schedule="linear")
    assert lr_at(25, lin, 100) == pytest.approx(0.75e-3)
    const = TrainConfig(out="x", lr=1e-3, warmup=0)
    assert lr_at(99, const, 100) == 1e-3
    assert budget_horizon(20, 2.5, 100.0) == 270 and budget_horizon(20, 2.5, -5) == 21
