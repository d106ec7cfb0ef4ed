"""Conditioned models end to end: super-resolution training records its condition and resumes exactly; ``ddpm sample``
with --condition and --then (names, seeds, provenance, --reproduce, the one-line refusals); ``ddpm eval`` of a
conditioned checkpoint; ``ddpm convert`` refuses one; a colourisation run from paired photo crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import BASE, assert_identical, assert_torchrun_is_one_process, run_weights
from harness import photo_crops
from PIL import Image

from ddpm.cascade import CascadeSettings, Stage, cascade, open_cascade, parse_stage, run_cascade, stage_settings
from ddpm.checkpoint import load_checkpoint
from ddpm.cli import main
from ddpm.conditioning import low_of
from ddpm.data.load import load_dataset
from ddpm.errors import ParameterError
from ddpm.evaluation.restoration import consistency
from ddpm.generate import draw
from ddpm.images import read_png_metadata, to_8bit
from ddpm.sampler_choice import SampleSettings

TINY = ["--preset", "tiny", "--batch-size", "16", "--warmup", "2", "--sample-steps", "2", "--num-samples", "4",
        "--log-every", "3", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def sr(tmp_path_factory):
    """A x2 super-resolution model of digits (4 -> 8 px), conditioning augmentation on, 6 steps."""
    out = tmp_path_factory.mktemp("sr")
    args = ["train", "--data", "digits", "--task", "super-resolution", "--scale", "2", *TINY, "--steps", "6",
            "--sample-every", "6", "--flip", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An unconditioned model of digits brought to 4 px, 4 steps: the base of a 4 -> 8 cascade."""
    out = tmp_path_factory.mktemp("base")
    assert main(["train", "--data", "digits", "--image-size", "4", *TINY, "--steps", "4", "--sample-every", "0",
                 "--out", str(out)]) == 0  # fmt: skip
    return out


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_a_super_resolution_checkpoint_records_its_condition_and_its_grid_shows_triples(sr):
    ck = load_checkpoint(sr)
    assert ck.meta["condition"] == {"task": "super-resolution", "channels": 1, "size": 4, "scale": 2,
                                    "noise_max": 0.1}  # fmt: skip
    assert ck.meta["model"]["cond_channels"] == 1 and ck.meta["model"]["cond_level"] is True
    assert ck.meta["train"]["task"] == "super-resolution" and ck.meta["train"]["scale"] == 2
    grid = pixels(sr / "samples" / "step-000000006.png")
    # 4 triples (condition, sample, truth) in one row, 8 px images drawn 8x with 2 px padding at that scale
    assert grid.shape[1] > 3 * grid.shape[0]


def test_super_resolution_resumes_bit_identically(tmp_path):
    args = ["train", "--data", "digits", "--task", "super-resolution", "--scale", "2", *BASE, "--flip",
            "--cond-noise-max", "0.2"]  # fmt: skip
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*args, "--out", str(straight), "--steps", "6"]) == 0
    assert main([*args, "--out", str(split), "--steps", "3"]) == 0
    assert main([*args, "--out", str(split), "--steps", "6", "--resume"]) == 0
    assert_identical(run_weights(straight), run_weights(split))
    # Another augmentation range changes the numbers, and a resume refuses it.
    assert main([*args[:-1], "0.05", "--out", str(split), "--steps", "8", "--resume"]) == 2


def test_training_refuses_bad_task_settings_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", "--data", "digits", "--task", "super-resolution", "--out", out]) == 2
    assert "needs --scale" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--task", "super-resolution", "--scale", "3", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "--scale 3 does not divide the image size 8" in err and "--image-size 9" in err and err.count("\n") == 1
    assert main(["train", "--data", "digits", "--task", "paired", "--out", out]) == 2
    assert "--condition-data" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_stage_settings_parse_after_the_last_colon_only_when_they_are_pairs():
    assert parse_stage("runs/sr") == ("runs/sr", {})
    assert parse_stage("runs/sr:steps=20,sampler=ddim") == ("runs/sr", {"steps": "20", "sampler": "ddim"})
    assert parse_stage("C:/models/sr.safetensors") == ("C:/models/sr.safetensors", {})
    assert parse_stage("sr:cond-noise=0.1") == ("sr", {"cond_noise": "0.1"})
    assert stage_settings({"project": "0"}, SampleSettings())[2] is False
    assert stage_settings({"project": "on", "steps": "4"}, SampleSettings())[1:] == (None, True)
    assert stage_settings({}, SampleSettings())[2] is None
    with pytest.raises(ParameterError, match="project=maybe: expected 1 or 0"):
        stage_settings({"project": "maybe"}, SampleSettings())


