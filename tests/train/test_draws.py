"""Each step's random draws are a pure function of (seed, step): epochs cover every image once, and the
draws come in a fixed order."""

from __future__ import annotations

import pytest
import torch

from ddpm.losses import Objective
from ddpm.schedule import Schedule
from ddpm.seeding import mix
from ddpm.train.draws import batch_indices, step_draws


def test_batches_cover_each_epoch_once():
    n, b = 50, 16
    seen = torch.cat([batch_indices(s, n, b, seed=1) for s in range(3)])  # 3 batches = one epoch of 48
    assert seen.unique().numel() == 48
    assert torch.equal(batch_indices(5, n, b, seed=1), batch_indices(5, n, b, seed=1))
    assert not torch.equal(batch_indices(3, n, b, seed=1), batch_indices(0, n, b, seed=1))


@pytest.mark.parametrize("t_sampling", ["uniform", "laplace"])
def test_step_draws_are_a_pure_function_in_the_order_training_has_always_used(t_sampling):
    """Step k's draws depend on (step, seed, sizes, objective) only, not on global RNG state or cached epochs,
    and come in the order runs made before the loop was split up used (images, then t, ε, label drops,
    flips from one generator seeded by (seed, step)): a different order would break resuming old runs."""
    import ddpm.train.draws as draws

    s = Schedule.linear(100)
    objective = Objective.create(s, t_sampling=t_sampling)
    args = (7, 3, 50, 12, (1, 4, 4), objective, 0.25)
    first = step_draws(*args)
    torch.manual_seed(123)
    torch.rand(5)
    draws._epoch_order.cache_clear()
    again = step_draws(*args)
    for name in ("indices", "t", "noise", "drop", "flip"):
        assert torch.equal(getattr(first, name), getattr(again, name)), name
    g = torch.Generator().manual_seed(mix(3, 7))
    assert torch.equal(first.indices, batch_indices(7, 50, 12, 3))
    assert torch.equal(first.t, objective.draw_t(12, g))
    assert torch.equal(first.noise, torch.randn((12, 1, 4, 4), generator=g))
    assert torch.equal(first.drop, torch.rand(12, generator=g) < 0.25)
    assert torch.equal(first.flip, torch.rand(12, generator=g) < 0.5)
    assert first.drop.any() and first.flip.any() and not first.flip.all()
    other = step_draws(8, *args[1:])
    assert not torch.equal(other.noise, first.noise) and not torch.equal(other.indices, first.indices)


def test_conditioning_augmentation_draws_come_after_the_others_and_change_none_of_them():
    s = Schedule.linear(100)
    objective = Objective.create(s)
    args = (4, 9, 30, 6, (1, 8, 8), objective, 0.1)
    plain = step_draws(*args)
    aug = step_draws(*args, cond_shape=(1, 4, 4), cond_noise_max=0.2)
    for name in ("indices", "t", "noise", "drop", "flip"):
        assert torch.equal(getattr(plain, name), getattr(aug, name)), name
    assert plain.cond_level is None and plain.cond_noise is None
    g = torch.Generator().manual_seed(mix(9, 4))
    objective.draw_t(6, g)  # the draws before them: t, eps, label drops, flips
    torch.randn((6, 1, 8, 8), generator=g)
    torch.rand(6, generator=g)
    torch.rand(6, generator=g)
    assert torch.equal(aug.cond_level, torch.rand(6, generator=g) * 0.2)
    assert torch.equal(aug.cond_noise, torch.randn((6, 1, 4, 4), generator=g))
    assert 0 <= float(aug.cond_level.min()) and float(aug.cond_level.max()) <= 0.2
