"""diffusers interop (ddpm.interop): networks that agree number for number, samplers that draw the same images,
exact round trips, and one-line refusals. diffusers itself (pinned in the test extras) is the oracle; no network.
"""

import datetime
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file

import ddpm
from ddpm.checkpoint import load_checkpoint, load_model, save_checkpoint
from ddpm.cli import main
from ddpm.errors import ParameterError, UserError
from ddpm.interop import export_diffusers, import_diffusers
from ddpm.interop.configs import (
    pipeline_flags,
    schedule_from_diffusers,
    unet_config_from_diffusers,
    unet_config_to_diffusers,
)
from ddpm.unet import UNetConfig

diffusers_logging.set_verbosity_error()

# google/ddpm-cifar10-32's config.json, key for key (the 2022 layout: everything else takes diffusers' defaults).
CIFAR10_CONFIG = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
CIFAR10_SCHEDULER = {
    "_class_name": "DDPMScheduler",
    "_diffusers_version": "0.1.1",
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "beta_start": 0.0001,
    "clip_sample": True,
    "num_train_timesteps": 1000,
    "trained_betas": None,
    "variance_type": "fixed_large",
}
# A small model in the same (DDPM) layout, 1×8×8 like the digits data.
SMALL = dict(
    sample_size=8,
    in_channels=1,
    out_channels=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    norm_eps=1e-6,
    norm_num_groups=8,
    attention_head_dim=None,
)