def test_super_resolution_outputs_give_their_low_image_back_unless_told_not_to(sr, tmp_path, capsys):
    # A 6-step model draws little like its condition; back-projecting every x0 estimate onto the images whose low
    # view is the condition makes the 8-bit output give its low image back to below one level (the mean, as ddpm eval
    # reports it; 8 px digits are the hard case: every image within 2), with any sampler.
    digits = torch.from_numpy(load_dataset("digits", None).as_uint8()[:24])
    lows = low_of(digits, 2)
    for sampler in ("ddim", "ddpm", "dpmpp-2m", "unipc"):
        stage = Stage.open(sr, SampleSettings(sampler=sampler, steps=4))
        assert stage.projects(0) and stage.record(0)["project"] is True and not stage.projects(1)
        out = to_8bit(cascade([stage], conditions=lows, seed=1)).numpy()
        error = consistency(out, lows.numpy(), 2)
        assert error.mean() < 1.0 and error.max() < 2.0, (sampler, error.mean(), error.max())
        stage.project = False
        free = to_8bit(cascade([stage], conditions=lows, seed=1)).numpy()
        assert consistency(free, lows.numpy(), 2).mean() > 10, sampler
    # The flag, the provenance and --reproduce: a picture made with --no-project is made again without it.
    folder = tmp_path / "lows"
    folder.mkdir()
    Image.fromarray(lows[0, 0].numpy()).save(folder / "zero.png")
    made = {}
    for flag in ([], ["--no-project"]):
        out = tmp_path / ("free" if flag else "projected")
        assert main(["sample", "--checkpoint", str(sr), "--condition", str(folder), "--steps", "3", *flag,
                     "--out", str(out), "--quiet"]) == 0  # fmt: skip
        made[bool(flag)] = out / "zero.png"
        assert read_png_metadata(made[bool(flag)])["ddpm:project"] == ("false" if flag else "true")
    assert not np.array_equal(pixels(made[True]), pixels(made[False]))
    for free, path in made.items():
        again = tmp_path / f"again-{free}"
        assert main(["sample", "--checkpoint", str(sr), "--condition", str(folder), "--reproduce", str(path),
                     "--out", str(again)]) == 0  # fmt: skip
        assert np.array_equal(pixels(again / "zero.png"), pixels(path))


def test_a_cascade_writes_the_final_size_its_base_is_the_base_models_sample_and_reproduce_gives_the_pixels(
    base, sr, tmp_path, capsys
):
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(base), "--then", f"{sr}:steps=3,sampler=ddim", "--num", "3",
                 "--steps", "2", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    assert "wrote 3 images through 2 stages" in capsys.readouterr().out
    first = out / "000001.png"
    assert pixels(first).shape == (8, 8) and pixels(out / "grid.png").ndim == 2
    info = read_png_metadata(first)
    then = json.loads(info["ddpm:then"])
    assert [(s["sampler"], s["steps"]) for s in then] == [("ddim", 3)] and "cond_noise" in then[0]
    assert then[0]["project"] is False  # a later stage takes a sample, not a true low image: not projected
    again = tmp_path / "again"
    assert main(["sample", "--checkpoint", str(base), "--then", str(sr), "--reproduce", str(first),
                 "--out", str(again)]) == 0  # fmt: skip
    assert np.array_equal(pixels(again / "000001.png"), pixels(first))
    assert read_png_metadata(again / "000001.png") == info
    # Without its later stage the picture cannot be made again: one line.
    assert main(["sample", "--checkpoint", str(base), "--reproduce", str(first), "--out", str(tmp_path / "x")]) == 2
    assert "cascade of 2 stage(s), and 1 were given" in capsys.readouterr().err
    # The cascade's first stage draws what the base model alone draws; any item is the same alone or in a batch.
    stages = open_cascade(CascadeSettings(checkpoint=str(base), steps=2), [f"{sr}:steps=3"])
    assert not stages[1].projects(1) and stages[1].project is None
    assert open_cascade(CascadeSettings(checkpoint=str(base), steps=2), [f"{sr}:project=1"])[1].projects(1)
    outs = run_cascade(stages, 0, [(0, 0), (1, 0), (2, 0)])
    s = stages[0].sampling
    alone = draw(s.model, s.schedule, s.meta, s.choice, 0, [1], None, None, True, s.device)
    assert torch.equal(outs[0][1:2], alone)
    # (a later stage to float rounding: its convolutions may take another path at another batch size)
    assert torch.allclose(run_cascade(stages, 0, [(1, 0)])[1], outs[1][1:2], atol=1e-5)


