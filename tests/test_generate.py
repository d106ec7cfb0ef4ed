"""``ddpm sample`` end to end: measured defaults, metadata, --reproduce, --trajectory, --interpolate."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import image_generators, load_model, sample
from ddpm.cli import main
from ddpm.denoiser import randn
from ddpm.errors import ParameterError
from ddpm.generate import generate, slerp
from ddpm.images import read_png_metadata, save_png, to_uint8
from ddpm.sampler_choice import DEFAULT_SAMPLER, DETERMINISTIC_SAMPLER, SampleSettings, choose_sampler

CELL = 8 * 8 + 1  # an 8x8 digit enlarged 8 times, plus one pixel of padding


def _pixels(path):
    with Image.open(path) as im:
        return np.asarray(im)


def _cell(strip, row, col):
    """The 8x8 picture in (row, col) of a strip of 8x-enlarged cells with 1-pixel padding."""
    y, x = 1 + row * CELL, 1 + col * CELL
    return strip[y : y + 64 : 8, x : x + 64 : 8]


def test_default_sampler_is_used_and_matches_the_library(run_dir, tmp_path):
    out = tmp_path / "s"
    argv = ["sample", "--checkpoint", str(run_dir), "--num", "3", "--seed", "5", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    name, spacing, steps = DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing, DEFAULT_SAMPLER.steps
    meta = read_png_metadata(out / "000002.png")
    assert {
        k: meta[k]
        for k in (
            "ddpm:kind",
            "ddpm:seed",
            "ddpm:index",
            "ddpm:sampler",
            "ddpm:spacing",
            "ddpm:steps",
            "ddpm:guidance",
            "ddpm:class",
            "ddpm:clip_x0",
            "ddpm:ema",
        )
    } == {
        "ddpm:kind": "sample",
        "ddpm:seed": "5",
        "ddpm:index": "2",
        "ddpm:sampler": name,
        "ddpm:spacing": spacing,
        "ddpm:steps": str(steps),
        "ddpm:guidance": "",
        "ddpm:class": "",
        "ddpm:clip_x0": "True",
        "ddpm:ema": "True",
    }
    assert meta["ddpm:version"] == __import__("ddpm").__version__ and len(meta["ddpm:checkpoint_sha256"]) == 64
    model, _, schedule = load_model(run_dir)
    x = sample(
        model,
        (3, 1, 8, 8),
        schedule,
        sampler=name,
        steps=steps,
        spacing=spacing,
        generator=image_generators(5, [0, 1, 2]),
    )
    expected = to_uint8(x)[..., 0]
    assert np.array_equal(np.stack([_pixels(out / f"{i:06d}.png") for i in range(3)]), expected)


def test_reproduce_is_bit_identical_and_batch_size_does_not_matter(run_dir, tmp_path, capsys):
    one, seven = tmp_path / "one", tmp_path / "seven"
    common = ["sample", "--checkpoint", str(run_dir), "--num", "7", "--seed", "11", "--quiet"]
    assert main([*common, "--batch-size", "7", "--out", str(seven)]) == 0
    assert main([*common, "--batch-size", "1", "--out", str(one)]) == 0
    for i in range(7):
        assert (one / f"{i:06d}.png").read_bytes() == (seven / f"{i:06d}.png").read_bytes(), i
    again = tmp_path / "again"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run_dir),
                "--reproduce",
                str(seven / "000005.png"),
                "--out",
                str(again),
                "--quiet",
            ]
        )
        == 0
    )
    assert (again / "000005.png").read_bytes() == (seven / "000005.png").read_bytes()
    # Stochastic DDIM with an eta, and a sampler option, come back through the metadata too.
    ddim = tmp_path / "ddim"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run_dir),
                "--num",
                "2",
                "--sampler",
                "ddim",
                "--eta",
                "0.7",
                "--steps",
                "6",
                "--spacing",
                "linspace",
                "--quiet",
                "--out",
                str(ddim),
            ]
        )
        == 0
    )
    meta = read_png_metadata(ddim / "000001.png")
    assert meta["ddpm:eta"] == "0.7" and meta["ddpm:spacing"] == "linspace" and meta["ddpm:steps"] == "6"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run_dir),
                "--num",
                "2",
                "--sampler",
                "dpmpp-2m",
                "--option",
                "order=1",
                "--steps",
                "5",
                "--quiet",
                "--out",
                str(tmp_path / "opt"),
            ]
        )
        == 0
    )
    assert read_png_metadata(tmp_path / "opt" / "000001.png")["ddpm:options"] == '{"order": 1}'
    for src in (ddim / "000001.png", tmp_path / "opt" / "000001.png"):
        dest = tmp_path / ("re-" + src.parent.name)
        assert (
            main(["sample", "--checkpoint", str(run_dir), "--reproduce", str(src), "--out", str(dest), "--quiet"]) == 0
        )
        assert (dest / src.name).read_bytes() == src.read_bytes(), src
    # Another checkpoint (the run's step 6) is refused, naming both short hashes; nothing is written.
    capsys.readouterr()
    old = run_dir / "checkpoints" / "step-000000006.safetensors"
    recorded = read_png_metadata(seven / "000005.png")["ddpm:checkpoint_sha256"]
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(old),
                "--reproduce",
                str(seven / "000005.png"),
                "--out",
                str(tmp_path / "wrong"),
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and recorded[:12] in err
    assert not (tmp_path / "wrong").exists()


def test_trajectory_strip_and_gif(run_dir, tmp_path):
    out = tmp_path / "t"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run_dir),
                "--num",
                "2",
                "--seed",
                "4",
                "--trajectory",
                "--trajectory-count",
                "1",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert not (out / "trajectory-000001.png").exists()
    name, spacing, steps = DEFAULT_SAMPLER.name, DEFAULT_SAMPLER.spacing, DEFAULT_SAMPLER.steps
    model, _, schedule = load_model(run_dir)
    calls = []
    sample(
        model,
        (1, 1, 8, 8),
        schedule,
        sampler=name,
        steps=steps,
        spacing=spacing,
        generator=image_generators(4, [0]),
        callback=lambda d: calls.append(d["t"]),
    )
    with Image.open(out / "trajectory-000000.gif") as gif:
        assert gif.n_frames == len(calls)  # one frame per model evaluation
        assert gif.size == (2 * CELL + 1, CELL + 1 + 12)  # x_t | x̂_0, and a caption bar
    strip = _pixels(out / "trajectory-000000.png")
    cols = min(10, len(calls) + 1)
    assert strip.shape == (2 * CELL + 1, cols * CELL + 1)
    final = _pixels(out / "000000.png")
    assert np.array_equal(_cell(strip, 1, cols - 1), final)  # the last x̂_0 is the image
    assert np.array_equal(_cell(strip, 0, cols - 1), final)
    x_T = randn((1, 1, 8, 8), image_generators(4, [0]))
    assert np.array_equal(_cell(strip, 0, 0), to_uint8(x_T)[0, ..., 0])  # the first x_t is the starting noise
    assert not np.array_equal(_cell(strip, 1, 0), final)  # the first x̂_0 is still a blur


def test_slerp_ends_and_norm():
    a, b = torch.randn(2, 1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    path = slerp(a, b, [0.0, 0.5, 1.0])
    assert torch.equal(path[0], a[0]) and torch.equal(path[2], b[0])
    # Between two (nearly orthogonal) Gaussian draws the norm stays that of the ends, unlike a straight line.
    assert path[1].norm().item() == pytest.approx(((a.norm() + b.norm()) / 2).item(), rel=0.05)
    assert (0.5 * (a + b)).norm().item() < 0.8 * path[1].norm().item()


def test_interpolation_ends_are_the_plain_samples(run_dir, tmp_path):
    out = tmp_path / "i"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run_dir),
                "--interpolate",
                "3",
                "8",
                "--frames",
                "4",
                "--quiet",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    strip = _pixels(out / "interpolation.png")
    assert strip.shape == (CELL + 1, 4 * CELL + 1)
    ends = []
    # what --interpolate uses when no --sampler is given
    name, spacing, steps = DETERMINISTIC_SAMPLER.name, DETERMINISTIC_SAMPLER.spacing, DETERMINISTIC_SAMPLER.steps
    for seed in (3, 8):
        assert (
            main(
                [
                    "sample",
                    "--checkpoint",
                    str(run_dir),
                    "--num",
                    "1",
                    "--seed",
                    str(seed),
                    "--quiet",
                    "--sampler",
                    name,
                    "--spacing",
                    spacing,
                    "--steps",
                    str(steps),
                    "--out",
                    str(tmp_path / f"s{seed}"),
                ]
            )
            == 0
        )
        ends.append(_pixels(tmp_path / f"s{seed}" / "000000.png"))
    assert np.array_equal(_cell(strip, 0, 0), ends[0]) and np.array_equal(_cell(strip, 0, 3), ends[1])
    assert not np.array_equal(_cell(strip, 0, 1), ends[0]) or not np.array_equal(_cell(strip, 0, 2), ends[1])
    meta = read_png_metadata(out / "interpolation.png")
    assert meta["ddpm:kind"] == "interpolation" and meta["ddpm:seed_b"] == "8" and meta["ddpm:frames"] == "4"


def test_sample_mistakes_exit_2_with_one_line(run_dir, tmp_path, capsys):
    plain = save_png(tmp_path / "plain.png", np.zeros((8, 8, 1), np.uint8))
    ck = ["sample", "--checkpoint", str(run_dir), "--quiet", "--out"]
    cases = [
        ([*ck, str(tmp_path / "a"), "--reproduce", str(plain)], "no ddpm metadata"),
        ([*ck, str(tmp_path / "b"), "--sampler", "unipc", "--eta", "0.5"], "--eta"),
        ([*ck, str(tmp_path / "c"), "--sampler", "ddim", "--eta", "2"], "[0, 1]"),
        ([*ck, str(tmp_path / "d"), "--option", "nonsense=1"], "no option 'nonsense'"),
        ([*ck, str(tmp_path / "e"), "--interpolate", "1", "2", "--sampler", "ddpm"], "deterministic"),
        ([*ck, str(tmp_path / "f"), "--interpolate", "1", "2", "--frames", "1"], "--frames"),
        ([*ck, str(tmp_path / "g"), "--reproduce", str(plain), "--seed", "3"], "drop --seed"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.png"]


def test_library_generate_writes_the_cli_files_byte_for_byte(run_dir, tmp_path):
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(run_dir),
                "--num",
                "3",
                "--seed",
                "5",
                "--sampler",
                "ddim",
                "--eta",
                "0.5",
                "--quiet",
                "--out",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    paths = generate(SampleSettings(str(run_dir), sampler="ddim", eta=0.5), tmp_path / "lib", num=3, seed=5)
    assert [p.name for p in paths] == ["000000.png", "000001.png", "000002.png", "grid.png"]
    for p in paths:
        assert p.read_bytes() == (tmp_path / "cli" / p.name).read_bytes(), p.name


def test_library_errors_name_parameters_and_the_cli_names_flags(run_dir, tmp_path, capsys):
    with pytest.raises(ParameterError) as e:
        choose_sampler(1000, sampler="ddim", steps=0)
    assert str(e.value) == "steps must lie in 1..1000 (the checkpoint's T); got 0"
    with pytest.raises(ParameterError, match="^set eta with eta, not options$"):
        choose_sampler(1000, sampler="ddim", options={"eta": 1})
    assert choose_sampler(1000, sampler="dpmpp-2m", options={"order": "1"}).options == {"order": 1}
    with pytest.raises(ParameterError, match="^guidance needs label"):
        generate(SampleSettings(str(run_dir), guidance=2.0), tmp_path / "g", num=1)
    assert main(["sample", "--checkpoint", str(run_dir), "--guidance", "2", "--out", str(tmp_path / "g")]) == 2
    assert capsys.readouterr().err.startswith("error: --guidance needs --class: ")
    assert not (tmp_path / "g").exists()


def test_sampling_batches_shrink_to_the_memory_there_is_and_the_images_stay_the_same(run_dir, capsys, monkeypatch):
    import ddpm.generate as generate_module
    from ddpm.generate import fitting_batch, sampling_memory
    from ddpm.unet import UNetConfig

    model, _, _ = load_model(run_dir)
    cfg = model.config
    memory = sampling_memory(cfg)  # counted on FakeTensors: no real memory is taken
    assert memory.per_image > 0 and memory.bytes(8) > memory.bytes(2)
    conditioned = sampling_memory(UNetConfig(**{**cfg.__dict__, "cond_channels": 1, "cond_level": True}))
    assert conditioned.bytes(4) > memory.bytes(4)  # the condition is one more input channel
    cpu = torch.device("cpu")
    assert fitting_batch(model, 64, cpu) == 64  # far below this machine's memory: no count, no line
    # With room for about five images' worth, the batch shrinks to what fits and says so in one line.
    monkeypatch.setattr(generate_module, "memory_budget", lambda device: memory.bytes(5) * 1.01)
    fits = fitting_batch(model, 64, cpu)
    assert fits == memory.largest_batch(memory.bytes(5) * 1.01) and 1 <= fits < 64
    assert capsys.readouterr().out.count("memory: sampling 64 images at a time needs about") == 1
    assert fitting_batch(model, 64, cpu, guidance=3.0) <= max(1, fits // 2 + 1)
