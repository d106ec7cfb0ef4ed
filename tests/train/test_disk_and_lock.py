"""A run's disk and its one writer: a full disk at any point of a checkpoint write ends the run with one line, no
half-written or orphan files and every earlier checkpoint loadable, and a resume after space is freed is exact;
a second `ddpm train` on a run directory is refused, naming the process that holds it."""

from __future__ import annotations

import errno
import os
import pathlib
import stat
import subprocess
import sys
import time

import pytest
import torch
from conftest import BASE, assert_identical, run_weights, subprocess_env

import ddpm.files as files_module
import ddpm.train.fit as fit_module
import ddpm.train.loop as loop_module
from ddpm.checkpoint import checkpoint_bytes, list_checkpoints, load_checkpoint, load_training_state, state_path
from ddpm.cli import main
from ddpm.unet import UNet

QUICK = [*BASE, "--no-bf16", "--checkpoint-every", "1", "--keep", "10"]


class DiskFills:
    """Counts the write events of a checkpoint (the data written, each file's fsync, each rename) while
    ``_Run.save`` runs and, with ``at`` set, raises ENOSPC at that event."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, at: int | None = None) -> None:
        self.count, self.at, self.saving = 0, at, False
        real_fsync, real_replace = os.fsync, os.replace
        real_write_bytes, real_save, real_run_save = pathlib.Path.write_bytes, torch.save, loop_module._Run.save

        def event(fn, counted=lambda *a: True):
            def wrapped(*args, **kwargs):
                if self.saving and counted(*args):
                    self.count += 1
                    if self.count == self.at:
                        raise OSError(errno.ENOSPC, "No space left on device")
                return fn(*args, **kwargs)

            return wrapped

        def saving(run, step):
            self.saving = True
            try:
                return real_run_save(run, step)
            finally:
                self.saving = False

        not_a_folder = lambda fd: not stat.S_ISDIR(os.fstat(fd).st_mode)  # noqa: E731 - a folder's fsync is advisory
        monkeypatch.setattr(files_module.os, "fsync", event(real_fsync, not_a_folder))
        monkeypatch.setattr(files_module.os, "replace", event(real_replace))
        monkeypatch.setattr(pathlib.Path, "write_bytes", event(real_write_bytes))
        monkeypatch.setattr(torch, "save", event(real_save))
        monkeypatch.setattr(loop_module._Run, "save", saving)


def _checkpoint_events(tmp_path, monkeypatch) -> int:
    """How many write events one checkpoint (state file, then weights) takes."""
    counter = DiskFills(monkeypatch)
    assert main(["train", *QUICK, "--steps", "1", "--sample-every", "0", "--out", str(tmp_path / "count")]) == 0
    monkeypatch.undo()
    return counter.count


def _leftovers(run: pathlib.Path) -> list[str]:
    """Files of the checkpoints folder that are not complete checkpoints: temporaries, and state without weights."""
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    partial = [n for n in names if files_module.is_partial_write(n)]
    orphans = [n for n in names if n.endswith(".state.pt") and n.replace(".state.pt", ".safetensors") not in names]
    return partial + orphans


@pytest.mark.slow
def test_a_full_disk_at_every_point_of_a_checkpoint_write(tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight"
    assert main(["train", *QUICK, "--steps", "3", "--sample-every", "0", "--out", str(straight)]) == 0
    events = _checkpoint_events(tmp_path, monkeypatch)
    assert events == 6  # the state file's write, fsync, rename; the weights' write, fsync, rename
    for point in range(1, events + 1):
        run = tmp_path / f"full-{point}"
        assert main(["train", *QUICK, "--steps", "2", "--sample-every", "0", "--out", str(run)]) == 0
        capsys.readouterr()
        DiskFills(monkeypatch, at=point)
        code = main(["train", *QUICK, "--steps", "3", "--sample-every", "0", "--out", str(run), "--resume"])
        monkeypatch.undo()
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, (point, err)
        assert err.startswith("error: cannot write ") and "the disk is full" in err, err
        assert "checkpoint step 2 is kept, and --resume continues from it" in err, err
        assert _leftovers(run) == [], point
        assert [s for s, _ in list_checkpoints(run)] == [1, 2]
        last = load_checkpoint(run)
        assert last.step == 2 and load_training_state(state_path(last.path))["step"] == 2
        # Space freed: the same command goes on, exactly.
        assert main(["train", *QUICK, "--steps", "3", "--sample-every", "0", "--out", str(run), "--resume"]) == 0
        assert_identical(run_weights(straight), run_weights(run))


def test_a_checkpoint_that_does_not_fit_is_not_started(tmp_path, monkeypatch, capsys):
    run = tmp_path / "r"
    assert main(["train", *QUICK, "--steps", "1", "--sample-every", "0", "--out", str(run)]) == 0
    need = (run / "checkpoints" / "step-000000001.safetensors").stat().st_size
    monkeypatch.setattr(loop_module, "free_bytes", lambda path: need // 2)
    assert main(["train", *QUICK, "--steps", "2", "--sample-every", "0", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write ") and "step-000000002.safetensors: the disk is full" in err
    assert "needed): free some space; checkpoint step 1 is kept" in err and err.count("\n") == 1
    assert _leftovers(run) == [] and [s for s, _ in list_checkpoints(run)] == [1]


def test_the_start_refuses_a_disk_without_room_for_one_checkpoint_and_warns_when_tight(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fit_module, "free_bytes", lambda path: 1000)
    assert main(["train", *QUICK, "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "the disk is full (" in err and "free some space, or choose another --out" in err
    tiny = checkpoint_bytes(UNet.from_preset("tiny", channels=1, image_size=8))
    monkeypatch.setattr(fit_module, "free_bytes", lambda path: 3 * tiny)
    assert main(["train", *QUICK, "--steps", "1", "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "disk: " in out and "fewer than --keep 10 more fit" in out


def test_resume_removes_a_state_file_without_its_checkpoint_and_says_so(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *QUICK, "--steps", "1", "--sample-every", "0", "--out", str(run)]) == 0
    orphan = run / "checkpoints" / "step-000000009.state.pt"
    orphan.write_bytes(b"a state whose checkpoint was never written")
    assert main(["train", *QUICK, "--steps", "2", "--sample-every", "0", "--out", str(run), "--resume"]) == 0
    assert "removed " in capsys.readouterr().out and not orphan.exists()
    assert [s for s, _ in list_checkpoints(run)] == [1, 2]


# ---------------------------------------------------------------------------- one writer


def _holder(run: pathlib.Path, *extra: str) -> subprocess.Popen:
    """A `ddpm train` that holds ``run`` for a while (a long run on the digits), once it has written a checkpoint."""
    args = ["train", *QUICK, "--steps", "100000", "--minutes", "1", "--sample-every", "0", "--out", str(run)]
    proc = subprocess.Popen([sys.executable, "-m", "ddpm", *args, *extra], env=subprocess_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not list_checkpoints(run) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert list_checkpoints(run), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    return proc


def _second(run: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["train", *QUICK, "--steps", "3", "--out", str(run), *extra]
    return subprocess.run([sys.executable, "-m", "ddpm", *args], env=subprocess_env(), capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.mark.slow
def test_a_second_train_on_a_run_directory_is_refused_and_a_killed_holder_leaves_no_lock(tmp_path):
    run = tmp_path / "r"
    holder = _holder(run)
    try:
        for extra in ([], ["--resume"]):
            r = _second(run, *extra)
            assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
            # A new run on a directory that holds checkpoints is refused as before; a resume names the holder.
            if extra:
                assert f"is in use by another ddpm (process {holder.pid} on " in r.stderr, r.stderr
            else:
                assert "already holds a run" in r.stderr, r.stderr
        holder.kill()  # kill -9: the kernel drops the lock with the process
        holder.wait()
        steps = str(list_checkpoints(run)[-1][0] + 1)
        r = subprocess.run([sys.executable, "-m", "ddpm", "train", *QUICK, "--steps", steps, "--out", str(run),
                            "--resume"], env=subprocess_env(), capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0, r.stderr
    finally:
        holder.kill()


@pytest.mark.slow
def test_two_new_runs_on_one_directory_before_any_checkpoint(tmp_path):
    """The second starts while the first has written nothing yet: refused, naming the first."""
    run = tmp_path / "r"
    args = ["train", *QUICK, "--steps", "100000", "--minutes", "1", "--checkpoint-every", "0", "--out", str(run)]
    first = subprocess.Popen([sys.executable, "-m", "ddpm", *args], env=subprocess_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert first.stdout.readline().startswith("network: ")  # past the lock
        r = _second(run)
        assert r.returncode == 2 and f"is in use by another ddpm (process {first.pid} on " in r.stderr, r.stderr
    finally:
        first.kill()


@pytest.mark.slow
def test_under_torchrun_rank_0_holds_the_lock(tmp_path):
    run = tmp_path / "r"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ddpm", "train",
           *QUICK, "--steps", "100000", "--minutes", "1", "--sample-every", "0", "--out", str(run)]  # fmt: skip
    job = subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not list_checkpoints(run) and time.monotonic() < deadline and job.poll() is None:
            time.sleep(0.3)
        assert list_checkpoints(run), job.stderr.read() if job.poll() is not None else "no checkpoint in time"
        r = _second(run, "--resume")
        assert r.returncode == 2 and "is in use by another ddpm (process " in r.stderr, r.stderr
    finally:
        job.kill()
        job.wait()
