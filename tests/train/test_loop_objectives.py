"""Training with the objectives of the DDPM paper's Table 2 and improved DDPM: the bound as a loss, the learned
variance, μ̃ prediction and loss-aware timesteps train, resume bit-exactly, sample and are scored with their own Σ."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import BASE, assert_identical, run_weights, subprocess_env
from PIL import Image

from ddpm.checkpoint import load_checkpoint, load_training_state, state_path
from ddpm.cli import main

# T = 10 so that the loss-aware sampler (10 losses per index) warms up within a few steps of 16 images.
SHORT = ["--timesteps", "10", "--beta-start", "0.001", "--beta-end", "0.3"]
HYBRID = ["--loss", "hybrid", "--variance", "learned-range", "--t-sampling", "importance", *SHORT]


@pytest.mark.slow
def test_hybrid_learned_range_with_importance_resumes_bit_identically(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main(["train", *BASE, *HYBRID, "--out", str(straight), "--steps", "14"]) == 0
    assert main(["train", *BASE, *HYBRID, "--out", str(split), "--steps", "9"]) == 0
    history = load_training_state(state_path(load_checkpoint(split).path))["loss_history"]
    assert int(history["counts"].min()) == 10  # warmed up before the split: the resumed steps draw from p_t
    assert main(["train", *BASE, *HYBRID, "--out", str(split), "--steps", "14", "--resume"]) == 0
    assert_identical(run_weights(straight), run_weights(split))
    a = load_training_state(state_path(load_checkpoint(straight).path))["loss_history"]
    b = load_training_state(state_path(load_checkpoint(split).path))["loss_history"]
    assert torch.equal(a["values"], b["values"]) and torch.equal(a["counts"], b["counts"])
    ck = load_checkpoint(split)
    assert ck.meta["variance"] == "learned-range" and ck.meta["model"]["out_channels"] == 2
    assert ck.model["conv_out.weight"].shape[0] == 2
    capsys.readouterr()
    # It samples with its own variance (ancestral) or its mean (the ODE samplers, said in one line) ...
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(split),
                "--out",
                str(tmp_path / "anc"),
                "--num",
                "3",
                "--sampler",
                "ddpm",
                "--quiet",
            ]
        )
        == 0
    )
    assert "learned its variance" not in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(split), "--out", str(tmp_path / "ode"), "--num", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "note: the network learned its variance (learned-range); the ddpm sampler draws with it" in out
    for d in ("anc", "ode"):
        assert np.asarray(Image.open(tmp_path / d / "grid.png")).std() > 0
    # ... and `ddpm eval --nll` scores it with its own Σ.
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(split),
                "--data",
                "digits",
                "--nll",
                "--nll-num",
                "4",
                "--quiet",
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert report["protocol"]["nll"]["variance"] == "learned"
    assert np.isfinite(report["metrics"]["nll"]["bits_per_dim"])


def test_the_papers_baseline_rows_train(tmp_path, capsys):
    """μ̃ prediction with the true bound and a fixed Σ (Table 2's first block), and ε with the bound and a learned
    Σ: finite losses, and a fixed-large run samples with σ² = β by default."""
    for name, opts in (
        ("mean-vlb", ["--prediction", "mean", "--loss", "vlb", "--variance", "fixed-large"]),
        ("eps-vlb-learned", ["--loss", "vlb", "--variance", "learned"]),
    ):
        run = tmp_path / name
        assert main(["train", *BASE, *SHORT, *opts, "--out", str(run), "--steps", "3", "--log-every", "1"]) == 0
        losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert len(losses) == 3 and all(np.isfinite(losses))
    assert load_checkpoint(tmp_path / "mean-vlb").meta["variance"] == "fixed-large"
    capsys.readouterr()
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(tmp_path / "mean-vlb"),
                "--out",
                str(tmp_path / "s"),
                "--num",
                "2",
                "--sampler",
                "ddpm",
                "--quiet",
            ]
        )
        == 0
    )
    # A fixed-large network's ancestral sampler draws with β unless told otherwise.
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(tmp_path / "mean-vlb"),
                "--out",
                str(tmp_path / "b"),
                "--num",
                "2",
                "--sampler",
                "ddpm",
                "--option",
                "variance=beta",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(tmp_path / "mean-vlb"),
                "--out",
                str(tmp_path / "p"),
                "--num",
                "2",
                "--sampler",
                "ddpm",
                "--option",
                "variance=posterior",
                "--quiet",
            ]
        )
        == 0
    )
    same = np.asarray(Image.open(tmp_path / "s" / "000000.png"))
    assert np.array_equal(same, np.asarray(Image.open(tmp_path / "b" / "000000.png")))
    assert not np.array_equal(same, np.asarray(Image.open(tmp_path / "p" / "000000.png")))


@pytest.mark.parametrize(
    "args, says",
    [
        (["--variance", "learned-range"], "a learned-range variance is trained only by the bound: pass --loss hybrid"),
        (["--loss", "hybrid"], "--loss hybrid trains a learned variance through its bound term: pass --variance"),
        (["--t-sampling", "importance"], "--t-sampling importance weighs timesteps"),
    ],
)
def test_objective_mistakes_are_one_line(tmp_path, capsys, args, says):
    assert main(["train", *BASE, *args, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_resume_refuses_another_objective(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *BASE, *SHORT, "--loss", "vlb", "--out", str(run), "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["train", *BASE, *SHORT, "--out", str(run), "--steps", "4", "--resume"]) == 2
    assert "--loss 'vlb' in the checkpoint, 'simple' now" in capsys.readouterr().err


DDP_IMPORTANCE = """
import sys, torch
from safetensors.torch import save_file
from ddpm.train import TrainConfig, train
out, batch = sys.argv[1], int(sys.argv[2])
cfg = TrainConfig(out=out, data="digits", preset="tiny", batch_size=batch, steps=10, warmup=2, sample_every=0,
                  sample_steps=2, num_samples=2, progress=False, device="cpu", bf16=False, timesteps=10,
                  beta_start=0.001, beta_end=0.3, loss="hybrid", variance="learned-range", t_sampling="importance")
r = train(cfg)
rank = int(__import__("os").environ.get("RANK", "0"))  # the process group is gone after train()
save_file({k: v.contiguous() for k, v in r.model.state_dict().items()}, f"{out}/rank{rank}.safetensors")
"""


@pytest.mark.slow
def test_ddp_ranks_share_one_loss_history_that_matches_one_process(tmp_path):
    """Every rank records the whole global batch's losses in one order, so the ranks draw the same timesteps
    (their weights stay identical) and the history is that of one process with twice the batch."""
    from safetensors.torch import load_file

    script = tmp_path / "ddp.py"
    script.write_text(DDP_IMPORTANCE)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path / "ddp"),
            "8",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert_identical(
        load_file(str(tmp_path / "ddp" / "rank0.safetensors")), load_file(str(tmp_path / "ddp" / "rank1.safetensors"))
    )
    r = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "one"), "16"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    a = load_training_state(state_path(load_checkpoint(tmp_path / "ddp").path))["loss_history"]
    b = load_training_state(state_path(load_checkpoint(tmp_path / "one").path))["loss_history"]
    assert torch.equal(a["counts"], b["counts"])
    torch.testing.assert_close(a["values"], b["values"], rtol=1e-3, atol=1e-5, equal_nan=True)
