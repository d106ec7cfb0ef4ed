"""Editing against analytic models (data = one fixed image, or a mixture of two), and ``ddpm edit`` end to end."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import Schedule, image_generators, spaced_timesteps
from ddpm.cli import main
from ddpm.denoiser import make_denoiser, randn
from ddpm.editing import edit, edit_timesteps, inpainting_denoiser, repaint
from ddpm.errors import ParameterError, UserError
from ddpm.images import from_uint8, read_png_metadata, save_png
from ddpm.sampler_choice import DEFAULT_SAMPLER
from ddpm.sampling import sample_ddpm

SCHEDULE = Schedule.linear(1000)


class MixtureOracle:
    """Exact ε-predictor when the data is an equal mixture of the point masses ``centers`` (K, C, H, W):
    E[x_0 | x_t] = Σ_k w_k c_k with w ∝ exp(−‖x_t − √ᾱ c_k‖² / 2(1−ᾱ)), ε = (x_t − √ᾱ E[x_0|x_t]) / √(1−ᾱ).
    With K = 1 it is (x_t − √ᾱ c)/√(1−ᾱ)."""

    def __init__(self, centers: torch.Tensor):
        self.centers = centers.double()

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = SCHEDULE.alphas_cumprod[t].view(-1, 1, 1, 1, 1)  # (B, 1, 1, 1, 1) float64
        xd = x.double()[:, None]  # (B, 1, C, H, W)
        d = ((xd - a.sqrt() * self.centers[None]) ** 2).flatten(2).sum(-1)  # (B, K)
        w = torch.softmax(-d / (2 * (1 - a.view(-1, 1))), dim=1)  # (B, K)
        x0 = torch.einsum("bk,kchw->bchw", w, self.centers)
        a = a[:, 0]
        return ((x.double() - a.sqrt() * x0) / (1 - a).sqrt()).to(x.dtype)


def _picture(seed: int) -> torch.Tensor:
    """A (1, 1, 8, 8) picture on the uint8 grid, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return from_uint8(torch.randint(0, 256, (1, 8, 8, 1), generator=g).to(torch.uint8).numpy())


def _left_half() -> torch.Tensor:
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., :4] = True
    return mask


def test_edit_timesteps_start_at_t0_and_follow_the_spaced_path():
    ts = edit_timesteps(SCHEDULE, 0.5, 20, "linspace")
    full = spaced_timesteps(SCHEDULE, 20, "linspace")
    assert ts[0].item() == round(0.5 * 999) == 500
    assert ts[1:].tolist() == [t for t in full.tolist() if t < 500] and ts[-1].item() == 0
    assert torch.equal(edit_timesteps(SCHEDULE, 1.0, 20, "linspace"), full)  # t0 = T−1 starts the full path
    assert edit_timesteps(SCHEDULE, 0.0001, 20, "linspace").tolist() == [0]
    with pytest.raises(UserError, match="strength"):
        edit_timesteps(SCHEDULE, 1.5, 20, "linspace")


def test_sdedit_strength_0_keeps_the_input_and_strength_1_gives_the_data():
    c, image = _picture(1), _picture(2)
    model = MixtureOracle(c)
    kept = edit(model, image, SCHEDULE, 0.0, generator=image_generators(0, [0]))
    assert torch.equal(kept, image)
    for sampler in (None, "ddpm", "ddim"):
        out = edit(model, image, SCHEDULE, 1.0, sampler=sampler, generator=image_generators(0, [0]))
        assert torch.allclose(out, c, atol=1e-4), (sampler, (out - c).abs().max())
    # Halfway, the only possible clean image is still c; the input is forgotten.
    half = edit(model, image, SCHEDULE, 0.5, generator=image_generators(0, [0]))
    assert torch.allclose(half, c, atol=1e-4)


def test_inpainting_keeps_known_pixels_exactly_and_fills_the_rest_with_the_data():
    c, image, mask = _picture(1), _picture(2), _left_half()
    model = MixtureOracle(c)
    for resample in (1, 3):
        out = edit(model, image, SCHEDULE, 1.0, mask, resample=resample, generator=image_generators(0, [0]))
        assert torch.equal(out[..., 4:], image[..., 4:])  # bit-exact
        assert torch.allclose(out[..., :4], c[..., :4], atol=1e-4), resample


