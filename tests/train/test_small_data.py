"""Training on few images: augmentation that does not leak into the samples and resumes exactly; best.safetensors and
--early-stop acting on the --eval-every score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import BASE, assert_identical, assert_torchrun_is_one_process, run_weights

import ddpm.train.loop as loop_module
from ddpm.checkpoint import list_checkpoints, load_checkpoint, read_meta
from ddpm.cli import main
from ddpm.data.load import load_dataset
from ddpm.train import TrainConfig, train
from ddpm.train.augment import AUGMENT_DIM, OPS

ALL_OPS = ["--augment", "0.6", "--augment-ops", ",".join(OPS)]


def test_augmented_training_resumes_bit_identically_and_records_its_augmentation(tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *BASE, *ALL_OPS, "--class-cond", "--out", str(straight), "--steps", "6"]) == 0
    assert main(["train", *BASE, *ALL_OPS, "--class-cond", "--out", str(split), "--steps", "3"]) == 0
    assert main(["train", *BASE, *ALL_OPS, "--class-cond", "--out", str(split), "--steps", "6", "--resume"]) == 0
    assert_identical(run_weights(straight), run_weights(split))
    meta = load_checkpoint(straight).meta
    assert meta["model"]["augment_dim"] == AUGMENT_DIM
    assert meta["train"]["augment"] == 0.6 and meta["train"]["augment_ops"] == ",".join(OPS)
    # The augmentation changes the numbers: the same run without it ends elsewhere.
    plain = tmp_path / "plain"
    assert main(["train", *BASE, "--class-cond", "--out", str(plain), "--steps", "6"]) == 0
    assert not torch.equal(
        load_checkpoint(plain).model["conv_in.weight"], load_checkpoint(straight).model["conv_in.weight"]
    )
    # Sampling an augmented, class-conditional model with guidance needs nothing new.
    assert main(["sample", "--checkpoint", str(straight), "--class", "3", "--guidance", "2", "--num", "2", "--steps",
                 "2", "--out", str(tmp_path / "s"), "--quiet"]) == 0  # fmt: skip


def test_augmentation_settings_are_checked_in_one_line(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", *BASE, "--augment", "1.5", "--out", out]) == 2
    assert "--augment is a probability in [0, 1]; got 1.5" in capsys.readouterr().err
    assert main(["train", *BASE, "--augment", "0.5", "--augment-ops", "xflip,blur", "--out", out]) == 2
    assert "--augment-ops: unknown augmentation blur" in capsys.readouterr().err
    assert main(["train", *BASE, "--early-stop", "2", "--out", out]) == 2
    assert "needs --eval-every" in capsys.readouterr().err


def scripted(values: list[float]):
    """A TrainingEval.__call__ that returns ``values`` in turn as the FD (the training loop is tested, not the FD)."""
    it = iter(values)

    def call(self, *args, **kwargs):
        return {"eval_fd": next(it), "eval_memorized": 0.01, "eval_num": 2, "eval_ref_num": 2, "eval_s": 0.0}

    return call


def test_best_checkpoint_survives_rotation_and_early_stop_stops_at_the_expected_eval(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop_module.TrainingEval, "__call__", scripted([5.0, 4.0, 3.0, 3.5, 3.2, 3.1, 2.0]))
    run = tmp_path / "run"
    args = [*BASE, "--eval-every", "1", "--checkpoint-every", "1", "--keep", "1", "--steps", "20"]
    assert main(["train", *args, "--early-stop", "3", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    # best at eval 3 (step 3); evals 4, 5 and 6 do not beat it: the run stops after step 6, saying why.
    assert "stopped at step 6: FD has not improved for 3 evals since step 3 (3; --early-stop 3)" in out
    assert [s for s, _ in list_checkpoints(run)] == [6]  # the others rotated away
    best = run / "best.safetensors"
    assert read_meta(best)["eval"] == {"step": 3, "metric": "fd", "value": 3.0}
    # best.safetensors holds step 3's weights: those of a run of 3 steps.
    three = tmp_path / "three"
    assert main(["train", *BASE, "--steps", "3", "--out", str(three)]) == 0
    assert_identical(load_checkpoint(best).ema, load_checkpoint(three).ema)
    assert main(["sample", "--checkpoint", str(best), "--num", "2", "--steps", "2", "--out", str(tmp_path / "s"),
                 "--quiet"]) == 0  # fmt: skip


def test_without_early_stop_a_run_warns_once_and_keeps_going(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loop_module.TrainingEval, "__call__", scripted([3.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]))
    run = tmp_path / "run"
    assert main(["train", *BASE, "--eval-every", "1", "--steps", "8", "--out", str(run)]) == 0
    out = capsys.readouterr().out + capsys.readouterr().err
    assert out.count("has not improved for") == 1 and "--early-stop N stops" in out
    assert list_checkpoints(run)[-1][0] == 8 and read_meta(run / "best.safetensors")["eval"]["step"] == 1


def orientation(images: torch.Tensor) -> torch.Tensor:
    """Each image's (B, 1, H, W) vertical minus horizontal spread of its ink (pixel values as weights): digits are
    taller than wide, so upright (and upside-down) ones score positive and quarter-turned ones negative."""
    w = (images[:, 0].double() + 1) / 2
    h, wd = w.shape[-2:]
    y = torch.arange(h, dtype=torch.float64).view(1, -1, 1)
    x = torch.arange(wd, dtype=torch.float64).view(1, 1, -1)
    mass = w.sum((1, 2))
    my, mx = (w * y).sum((1, 2)) / mass, (w * x).sum((1, 2)) / mass
    vy = (w * (y - my.view(-1, 1, 1)) ** 2).sum((1, 2)) / mass
    vx = (w * (x - mx.view(-1, 1, 1)) ** 2).sum((1, 2)) / mass
    return vy - vx


@pytest.mark.slow
def test_samples_of_a_heavily_rotation_augmented_model_are_upright(tmp_path):
    """Trained on upright digits of which 80% are shown quarter, half or three-quarter turned (the network told
    which), the model samples upright digits: their orientation statistic is the data's, not the augmented data's."""
    digits = load_dataset("digits", None).images
    data_stat = float(orientation(digits).mean())
    turned = torch.cat([torch.rot90(digits, k, dims=(-2, -1)) for k in (1, 2, 3)])
    augmented_stat = 0.2 * data_stat + 0.8 * float(orientation(turned).mean())  # what a leaking model learns
    assert data_stat > 0.5 and augmented_stat < 0.2 * data_stat  # the statistic tells the two apart
    run = tmp_path / "run"
    cfg = TrainConfig(out=str(run), data="digits", preset="tiny", steps=500, batch_size=64, augment=0.8,
                      augment_ops="rot90", sample_every=0, progress=False, device="cpu")  # fmt: skip
    train(cfg)
    out = tmp_path / "samples"
    npz = tmp_path / "s.npz"
    assert (
        main(["sample", "--checkpoint", str(run), "--num", "256", "--out", str(out), "--npz", str(npz), "--quiet"]) == 0
    )
    samples = torch.from_numpy(np.load(npz)["images"]).permute(0, 3, 1, 2).float() / 127.5 - 1
    sample_stat = float(orientation(samples).mean())
    assert sample_stat > 0.6 * data_stat, (sample_stat, data_stat, augmented_stat)


@pytest.mark.slow
def test_augmentation_under_torchrun_matches_one_process_with_twice_the_batch(tmp_path):
    assert_torchrun_is_one_process(tmp_path, data="digits", preset="tiny", batch_size=8, steps=4, warmup=2,
                                   sample_every=0, sample_steps=2, num_samples=2, augment=0.7,
                                   augment_ops="xflip,rot90,shift,scale,rotate,colour", progress=False, device="cpu",
                                   bf16=False)  # fmt: skip
