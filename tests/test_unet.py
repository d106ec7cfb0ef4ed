"""Tests for the UNet: shapes, zero-init output, parameter counts, conditioning, validation, fitting."""

from __future__ import annotations

import json

import pytest
import torch

from ddpm import Schedule, sample
from ddpm.unet import PRESETS, UNet, UNetConfig, auto_preset, check_labels, timestep_embedding


def small_config(**kw) -> UNetConfig:
    """A net small enough that a forward pass takes milliseconds."""
    base = dict(
        channels=1,
        image_size=8,
        base_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(4,),
        groups=8,
    )
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
    net = randomize(
        UNet(small_config(channels=channels, image_size=size, channel_mult=mult, attention_resolutions=attn))
    ).eval()
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
            h = F.conv2d(
                F.silu(F.group_norm(x, 4, block.norm1.weight, block.norm1.bias, 1e-6)),
                block.conv1.weight,
                block.conv1.bias,
                padding=1,
            )
            e = F.linear(F.silu(emb), block.emb_proj.weight, block.emb_proj.bias)
            if scale_shift:
                assert e.shape == (3, 24)
                s, b = e[:, :12, None, None], e[:, 12:, None, None]
                h = F.group_norm(h, 4, block.norm2.weight, block.norm2.bias, 1e-6) * (1 + s) + b
            else:
                h = F.group_norm(h + e[:, :, None, None], 4, block.norm2.weight, block.norm2.bias, 1e-6)
            expected = F.conv2d(F.silu(h), block.conv2.weight, block.conv2.bias, padding=1) + F.conv2d(
                x, block.skip.weight, block.skip.bias
            )
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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------- presets by resolution

# Published parameter counts: (preset, as the paper counts it: classes, output channels, published count, precision).
# Ho et al. (2020): "35.7 million" (CIFAR-10), "114 million" (LSUN, CelebA-HQ 256×256); Dhariwal & Nichol (2021):
# 296M (ImageNet 64×64) and 422M (ImageNet 128×128), both class-conditional on 1000 classes with 6 output
# channels (the learned variance).
PUBLISHED = [
    ("ddpm-cifar10", None, 3, 35.7e6, 0.1e6),
    ("ddpm-256", None, 3, 114e6, 1e6),
    ("adm-64", 1000, 6, 296e6, 1e6),
    ("adm-128", 1000, 6, 422e6, 1e6),
]


def paper_count(name: str, classes: int | None, out_channels: int) -> int:
    """Our preset's parameter count, adjusted to what its paper counts: our label embedding has one extra row (the
    "no label" of guidance), and the paper's output conv may have more channels (the learned variance)."""
    with torch.device("meta"):
        net = UNet.from_preset(name, num_classes=classes)
    cfg = net.config
    count = n_params(net)
    if classes is not None:
        count -= 4 * cfg.base_channels  # the extra embedding row
    return count + (out_channels - cfg.channels) * (cfg.base_channels * 9 + 1)  # the output conv's extra channels


