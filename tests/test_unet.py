"""Tests for the UNet: shapes, zero-init output, parameter counts, conditioning, validation, fitting."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm import Schedule, sample
from ddpm.unet import PRESETS, UNet, UNetConfig, check_labels, timestep_embedding


def small_config(**kw) -> UNetConfig:
    """A net small enough that a forward pass takes milliseconds."""
    base = dict(channels=1, image_size=8, base_channels=16, channel_mult=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), groups=8)
    base.update(kw)
    return UNetConfig(**base)


def randomize(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter (including the zero-initialised ones) small random values, so outputs are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "size,channels,mult,attn",
    [
        (8, 1, (1, 2), (4,)),
        (8, 3, (1, 2), ()),
        (28, 1, (1, 2, 2), (7,)),
        (28, 3, (1, 2, 2), ()),
        (32, 3, (1, 2, 2), (8,)),
        (64, 1, (1, 2, 2, 2), (8,)),
        (64, 3, (1, 1, 2, 2), ()),
    ],
)
def test_output_shape_equals_input_shape(size, channels, mult, attn):
    net = randomize(UNet(small_config(channels=channels, image_size=size, channel_mult=mult,
                                      attention_resolutions=attn))).eval()
    x = torch.randn(2, channels, size, size)
    with torch.no_grad():
        y = net(x, torch.tensor([3, 900]))
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    assert y.abs().max() > 0  # the randomized net is not trivially zero


def test_fresh_network_outputs_exactly_zero_then_learns():
    torch.manual_seed(0)
    net = UNet(small_config())
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    y = net(x, t)
    assert torch.equal(y, torch.zeros_like(x))

    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    loss = (net(x, t) - torch.randn_like(x)).pow(2).mean()
    loss.backward()
    opt.step()
    with torch.no_grad():
        y = net(x, t)
    assert y.abs().max() > 1e-4
    assert not torch.equal(y[0], y[1])  # depends on the input and time, not a constant


def test_ddpm_cifar10_preset_has_35_7m_parameters():
    with torch.device("meta"):
        net = UNet.from_preset("ddpm-cifar10")
    count = n_params(net)
    assert abs(count - 35.7e6) / 35.7e6 < 0.01
    assert count == 35_746_307  # pinned: the count of Ho et al.'s reference implementation
    cfg = net.config
    assert (cfg.channels, cfg.image_size, cfg.base_channels, cfg.channel_mult) == (3, 32, 128, (1, 2, 2, 2))
    assert cfg.attention_resolutions == (16,) and cfg.dropout == 0.1 and cfg.num_res_blocks == 2


def test_presets_build_and_run():
    for name in PRESETS:
        with torch.device("meta"):
            net = UNet.from_preset(name)
        assert n_params(net) > 100_000
    tiny = UNet.from_preset("tiny", channels=3, image_size=28, num_classes=10)
    assert (tiny.config.channels, tiny.config.image_size, tiny.config.num_classes) == (3, 28, 10)
    out = tiny(torch.randn(2, 3, 28, 28), torch.tensor([1, 2]), torch.tensor([0, -1]))
    assert out.shape == (2, 3, 28, 28)
    over = UNet.from_preset("small", base_channels=32, dropout=0.0)
    assert over.config.base_channels == 32 and over.config.dropout == 0.0


def test_unknown_preset_and_field_raise():
    with pytest.raises(ValueError, match="tiny") as exc:
        UNet.from_preset("huge")
    assert "ddpm-cifar10" in str(exc.value) and "small" in str(exc.value)
    with pytest.raises(ValueError, match="base_chanels"):
        UNet.from_preset("tiny", base_chanels=8)


def test_config_round_trips_through_json():
    cfg = small_config(channel_mult=(1, 2, 2), attention_resolutions=(2, 4), num_classes=5, head_channels=8)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["channel_mult"] == [1, 2, 2]
    back = UNetConfig.from_dict(d)
    assert back == cfg
    assert isinstance(back.channel_mult, tuple) and isinstance(back.attention_resolutions, tuple)
    with pytest.raises(ValueError, match="bogus"):
        UNetConfig.from_dict({**d, "bogus": 1})


def _train_conditional(steps: int = 5) -> UNet:
    torch.manual_seed(0)
    net = UNet(small_config(num_classes=3))
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    x = torch.randn(6, 1, 8, 8)
    labels = torch.tensor([0, 1, 2, -1, 0, 1])
    t = torch.randint(0, 1000, (6,))
    # Each class gets its own target, so the label embedding must matter.
    target = labels.float().view(-1, 1, 1, 1).expand_as(x)
    for _ in range(steps):
        loss = (net(x, t, labels) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_class_conditioning():
    net = _train_conditional()
    x = torch.randn(1, 1, 8, 8).expand(4, 1, 8, 8)
    t = torch.full((4,), 100)
    with torch.no_grad():
        out = net(x, t, torch.tensor([0, 1, 2, -1]))
        out_none = net(x, t)
        out_null = net(x, t, torch.full((4,), -1))
    for i in range(4):
        for j in range(i + 1, 4):
            assert (out[i] - out[j]).abs().max() > 1e-4, (i, j)
    assert torch.equal(out_none, out_null)
    assert torch.allclose(out[3], out_null[3])


def test_label_validation():
    net = UNet(small_config(num_classes=3))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    # Values are checked once where labels enter, naming the bad ones: ddpm.sample (before any model call)...
    for bad, named in (([0, 3], "got 3"), ([-2, 0], "got -2"), ([5, -3], "got -3, 5")):
        with pytest.raises(ValueError, match=r"\[-1, 2\].*" + named):
            sample(net, (2, 1, 8, 8), Schedule.linear(10), steps=2, labels=torch.tensor(bad))
    calls = []  # a model with no known classes: only the lower end -1 is checked, before the first call
    with pytest.raises(ValueError, match=r"\[-1, \.\.\.\).*got -2"):
        sample(lambda *a: calls.append(a) or a[0], (2, 1, 8, 8), Schedule.linear(10), labels=torch.tensor([-2, 0]))
    assert calls == []
    with pytest.raises(ValueError, match=r"\[-1, 2\].*got 3"):
        check_labels(torch.tensor([0, 3]), 3)
    check_labels(torch.tensor([-1, 0, 2]), 3)  # the whole valid range passes
    # ...while the network checks shapes and dtypes only: it never reads label values back from the device.
    with torch.no_grad():
        net(x, t, torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels of shape"):
        net(x, t, torch.tensor([0]))
    with pytest.raises(ValueError, match="integer"):
        net(x, t, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_classes=None"):
        UNet(small_config())(x, t, torch.tensor([0, 1]))


def test_bad_image_size_raises_with_divisor():
    with pytest.raises(ValueError, match=r"image_size 30 .*divisible by 4"):
        UNet(small_config(image_size=30, channel_mult=(1, 2, 2)))
    with pytest.raises(ValueError, match=r"divisible by 8"):
        UNet.from_preset("ddpm-cifar10", image_size=36)
    net = UNet(small_config(channel_mult=(1, 2, 2)))
    with pytest.raises(ValueError, match=r"\(6, 6\).*divisible by 4"):
        net(torch.randn(1, 1, 6, 6), torch.tensor([1]))


def test_t_shape_is_checked_and_fractional_t_works():
    net = randomize(UNet(small_config())).eval()
    x = torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"t of shape \(2,\)"):
        net(x, torch.tensor(5))
    with pytest.raises(ValueError, match=r"t of shape \(2,\)"):
        net(x, torch.tensor([1, 2, 3]))
    with torch.no_grad():
        a = net(x, torch.tensor([10, 10]))
        b = net(x, torch.tensor([10.0, 10.0]))
        c = net(x, torch.tensor([10.5, 10.5]))
    assert torch.equal(a, b)  # integer and float t are the same number
    assert (a - c).abs().max() > 1e-5  # half a step changes the output: the embedding is continuous


def test_scale_shift_norm_is_groupnorm_times_one_plus_scale_plus_shift():
    """Adaptive GroupNorm: a residual block built with scale_shift takes (s, b) = split(emb_proj(SiLU(emb))) and
    computes conv2(SiLU(GN(conv1(SiLU(GN(x))))·(1 + s) + b)) + skip(x); the default block adds the projection
    before the second GroupNorm instead."""
    import torch.nn.functional as F

    from ddpm.unet import ResBlock

    torch.manual_seed(0)
    x, emb = torch.randn(3, 8, 6, 6, dtype=torch.float64), torch.randn(3, 16, dtype=torch.float64)
    for scale_shift in (True, False):
        block = ResBlock(8, 12, 16, dropout=0.0, groups=4, scale_shift=scale_shift).double()
        torch.nn.init.normal_(block.conv2.weight)  # zero-initialised: the branch would vanish
        with torch.no_grad():
            h = F.conv2d(F.silu(F.group_norm(x, 4, block.norm1.weight, block.norm1.bias, 1e-6)),
                         block.conv1.weight, block.conv1.bias, padding=1)
            e = F.linear(F.silu(emb), block.emb_proj.weight, block.emb_proj.bias)
            if scale_shift:
                assert e.shape == (3, 24)
                s, b = e[:, :12, None, None], e[:, 12:, None, None]
                h = F.group_norm(h, 4, block.norm2.weight, block.norm2.bias, 1e-6) * (1 + s) + b
            else:
                h = F.group_norm(h + e[:, :, None, None], 4, block.norm2.weight, block.norm2.bias, 1e-6)
            expected = F.conv2d(F.silu(h), block.conv2.weight, block.conv2.bias, padding=1) + \
                F.conv2d(x, block.skip.weight, block.skip.bias)
            torch.testing.assert_close(block(x, emb), expected, rtol=0, atol=1e-12)
    # The UNet passes the choice to every residual block and saves it in its config.
    net = UNet.from_preset("tiny", scale_shift_norm=True)
    assert all(m.scale_shift for m in net.modules() if isinstance(m, ResBlock))
    assert UNetConfig.from_dict(json.loads(json.dumps(net.config.to_dict()))).scale_shift_norm is True
    assert UNetConfig().scale_shift_norm is False


def test_timestep_embedding_values():
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 8)
    assert emb.shape == (2, 8)
    # t = 0: sin part 0, cos part 1.
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # Frequencies run from 1 to 1/10000 geometrically: t = 1 gives sin(1), ..., sin(1e-4).
    freqs = torch.tensor([1.0, 10000 ** (-1 / 3), 10000 ** (-2 / 3), 1e-4])
    assert torch.allclose(emb[1], torch.cat([freqs.sin(), freqs.cos()]), atol=1e-6)
    assert timestep_embedding(torch.tensor([3.0]), 7).shape == (1, 7)


def test_batch_independence_in_eval_mode():
    net = randomize(UNet(small_config(num_classes=4, dropout=0.1))).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 1, 8, 8, generator=g)
    t = torch.tensor([0, 5, 50, 500, 999])
    labels = torch.tensor([0, 1, -1, 3, 2])
    with torch.no_grad():
        full = net(x, t, labels)
        # Change every other image: image 2's output must not move.
        x2 = x.clone()
        x2[[0, 1, 3, 4]] = torch.randn(4, 1, 8, 8, generator=g) * 3
        other = net(x2, t, labels)
        alone = net(x[2:3], t[2:3], labels[2:3])
    assert full.abs().max() > 1e-3
    assert torch.allclose(full[2], other[2], atol=1e-5)
    assert torch.allclose(full[2:3], alone, atol=1e-5)


def test_tiny_preset_fits_a_fixed_target():
    """Regress fixed noise targets from 8 fixed 8×8 images at random timesteps: the loss must collapse."""
    torch.manual_seed(0)
    net = UNet.from_preset("tiny", channels=1, image_size=8)
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    target = torch.randn(8, 1, 8, 8)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    losses = []
    for _ in range(150):
        t = torch.randint(0, 1000, (8,))
        loss = (net(x, t) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    start = losses[0]
    end = sum(losses[-10:]) / 10
    assert abs(start - target.pow(2).mean().item()) < 1e-6  # zero-init output: the first loss is E[target²]
    assert end < 0.02 * start, (start, end)  # typically ~0.1% after 150 steps