def _pipe(path):
    pipe = DDPMPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _agree(theirs, ours, shape, ts, labels=None, tol=1e-5, min_out=0.01):
    """Max |diffusers − ours| over batches at the timesteps ``ts`` (pairs per batch), asserted <= tol."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for pair in ts:
        x = torch.randn((len(pair), *shape), generator=g)
        t = torch.tensor(pair)
        with torch.no_grad():
            a = theirs(x, t, class_labels=labels).sample if labels is not None else theirs(x, t).sample
            b = ours(x, t, labels)
        assert b.abs().max() > min_out  # a real output, not the zero of a fresh zero-initialised net
        worst = max(worst, (a - b).abs().max().item())
    assert worst <= tol
    return worst


def _random_unet(preset, **kw):
    """One of our nets with every weight random (ours start with zeroed output layers)."""
    torch.manual_seed(1)
    net = ddpm.UNet.from_preset(preset, **kw).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn_like(p) * 0.05)
    return net


def _save_ours(path, net, schedule=None, prediction="eps", variance=None):
    schedule = schedule or ddpm.Schedule.linear(1000)
    cfg = net.config
    meta = {
        "step": 5,
        "model": cfg.to_dict(),
        "schedule": schedule.to_dict(),
        "prediction": prediction,
        "image_size": cfg.image_size,
        "channels": cfg.channels,
        "class_names": None,
    }
    if variance is not None:  # the reverse variance the network was trained for (none recorded: fixed-small)
        meta["variance"] = variance
    ema = {k: v.clone() + 0.01 for k, v in net.state_dict().items()}  # EMA differs from raw: export must pick it
    save_checkpoint(path, {k: v.clone() for k, v in net.state_dict().items()}, ema, meta)
    return path


# ---------------------------------------------------------------------------- the padding option


def test_same_padding_is_a_one_pixel_shift_and_old_configs_default_to_symmetric():
    old = UNetConfig(channels=1, image_size=8, base_channels=8, groups=4).to_dict()
    del old["downsample_padding"]  # a checkpoint written before the option existed
    assert UNetConfig.from_dict(old).downsample_padding == "symmetric"
    down = ddpm.unet.Downsample(3, "symmetric")
    same = ddpm.unet.Downsample(3, "same")
    same.load_state_dict(down.state_dict())
    x = torch.randn(2, 3, 8, 8)
    # "same" reads rows/cols 2i..2i+2, "symmetric" 2i-1..2i+1: away from the top/left edge, same(x) is
    # symmetric(x moved up-left by one pixel); at the corner it is the kernel on x[0:3, 0:3], with no padding.
    shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
    assert torch.allclose(same(x)[..., 1:, 1:], down(shifted)[..., 1:, 1:], atol=1e-6)
    corner = torch.einsum("oihw,bihw->bo", same.conv.weight, x[:, :, :3, :3]) + same.conv.bias
    assert torch.allclose(same(x)[..., 0, 0], corner, atol=1e-6)
    assert not torch.allclose(same(x), down(x), atol=1e-2)
    with pytest.raises(UserError, match="downsample_padding"):
        UNetConfig(downsample_padding="valid").validate()


# ---------------------------------------------------------------------------- import


@pytest.mark.slow
def test_import_the_paper_cifar10_layout_bin_and_2022_attention_names(tmp_path):
    """google/ddpm-cifar10-32 as published: its config.json, a .bin with the old attention names, fixed_large."""
    torch.manual_seed(0)
    theirs = UNet2DModel(**{k: v for k, v in CIFAR10_CONFIG.items() if not k.startswith("_")}).eval()
    old_names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    sd = {}
    for k, v in theirs.state_dict().items():
        for new, old in old_names.items():
            k = k.replace(f".{new}.", f".{old}.")
        sd[k] = v
    assert any(".proj_attn." in k for k in sd)
    src = tmp_path / "ddpm-cifar10-32"
    src.mkdir()
    torch.save(sd, src / "diffusion_pytorch_model.bin")
    (src / "config.json").write_text(json.dumps(CIFAR10_CONFIG))
    (src / "scheduler_config.json").write_text(json.dumps(CIFAR10_SCHEDULER))

    path = import_diffusers(src, tmp_path / "run")
    ours, ckpt, schedule = load_model(tmp_path / "run")
    assert path == tmp_path / "run" / "checkpoints" / "step-000000000.safetensors"
    assert sum(p.numel() for p in ours.parameters()) == 35_746_307
    assert ours.config == UNetConfig(**{**ddpm.PRESETS["ddpm-cifar10"], "dropout": 0.0, "downsample_padding": "same"})
    assert schedule.to_dict() == ddpm.Schedule.linear(1000, 1e-4, 0.02).to_dict()
    assert ckpt.meta["prediction"] == "eps"
    assert pipeline_flags(ckpt.meta) == "--sampler ddpm --steps 1000 --option variance=beta"
    _agree(theirs, ours, (3, 32, 32), [(0, 999), (10, 500)])


def test_import_pipeline_layout_safetensors_cosine_v_prediction_and_round_trip(tmp_path):
    cfg = dict(
        SMALL,
        block_out_channels=(16, 32, 32),
        down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
        layers_per_block=2,
        sample_size=16,
        in_channels=2,
        out_channels=2,
        downsample_padding=1,
        attention_head_dim=8,
        dropout=0.1,
    )
    torch.manual_seed(0)
    theirs = UNet2DModel(**cfg).eval()
    sched = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        clip_sample=False,
        timestep_spacing="trailing",
    )
    DDPMPipeline(unet=theirs, scheduler=sched).save_pretrained(tmp_path / "pipe")
    assert (tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    import_diffusers(tmp_path / "pipe", tmp_path / "a.safetensors")
    ours, ckpt, schedule = load_model(tmp_path / "a.safetensors")
    assert ours.config.head_channels == 8 and ours.config.downsample_padding == "symmetric"
    assert ours.config.attention_resolutions == (16, 4)
    assert ckpt.meta["prediction"] == "v" and schedule.kind == "cosine"
    assert torch.allclose(schedule.betas.float(), sched.betas, rtol=1e-5, atol=1e-7)
    assert pipeline_flags(ckpt.meta) == "--sampler ddpm --steps 1000 --no-clip"
    _agree(theirs, ours, (2, 16, 16), [(0, 999), (1, 250), (500, 750)])

    # import -> export -> import: the same tensors bit for bit, the same configs key for key.
    export_diffusers(tmp_path / "a.safetensors", tmp_path / "back")
    unet_json = json.loads((tmp_path / "back" / "unet" / "config.json").read_text())
    saved_json = json.loads((tmp_path / "pipe" / "unet" / "config.json").read_text())
    assert {k: v for k, v in unet_json.items() if k[0] != "_"} == {k: v for k, v in saved_json.items() if k[0] != "_"}
    s_back = json.loads((tmp_path / "back" / "scheduler" / "scheduler_config.json").read_text())
    s_saved = json.loads((tmp_path / "pipe" / "scheduler" / "scheduler_config.json").read_text())
    assert {k: v for k, v in s_back.items() if k[0] != "_"} == {k: v for k, v in s_saved.items() if k[0] != "_"}
    w_back = load_file(tmp_path / "back" / "unet" / "diffusion_pytorch_model.safetensors")
    w_saved = load_file(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    assert w_back.keys() == w_saved.keys() and all(torch.equal(w_back[k], w_saved[k]) for k in w_saved)
    import_diffusers(tmp_path / "back", tmp_path / "b.safetensors")
    a, b = load_checkpoint(tmp_path / "a.safetensors"), load_checkpoint(tmp_path / "b.safetensors")
    assert a.model.keys() == b.model.keys() and all(torch.equal(a.model[k], b.model[k]) for k in a.model)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    for key in ("model", "schedule", "prediction", "image_size", "channels"):
        assert a.meta[key] == b.meta[key]


def test_import_learned_range_samples_as_ddpm_pipeline_and_round_trips(tmp_path):
    """out_channels = 2 × in_channels with variance_type learned_range is a learned-range checkpoint: its 2C outputs
    are diffusers', ``ddpm sample`` with the flags ``ddpm convert`` prints draws DDPMPipeline's images (here on 10
    respaced steps, where both interpolate the step's own β̃ and β), and exporting it gives the folder back."""
    torch.manual_seed(0)
    theirs = UNet2DModel(**dict(SMALL, out_channels=2)).eval()
    sched = DDPMScheduler(variance_type="learned_range")
    DDPMPipeline(unet=theirs, scheduler=sched).save_pretrained(tmp_path / "pipe")

    path = import_diffusers(tmp_path / "pipe", tmp_path / "a.safetensors")
    ours, ckpt, schedule = load_model(path)
    assert ckpt.meta["variance"] == "learned-range" and ckpt.meta["model"]["out_channels"] == 2
    assert pipeline_flags(ckpt.meta) == "--sampler ddpm --steps 1000"
    _agree(theirs, ours, (1, 8, 8), [(0, 999), (1, 250), (500, 750)])  # prediction and variance halves

    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(path),
                "--num",
                "2",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "s"),
                "--npz",
                str(tmp_path / "s.npz"),
                "--quiet",
                "--sampler",
                "ddpm",
                "--steps",
                "10",
                "--spacing",
                "leading",
            ]
        )
        == 0
    )
    pipe = DDPMPipeline(unet=theirs, scheduler=DDPMScheduler(variance_type="learned_range"))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.alphas_cumprod = schedule.alphas_cumprod  # float64, as ours
    ref = pipe(2, generator=ddpm.image_generators(3, range(2)), num_inference_steps=10).images  # PIL, rounded
    ref = np.stack([np.asarray(im) for im in ref]).astype(int)
    got = np.load(tmp_path / "s.npz")["images"][..., 0].astype(int)
    assert np.array_equal(got, ref) and ref.std() > 20
    # The learned variance counts: the fixed β̃ draws other images from the same noise.
    fixed = ddpm.sample(
        ours,
        (2, 1, 8, 8),
        schedule,
        sampler="ddpm",
        steps=10,
        spacing="leading",
        learned_variance="learned-range",
        variance="posterior",
        generator=ddpm.image_generators(3, range(2)),
    )
    assert ((fixed[:, 0] / 2 + 0.5).clamp(0, 1) * 255 - torch.from_numpy(ref)).abs().max() > 10

    export_diffusers(path, tmp_path / "back")
    for sub, name in (("unet", "config.json"), ("scheduler", "scheduler_config.json")):
        back = json.loads((tmp_path / "back" / sub / name).read_text())
        saved = json.loads((tmp_path / "pipe" / sub / name).read_text())
        assert {k: v for k, v in back.items() if k[0] != "_"} == {k: v for k, v in saved.items() if k[0] != "_"}
    assert back["variance_type"] == "learned_range"
    w_back = load_file(tmp_path / "back" / "unet" / "diffusion_pytorch_model.safetensors")
    w_saved = load_file(tmp_path / "pipe" / "unet" / "diffusion_pytorch_model.safetensors")
    assert w_back.keys() == w_saved.keys() and all(torch.equal(w_back[k], w_saved[k]) for k in w_saved)