def diffusers_count(name: str, classes: int | None, out_channels: int) -> int:
    """The parameter count of diffusers' UNet2DModel built (on the meta device) to the preset's paper configuration:
    an implementation written independently of ours."""
    UNet2DModel = pytest.importorskip("diffusers").UNet2DModel  # noqa: N806

    p = {**PRESETS[name]}
    size, mult, updown = p["image_size"], p["channel_mult"], p.get("resblock_updown", False)
    attn = [size // 2**i in p["attention_resolutions"] for i in range(len(mult))]
    plain_down, plain_up = (
        ("ResnetDownsampleBlock2D", "ResnetUpsampleBlock2D") if updown else ("DownBlock2D", "UpBlock2D")
    )
    shift = p.get("scale_shift_norm", False)
    with torch.device("meta"):
        theirs = UNet2DModel(
            sample_size=size,
            in_channels=3,
            out_channels=out_channels,
            block_out_channels=[p["base_channels"] * m for m in mult],
            layers_per_block=p["num_res_blocks"],
            down_block_types=["AttnDownBlock2D" if a else plain_down for a in attn],
            up_block_types=["AttnUpBlock2D" if a else plain_up for a in reversed(attn)],
            downsample_type="resnet" if updown else "conv",
            upsample_type="resnet" if updown else "conv",
            resnet_time_scale_shift="scale_shift" if shift else "default",
            attn_norm_num_groups=32 if shift else None,
            attention_head_dim=p.get("head_channels") or 32,
            norm_num_groups=32,
            num_class_embeds=classes,
        )
    return n_params(theirs)


@pytest.mark.parametrize("name,classes,out_channels,published,precision", PUBLISHED)
def test_published_presets_have_the_published_parameter_counts(name, classes, out_channels, published, precision):
    ours = paper_count(name, classes, out_channels)
    assert round(ours / precision) * precision == pytest.approx(published)


@pytest.mark.parametrize("name,classes,out_channels", [row[:3] for row in PUBLISHED])
def test_published_preset_counts_equal_diffusers_unet2dmodel_of_the_same_configuration(name, classes, out_channels):
    assert paper_count(name, classes, out_channels) == diffusers_count(name, classes, out_channels)


def test_published_preset_counts_are_pinned():
    counts = {}
    for name in ("adm-64", "adm-128", "ddpm-256", "tiny-32", "tiny-64"):
        with torch.device("meta"):
            counts[name] = n_params(UNet.from_preset(name))
    assert counts == {
        "adm-64": 295_131_267,
        "adm-128": 420_498_691,
        "ddpm-256": 113_673_219,
        "tiny-32": 1_192_387,
        "tiny-64": 1_628_611,
    }


@pytest.mark.parametrize(
    "size,cpu,gpu",
    [(8, "tiny", "tiny"), (28, "tiny", "tiny"), (32, "tiny", "tiny"), (48, "tiny-64", "adm-64"),
     (64, "tiny-64", "adm-64"), (96, "tiny-128", "adm-128"), (128, "tiny-128", "adm-128"),
     (256, "tiny-256", "ddpm-256"), (512, "tiny-256", "ddpm-256")],
)  # fmt: skip
def test_auto_preset_by_size_and_device(size, cpu, gpu):
    assert auto_preset(size, "cpu") == (cpu, gpu)
    assert auto_preset(size, "cuda") == auto_preset(size, "mps") == (gpu, cpu)


def test_auto_presets_reach_8_px_with_attention_at_16():
    for size in (64, 128, 256):
        for name in auto_preset(size, "cpu"):
            cfg = UNetConfig(**PRESETS[name])
            assert cfg.image_size == size
            assert size // 2 ** (len(cfg.channel_mult) - 1) == 8, name  # the lowest level is 8 px
            assert 16 in cfg.attention_resolutions, name


@pytest.mark.parametrize("resample", ["down", "up"])
def test_residual_resampling_matches_diffusers(resample):
    """A ResBlock with resample "down"/"up" computes what diffusers' ResnetBlock2D(down/up=True) does with the same
    weights (average pool / nearest upsample of both branches, adaptive GroupNorm)."""
    from ddpm.unet import ResBlock

    ResnetBlock2D = pytest.importorskip("diffusers.models.resnet").ResnetBlock2D  # noqa: N806

    torch.manual_seed(0)
    ours = randomize(ResBlock(16, 16, 32, 0.0, 4, scale_shift=True, resample=resample)).eval()
    theirs = ResnetBlock2D(
        in_channels=16,
        out_channels=16,
        temb_channels=32,
        groups=4,
        eps=1e-6,
        time_embedding_norm="scale_shift",
        down=resample == "down",
        up=resample == "up",
    ).eval()
    theirs.load_state_dict(
        {
            "norm1.weight": ours.norm1.weight,
            "norm1.bias": ours.norm1.bias,
            "conv1.weight": ours.conv1.weight,
            "conv1.bias": ours.conv1.bias,
            "time_emb_proj.weight": ours.emb_proj.weight,
            "time_emb_proj.bias": ours.emb_proj.bias,
            "norm2.weight": ours.norm2.weight,
            "norm2.bias": ours.norm2.bias,
            "conv2.weight": ours.conv2.weight,
            "conv2.bias": ours.conv2.bias,
        }
    )
    x, emb = torch.randn(2, 16, 8, 8), torch.randn(2, 32)
    with torch.no_grad():
        y = ours(x, emb)
        assert y.shape == (2, 16, 4, 4) if resample == "down" else (2, 16, 16, 16)
        torch.testing.assert_close(y, theirs(x, emb), rtol=1e-5, atol=1e-5)


def test_resblock_updown_network_runs_and_has_no_strided_conv():
    net = UNet(small_config(channel_mult=(1, 2, 2), image_size=16, resblock_updown=True, scale_shift_norm=True))
    assert not any(isinstance(m, torch.nn.Conv2d) and m.stride == (2, 2) for m in net.modules())
    x = torch.randn(2, 1, 16, 16)
    assert randomize(net)(x, torch.tensor([1, 500])).shape == x.shape


# ---------------------------------------------------------------------------- gradient checkpointing


def _loss_and_grads(net: UNet, x: torch.Tensor, t: torch.Tensor, target: torch.Tensor, seed: int):
    net.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # the dropout masks
    loss = (net(x, t) - target).pow(2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("updown", [False, True])
def test_grad_checkpoint_gives_the_same_loss_and_gradients_with_dropout(updown):
    cfg = small_config(
        image_size=16,
        channel_mult=(1, 2, 2),
        attention_resolutions=(8,),
        dropout=0.3,
        scale_shift_norm=True,
        resblock_updown=updown,
    )
    net = randomize(UNet(cfg)).train()
    x, t, target = torch.randn(3, 1, 16, 16), torch.tensor([3, 400, 999]), torch.randn(3, 1, 16, 16)
    loss, grads = _loss_and_grads(net, x, t, target, seed=7)
    other_seed, _ = _loss_and_grads(net, x, t, target, seed=8)
    assert not torch.equal(loss, other_seed)  # dropout is active: another seed gives another loss

    net.grad_checkpoint = True
    calls, block_forward = [], net.mid[0].forward
    net.mid[0].forward = lambda *args: calls.append(1) or block_forward(*args)
    loss_ck, grads_ck = _loss_and_grads(net, x, t, target, seed=7)
    assert len(calls) == 2  # the block ran again in the backward pass
    torch.testing.assert_close(loss_ck, loss, rtol=1e-6, atol=1e-7)
    for name, g in grads.items():
        torch.testing.assert_close(grads_ck[name], g, rtol=1e-5, atol=1e-7, msg=lambda m, n=name: f"{n}: {m}")


def _saved_bytes(net: UNet, x: torch.Tensor, t: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        net(x, t).sum()
    return sum(seen.values())


def test_grad_checkpoint_keeps_far_fewer_activations_and_nothing_without_grad():
    net = UNet(small_config(image_size=32, channel_mult=(1, 2, 2), attention_resolutions=(16,))).train()
    x, t = torch.randn(4, 1, 32, 32), torch.tensor([1, 2, 3, 4])
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    full = _saved_bytes(net, x, t) - params
    net.grad_checkpoint = True
    kept = _saved_bytes(net, x, t) - params
    assert kept * 2 < full
    with torch.no_grad():  # sampling: no checkpoint machinery, the same output
        net.grad_checkpoint = False
        y = net(x, t)
        net.grad_checkpoint = True
        assert torch.equal(net(x, t), y)


def test_a_network_without_conditions_is_described_and_seeded_as_before_the_fields():
    cfg = small_config(num_classes=3)
    assert not {"cond_channels", "cond_level", "augment_dim"} & set(cfg.to_dict())
    torch.manual_seed(0)
    plain = UNet(cfg)
    assert plain.level_mlp is None and plain.augment_emb is None and plain.conv_in.in_channels == 1
    torch.manual_seed(0)
    conditioned = UNet(small_config(num_classes=3, cond_channels=2, cond_level=True, augment_dim=5))
    # The condition widens conv_in (2 channels x 3x3 x 16 filters); the level and augmentation add their embeddings.
    assert n_params(conditioned) == n_params(plain) + 2 * 9 * 16 + sum(
        p.numel() for m in (conditioned.level_mlp, conditioned.augment_emb) for p in m.parameters()
    )
    back = UNetConfig.from_dict(json.loads(json.dumps(conditioned.config.to_dict())))
    assert back == conditioned.config


def test_the_condition_enters_as_input_channels_and_the_level_as_an_embedding():
    net = randomize(UNet(small_config(cond_channels=3, cond_level=True))).eval()
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(2, 1, 8, 8, generator=g), torch.tensor([10, 500])
    cond = torch.randn(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        out = net(x, t, cond=cond)
        # conv_in sees [x, cond]: a network whose condition weights are zeroed ignores the condition ...
        blind = UNet(net.config).eval()
        blind.load_state_dict(net.state_dict())
        blind.conv_in.weight[:, 1:] = 0
        assert torch.equal(blind(x, t, cond=cond), blind(x, t, cond=torch.zeros_like(cond)))
        # ... and the real one does not.
        assert (out - net(x, t, cond=cond.flip(-1))).abs().max() > 1e-3
        # The level is an embedding: 0 is what None means, another level changes the output.
        assert torch.equal(net(x, t, cond=cond, cond_level=torch.zeros(2)), out)
        assert (net(x, t, cond=cond, cond_level=torch.full((2,), 0.3)) - out).abs().max() > 1e-3
        assert torch.equal(net(x, t, **net.extra_inputs(2)), net(x, t, cond=torch.zeros(2, 3, 8, 8)))
    with pytest.raises(ValueError, match="conditioned on an image"):
        net(x, t)
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        net(x, t, cond=torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="cond_channels=0"):
        UNet(small_config())(x, t, cond=cond)


def test_an_augmentation_vector_of_zeros_leaves_the_network_as_if_it_had_none():
    net = randomize(UNet(small_config(augment_dim=4))).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 300])
    with torch.no_grad():
        out = net(x, t)
        assert torch.equal(net(x, t, augment=torch.zeros(2, 4)), out)
        assert (net(x, t, augment=torch.ones(2, 4)) - out).abs().max() > 1e-3
        # The embedding is linear without a bias: a zero vector adds exactly nothing to the time embedding.
        assert net.augment_emb is not None and net.augment_emb.bias is None
