"""Seed mixers (ddpm.seeding): fixed numbers (they are part of the file formats), distinct and unrelated streams."""

import statistics

import torch

from ddpm.seeding import image_seed, mix


def test_the_numbers_are_pinned():
    # Training's batches of a run (and a resumed run) and image i of `ddpm sample --seed s` depend on these values:
    # a change here changes every result, so it must be deliberate.
    assert mix() == 2177342782468422677
    assert mix(0, 0) == 1970727333155262614
    assert mix(1, 2) == 5640054598490828357
    assert image_seed(0, 0) == 3891496325802980973
    assert image_seed(0, 1) == 12207769136912550469
    assert image_seed(1, 0) == 3752799326987156945


def test_deterministic_and_order_sensitive():
    assert mix(3, 5) == mix(3, 5) and image_seed(3, 5) == image_seed(3, 5)
    assert mix(1, 2) != mix(2, 1)
    assert image_seed(1, 2) != image_seed(2, 1)
    assert mix(0) != mix(0, 0)  # each number is one more round


def test_distinct_over_a_grid_of_runs_and_images():
    pairs = [(s, k) for s in range(30) for k in range(100)]
    assert len({mix(s, k) for s, k in pairs}) == len(pairs)
    assert len({image_seed(s, k) for s, k in pairs}) == len(pairs)


def test_ranges_fit_a_torch_generator():
    values = [mix(s, k) for s in (-1, 0, 2**70) for k in (-5, 0, 10**6)]
    assert all(0 <= v < 2**63 for v in values)
    seeds = [image_seed(s, i) for s in (-1, 0, 2**70) for i in (0, 1, 10**6)]
    assert all(0 <= v < 2**64 for v in seeds) and max(seeds) >= 2**63  # the full unsigned 64-bit range is used
    for v in values + seeds:
        torch.Generator().manual_seed(v)  # accepted as is


def test_one_bit_of_input_flips_about_half_the_output_bits():
    def flipped(a: int, b: int) -> int:
        return bin(a ^ b).count("1")

    x = 12345
    assert 28 < statistics.mean(flipped(mix(x), mix(x ^ (1 << k))) for k in range(64)) < 36  # of 63 bits
    assert 28 < statistics.mean(flipped(image_seed(7, x), image_seed(7, x ^ (1 << k))) for k in range(64)) < 36
    assert 28 < statistics.mean(flipped(image_seed(7 ^ (1 << k), x), image_seed(7, x)) for k in range(64)) < 36