@pytest.mark.parametrize(
    "sched",
    [
        {"beta_schedule": "linear", "beta_start": 2e-4, "beta_end": 0.03, "num_train_timesteps": 500},
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
        {"beta_schedule": "sigmoid"},
        {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 300},
        {"trained_betas": [0.01, 0.02, 0.05, 0.1], "num_train_timesteps": 4},
    ],
)
def test_schedules_match_diffusers_tables(sched):
    schedule, prediction = schedule_from_diffusers(sched)
    theirs = DDPMScheduler(**sched)
    assert prediction == "eps"
    # diffusers builds its tables in float32; ours are float64 versions of the same formulas.
    assert torch.allclose(schedule.betas, theirs.betas.double(), rtol=2e-6, atol=1e-9)
    assert torch.allclose(schedule.alphas_cumprod, theirs.alphas_cumprod.double(), rtol=1e-4, atol=1e-9)


# ---------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    "preset, kw, shape",
    [
        ("tiny", dict(channels=1, image_size=8), (1, 8, 8)),
        ("small", dict(channels=3, image_size=16, num_heads=2, downsample_padding="same"), (3, 16, 16)),
        ("small", dict(channels=1, image_size=8, scale_shift_norm=True), (1, 8, 8)),
        # trained with --augment: sampling tells the network "not augmented" (zeros), so the export leaves it out
        ("tiny", dict(channels=1, image_size=8, augment_dim=15), (1, 8, 8)),
    ],
)
def test_exported_models_load_in_diffusers_and_agree(tmp_path, preset, kw, shape):
    net = _random_unet(preset, **kw)
    src = _save_ours(tmp_path / "c.safetensors", net)
    export_diffusers(src, tmp_path / "d")
    ema_net, _, _ = load_model(src)  # the export holds the EMA weights
    unet = UNet2DModel.from_pretrained(tmp_path / "d", subfolder="unet").eval()
    _agree(unet, ema_net, shape, [(0, 999), (300, 600)])
    pipe = _pipe(tmp_path / "d")
    _agree(pipe.unet.eval(), ema_net, shape, [(5, 995)])
    assert pipe.scheduler.config.variance_type == "fixed_small" and pipe.scheduler.config.prediction_type == "epsilon"


