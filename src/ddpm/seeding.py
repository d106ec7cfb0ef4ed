"""Seeds derived from several integers, so related runs and images draw unrelated random streams.

Both mixers are splitmix64-style (Steele, Lea & Flood 2014): multiply by odd 64-bit constants and fold the
high bits down with xor-shifts, so seeds that differ in one bit give unrelated generator states. They
are two formulas, not one, because their numbers are part of the file formats: :func:`mix` fixes every
training run's draws (a resumed run must redraw the same batches) and :func:`image_seed` fixes image i of
``ddpm sample --seed s`` (a checkpoint must keep sampling the same pictures). Changing either changes results.
"""

from __future__ import annotations

_MASK64 = (1 << 64) - 1


def mix(*numbers: int) -> int:
    """A 63-bit seed from any number of integers (one splitmix64 round per number), for training's draws.

    ``mix(seed, step)`` seeds step ``step``'s batch, noise and timesteps, so (seed, step) pairs never
    collide; the result fits ``torch.Generator.manual_seed``.
    """
    z = 0x9E3779B97F4A7C15
    for n in numbers:
        z = (z ^ (int(n) & _MASK64)) * 0xBF58476D1CE4E5B9 % (1 << 64)
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB % (1 << 64)
        z ^= z >> 31
    return z & 0x7FFFFFFFFFFFFFFF


def image_seed(seed: int, index: int) -> int:
    """The 64-bit seed of image ``index`` of a sampling run seeded ``seed``, independent of the batch it is in."""
    z = (int(seed) * 0x9E3779B97F4A7C15 + int(index) * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) % (1 << 64)
    z = ((z ^ (z >> 31)) * 0xD6E8FEB86659FD93) % (1 << 64)
    return z ^ (z >> 32)
