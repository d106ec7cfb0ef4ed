"""Training you can leave running: exact resume, DDP through torchrun, signals, kills, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BASE, assert_identical, run_weights, subprocess_env
from PIL import Image

from ddpm.checkpoint import list_checkpoints, load_checkpoint, load_training_state, state_path
from ddpm.cli import main
from ddpm.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
DRAWS = ["--dropout", "0.1", "--flip", "--class-cond"]


def run_files(run: Path) -> dict[Path, bytes]:
    """Every file of a run directory and its bytes, but the lock file (which records its latest holder)."""
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("bf16", ["--bf16", "--no-bf16"])
def test_resume_is_bit_identical(tmp_path, bf16):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *BASE, *DRAWS, bf16, "--out", str(straight), "--steps", "8"]) == 0
    assert main(["train", *BASE, *DRAWS, bf16, "--out", str(split), "--steps", "4"]) == 0
    # Resumed without the flag: the run keeps the arithmetic it was started with, whatever this CPU's default.
    assert main(["train", *BASE, *DRAWS, "--out", str(split), "--steps", "8", "--resume"]) == 0
    assert_identical(run_weights(straight), run_weights(split))
    assert load_checkpoint(split).meta["bf16"] is (bf16 == "--bf16")
    records = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert {r["bf16"] for r in records} == {bf16 == "--bf16"}
    # metrics.jsonl continues where it left off: steps 2, 4, 6, 8 once each.
    steps = [json.loads(line)["step"] for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]


def test_resume_refuses_a_different_configuration(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *BASE, "--out", str(run), "--steps", "2"]) == 0
    before = run_files(run)
    assert main(["train", *BASE, "--out", str(run), "--steps", "4", "--resume", "--lr", "0.002"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.001 in the checkpoint, 0.002 now" in err and err.count("\n") == 1
    assert main(["train", *BASE, "--out", str(tmp_path / "empty"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert run_files(run) == before


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "ddpm",
        "train",
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


DDP_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from ddpm.train import TrainConfig, train
out, bf16 = sys.argv[1], sys.argv[2] == "True"
cfg = TrainConfig(out=out, data="digits", preset="tiny", batch_size=8, steps=6, warmup=2, sample_every=0,
                  sample_steps=2, num_samples=2, class_cond=True, flip=True, progress=False, device="cpu", bf16=bf16)
r = train(cfg)
rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(__import__("os").environ["RANK"])
save_file({k: v.contiguous() for k, v in r.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
"""


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Euclidean distance between two state dicts taken as one vector."""
    return sum(float((a[k].double() - b[k].double()).square().sum()) for k in a) ** 0.5


@pytest.mark.slow
@pytest.mark.parametrize("bf16", [False, True])
def test_ddp_two_processes_agree_and_match_one_process(tmp_path, bf16):
    from safetensors.torch import load_file

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    run = tmp_path / "ddp"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(run),
            str(bf16),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    w0, w1 = load_file(str(run / "rank0.safetensors")), load_file(str(run / "rank1.safetensors"))
    assert_identical(w0, w1)
    assert load_checkpoint(run).meta["bf16"] is bf16

    def run_alone(name: str, batch_size: int) -> dict[str, torch.Tensor]:
        return train(
            TrainConfig(
                out=str(tmp_path / name),
                data="digits",
                preset="tiny",
                batch_size=batch_size,
                steps=6,
                warmup=2,
                sample_every=0,
                sample_steps=2,
                num_samples=2,
                class_cond=True,
                flip=True,
                progress=False,
                device="cpu",
                bf16=bf16,
            )
        ).model.state_dict()

    # One process with the same effective batch (2 x 8) takes the same steps, up to float summation order ...
    ref = run_alone("single", 16)
    # ... and differs clearly from a run with half the batch, so the comparison has teeth.
    half = run_alone("half", 8)
    ddp_vs_one, half_vs_one = _distance(w0, ref), _distance(half, ref)
    if not bf16:
        assert max((ref[k] - w0[k]).abs().max().item() for k in ref) < 1e-4
        assert max((ref[k] - load_checkpoint(run).model[k]).abs().max().item() for k in ref) < 1e-4
        assert max((half[k] - w0[k]).abs().max().item() for k in ref) > 1e-3
    # bf16 rounds each rank's gradient before the all-reduce, which a single process does not; Adam turns
    # such differences in near-zero gradients into whole steps, so compare whole-vector distances instead
    # (measured: 6e-5 of the half-batch distance in float32, 0.056 in bf16).
    assert ddp_vs_one < (0.01 if not bf16 else 0.15) * half_vs_one, (ddp_vs_one, half_vs_one)


@pytest.mark.slow
def test_resume_under_torchrun_is_bit_identical(tmp_path):
    args = [*BASE, "--batch-size", "8", "--device", "cpu", "--grad-accum", "2"]
    _torchrun([*args, "--out", str(tmp_path / "straight"), "--steps", "6"])
    _torchrun([*args, "--out", str(tmp_path / "split"), "--steps", "3"])
    r = _torchrun([*args, "--out", str(tmp_path / "split"), "--steps", "6", "--resume"])
    assert r.stdout.count("resuming from") == 1  # only rank 0 talks
    assert_identical(run_weights(tmp_path / "straight"), run_weights(tmp_path / "split"))


def _start(out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ddpm", "train", *BASE, "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())


def _wait_for_checkpoint(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not list_checkpoints(out):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "no checkpoint appeared"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_0(tmp_path):
    """SIGTERM mid-run: exit 0 with a checkpoint of the last step done. No scheduled checkpoint can come before
    it (--checkpoint-every is out of reach) and every step is logged, so the only checkpoint must be the one
    written at the signal, at the step the log ends with."""
    out = tmp_path / "run"
    proc = _start(out, "--steps", "100000", "--checkpoint-every", "100000", "--log-every", "1")
    end = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, "training did not start"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    ((last_step, last),) = list_checkpoints(out)
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, last_step + 1)) and last_step >= 3
    assert f"stopped by signal SIGTERM at step {last_step};" in stdout
    assert load_checkpoint(last).step == last_step and load_training_state(state_path(last))["step"] == last_step
    assert (out / "samples" / f"step-{last_step:09d}.png").exists()


@pytest.mark.slow
def test_minutes_budget_ends_the_run_early_says_so_and_resume_continues(tmp_path, capsys):
    """--minutes ends a run before --steps: a checkpoint of the last step done, one line saying why, and the same
    command with --resume goes on from that step. With --minutes alone the budget is the plan: no such line."""
    out = tmp_path / "run"
    argv = ["train", *BASE, "--out", str(out), "--steps", "100000", "--minutes", "0.01"]
    assert main(argv) == 0
    ((step, _),) = list_checkpoints(out)
    assert 1 <= step < 100000
    assert (
        f"stopped at step {step} of 100000: the --minutes 0.01 budget ran out; the same command with --resume"
        in capsys.readouterr().out
    )
    assert main([*argv, "--resume"]) == 0
    assert (
        f"resuming from {out / 'checkpoints' / f'step-{step:09d}.safetensors'} at step {step}"
        in capsys.readouterr().out
    )
    assert list_checkpoints(out)[-1][0] > step
    assert main(["train", *BASE, "--out", str(tmp_path / "alone"), "--minutes", "0.01"]) == 0
    assert "budget ran out" not in capsys.readouterr().out


@pytest.mark.slow
def test_sigkill_always_leaves_a_loadable_checkpoint(tmp_path):
    out = tmp_path / "run"
    for delay in (0.0, 0.13, 0.31, 0.77):
        proc = _start(
            out,
            "--steps",
            "100000",
            "--checkpoint-every",
            "1",
            "--keep",
            "2",
            *(["--resume"] if list_checkpoints(out) else []),
        )
        _wait_for_checkpoint(out, proc) if not list_checkpoints(out) else time.sleep(2.0)
        time.sleep(delay)
        proc.kill()  # SIGKILL: no handler runs, possibly in the middle of a checkpoint write
        proc.communicate()
        step, path = list_checkpoints(out)[-1]
        assert load_checkpoint(path).step == step
        assert load_training_state(state_path(path))["step"] == step
    # A half-written file from a crash is ignored and cleaned up; --resume continues to the target.
    (out / "checkpoints" / ".step-000999999.safetensors.tmp-1").write_bytes(b"partial")
    step = list_checkpoints(out)[-1][0]
    assert main(["train", *BASE, "--out", str(out), "--steps", str(step + 2), "--resume"]) == 0
    assert list_checkpoints(out)[-1][0] == step + 2
    assert not list((out / "checkpoints").glob(".*tmp*"))


def _nan_at_call(monkeypatch, k: int) -> None:
    """Make the k-th training loss of this process NaN (1-based; one call per step here, no grad-accum)."""
    import ddpm.losses as losses

    calls = []
    real = losses.Objective.losses

    def with_nan(self, *args, **kwargs):
        calls.append(1)
        value, per_image = real(self, *args, **kwargs)
        return (value * float("nan") if len(calls) == k else value), per_image

    monkeypatch.setattr(losses.Objective, "losses", with_nan)


def test_nonfinite_loss_stops_without_touching_checkpoints(tmp_path, capsys, monkeypatch):
    """A NaN loss at a known step (injected) stops the run with exit 2 and one line naming that step; the run
    directory, checkpoints included, is byte for byte as it was."""
    run = tmp_path / "run"
    assert main(["train", *BASE, "--out", str(run), "--steps", "2"]) == 0
    before = run_files(run)
    capsys.readouterr()
    _nan_at_call(monkeypatch, 2)  # resumed at step 2: step 2 trains, step 3's loss is NaN
    code = main(["train", *BASE, "--out", str(run), "--steps", "6", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: the loss or gradient became non-finite at step 3 (loss nan)") and "--resume" in err
    assert run_files(run) == before


def test_nonfinite_skip_counts_the_step(tmp_path, capsys, monkeypatch):
    """--nonfinite skip: the NaN step is counted in metrics.jsonl and reported, and the run goes on to --steps."""
    _nan_at_call(monkeypatch, 2)  # step 1 (0-based)
    run = tmp_path / "run"
    assert main(["train", *BASE, "--log-every", "1", "--nonfinite", "skip", "--out", str(run), "--steps", "3"]) == 0
    assert "skipped 1 step(s) with a non-finite loss or gradient" in capsys.readouterr().out
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["skipped_steps"]) for r in records] == [(1, 0), (3, 1)]  # step 2 is the skipped one
    ck = load_checkpoint(run)
    assert ck.step == 3 and all(v.isfinite().all() for v in ck.model.values())


def _png(path: Path, value: int = 128, size: int = 8, mode: str = "L") -> None:
    Image.fromarray(np.full((size, size), value, np.uint8)).convert(mode).save(path)


def test_bad_data_one_line_errors(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        _png(folder / f"ok{i}.png", 40 * i)
    (folder / "broken.png").write_bytes(b"not a png")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = {
        "broken.png": ["--data", str(folder)],
        "no images found": ["--data", str(empty)],
        "no such file or folder": ["--data", str(tmp_path / "missing")],
    }
    for words, data in cases.items():
        assert main(["train", *BASE[2:], *data, "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and err.count("\n") == 1, err
    assert (
        main(["train", *BASE[2:], "--data", str(folder), "--skip-bad", "--out", str(tmp_path / "r"), "--steps", "1"])
        == 0
    )
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out


@pytest.mark.slow
def test_class_conditional_digits(tmp_path):
    """A short class-conditional run, then `ddpm sample --class 3`: a digits classifier sees mostly 3s.

    The same model with guidance 0 (unconditional) gives about one 3 in ten, so the check has teeth.
    (400 steps already give > 85% 3s with guidance 2; measured 250..1500 steps when the test was written.)
    """
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                "digits",
                "--preset",
                "tiny",
                "--class-cond",
                "--steps",
                "400",
                "--batch-size",
                "64",
                "--sample-every",
                "0",
                "--num-samples",
                "10",
                "--out",
                str(run),
                "--quiet",
            ]
        )
        == 0
    )
    digits = load_digits()
    clf = LogisticRegression(max_iter=2000).fit(digits.data, digits.target)
    shares = {}
    for w in ("2", "0"):
        out = tmp_path / f"w{w}"
        assert (
            main(
                [
                    "sample",
                    "--checkpoint",
                    str(run),
                    "--class",
                    "3",
                    "--guidance",
                    w,
                    "--num",
                    "40",
                    "--out",
                    str(out),
                    "--npz",
                    str(tmp_path / f"w{w}.npz"),
                    "--quiet",
                ]
            )
            == 0
        )
        imgs = np.load(tmp_path / f"w{w}.npz")["images"][..., 0].reshape(40, 64).astype(np.float64) / 255 * 16
        shares[w] = float(np.mean(clf.predict(imgs) == 3))
    assert shares["2"] >= 0.7 and shares["0"] <= 0.4, shares


def test_tensorboard_events_and_channels_last(tmp_path):
    """--tensorboard writes events; --channels-last (the GPU default) runs the same math on CPU (in float32:
    bf16 rounds differently in the two memory layouts)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *BASE, "--out", str(a), "--steps", "4", "--tensorboard", "--no-bf16"]) == 0
    assert main(["train", *BASE, "--out", str(b), "--steps", "4", "--channels-last", "--no-bf16"]) == 0
    acc = EventAccumulator(str(a / "tensorboard"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    metrics = [json.loads(line)["loss"] for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx(metrics, rel=1e-6) and len(losses) == 2
    wa, wb = load_checkpoint(a).model, load_checkpoint(b).model
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_idx_label_mismatch_is_one_line(tmp_path, capsys):
    import struct

    (tmp_path / "train-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 0x803, 3, 8, 8) + bytes(3 * 64))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 2) + bytes(2))
    assert main(["train", *BASE[2:], "--data", str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "3 images" in err and "2 labels" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_objective_options_resume_bit_identical_and_change_the_numbers(tmp_path, capsys, monkeypatch):
    """Min-SNR weights, Laplace timesteps and a cosine LR decay are saved with the run, and a run interrupted
    (SIGTERM after step 3) and resumed with the same --steps ends bit-identical to one that was not."""
    import ddpm.train.loop as loop

    opts = [
        "--loss-weight",
        "min-snr",
        "--t-sampling",
        "laplace",
        "--lr-schedule",
        "cosine",
        "--prediction",
        "v",
        "--no-t-stratified",
        "--adam-beta2",
        "0.95",
    ]
    straight, split, plain = tmp_path / "straight", tmp_path / "split", tmp_path / "plain"
    assert main(["train", *BASE, *opts, "--out", str(straight), "--steps", "6"]) == 0
    calls = []
    real_update = loop.ema_update

    def update_then_signal(*args, **kwargs):
        real_update(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    with monkeypatch.context() as m:
        m.setattr(loop, "ema_update", update_then_signal)
        assert main(["train", *BASE, *opts, "--out", str(split), "--steps", "6"]) == 0
    assert load_checkpoint(split).step == 3
    assert main(["train", *BASE, *opts, "--out", str(split), "--steps", "6", "--resume"]) == 0
    assert_identical(run_weights(straight), run_weights(split))
    train_meta = load_checkpoint(split).meta["train"]
    assert (train_meta["loss_weight"], train_meta["t_sampling"], train_meta["lr_schedule"]) == (
        "min-snr",
        "laplace",
        "cosine",
    )
    assert (train_meta["t_stratified"], train_meta["adam_beta2"]) == (False, 0.95)
    # The cosine decay runs from BASE's 3 warm-up steps to 0 at --steps; the record of step k holds the LR
    # of optimisation step k - 1.
    lrs = {r["step"]: r["lr"] for r in map(json.loads, (split / "metrics.jsonl").read_text().splitlines())}
    assert lrs[4] == pytest.approx(1e-3) and lrs[6] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(2 * np.pi / 3)))
    # Without the options the same seed trains other weights.
    assert main(["train", *BASE, "--prediction", "v", "--out", str(plain), "--steps", "6"]) == 0
    a, b = load_checkpoint(plain).model, load_checkpoint(straight).model
    assert all(not torch.equal(a[k], b[k]) for k in ("conv_in.weight", "conv_out.weight"))
    capsys.readouterr()
    assert main(["train", *BASE, "--out", str(tmp_path / "bad"), "--loss-weight", "snr"]) == 2
    err = capsys.readouterr().err
    assert "unknown --loss-weight 'snr'" in err and err.count("\n") == 1
    assert main(["train", *BASE, *opts, "--out", str(split), "--steps", "8", "--resume", "--loss-gamma", "2"]) == 2
    assert "--loss-gamma None in the checkpoint, 2.0 now" in capsys.readouterr().err
    assert main(["train", *BASE, *opts[:-3], "--out", str(split), "--steps", "8", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--adam-beta2 0.95 in the checkpoint, 0.99 now" in err and "--t-stratified False" in err
    assert main(["train", *BASE, "--out", str(tmp_path / "bad"), "--adam-beta2", "1"]) == 2
    assert "--adam-beta2 must be in [0, 1)" in capsys.readouterr().err


def test_network_shape_flags_build_save_and_resume(tmp_path, capsys):
    """--base-channels/--channel-mult/--res-blocks/--attention override the preset's fields; the network and the
    flags are saved, the sampler rebuilds the network from the checkpoint, and resume must keep them."""
    shape = [
        "--base-channels",
        "16",
        "--channel-mult",
        "1,2,2",
        "--res-blocks",
        "2",
        "--attention",
        "4",
        "--scale-shift-norm",
        "--norm-groups",
        "8",
    ]
    run = tmp_path / "run"
    assert main(["train", *BASE, *shape, "--out", str(run), "--steps", "2"]) == 0
    ck = load_checkpoint(run)
    net = ck.meta["model"]
    assert (net["base_channels"], net["channel_mult"], net["num_res_blocks"], net["attention_resolutions"]) == (
        16,
        [1, 2, 2],
        2,
        [4],
    )
    # 8x8 digits: levels 8, 4, 2 with two blocks each (three on the way up); attention at the 4x4 level only,
    # besides the middle block's: down blocks 3 and 4, up blocks 3, 4 and 5 (indices count the downsamplers).
    assert ck.model["conv_in.weight"].shape == (16, 1, 3, 3)
    attn = {k.rsplit(".qkv.", 1)[0] for k in ck.model if ".qkv." in k and not k.startswith("mid")}
    assert attn == {"down.3.1", "down.4.1", "up.3.1", "up.4.1", "up.5.1"}
    assert ck.model["down.6.0.conv1.weight"].shape[0] == 32 and "down.8.0.conv1.weight" not in ck.model
    assert ck.meta["train"]["channel_mult"] == "1,2,2"
    assert net["scale_shift_norm"] is True and ck.model["down.0.0.emb_proj.weight"].shape == (32, 64)
    assert net["groups"] == 8 and ck.meta["train"]["norm_groups"] == 8
    assert main(["sample", "--checkpoint", str(run), "--num", "2", "--steps", "2", "--out", str(tmp_path / "s")]) == 0
    capsys.readouterr()
    assert main(["train", *BASE, "--out", str(run), "--steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--channel-mult '1,2,2' in the checkpoint, None now" in err and err.count("\n") == 1
    assert main(["train", *BASE, *shape, "--out", str(run), "--steps", "4", "--resume"]) == 0
    assert load_checkpoint(run).step == 4
    # "none" removes the preset's attention levels; malformed lists are one-line errors.
    assert TrainConfig(out="x", attention="none").network_overrides() == {"attention_resolutions": ()}
    for bad, words in (
        (["--channel-mult", "1,x"], "--channel-mult takes comma-separated positive integers"),
        (["--attention", "0"], "--attention takes comma-separated positive integers"),
        (["--base-channels", "0"], "--base-channels must be at least 1"),
        (["--norm-groups", "0"], "--norm-groups must be at least 1"),
    ):
        assert main(["train", *BASE, *bad, "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_resume_keeps_the_runs_network_when_the_preset_is_redefined(tmp_path, monkeypatch):
    """A run resumed after an upgrade that changed its preset's definition goes on with the network saved in its
    checkpoint, bit-identical to a run that was never interrupted."""
    import ddpm.unet as unet

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *BASE, "--out", str(straight), "--steps", "4"]) == 0
    assert main(["train", *BASE, "--out", str(split), "--steps", "2"]) == 0
    monkeypatch.setitem(unet.PRESETS, "tiny", {**unet.PRESETS["tiny"], "channel_mult": (1, 2, 2), "base_channels": 8})
    assert main(["train", *BASE, "--out", str(split), "--steps", "4", "--resume"]) == 0
    assert_identical(run_weights(straight), run_weights(split))
    assert load_checkpoint(split).meta["model"] == load_checkpoint(straight).meta["model"]