def test_class_conditional_export_is_a_unet_with_a_no_label_row(tmp_path, capsys):
    net = _random_unet("tiny", channels=1, image_size=8, num_classes=3)
    src = _save_ours(tmp_path / "c.safetensors", net, ddpm.Schedule.cosine(100), prediction="x0")
    assert main(["convert", str(src), str(tmp_path / "d")]) == 0
    assert "note: class-conditional" in capsys.readouterr().out
    assert not (tmp_path / "d" / "model_index.json").exists()
    sched = json.loads((tmp_path / "d" / "scheduler" / "scheduler_config.json").read_text())
    assert sched["beta_schedule"] == "squaredcos_cap_v2" and sched["prediction_type"] == "sample"
    assert sched["num_train_timesteps"] == 100
    unet = UNet2DModel.from_pretrained(tmp_path / "d", subfolder="unet").eval()
    ema_net, _, _ = load_model(src)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(4, 1, 8, 8, generator=g), torch.tensor([0, 30, 60, 99])
    labels = torch.tensor([0, 2, -1, 1])
    with torch.no_grad():
        a = unet(x, t, class_labels=torch.where(labels < 0, 3, labels)).sample
        b = ema_net(x, t, labels)
    assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(channel_mult=(2, 2)), "channel_mult"),
        (dict(base_channels=24, groups=32), "groups"),  # 24 channels: ddpm drops to 24 groups, diffusers cannot
        (dict(channel_mult=(1, 2), attention_resolutions=(8,), num_heads=2), "num_heads"),  # widths 32 and 64
    ],
)
def test_export_refuses_what_unet2dmodel_cannot_hold(kw, field):
    cfg = UNetConfig(**{**ddpm.PRESETS["tiny"], "channels": 1, **kw})
    with pytest.raises(UserError, match=f"^{field}=") as e:
        unet_config_to_diffusers(cfg)
    assert "\n" not in str(e.value)