def test_a_stage_that_does_not_fit_is_refused_before_sampling_in_one_line(base, sr, run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(run_dir), "--then", str(sr), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--then {sr} takes 4x4 images with 1 channel(s), but {run_dir} before it makes 8x8" in err
    assert err.count("\n") == 1 and not out.exists()
    assert main(["sample", "--checkpoint", str(base), "--then", str(run_dir), "--out", str(out)]) == 2
    assert "is not conditioned on an image" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(sr), "--out", str(out)]) == 2
    assert "is conditioned on an image (super-resolution): pass --condition" in capsys.readouterr().err


def test_conditions_from_a_folder_name_the_outputs_seed_them_by_name_and_reproduce(sr, tmp_path, capsys):
    digits = load_dataset("digits", None).as_uint8()[:3]
    lows = low_of(torch.from_numpy(digits), 2).numpy()
    folder = tmp_path / "lows"
    (folder / "a").mkdir(parents=True)
    Image.fromarray(lows[0, 0]).save(folder / "a" / "zero.png")
    Image.fromarray(lows[1, 0]).save(folder / "one.png")
    Image.fromarray(digits[2, 0]).save(folder / "big.png")  # 8x8: brought to the 4x4 input, said
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(sr), "--condition", str(folder), "--num", "2", "--steps", "3",
                 "--out", str(out), "--batch-size", "4", "--quiet"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "brought 1 condition(s) (big) to the model's 4x4 input" in said and "wrote 6 images" in said
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert names == ["a/zero-0.png", "a/zero-1.png", "big-0.png", "big-1.png", "one-0.png", "one-1.png"]
    info = read_png_metadata(out / "a" / "zero-1.png")
    assert info["ddpm:condition"] == "a/zero" and info["ddpm:index"] == "1" and len(info["ddpm:condition_sha256"]) == 64
    assert not np.array_equal(pixels(out / "a" / "zero-0.png"), pixels(out / "a" / "zero-1.png"))
    # Seeded by name and k: one image at a time, and with another file beside them, gives the same pixels.
    Image.fromarray(lows[2, 0]).save(folder / "extra.png")
    again = tmp_path / "again"
    assert main(["sample", "--checkpoint", str(sr), "--condition", str(folder), "--num", "2", "--steps", "3",
                 "--out", str(again), "--batch-size", "1", "--quiet"]) == 0  # fmt: skip
    for name in names:
        assert np.array_equal(pixels(again / name), pixels(out / name)), name
    assert main(["sample", "--checkpoint", str(sr), "--condition", str(folder), "--reproduce",
                 str(out / "a" / "zero-1.png"), "--out", str(tmp_path / "re")]) == 0  # fmt: skip
    assert np.array_equal(pixels(tmp_path / "re" / "zero-1.png"), pixels(out / "a" / "zero-1.png"))
    Image.fromarray(255 - lows[0, 0]).save(folder / "a" / "zero.png")  # another picture under the same name
    assert main(["sample", "--checkpoint", str(sr), "--condition", str(folder), "--reproduce",
                 str(out / "a" / "zero-1.png"), "--out", str(tmp_path / "re2")]) == 2  # fmt: skip
    assert "not the file the picture was made from" in capsys.readouterr().err


