"""End to end through the command line: train a tiny model for seconds, sample, check the files."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import TRAIN
from PIL import Image

from ddpm.cli import main
from ddpm.images import read_png_metadata


def test_train_writes_checkpoints_grids_and_metrics(run_dir):
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == [
        "step-000000006.safetensors",
        "step-000000006.state.pt",
        "step-000000012.safetensors",
        "step-000000012.state.pt",
    ]
    grids = sorted(p.name for p in (run_dir / "samples").iterdir())
    assert grids == ["step-000000006.png", "step-000000012.png"]
    with Image.open(run_dir / "samples" / grids[-1]) as im:
        assert im.mode == "L" and im.size[0] > 8  # a 2x2 grid of upscaled 8x8 digits
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [4, 8, 12]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in lines)
    assert lines[0]["lr"] == pytest.approx(1e-3)  # warm-up of 2 steps is over


def test_sample_files_and_reproducibility(run_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["sample", "--checkpoint", str(run_dir), "--num", "5", "--steps", "8", "--seed", "3", "--quiet"]
    assert main([*common, "--out", str(a), "--batch-size", "2", "--npz", str(tmp_path / "a.npz")]) == 0
    assert main([*common, "--out", str(b), "--batch-size", "5"]) == 0
    names = [f"{i:06d}.png" for i in range(5)]
    assert sorted(p.name for p in a.iterdir()) == sorted([*names, "grid.png"])
    arrays = []
    for n in names:
        with Image.open(a / n) as im:
            assert im.size == (8, 8) and im.mode == "L"
            arrays.append(np.asarray(im))
        # Image i depends only on (seed, i): a different batch size gives identical files.
        assert (a / n).read_bytes() == (b / n).read_bytes()
    npz = np.load(tmp_path / "a.npz")["images"]
    assert npz.dtype == np.uint8 and npz.shape == (5, 8, 8, 1)
    assert np.array_equal(npz[..., 0], np.stack(arrays))
    meta = read_png_metadata(a / names[4])
    assert meta["ddpm:seed"] == "3" and meta["ddpm:index"] == "4" and len(meta["ddpm:checkpoint_sha256"]) == 64
    # A different seed gives different images.
    c = tmp_path / "c"
    assert main([*common[:-3], "--seed", "4", "--quiet", "--out", str(c)]) == 0
    assert (c / names[0]).read_bytes() != (a / names[0]).read_bytes()


def test_user_mistakes_exit_2_with_one_line(run_dir, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    cases = [
        [*TRAIN, "--out", str(run_dir)],  # a run is already there: nothing may be overwritten
        ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--quiet"],
        ["train", "--preset", "huge", "--out", str(tmp_path / "r"), "--quiet"],
        ["sample", "--checkpoint", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "s")],
        ["sample", "--checkpoint", str(run_dir), "--out", str(tmp_path / "s"), "--steps", "0"],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_sample_refuses_to_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["sample", "--checkpoint", str(run_dir), "--num", "2", "--steps", "2", "--quiet", "--out", str(out)]
    assert main(argv) == 0
    first = (out / "000000.png").read_bytes()
    assert main([*argv[:-2], "--seed", "9", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "000000.png").read_bytes() == first


@pytest.mark.slow
def test_not_a_checkpoint_through_the_real_command(tmp_path):
    junk = tmp_path / "model.safetensors"
    junk.write_bytes(b"\x00" * 100)
    r = subprocess.run(
        [sys.executable, "-m", "ddpm", "sample", "--checkpoint", str(junk), "--out", str(tmp_path / "s")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and "not a ddpm checkpoint" in r.stderr and "Traceback" not in r.stderr
