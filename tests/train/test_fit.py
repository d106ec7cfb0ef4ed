"""Fitting a run to the machine: micro-batches and gradient checkpointing that fit in memory, the faster precision
by measurement, the run's time said, grids shrunk for slow networks."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import BASE, assert_identical, run_weights

import ddpm.train.fit as fit_module
from ddpm import memory
from ddpm.checkpoint import load_checkpoint
from ddpm.cli import main
from ddpm.errors import ParameterError
from ddpm.runtime import Dist
from ddpm.train import TrainConfig
from ddpm.train.fit import choose_precision, fit_memory, shrunk_grid, step_memory, time_line, trial_micro_batch
from ddpm.unet import UNet, UNetConfig

SMALL = UNetConfig(channels=1, image_size=32, base_channels=16, channel_mult=(1, 2), groups=8)


def test_a_step_split_into_micro_batches_is_the_same_step(tmp_path):
    """--micro-batch 4 of a batch of 16: the same weights up to float rounding (no dropout), recorded in the
    checkpoint, and a resume without the flag keeps the split."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    args = ["train", *BASE, "--no-bf16", "--steps", "4"]
    assert main([*args, "--out", str(whole)]) == 0
    assert main([*args, "--out", str(split), "--micro-batch", "4"]) == 0
    a, b = run_weights(whole), run_weights(split)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    assert load_checkpoint(split).meta["train"]["micro_batch"] == 4
    assert load_checkpoint(whole).meta["train"]["micro_batch"] == 16  # the whole batch, said in the record
    straight = tmp_path / "straight"
    assert main([*args[:-1], "6", "--out", str(straight), "--micro-batch", "4"]) == 0
    assert main([*args[:-1], "6", "--out", str(split), "--resume"]) == 0
    assert_identical(run_weights(straight), run_weights(split))
    assert load_checkpoint(split).meta["train"]["micro_batch"] == 4


def test_micro_batch_must_divide_the_batch_and_a_resume_keeps_its_split(tmp_path, capsys):
    assert main(["train", *BASE, "--steps", "1", "--micro-batch", "5", "--out", str(tmp_path / "r")]) == 2
    assert "--micro-batch must divide --batch-size 16; got 5" in capsys.readouterr().err
    run = tmp_path / "run"
    assert main(["train", *BASE, "--steps", "2", "--micro-batch", "8", "--out", str(run)]) == 0
    assert main(["train", *BASE, "--steps", "4", "--micro-batch", "4", "--out", str(run), "--resume"]) == 2
    assert "--micro-batch 8 in the checkpoint, 4 now" in capsys.readouterr().err


def _cfg(batch: int = 64) -> TrainConfig:
    return TrainConfig(out="x", batch_size=batch)


def test_step_memory_is_the_benchmarks_count_and_grows_with_the_batch():
    m = step_memory(SMALL, False, False)
    assert m.per_image > 0 and m.fixed > 16 * sum(p.numel() for p in UNet(SMALL).parameters())
    ck = step_memory(SMALL, False, True)
    assert ck.per_image < m.per_image  # gradient checkpointing keeps less per image
    assert json.loads((fit_module.cache_dir() / fit_module.MEMORY_CACHE).read_text())  # cached


def test_the_largest_micro_batch_that_fits_then_checkpointing_then_one_line_error(monkeypatch):
    plain, ck = step_memory(SMALL, False, False), step_memory(SMALL, False, True)
    monkeypatch.setattr(fit_module, "surely_fits", lambda *a: False)
    px = Dist()

    def fit(available: float, **kw):
        monkeypatch.setattr(memory, "available_memory", lambda device: available)
        monkeypatch.setattr(fit_module, "available_memory", lambda device: available)
        lines: list[str] = []
        kw = {"micro": None, "ckpt": None, **kw}
        return fit_memory(_cfg(), SMALL, px, False, kw["micro"], kw["ckpt"], lines), lines

    cpu = torch.device("cpu")
    big = memory.needed(plain.bytes(64), cpu) * 1.01
    assert fit(big) == ((64, False), [])  # the whole batch fits: nothing changed, nothing said
    (micro, on), lines = fit(memory.needed(plain.bytes(20), cpu))
    assert (micro, on) == (16, False) and len(lines) == 1  # the largest divisor of 64 at most 20 images
    assert lines[0].startswith("memory: a step of 64 images at 32 px needs about ")
    assert "4 micro-batches of 16" in lines[0]
    assert ck.bytes(1) < plain.bytes(1)
    (micro, on), lines = fit(memory.needed((ck.bytes(1) + plain.bytes(1)) / 2, cpu))  # not one image without it
    assert on is True and micro >= 1 and ck.bytes(micro) <= plain.bytes(1) and "with gradient checkpointing" in lines[0]
    with pytest.raises(ParameterError, match="a training step does not fit in memory: 1 image"):
        fit(memory.needed(ck.fixed * 0.9, cpu))
    with pytest.raises(
        ParameterError, match="32 image.s. at a time need about .*: pass a smaller micro_batch$"
    ):  # a given split is checked
        fit(memory.needed(plain.bytes(20), cpu), micro=32, ckpt=False)