def test_eval_scores_a_super_resolution_model_against_lanczos(sr, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(sr), "--metrics", "fd", "--num", "24", "--steps", "3",
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    table = capsys.readouterr().out
    assert "model" in table and "lanczos" in table and "CONSISTENCY" in table
    record = json.loads((out / "eval.json").read_text())
    rows = record["metrics"]["conditioned"]
    assert set(rows) == {"model", "lanczos"} and {"psnr", "ssim", "consistency", "fd"} <= set(rows["model"])
    assert record["protocol"]["conditioned"]["split"] == "train"  # digits has no test split
    assert rows["lanczos"]["consistency"] > 0 and 0 < rows["lanczos"]["ssim"] < 1
    assert record["protocol"]["conditioned"]["stages"][0]["project"] is True  # sampled as ddpm sample does
    assert rows["model"]["consistency"] < 1.0 < rows["lanczos"]["consistency"]
    assert np.load(out / "samples.npz")["images"].shape == (24, 8, 8, 1)


def test_eval_scores_a_cascade_as_it_scores_one_model(base, sr, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(base), "--then", f"{sr}:steps=2", "--data", "digits", "--metrics", "fd",
                 "--num", "16", "--steps", "2", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    record = json.loads((out / "eval.json").read_text())
    assert record["metrics"]["fd"] > 0 and record["protocol"]["generated"]["then"][0]["steps"] == 2
    samples = np.load(out / "samples.npz")["images"]
    assert samples.shape == (16, 8, 8, 1)  # the final stage's size, as the reference's
    # They are the cascade's images 0..15, as ddpm sample draws them.
    folder = tmp_path / "sampled"
    assert main(["sample", "--checkpoint", str(base), "--then", f"{sr}:steps=2", "--num", "16", "--steps", "2",
                 "--out", str(folder), "--quiet"]) == 0  # fmt: skip
    assert np.array_equal(samples[5, :, :, 0], pixels(folder / "000005.png"))


def test_convert_refuses_a_conditioned_model(sr, tmp_path, capsys):
    assert main(["convert", str(sr), str(tmp_path / "d")]) == 2
    assert "conditioned on an image (super-resolution)" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_colourisation_from_paired_photo_crops_trains_samples_and_scores_against_the_gray_input(tmp_path, capsys):
    targets = photo_crops(tmp_path / "colour", 24, 16, seed=4)
    inputs = photo_crops(tmp_path / "gray", 24, 16, seed=4, gray=True)
    run = tmp_path / "run"
    assert main(["train", "--data", str(targets), "--condition-data", str(inputs), *TINY, "--steps", "4",
                 "--sample-every", "0", "--out", str(run)]) == 0  # fmt: skip
    assert load_checkpoint(run).meta["condition"]["task"] == "paired"
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(run), "--condition", str(inputs), "--steps", "2", "--out", str(out),
                 "--quiet"]) == 0  # fmt: skip
    assert pixels(out / "00003.png").shape == (16, 16, 3)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(run), "--metrics", "none", "--steps", "2", "--out", str(tmp_path / "e"),
                 "--quiet"]) == 0  # fmt: skip
    record = json.loads((tmp_path / "e" / "eval.json").read_text())
    rows = record["metrics"]["conditioned"]
    assert set(rows) == {"model", "input"} and record["protocol"]["conditioned"]["num"] == 24
    assert rows["input"]["psnr"] > 10 and 0 < rows["input"]["ssim"] <= 1


@pytest.mark.slow
def test_super_resolution_under_torchrun_matches_one_process(tmp_path):
    assert_torchrun_is_one_process(tmp_path, data="digits", task="super-resolution", scale=2, preset="tiny",
                                   batch_size=8, steps=4, warmup=2, sample_every=0, sample_steps=2, num_samples=2,
                                   flip=True, progress=False, device="cpu", bf16=False)  # fmt: skip