def test_export_names_a_bad_variance_by_its_parameter(tmp_path):
    with pytest.raises(ParameterError, match="^variance must be one of posterior, beta; got 'small'$") as e:
        export_diffusers(tmp_path / "run", tmp_path / "out", variance="small")
    assert e.value.render(lambda name: "--" + name).startswith("--variance must be one of")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- sampling


@pytest.mark.slow
def test_ddpm_pipeline_and_our_ancestral_sampler_draw_the_same_images(tmp_path):
    """DDPMPipeline with the generators of ``ddpm sample --seed S`` (one per image) against our sampler with
    ``--sampler ddpm --option variance=beta``: both draw x_T and then one noise per step from those generators in
    the same order. diffusers keeps its ᾱ table in float32 (|Δ| ≈ 2e-5 after 1000 steps); given our float64
    table they agree to float32 rounding."""
    net = _random_unet("tiny", channels=1, image_size=8, base_channels=16, groups=8)
    schedule = ddpm.Schedule.linear(1000)
    src = _save_ours(tmp_path / "c.safetensors", net, schedule)
    export_diffusers(src, tmp_path / "d", variance="beta")
    model, _, _ = load_model(src)
    pipe = _pipe(tmp_path / "d")
    seed, n = 7, 2

    ours = ddpm.sample(
        model, (n, 1, 8, 8), schedule, sampler="ddpm", variance="beta", generator=ddpm.image_generators(seed, range(n))
    )
    ours = (ours / 2 + 0.5).clamp(0, 1)  # DDPMPipeline's output scaling
    float32_tables = pipe(n, generator=ddpm.image_generators(seed, range(n)), output_type="pt").images
    assert (float32_tables - ours).abs().max() < 1e-4
    pipe.scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    same_tables = pipe(n, generator=ddpm.image_generators(seed, range(n)), output_type="pt").images
    assert (same_tables - ours).abs().max() < 1e-6
    # Images, not a constant, and each image its own: the match is not an accident of a degenerate model.
    assert ours.std() > 0.1 and (ours[0] - ours[1]).abs().max() > 0.1


@pytest.mark.slow
def test_ddpm_pipeline_draws_a_learned_range_network_as_our_ancestral_sampler_does(tmp_path):
    """A network that predicts its variance (improved DDPM's learned range, out_channels 2C) exported as
    variance_type learned_range: DDPMPipeline interpolates log β̃_t and log β_t with the network's second half as our
    ddpm sampler does with ``learned_variance="learned-range"``, so the two draw the same images, within the
    tolerances of the fixed-variance test above."""
    net = _random_unet("tiny", channels=1, image_size=8, base_channels=16, groups=8, out_channels=2)
    schedule = ddpm.Schedule.linear(1000)
    src = _save_ours(tmp_path / "c.safetensors", net, schedule, variance="learned-range")
    export_diffusers(src, tmp_path / "d")
    model, _, _ = load_model(src)
    pipe = _pipe(tmp_path / "d")
    assert pipe.unet.config.out_channels == 2 and pipe.scheduler.config.variance_type == "learned_range"
    seed, n = 7, 2

    def ours(**options):
        x = ddpm.sample(
            model,
            (n, 1, 8, 8),
            schedule,
            sampler="ddpm",
            learned_variance="learned-range",
            generator=ddpm.image_generators(seed, range(n)),
            **options,
        )
        return (x / 2 + 0.5).clamp(0, 1)  # DDPMPipeline's output scaling

    learned = ours()
    float32_tables = pipe(n, generator=ddpm.image_generators(seed, range(n)), output_type="pt").images
    assert (float32_tables - learned).abs().max() < 1e-4
    pipe.scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    same_tables = pipe(n, generator=ddpm.image_generators(seed, range(n)), output_type="pt").images
    assert (same_tables - learned).abs().max() < 1e-6
    assert learned.std() > 0.1 and (learned[0] - learned[1]).abs().max() > 0.1
    # The network's variance is what both used: the fixed β̃ draws other images from the same noise.
    assert (ours(variance="posterior") - learned).abs().max() > 1e-3


