"""What a conditioned run's steps read: super-resolution conditions made from each (flipped) image by Pillow's Lanczos,
augmented by the closed form; paired folders matched by name, flipped together; the one-line errors of bad pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm.conditioning import ConditionSpec, upsample
from ddpm.data.load import load_dataset
from ddpm.data.paired import check_pairs, pair_key, paired_data
from ddpm.errors import ParameterError
from ddpm.runtime import Dist
from ddpm.train.batches import TrainingSet, training_set
from ddpm.train.config import TrainConfig

CPU = torch.device("cpu")


def pillow_low(x0: torch.Tensor, size: int) -> torch.Tensor:
    """Images (B, 1, H, W) in [-1, 1] brought down by Pillow itself, as floats in [-1, 1]: the oracle of low(x)."""
    pixels = ((x0 + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    lows = [np.asarray(Image.fromarray(p[0]).resize((size, size), Image.LANCZOS)) for p in pixels]
    return torch.from_numpy(np.stack(lows))[:, None].float() / 127.5 - 1


def test_super_resolution_conditions_are_pillows_low_view_of_each_flipped_image_brought_up():
    data = load_dataset("digits", None)
    items = TrainingSet(data, ConditionSpec("super-resolution", 1, 4, 2), CPU)
    idx, flip = torch.tensor([5, 0, 17, 3]), torch.tensor([True, False, True, False])
    x0, cond = items.batch(idx, flip).x0, items.batch(idx, flip).cond
    want_x0 = data.images[idx]
    want_x0[flip] = want_x0[flip].flip(-1)
    assert torch.equal(x0, want_x0)
    torch.testing.assert_close(cond, upsample(pillow_low(want_x0, 4), 8))
    # With augmentation: sqrt(1-a) low + sqrt(a) eps, then up (the closed form of ddpm.conditioning).
    aug = TrainingSet(data, ConditionSpec("super-resolution", 1, 4, 2, 0.3), CPU)
    level, noise = torch.tensor([0.0, 0.1, 0.2, 0.3]), torch.randn(4, 1, 4, 4)
    cond_aug = aug.batch(idx, flip, level, noise).cond
    a = level.view(-1, 1, 1, 1)
    torch.testing.assert_close(cond_aug, upsample(a.neg().add(1).sqrt() * pillow_low(want_x0, 4) + a.sqrt() * noise, 8))
    # What a grid shows: the low image enlarged pixel by pixel.
    shown = items.shown_conditions([5])
    assert torch.equal(shown[0, 0, ::2, ::2], pillow_low(data.images[5:6], 4)[0, 0])


def write_pairs(root, names, bad=()):
    """Colour targets 12x12 and gray inputs 6x6 whose pixels encode the name's number (n*10), in nested folders."""
    targets, inputs = root / "targets", root / "inputs"
    for name in names:
        n = int(name.split("/")[-1].split(".")[0][1:])
        for folder, size, mode, ext in ((targets, 12, "RGB", ".png"), (inputs, 6, "L", ".jpg")):
            path = folder / (name.split(".")[0] + ext)
            path.parent.mkdir(parents=True, exist_ok=True)
            color = (n * 10, 255 - n * 10, 128) if mode == "RGB" else n * 10
            Image.new(mode, (size, size), color).save(path, quality=100)
    for name in bad:
        (inputs / name).write_bytes(b"not an image")
    return targets, inputs


def test_paired_folders_match_by_relative_name_flip_together_and_keep_their_channels(tmp_path):
    targets, inputs = write_pairs(tmp_path, ["a/p3", "a/p1", "b/p2", "b/p4"])
    cfg = TrainConfig(out=str(tmp_path / "run"), data=str(targets), condition_data=str(inputs), progress=False)
    cfg.validate()
    assert cfg.task == "paired"  # --condition-data alone means a paired task
    items = training_set(cfg, Dist(0, 1, CPU))
    assert items.spec == ConditionSpec("paired", 1, 12) and len(items) == 4
    b = items.batch(torch.arange(4), torch.tensor([True, False, False, True]))
    x0, cond = b.x0, b.cond
    assert x0.shape == (4, 3, 12, 12) and cond.shape == (4, 1, 12, 12)
    # Each target's red level and its input's gray level encode the same number: the rows line up by name.
    red = ((x0[:, 0, 0, 0] + 1) * 127.5).round()
    gray = ((cond[:, 0, 6, 6] + 1) * 127.5).round()
    assert sorted(red.tolist()) == [10, 20, 30, 40]
    assert torch.allclose(red, gray, atol=2)


def test_paired_inputs_are_flipped_with_their_targets(tmp_path):
    targets, inputs = tmp_path / "t", tmp_path / "i"
    targets.mkdir(), inputs.mkdir()
    ramp = np.tile(np.arange(0, 240, 30, dtype=np.uint8), (8, 1))  # dark on the left
    Image.fromarray(ramp).save(targets / "x.png")
    Image.fromarray(ramp).save(inputs / "x.png")
    cfg = TrainConfig(out=str(tmp_path / "run"), data=str(targets), condition_data=str(inputs), progress=False)
    cfg.validate()
    items = training_set(cfg, Dist(0, 1, CPU))
    b = items.batch(torch.tensor([0]), torch.tensor([True]))
    x0, cond = b.x0, b.cond
    assert torch.equal(x0, cond) and x0[0, 0, 0, 0] > x0[0, 0, 0, -1]  # mirrored: bright on the left


def test_bad_pairs_are_one_line_errors_and_skip_bad_drops_the_pair(tmp_path):
    targets, inputs = write_pairs(tmp_path, ["p1", "p2", "p3"])
    (inputs / "p2.jpg").unlink()
    with pytest.raises(ParameterError, match="has no input for p2 of"):
        check_pairs(targets, inputs)
    Image.new("L", (6, 6)).save(inputs / "p2.jpg")
    Image.new("L", (6, 6)).save(inputs / "p9.png")
    with pytest.raises(ParameterError, match="inputs with no target in .*: p9"):
        check_pairs(targets, inputs)
    (inputs / "p9.png").unlink()
    Image.new("L", (6, 6)).save(inputs / "p2.png")
    with pytest.raises(ParameterError, match="two files named p2"):
        check_pairs(targets, inputs)
    (inputs / "p2.png").unlink()
    (inputs / "p3.jpg").write_bytes(b"not an image")

    def load(folder, size, skip_bad):
        return load_dataset(folder, size, skip_bad=skip_bad)

    with pytest.raises(ParameterError, match="could not be read"):
        paired_data(str(targets), str(inputs), None, lambda f, s: load(f, s, False))
    pairs = paired_data(str(targets), str(inputs), None, lambda f, s: load(f, s, True))
    assert len(pairs) == 2 and pairs.dropped == ["p3"]
    assert pair_key("a/b.c.png") == "a/b.c"
