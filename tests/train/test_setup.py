"""Setting a run up: the run directory's checks and the resume checks."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from ddpm.errors import ParameterError, UserError
from ddpm.train import TrainConfig
from ddpm.train.setup import check_compatible, prepare_run_dir


def test_resume_reads_a_setting_the_checkpoint_predates_as_its_default(tmp_path):
    """A checkpoint written before a flag existed ran with the flag's default of the time (0.999 and no
    stratified t for the two defaults that changed since): resuming it with those values is allowed, and with
    today's defaults refused, naming the difference."""
    from ddpm.train.setup import check_compatible

    old = TrainConfig(out=str(tmp_path), adam_beta2=0.999, t_stratified=False)
    saved = {k: v for k, v in asdict(old).items() if k not in ("adam_beta2", "t_stratified", "scale_shift_norm")}
    check_compatible(saved, old, 1, 1, tmp_path / "step-000000002.safetensors")
    # The library names the setting; the CLI shows it as its flag (--adam-beta2).
    with pytest.raises(ParameterError, match="adam_beta2 0.999 in the checkpoint, 0.99 now") as e:
        check_compatible(saved, TrainConfig(out=str(tmp_path)), 1, 1, tmp_path / "x")
    assert "--adam-beta2 0.999 in the checkpoint" in e.value.render(lambda n: "--" + n.replace("_", "-"))
    with pytest.raises(UserError, match="t_stratified False in the checkpoint, True now"):
        check_compatible(saved, TrainConfig(out=str(tmp_path), adam_beta2=0.999), 1, 1, tmp_path / "x")
    # A flag whose default never changed reads as today's default.
    check_compatible({k: v for k, v in saved.items() if k != "laplace_scale"}, old, 1, 1, tmp_path / "x")


def test_the_run_directory_is_made_once_and_never_taken_over(tmp_path):
    out = tmp_path / "run"
    prepare_run_dir(out, resume=False)
    assert (out / "checkpoints").is_dir() and (out / "samples").is_dir()
    (out / "checkpoints" / ".step-000000002.safetensors.tmp-123").write_bytes(b"half")  # a killed write
    with pytest.raises(ParameterError, match="nothing to resume") as e:
        prepare_run_dir(out, resume=True)
    assert "drop --resume" in e.value.render(lambda n: "--" + n)
    (out / "checkpoints" / "step-000000002.safetensors").write_bytes(b"x")
    with pytest.raises(ParameterError, match=r"already holds a run \(1 checkpoints, latest step 2\)"):
        prepare_run_dir(out, resume=False)
    prepare_run_dir(out, resume=True)
    assert not list((out / "checkpoints").glob(".*tmp*"))  # the leftover of the killed write is gone
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ParameterError, match="is a file, not a directory"):
        prepare_run_dir(tmp_path / "file", resume=False)


def test_a_different_process_count_is_refused_on_resume(tmp_path):
    cfg = TrainConfig(out=str(tmp_path))
    check_compatible(cfg.record(), cfg, 2, 2, tmp_path / "x")
    with pytest.raises(UserError, match="2 processes in the checkpoint, 1 now"):
        check_compatible(cfg.record(), cfg, 1, 2, tmp_path / "x")
