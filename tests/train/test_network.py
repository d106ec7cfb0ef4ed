"""The network a run trains: chosen from the image size without --preset (and said), kept on resume, each preset
trained a step and sampled on the CPU, and --grad-checkpoint giving the same run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import Schedule, sample
from ddpm.checkpoint import load_checkpoint, save_checkpoint
from ddpm.cli import main
from ddpm.errors import UserError
from ddpm.train import TrainConfig
from ddpm.train.setup import check_compatible, why_this_network
from ddpm.unet import AUTO_PRESETS, PRESETS, UNet

QUICK = [
    "--batch-size",
    "2",
    "--warmup",
    "1",
    "--sample-every",
    "0",
    "--checkpoint-every",
    "0",
    "--sample-steps",
    "1",
    "--num-samples",
    "1",
    "--log-every",
    "1",
    "--quiet",
]


def _photos(folder: Path, n: int = 2, size: tuple[int, int] = (90, 70)) -> Path:
    """``n`` colour pictures of ``size`` (not square, not the model's size) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_default_preset_is_chosen_from_the_image_size_and_said(tmp_path, capsys):
    run = tmp_path / "digits"
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "1", *QUICK]) == 0
    out = capsys.readouterr().out
    assert "network: tiny (chosen for 8x8 images; --preset names another): levels 8→4→2 px" in out
    ck = load_checkpoint(run)
    assert ck.meta["train"]["preset"] == "tiny"  # the resolved name is what the run records
    assert ck.meta["model"]["base_channels"] == 32 and ck.meta["model"]["channel_mult"] == [1, 2, 2]
    # At 64 px on a CPU: the CPU-budget network, and the published one a GPU would get is named.
    run = tmp_path / "photos"
    args = ["train", "--data", str(_photos(tmp_path / "p")), "--image-size", "64", "--out", str(run), "--steps", "1"]
    assert main([*args, "--device", "cpu", *QUICK]) == 0
    out = capsys.readouterr().out
    assert (
        "network: tiny-64 (chosen for 64x64 images on a CPU; on a GPU it would be adm-64; --preset names either): "
        "levels 64→32→16→8 px, attention at 16 px and the middle"
    ) in out
    assert load_checkpoint(run).meta["train"]["preset"] == "tiny-64"


def test_a_gpu_run_is_said_to_get_the_published_network():
    gpu = torch.device("cuda", 0)
    assert why_this_network(64, gpu, "adm-64", "tiny-64") == (
        "chosen for 64x64 images on a CUDA device; on a CPU it would be tiny-64; --preset names either"
    )
    assert why_this_network(28, gpu, "tiny", "tiny") == "chosen for 28x28 images; --preset names another"
    assert why_this_network(28, gpu, "tiny", None) == "--preset"


def test_named_preset_is_said_too(tmp_path, capsys):
    assert (
        main(["train", "--data", "digits", "--preset", "tiny-32", "--out", str(tmp_path / "r"), "--steps", "1", *QUICK])
        == 0
    )
    assert "network: tiny-32 (--preset): levels 8→4→2 px, attention in the middle block only" in capsys.readouterr().out


def test_resume_without_preset_keeps_the_runs_own(tmp_path, capsys):
    """A run recorded with any preset (or none: checkpoints from before the field) resumes without --preset; a
    --preset that differs from the run's is refused as before."""
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--preset", "tiny-32", "--out", str(run), "--steps", "1", *QUICK]) == 0
    assert main(["train", "--data", "digits", "--out", str(run), "--steps", "2", "--resume", *QUICK]) == 0
    assert load_checkpoint(run).meta["train"]["preset"] == "tiny-32"
    capsys.readouterr()
    assert (
        main(["train", "--data", "digits", "--preset", "tiny", "--out", str(run), "--steps", "3", "--resume", *QUICK])
        == 2
    )
    assert "--preset 'tiny-32' in the checkpoint, 'tiny' now" in capsys.readouterr().err
    # A checkpoint written before "auto" records "tiny", the default then; one older still records nothing.
    ck = load_checkpoint(run)
    for steps, record in (
        (3, {**ck.meta["train"], "preset": "tiny"}),
        (4, {k: v for k, v in ck.meta["train"].items() if k != "preset"}),
    ):
        save_checkpoint(ck.path, ck.model, ck.ema, {**ck.meta, "train": record})
        assert main(["train", "--data", "digits", "--out", str(run), "--steps", str(steps), "--resume", *QUICK]) == 0
        ck = load_checkpoint(run)
        assert ck.step == steps and ck.meta["train"]["preset"] == "tiny"
    with pytest.raises(UserError, match="preset 'tiny' in the checkpoint, 'auto' now"):
        check_compatible({"preset": "tiny"}, TrainConfig(out="x"), 1, 1, tmp_path / "x")  # only build_networks adopts