# ---------------------------------------------------------------------------- the command


def _small_folder(path):
    torch.manual_seed(0)
    unet = UNet2DModel(**SMALL).eval()
    path.mkdir()
    unet.save_pretrained(path)  # root layout: config.json + safetensors
    DDPMScheduler(variance_type="fixed_large").save_pretrained(path)  # scheduler_config.json beside them
    return unet


def test_convert_cli_end_to_end(tmp_path, capsys, run_dir):
    theirs = _small_folder(tmp_path / "hub")
    run = tmp_path / "imported"
    assert main(["convert", str(tmp_path / "hub"), str(run)]) == 0
    out = capsys.readouterr().out
    assert "--sampler ddpm --steps 1000 --option variance=beta" in out

    # ddpm sample with DDPMPipeline's settings (10 steps on diffusers' default 'leading' spacing) gives its images.
    flags = ["--sampler", "ddpm", "--steps", "10", "--spacing", "leading", "--option", "variance=beta"]
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run),
                "--num",
                "2",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "s"),
                "--npz",
                str(tmp_path / "s.npz"),
                "--quiet",
                *flags,
            ]
        )
        == 0
    )
    pipe = DDPMPipeline(unet=theirs, scheduler=DDPMScheduler(variance_type="fixed_large"))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.alphas_cumprod = ddpm.Schedule.linear(1000).alphas_cumprod  # float64, as ours
    ref = pipe(2, generator=ddpm.image_generators(3, range(2)), num_inference_steps=10).images  # PIL, rounded
    got = np.load(tmp_path / "s.npz")["images"]
    assert np.array_equal(got[..., 0], np.stack([np.asarray(im) for im in ref]))
    assert (
        main(
            [
                "edit",
                "--checkpoint",
                str(run),
                "--image",
                str(tmp_path / "s" / "000000.png"),
                "--strength",
                "0.3",
                "--steps",
                "3",
                "--out",
                str(tmp_path / "e.png"),
            ]
        )
        == 0
    )

    # Fine-tuning starts from the imported network and weights (a tiny lr keeps them), whatever --preset says.
    ft = tmp_path / "ft"
    tune = [
        "train",
        "--data",
        "digits",
        "--preset",
        "small",
        "--out",
        str(ft),
        "--batch-size",
        "4",
        "--lr",
        "1e-9",
        "--warmup",
        "0",
        "--sample-every",
        "0",
        "--num-samples",
        "1",
        "--sample-steps",
        "2",
        "--quiet",
    ]
    assert main([*tune, "--init-from", str(run), "--steps", "2"]) == 0
    before, after = load_checkpoint(run), load_checkpoint(ft)
    assert after.meta["model"] == before.meta["model"] and after.step == 2
    assert max((after.model[k] - before.model[k]).abs().max().item() for k in before.model) < 1e-6
    assert max((after.ema[k] - before.ema[k]).abs().max().item() for k in before.ema) < 1e-6
    # Resuming such a run needs the same --init-from (it decides the network).
    assert main([*tune, "--steps", "3", "--resume"]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert main([*tune, "--init-from", str(run), "--steps", "3", "--resume"]) == 0
    assert load_checkpoint(ft).step == 3

    # Export a trained run (EMA weights) and load it back in diffusers.
    assert main(["convert", str(run_dir), str(tmp_path / "exported")]) == 0
    model, _, _ = load_model(run_dir)
    _agree(_pipe(tmp_path / "exported").unet.eval(), model, (1, 8, 8), [(0, 999)], min_out=1e-3)


def test_convert_and_init_from_mistakes_exit_2_with_one_line(tmp_path, capsys, run_dir):
    _small_folder(tmp_path / "hub")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    imported = tmp_path / "imp.safetensors"
    import_diffusers(tmp_path / "hub", imported)
    train = ["train", "--init-from", str(imported), "--data", "digits", "--steps", "1", "--quiet"]
    cases = [
        (["convert", str(tmp_path / "hub"), str(tmp_path / "taken")], "never overwrites"),
        (["convert", str(run_dir), str(tmp_path / "taken")], "never overwrites"),
        (["convert", str(tmp_path / "nothing"), str(tmp_path / "x")], "does not exist"),
        (
            ["convert", str(tmp_path / "hub" / "diffusion_pytorch_model.safetensors"), str(tmp_path / "x")],
            "diffusers weights file",
        ),
        ([*train, "--out", str(tmp_path / "t1"), "--image-size", "16"], "image_size=8"),
        ([*train, "--out", str(tmp_path / "t2"), "--prediction", "v"], "--prediction eps"),
        ([*train, "--out", str(tmp_path / "t3"), "--schedule", "cosine"], "--schedule"),
        ([*train, "--out", str(tmp_path / "t4"), "--class-cond"], "num_classes"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and words in err, err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine" and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "change, field",
    [
        ({"flip_sin_to_cos": True}, "flip_sin_to_cos"),
        ({"freq_shift": 0}, "freq_shift"),
        ({"act_fn": "gelu"}, "act_fn"),
        ({"norm_eps": 1e-5}, "norm_eps"),
        ({"resnet_time_scale_shift": "ada_group"}, "resnet_time_scale_shift"),
        ({"resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": None}, "attn_norm_num_groups"),
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        ({"num_class_embeds": 10}, "num_class_embeds"),
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        ({"center_input_sample": True}, "center_input_sample"),
        ({"down_block_types": ["DownBlock2D", "SkipDownBlock2D"]}, "down_block_types"),
        ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D"]}, "up_block_types"),
        ({"block_out_channels": [32, 48]}, "block_out_channels"),
        ({"mid_block_scale_factor": 2}, "mid_block_scale_factor"),
        ({"downsample_padding": 2}, "downsample_padding"),
        ({"downsample_type": "resnet"}, "downsample_type"),
        ({"out_channels": 2}, "out_channels"),
        ({"sample_size": None}, "sample_size"),
        ({"sample_size": [8, 16]}, "sample_size"),
        ({"attention_head_dim": 24}, "attention_head_dim"),
        ({"time_embedding_dim": 64}, "time_embedding_dim"),
        ({"add_attention": False}, "add_attention"),
        ({"mid_block_type": None}, "mid_block_type"),
        ({"attn_norm_num_groups": 4}, "attn_norm_num_groups"),
        ({"_class_name": "UNet2DConditionModel"}, "_class_name"),
        ({"shiny_new_option": 1}, "shiny_new_option"),
    ],
)
def test_unrepresentable_unet_configs_are_refused_naming_the_field(change, field):
    cfg = {
        **SMALL,
        "down_block_types": list(SMALL["down_block_types"]),
        "up_block_types": list(SMALL["up_block_types"]),
        **change,
    }
    with pytest.raises(UserError, match=field) as e:
        unet_config_from_diffusers(cfg)
    assert "\n" not in str(e.value)


def test_the_small_config_itself_is_accepted():
    cfg = unet_config_from_diffusers(dict(SMALL))  # the refusal tests above start from a valid config
    assert (cfg.base_channels, cfg.channel_mult, cfg.attention_resolutions) == (32, (1, 2), (4,))
    assert cfg.scale_shift_norm is False
    ada = {**SMALL, "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": SMALL.get("norm_num_groups", 32)}
    assert unet_config_from_diffusers(ada).scale_shift_norm is True


@pytest.mark.parametrize(
    "change, field",
    [
        ({"variance_type": "learned"}, "variance_type"),  # σ² there, log σ² in ddpm
        ({"variance_type": "fixed_tiny"}, "variance_type"),
        ({"prediction_type": "flow"}, "prediction_type"),
        ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr"),
        ({"clip_sample_range": 2.0}, "clip_sample_range"),
        ({"beta_schedule": "laplace"}, "beta_schedule"),
        ({"_class_name": "EulerDiscreteScheduler"}, "_class_name"),
        ({"trained_betas": [0.1, 0.2], "num_train_timesteps": 3}, "trained_betas"),
        ({"beta_start": 0.03, "beta_end": 0.02}, "beta_start"),
    ],
)
def test_unrepresentable_schedulers_are_refused_naming_the_field(change, field):
    with pytest.raises(UserError, match=field) as e:
        schedule_from_diffusers(change)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "unet, variance_type, field",
    [
        ({"out_channels": 2}, "fixed_small", "out_channels"),  # 2C is a learned variance: the scheduler must say so
        ({"out_channels": 2}, "fixed_large", "out_channels"),
        ({}, "learned_range", "out_channels"),  # learned_range needs the variance half
        ({"out_channels": 3}, "learned_range", "out_channels"),
        ({"out_channels": 2}, "learned", "variance_type"),  # σ² in diffusers, log σ² in ddpm
    ],
)
def test_learned_variance_imports_must_pair_out_channels_with_learned_range(tmp_path, unet, variance_type, field):
    src = tmp_path / "hub"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({**SMALL, **unet}))
    (src / "scheduler_config.json").write_text(json.dumps({"variance_type": variance_type}))
    with pytest.raises(UserError, match=f"field {field}=") as e:
        import_diffusers(src, tmp_path / "out")
    assert "\n" not in str(e.value) and variance_type in str(e.value)
    assert not (tmp_path / "out").exists()


