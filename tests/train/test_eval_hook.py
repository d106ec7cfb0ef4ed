"""Tests for ddpm.train.eval_hook: ``ddpm train --eval-every``'s score is a function of the weights alone."""

import numpy as np
import pytest
import torch
from torch import nn

import ddpm.evaluation.featurenet as featurenet_module
from ddpm.data.dataset import ImageDataset
from ddpm.errors import ParameterError
from ddpm.evaluation.metrics import memorization
from ddpm.evaluation.reference import fd_against, to_pixels
from ddpm.generate import draw
from ddpm.sampler_choice import DEFAULT_SAMPLER, SamplerChoice
from ddpm.schedule import Schedule
from ddpm.settings import flag_names
from ddpm.train import TrainConfig
from ddpm.train.eval_hook import TrainingEval

CPU = torch.device("cpu")


class Tiny(nn.Module):
    """A one-convolution noise predictor; with labels, class k adds k/10."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t, labels=None):
        out = self.conv(x)
        return out if labels is None else out + 0.1 * labels.view(-1, 1, 1, 1)


def halves(n: int = 64, labelled: bool = True) -> ImageDataset:
    """n 8x8 images of two classes: bright top half (0) or bright bottom half (1)."""
    px = np.random.default_rng(0).integers(0, 40, (n, 1, 8, 8)).astype(np.uint8)
    px[0::2, 0, :4] += 200
    px[1::2, 0, 4:] += 200
    labels = torch.arange(n) % 2 if labelled else None
    return ImageDataset(torch.from_numpy(px), labels, ["top", "bottom"] if labelled else None, "halves")


@pytest.fixture
def quick_featurenet(monkeypatch):
    monkeypatch.setattr(featurenet_module, "featurenet_epochs", lambda n: 1)  # the hook is tested, not the training


def test_same_weights_same_value_from_a_cold_cache_under_no_grad(tmp_path, quick_featurenet):
    schedule, model = Schedule.linear(50), Tiny().train()
    hook = TrainingEval("fd", 16, halves(), "halves", seed=3, steps=4, device=CPU, cache_dir=tmp_path)
    with torch.no_grad():  # the training loop calls the hook like this; the FeatureNet still trains
        first = hook(model, schedule, "eps")
    assert model.training  # restored
    assert (first["eval_num"], first["eval_ref_num"]) == (16, 64) and first["eval_fd"] > 0
    assert len(list((tmp_path / "featurenet").iterdir())) == 1
    assert hook(model, schedule, "eps")["eval_fd"] == first["eval_fd"]
    # A fresh hook (a resumed run) reads the FeatureNet and the reference statistics from the cache.
    again = TrainingEval("fd", 16, halves(), "halves", seed=3, steps=4, device=CPU, cache_dir=tmp_path)
    assert again(model, schedule, "eps")["eval_fd"] == first["eval_fd"]
    assert len(list((tmp_path / "featurenet").iterdir())) == len(list((tmp_path / "reference").iterdir())) == 1
    # The value is the FD of images 0..15 of seed 3, drawn with the default sampler at the hook's steps.
    assert hook.ref is not None
    ext, mean, cov = hook.ref.ext, hook.ref.mean, hook.ref.cov
    name, spacing = DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing
    meta = {"channels": 1, "image_size": 8, "prediction": "eps"}
    x = draw(model, schedule, meta, SamplerChoice(name, spacing, 4), 3, list(range(16)), None, None, True, CPU)
    assert first["eval_fd"] == fd_against(ext.features(to_pixels(x)), mean, cov)
    # The memorization share: samples closer to a training image than 99% of the training images are to each other
    # (no test split here: leave-one-out), in the same features.
    want = memorization(ext.features(to_pixels(x)), hook.ref.train, None)["share_closer"]
    assert first["eval_memorized"] == want and 0 <= want <= 1
    # Other weights, another value; class-conditional sampling cycles the classes.
    with torch.no_grad():
        model.conv.bias.add_(0.3)
    moved = hook(model, schedule, "eps")["eval_fd"]
    assert moved != first["eval_fd"]
    assert hook(model, schedule, "eps", num_classes=2)["eval_fd"] != moved


def test_refuses_what_cannot_be_scored_before_training(tmp_path):
    flags = flag_names(TrainConfig)
    with pytest.raises(ParameterError) as info:
        TrainingEval("fd", 16, halves(labelled=False), "imgs", seed=0, steps=4, device=CPU, cache_dir=tmp_path)
    assert info.value.render(flags.__getitem__) == (
        "--eval-metric fd needs a labelled data set (FeatureNet is a classifier), and imgs has none: use class "
        "subfolders, or --eval-metric fid"
    )
    with pytest.raises(ParameterError, match="eval_metric must be fd or fid; got 'is'"):
        TrainingEval("is", 16, halves(), "halves", seed=0, steps=4, device=CPU, cache_dir=tmp_path)
    assert not tmp_path.joinpath("featurenet").exists()