def test_grad_checkpoint_trains_the_same_run(tmp_path):
    """--grad-checkpoint changes memory and time, not the numbers: with dropout, the weights, EMA and AdamW state
    after a few steps are those of the run without it."""
    runs = {}
    for flag in ("--no-grad-checkpoint", "--grad-checkpoint"):
        out = tmp_path / flag
        assert (
            main(
                [
                    "train",
                    "--data",
                    "digits",
                    "--preset",
                    "tiny-32",
                    "--dropout",
                    "0.2",
                    "--out",
                    str(out),
                    "--steps",
                    "3",
                    "--no-bf16",
                    flag,
                    *QUICK,
                ]
            )
            == 0
        )
        ck = load_checkpoint(out)
        runs[flag] = {**{f"model.{k}": v for k, v in ck.model.items()}, **{f"ema.{k}": v for k, v in ck.ema.items()}}
        assert ck.meta["train"]["grad_checkpoint"] is (flag == "--grad-checkpoint")
    a, b = runs.values()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


SMALL = [name for name in PRESETS if name in ("tiny", "tiny-32", "tiny-64", "tiny-128", "tiny-256", "small")]
# The size defaults (adm-64, adm-128, ddpm-256) train a step and sample through the CLI below, which costs a few
# minutes on a CPU already; the other big presets are checked here.
BY_SIZE = [gpu for _, _, gpu in AUTO_PRESETS if gpu not in SMALL]
BIG = [name for name in PRESETS if name not in SMALL and name not in BY_SIZE]


def _step_and_sample(name: str) -> None:
    """One AdamW step on two images of the preset's own size, then two sampling steps for one image."""
    torch.manual_seed(0)
    net = UNet.from_preset(name, channels=3)
    size = net.config.image_size
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, t = torch.randn(2, 3, size, size), torch.tensor([10, 900])
    loss = (net(x, t) - torch.randn_like(x)).pow(2).mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    with torch.no_grad():
        out = sample(
            net.eval(),
            (1, 3, size, size),
            Schedule.linear(1000),
            sampler="ddim",
            steps=2,
            generator=torch.Generator().manual_seed(0),
        )
    assert out.shape == (1, 3, size, size) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", SMALL)
def test_small_presets_train_a_step_and_sample(name):
    _step_and_sample(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", BIG)
def test_big_presets_train_a_step_and_sample(name):
    _step_and_sample(name)


@pytest.mark.slow
@pytest.mark.parametrize("size,name", [(64, "tiny-64"), (128, "tiny-128"), (256, "tiny-256")])
def test_train_without_preset_trains_the_resolutions_network(tmp_path, capsys, size, name):
    """`ddpm train --data FOLDER --image-size N` alone on a CPU: the CPU-budget network for N px, said in the first
    lines, trained a step and sampled (the final one-image grid)."""
    run = tmp_path / "run"
    photos = _photos(tmp_path / "photos", n=1, size=(size + 30, size + 10))
    quick = [a for a in QUICK if a not in ("--batch-size", "2")]
    args = ["train", "--data", str(photos), "--image-size", str(size), "--out", str(run), "--steps", "1"]
    assert main([*args, "--batch-size", "1", "--device", "cpu", *quick]) == 0
    # The first lines: where the folder was prepared, then the network.
    first = [line for line in capsys.readouterr().out.splitlines()[:2] if line.startswith("network: ")]
    assert first and first[0].startswith(f"network: {name} (chosen for {size}x{size} images")
    ck = load_checkpoint(run)
    assert ck.meta["train"]["preset"] == name and ck.meta["model"]["base_channels"] == PRESETS[name]["base_channels"]
    assert (run / "samples" / "step-000000001.png").is_file()