@pytest.mark.parametrize("resample", [1, 4])
@pytest.mark.parametrize("which", [0, 1])
def test_inpainting_a_mixture_picks_the_component_of_the_known_half(resample, which):
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 1.0 - 0.5  # ±0.5
    c1 = torch.cat([checker[:, :4], torch.full((8, 4), 0.6)], dim=1).view(1, 1, 8, 8)
    c2 = torch.cat([-checker[:, :4], torch.full((8, 4), -0.6)], dim=1).view(1, 1, 8, 8)
    model = MixtureOracle(torch.cat([c1, c2]))
    target = (c1, c2)[which]
    image = target.clone()
    image[..., :4] = 0.0  # the left half is unknown
    sampler = "ddpm" if resample > 1 else None
    out = edit(
        model,
        image,
        SCHEDULE,
        1.0,
        _left_half(),
        sampler=sampler,
        resample=resample,
        generator=image_generators(7, [0]),
    )
    assert torch.equal(out[..., 4:], image[..., 4:])
    assert torch.allclose(out, target, atol=1e-3), (out - target).abs().max()


def test_repaint_with_one_round_is_the_ancestral_sampler_with_known_pixels():
    c, image, mask = _picture(3), _picture(4), _left_half()
    ts = spaced_timesteps(SCHEDULE, 12, "linspace")
    denoise = make_denoiser(MixtureOracle(torch.cat([c, -c])), SCHEDULE)
    x = randn(image.shape, image_generators(1, [0]))
    a = repaint(denoise, x, image, mask, SCHEDULE, ts, image_generators(2, [0]), resample=1)
    b = sample_ddpm(
        inpainting_denoiser(denoise, image, mask, SCHEDULE, image_generators(2, [0])),
        x,
        SCHEDULE,
        ts,
        image_generators(2, [0]),
    )
    assert torch.allclose(a, b, atol=1e-6)
    # More rounds call the model more often: R per step, except the last step.
    calls = []
    repaint(
        denoise,
        x,
        image,
        mask,
        SCHEDULE,
        ts,
        image_generators(2, [0]),
        resample=3,
        callback=lambda d: calls.append(d["t"]),
    )
    assert len(calls) == 3 * (len(ts) - 1) + 1 and calls[:3] == [ts[0].item()] * 3


def test_edit_rejects_bad_arguments():
    image = _picture(0)
    model = MixtureOracle(image)
    with pytest.raises(ParameterError, match="resample needs mask") as info:
        edit(model, image, SCHEDULE, 0.5, resample=2)
    # The library names its parameters; the CLI shows them as flags.
    assert info.value.render(lambda name: "--" + name).startswith("--resample needs --mask: ")
    with pytest.raises(UserError, match="ancestral DDPM"):
        edit(model, image, SCHEDULE, 0.5, _left_half(), resample=2, sampler="ddim")
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        edit(model, image, SCHEDULE, -0.1)


# ---------------------------------------------------------------------------- ddpm edit, end to end


def _write(path, array):
    Image.fromarray(array).save(path)
    return path