def test_precision_is_the_faster_one_timed_once_and_cached(monkeypatch):
    net = UNet(SMALL)
    calls = []
    monkeypatch.setattr(fit_module, "cpu_bf16_native", lambda: True)

    def timed(raw, device, micro, ckpt):
        calls.append(micro)
        return (0.3, 0.2) if micro == 8 else (0.2, 0.3)  # (float32, bf16) seconds

    monkeypatch.setattr(fit_module, "time_precisions", timed)
    lines: list[str] = []
    assert choose_precision(net, torch.device("cpu"), 8, False, None, lines) == (True, 0.2)
    assert lines[-1].startswith("precision: bf16, 1.50x as fast as float32 here (")
    assert choose_precision(net, torch.device("cpu"), 16, False, None, lines) == (False, 0.2)
    assert lines[-1].startswith("precision: float32, bf16 is 0.67x as fast here (")
    assert choose_precision(net, torch.device("cpu"), 8, False, None, lines) == (True, 0.2)
    assert calls == [8, 16]  # the third answer came from the cache
    assert choose_precision(net, torch.device("cpu"), 8, False, False, lines) == (False, None)  # --no-bf16
    monkeypatch.setattr(fit_module, "cpu_bf16_native", lambda: False)
    lines.clear()
    assert choose_precision(net, torch.device("cpu"), 4, False, None, lines) == (False, None)
    assert lines == ["precision: float32 (this CPU has no bf16 instructions; --bf16 would emulate them, slowly)"]


def test_timing_the_precisions_leaves_the_network_and_random_state_as_they_were():
    net = UNet(SMALL)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    t32, t16 = fit_module.time_precisions(net, torch.device("cpu"), 2, False)
    assert t32 > 0 and t16 > 0
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters())


def test_a_gpu_trial_step_steps_down_to_the_micro_batch_that_runs():
    def step(m: int) -> None:
        if m > 8:
            raise torch.cuda.OutOfMemoryError("out of memory")

    lines: list[str] = []
    assert trial_micro_batch(step, 64, 32, lines) == 8
    assert lines == ["memory: a trial step of 32 images ran out of GPU memory: 8 micro-batches of 8 (--micro-batch "
                     "sets it)"]  # fmt: skip
    with pytest.raises(ParameterError, match="a training step of one image runs out of GPU memory"):
        trial_micro_batch(lambda m: step(100), 64, 32, [])


def test_the_time_line_and_grids_shrunk_for_slow_runs():
    assert time_line(0.25, 20, 5000, 1245.0).startswith("time: 0.25 s per step here; the run ends in about 21 min (")
    assert "(at --steps, about " in time_line(0.25, 20, 5000, 1245.0)
    assert "(at --minutes, about " in time_line(0.25, 20, 5000, 60.0)
    assert shrunk_grid(64, 0.01, 3600) == 64  # 0.64 s of grids in an hour
    assert shrunk_grid(64, 10.0, 3600) == 36  # 640 s > 360 s: 36 images take 360 s
    assert shrunk_grid(64, 1000.0, 3600) == 4  # at least a 2x2 grid


def test_a_run_says_its_time_and_precision(tmp_path, capsys, monkeypatch):
    import ddpm.train.loop as loop

    monkeypatch.setattr(loop, "ESTIMATE_AFTER", (3, 1e9))
    assert main(["train", *BASE, "--steps", "6", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "time: " in out and " s per step here; the run ends in about " in out
    assert "precision: " in out
