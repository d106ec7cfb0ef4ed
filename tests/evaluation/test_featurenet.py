"""Tests for ddpm.evaluation.featurenet: the classifier trains, is seeded and round-trips; the extractor is
cached by content."""

import numpy as np
import pytest
import torch

import ddpm.evaluation.featurenet as featurenet_module
from ddpm.errors import ParameterError
from ddpm.evaluation.featurenet import (
    FeatureNet,
    FeatureNetExtractor,
    accuracy,
    extract_features,
    featurenet_epochs,
    featurenet_for,
    load_feature_net,
    save_feature_net,
    train_feature_net,
)
from ddpm.files import file_sha256, save_safetensors
from ddpm.images import pixels_to_unit


def halves(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """n uint8 images (n, 1, size, size) of two easy classes (bright top half: 0, bright bottom half: 1), noisy."""
    rng = np.random.default_rng(seed)
    labels = torch.arange(n) % 2
    pixels = rng.integers(0, 40, (n, 1, size, size)).astype(np.uint8)
    for i, y in enumerate(labels.tolist()):
        rows = slice(0, size // 2) if y == 0 else slice(size // 2, size)
        pixels[i, 0, rows] += 200
    return pixels, labels


@pytest.mark.parametrize("size", [8, 28])
def test_feature_net_trains_and_round_trips(tmp_path, size):
    g = torch.Generator().manual_seed(0)
    # Two easy classes: bright top half vs bright bottom half.
    labels = torch.arange(64) % 2
    images = torch.full((64, 1, size, size), -1.0)
    for i, y in enumerate(labels.tolist()):
        half = slice(0, size // 2) if y == 0 else slice(size // 2, size)
        images[i, 0, half] = 1.0
    images += 0.1 * torch.randn(images.shape, generator=g)
    net = train_feature_net(images, labels, epochs=8, batch_size=16, lr=5e-3, seed=0, width=8)
    assert (net(images).argmax(1) == labels).float().mean() > 0.9
    f = extract_features(net, images)
    assert f.shape == (64, 16) and f.dtype == torch.float64
    path = tmp_path / "feat.safetensors"
    save_feature_net(net, path, {"note": "test"})
    net2, meta = load_feature_net(path)
    assert meta["note"] == "test" and isinstance(net2, FeatureNet)
    assert torch.equal(extract_features(net2, images), f)


def test_feature_net_trains_the_same_under_no_grad():
    """The --eval-every hook samples under torch.no_grad() and trains the FeatureNet there on a cold cache: the
    training must turn gradients back on and give the same weights as outside no_grad."""
    images = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(32) % 2
    outside = train_feature_net(images, labels, epochs=1, batch_size=8, seed=0, width=8)
    with torch.no_grad():
        inside = train_feature_net(images, labels, epochs=1, batch_size=8, seed=0, width=8)
    for a, b in zip(outside.state_dict().values(), inside.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(outside.state_dict().values(), FeatureNet(1, 2, 8).state_dict().values(), strict=True)
    )


def test_accuracy_counts_hits():
    net = FeatureNet(1, 2, 4)
    images = torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    predicted = net(images).argmax(1)
    assert accuracy(net, images, predicted, batch_size=3) == 1.0
    assert accuracy(net, images, 1 - predicted) == 0.0


def test_load_refuses_a_file_that_is_not_a_feature_net(tmp_path):
    path = tmp_path / "other.safetensors"
    save_safetensors(path, {"w": torch.zeros(2)}, {"format": "something else"})
    with pytest.raises(ValueError, match="not a FeatureNet file"):
        load_feature_net(path)
    with pytest.raises(ValueError, match="not a FeatureNet file"):
        FeatureNetExtractor(path)
    with pytest.raises(ParameterError) as info:
        featurenet_for(np.zeros((2, 1, 4, 4), np.uint8), None, "x", tmp_path, featurenet=path)
    assert str(info.value).startswith(f"featurenet {path}: {path} is not a FeatureNet file")


def test_featurenet_epochs_is_about_300_steps():
    assert featurenet_epochs(60_000) == 2  # Fashion-MNIST: the floor
    assert featurenet_epochs(1797) == 22  # digits: ceil(300 * 128 / 1797)
    assert featurenet_epochs(128) == 300


def test_featurenet_for_trains_once_per_content_and_extracts_its_features(tmp_path, monkeypatch):
    monkeypatch.setattr(featurenet_module, "featurenet_epochs", lambda n: 1)  # the cache, not the training, is tested
    pixels, labels = halves(64, 8)
    said = []
    ext = featurenet_for(pixels, labels, "halves", tmp_path, log=said.append)
    assert len(said) == 1 and "training the FeatureNet for halves once (64 images, 1 epochs" in said[0]
    files = list((tmp_path / "featurenet").iterdir())
    assert len(files) == 1 and ext.path == files[0] and ext.sha256 == file_sha256(files[0])
    again = featurenet_for(pixels.copy(), labels.clone(), "halves", tmp_path, log=said.append)
    assert len(said) == 1 and again.sha256 == ext.sha256  # read from the cache, not trained again
    protocol = ext.protocol()
    assert protocol["name"] == "featurenet" and protocol["epochs"] == "1" and protocol["data"] == "halves"
    assert protocol["features"] == "global-average-pooled last convolution, 64-d"
    # The extractor's features are the network's, batch by batch, of x = pixel/127.5 - 1.
    feats = ext.features(pixels, batch_size=10)
    assert feats.shape == (64, 64) and feats.dtype == torch.float64
    assert torch.equal(feats, extract_features(ext.net, pixels_to_unit(pixels)))
    # Other labels are other content: a second network.
    featurenet_for(pixels, 1 - labels, "halves", tmp_path, log=said.append)
    assert len(said) == 2 and len(list((tmp_path / "featurenet").iterdir())) == 2
    # A given file is used as it is.
    assert featurenet_for(pixels, None, "halves", tmp_path / "unused", featurenet=files[0]).sha256 == ext.sha256


def test_featurenet_for_errors_name_the_parameter(tmp_path):
    pixels, _ = halves(4, 8)
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(ParameterError) as info:
        featurenet_for(pixels, None, "halves", tmp_path, featurenet=missing)
    assert info.value.render(lambda name: "--" + name) == (  # the CLI's flag for it: --featurenet
        f"--featurenet {missing}: no such file; drop the flag to use (or train) the cached one"
    )
    with pytest.raises(ParameterError, match="train_labels is None.*halves has no labels"):
        featurenet_for(pixels, None, "halves", tmp_path)