def test_edit_command_sdedit_and_inpainting(run_dir, tmp_path):
    rng = np.random.default_rng(0)
    pic = _write(tmp_path / "in.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))  # RGB into a gray model
    gray = np.asarray(Image.open(pic).convert("L"))
    keep = tmp_path / "keep.png"
    assert main(["edit", "--checkpoint", str(run_dir), "--image", str(pic), "--strength", "0", "--out", str(keep)]) == 0
    assert np.array_equal(np.asarray(Image.open(keep)), gray)
    meta = read_png_metadata(keep)
    assert meta["ddpm:kind"] == "edit" and meta["ddpm:strength"] == "0.0"
    assert meta["ddpm:sampler"] == DEFAULT_SAMPLER.name
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 200  # white enough: regenerate the centre
    mask_path = _write(tmp_path / "mask.png", np.stack([mask] * 4, axis=-1))  # RGBA: any mode works
    for resample in ("1", "2"):
        out = tmp_path / f"inpainted-{resample}.png"
        assert (
            main(
                [
                    "edit",
                    "--checkpoint",
                    str(run_dir),
                    "--image",
                    str(pic),
                    "--mask",
                    str(mask_path),
                    "--resample",
                    resample,
                    "--seed",
                    "3",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        got = np.asarray(Image.open(out))
        known = mask < 128
        assert np.array_equal(got[known], gray[known])
        assert read_png_metadata(out)["ddpm:resample"] == resample


def test_edit_mistakes_exit_2_with_one_line(run_dir, tmp_path, capsys):
    good = _write(tmp_path / "good.png", np.zeros((8, 8), np.uint8))
    big = _write(tmp_path / "big.png", np.zeros((16, 16), np.uint8))
    save_png(tmp_path / "exists.png", np.zeros((8, 8, 1), np.uint8))
    base = ["edit", "--checkpoint", str(run_dir), "--out"]
    cases = [
        (
            [*base, str(tmp_path / "o1.png"), "--image", str(big), "--strength", "0.5", "--no-resize"],
            "resize it to 8x8",
        ),
        ([*base, str(tmp_path / "o2.png"), "--image", str(good), "--mask", str(big)], "make the mask 8x8"),
        ([*base, str(tmp_path / "o3.png"), "--image", str(good), "--strength", "1.5"], "[0, 1]"),
        ([*base, str(tmp_path / "o4.png"), "--image", str(good)], "--strength is required"),
        ([*base, str(tmp_path / "o5.png"), "--image", str(good), "--strength", "0.5", "--resample", "2"], "--mask"),
        ([*base, str(tmp_path / "o6.png"), "--image", str(tmp_path / "none.png"), "--strength", "0.5"], "not exist"),
        ([*base, str(tmp_path / "exists.png"), "--image", str(good), "--strength", "0.5"], "--overwrite"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and needle in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "exists.png", "good.png"]


def test_edit_brings_a_photo_of_any_size_to_the_model_as_training_does(tmp_path, capsys):
    """A 32x32 colour model edits a 90x60 JPEG: resized and cropped as `ddpm train --image-size 32` reads it (with
    --strength 0 the edit is that picture exactly), said in one line and recorded in the PNG."""
    from ddpm.data.load import load_dataset

    rng = np.random.default_rng(1)
    train_dir, photo_dir = tmp_path / "train", tmp_path / "photo"
    train_dir.mkdir()
    photo_dir.mkdir()
    for i in range(2):
        _write(train_dir / f"{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    photo = photo_dir / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8)).save(photo)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(train_dir),
                "--out",
                str(run),
                "--steps",
                "1",
                "--batch-size",
                "2",
                "--sample-every",
                "0",
                "--sample-steps",
                "1",
                "--num-samples",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "edited.png"
    assert main(["edit", "--checkpoint", str(run), "--image", str(photo), "--strength", "0", "--out", str(out)]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (
        f"resized {photo} from 90x60 to the model's 32x32 as training does (shorter side, centre crop, "
        "Lanczos; --no-resize refuses instead)"
    )
    trained = load_dataset(str(photo_dir), image_size=32).pixels[0].permute(1, 2, 0).numpy()  # (32, 32, 3) uint8
    assert np.array_equal(np.asarray(Image.open(out)), trained)
    assert read_png_metadata(out)["ddpm:resized_from"] == "90x60"
    # Inpainting with a mask drawn on the photo (its own size): the kept pixels are the resized photo's.
    mask = np.zeros((60, 90), np.uint8)
    mask[:, 45:] = 255
    _write(photo_dir / "mask.png", mask)
    out = tmp_path / "inpainted.png"
    assert (
        main(
            [
                "edit",
                "--checkpoint",
                str(run),
                "--image",
                str(photo),
                "--mask",
                str(photo_dir / "mask.png"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert np.array_equal(np.asarray(Image.open(out))[:, :8], trained[:, :8])
