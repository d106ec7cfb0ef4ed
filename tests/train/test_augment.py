"""Non-leaking augmentation: every operation against its closed form, parameters zero exactly where nothing was
applied, and draws that never depend on which operations are on."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpm.train.augment import (
    AUGMENT_DIM,
    LABELS,
    OPS,
    AugmentDraws,
    augment,
    draw_augment,
    parse_ops,
    reflect,
)


def draws(n: int, gate: float = 0.0, uniform: list[float] | None = None, normal: list[float] | None = None):
    """Draws for n images with every gate at ``gate`` and the given parameter draws (zeros by default)."""
    u = torch.tensor(uniform or [0.5] * 4).expand(n, 4).clone()
    z = torch.tensor(normal or [0.0] * 7).expand(n, 7).clone()
    return AugmentDraws(torch.full((n, len(OPS)), gate), u, z)


def images(n: int = 3, c: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_nothing_happens_at_p_0_or_with_no_operation_on():
    x = images()
    out, labels = augment(x, draw_augment(torch.Generator().manual_seed(0), 3, "cpu"), 0.0, OPS)
    assert torch.equal(out, x) and torch.equal(labels, torch.zeros(3, AUGMENT_DIM))
    out, labels = augment(x, draws(3), 1.0, ("colour",))  # gates pass, but brightness etc. drawn as 0
    torch.testing.assert_close(out, x)
    assert not labels.any()


def test_flips_and_quarter_turns_are_exact_with_their_parameters():
    x = images()
    out, labels = augment(x, draws(3), 1.0, ("xflip", "yflip"))
    assert torch.equal(out, x.flip(-1).flip(-2))
    assert torch.equal(labels[:, :2], torch.ones(3, 2)) and not labels[:, 2:].any()
    for k, u in ((1, 0.1), (2, 0.5), (3, 0.9)):
        out, labels = augment(x, draws(3, uniform=[u, 0.5, 0.5, 0.5]), 1.0, ("rot90",))
        assert torch.equal(out, torch.rot90(x, k, dims=(-2, -1)))
        want = [math.sin(k * math.pi / 2), 1 - math.cos(k * math.pi / 2)]
        torch.testing.assert_close(labels[:, LABELS["rot90"]], torch.tensor([want] * 3), atol=1e-7, rtol=0)


def test_integer_shifts_reflect_at_the_border_as_numpy_does():
    x = images(2, 3, 16)
    # uniform 0.75 -> (2u - 1) * 0.125 * 16 = 1 pixel right; 0.0 -> -2 pixels (up)
    out, labels = augment(x, draws(2, uniform=[0.5, 0.75, 0.0, 0.5]), 1.0, ("shift",))
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)), mode="reflect")
    want = padded[:, :, 4 + 2 : 4 + 2 + 16, 4 - 1 : 4 - 1 + 16]  # new[y, x] = old[y + 2, x - 1]
    np.testing.assert_array_equal(out.numpy(), want)
    torch.testing.assert_close(labels[:, LABELS["shift"]], torch.tensor([[1 / 16, -2 / 16]] * 2))
    assert torch.equal(reflect(torch.tensor([-2, -1, 0, 7, 8, 9]), 8), torch.tensor([2, 1, 0, 7, 6, 5]))


def test_the_affine_path_is_exact_at_whole_pixels_and_turns_the_way_its_label_says():
    x = images(2, 1, 8)
    # A fractional translation of exactly one pixel (1/8 of the size) is the integer shift, the border mirrored
    # with its edge pixel repeated (grid_sample's reflection): normal draw n * 0.125 = 1/8 -> n = 1.
    out, labels = augment(x, draws(2, normal=[0, 0, 1.0, 0, 0, 0, 0]), 1.0, ("translate",))
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="symmetric")
    np.testing.assert_allclose(out.numpy(), padded[:, :, 2:10, 1:9], atol=1e-5)
    torch.testing.assert_close(labels[:, LABELS["translate"]], torch.tensor([[0.125, 0.0]] * 2))
    # A rotation by a quarter turn through the resampling path is a quarter turn of the pixels.
    out, labels = augment(x, draws(2, uniform=[0.5, 0.5, 0.5, 0.75]), 1.0, ("rotate",))  # theta = pi / 2
    torch.testing.assert_close(labels[:, LABELS["rotate"]], torch.tensor([[1.0, 1.0]] * 2), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out.numpy(), torch.rot90(x, -1, dims=(-2, -1)).numpy(), atol=1e-5)
    # Scale and anisotropy of 2^0 change nothing; their labels are the log2 of the scale.
    out, labels = augment(x, draws(2, normal=[1.0, -1.0, 0, 0, 0, 0, 0]), 1.0, ("scale", "aniso"))
    torch.testing.assert_close(labels[:, LABELS["scale"]], torch.full((2, 1), 0.2))
    torch.testing.assert_close(labels[:, LABELS["aniso"]], torch.full((2, 1), -0.2))
    # log2 sx = 0.2 - 0.2 = 0, log2 sy = 0.4: x unchanged along rows, zoomed along columns (the centre row stays).
    assert not torch.allclose(out, x, atol=1e-3)


def test_colour_is_the_closed_form_and_gray_images_have_no_saturation():
    x = images(2, 3, 8) * 0.5
    n = [0, 0, 0, 0, 0.5, 1.0, -1.0]  # brightness 0.1, contrast 2^0.5, saturation 2^-1
    out, labels = augment(x, draws(2, normal=n), 1.0, ("colour",))
    y = x + 0.1
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * 2**0.5 + mean
    gray = y.mean(dim=1, keepdim=True)
    y = (y - gray) * 0.5 + gray
    torch.testing.assert_close(out, y.clamp(-1, 1))
    torch.testing.assert_close(labels[:, LABELS["colour"]], torch.tensor([[0.1, 0.5, -1.0]] * 2))
    _, gray_labels = augment(images(2, 1, 8), draws(2, normal=n), 1.0, ("colour",))
    assert torch.equal(gray_labels[:, 14], torch.zeros(2))


def test_each_image_is_gated_by_its_own_draw_and_the_labels_say_which():
    g = torch.Generator().manual_seed(5)
    d = draw_augment(g, 256, "cpu")
    x = images(256, 3, 8)
    _, labels = augment(x, d, 0.3, OPS)
    for i, op in enumerate(OPS):
        applied, gated = labels[:, LABELS[op]].abs().sum(1) > 0, d.gate[:, i] < 0.3
        if op == "shift":  # a shift that rounds to 0 pixels (both axes) is no shift
            moved = (((d.uniform[:, 1:3] * 2 - 1) * 0.125 * 8).round() != 0).any(1)
            assert torch.equal(applied, gated & moved) and applied.sum() > 0
        else:
            assert torch.equal(applied, gated), op
    # The same draws whichever operations are on: a flag cannot shift a run's other random numbers.
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    draw_augment(g1, 4, "cpu"), draw_augment(g2, 4, "cpu")
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))
    with pytest.raises(ValueError, match="unknown augmentation blur"):
        parse_ops("xflip,blur")
    assert parse_ops("rot90, xflip,rot90") == ("rot90", "xflip")