def test_learned_variance_exports_refuse_what_diffusers_would_sample_otherwise(tmp_path, capsys):
    net = _random_unet("tiny", channels=1, image_size=8, out_channels=2)
    learned = _save_ours(tmp_path / "learned.safetensors", net, variance="learned")
    with pytest.raises(UserError, match="^the checkpoint's variance 'learned' .*variance_type 'learned'") as e:
        export_diffusers(learned, tmp_path / "a")
    assert "\n" not in str(e.value) and "log σ²" in str(e.value)
    ranged = _save_ours(tmp_path / "ranged.safetensors", net, variance="learned-range")
    with pytest.raises(ParameterError, match="^variance cannot be chosen .*predicts its variance") as e:
        export_diffusers(ranged, tmp_path / "b", variance="beta")
    assert "\n" not in str(e.value)
    assert main(["convert", str(ranged), str(tmp_path / "b"), "--variance", "posterior"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --variance cannot be chosen") and err.count("\n") == 1
    narrow = _save_ours(
        tmp_path / "narrow.safetensors", _random_unet("tiny", channels=1, image_size=8), variance="learned-range"
    )
    with pytest.raises(UserError, match="out_channels=1 but its variance 'learned-range' needs 2"):
        export_diffusers(narrow, tmp_path / "c")
    assert not any((tmp_path / d).exists() for d in "abc")


def test_export_variance_follows_the_variance_the_network_was_trained_for(tmp_path):
    net = _random_unet("tiny", channels=1, image_size=8)
    src = _save_ours(tmp_path / "large.safetensors", net, variance="fixed-large")
    export_diffusers(src, tmp_path / "default")
    export_diffusers(src, tmp_path / "chosen", variance="posterior")
    kinds = [
        json.loads((tmp_path / d / "scheduler" / "scheduler_config.json").read_text())["variance_type"]
        for d in ("default", "chosen")
    ]
    assert kinds == ["fixed_large", "fixed_small"]
    assert pipeline_flags(load_checkpoint(src).meta) == "--sampler ddpm --steps 1000 --option variance=beta"


def test_a_bin_that_is_not_plain_tensors_is_refused(tmp_path):
    src = tmp_path / "hub"
    _small_folder(src)
    (src / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"when": datetime.date(2022, 6, 1)}, src / "diffusion_pytorch_model.bin")  # needs a real unpickler
    with pytest.raises(UserError, match="weights only"):
        import_diffusers(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_residual_up_down_networks_are_refused_on_export_not_written_wrong():
    cfg = ddpm.UNetConfig(**ddpm.PRESETS["adm-64"])
    with pytest.raises(UserError, match="residual up/down blocks"):
        unet_config_to_diffusers(cfg)
