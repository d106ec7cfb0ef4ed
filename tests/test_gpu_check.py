"""benchmarks/gpu_check.sh --dry-run: every stage of the GPU check, on the CPU at tiny sizes, so that the script
works the day a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out), "--work", str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (out / "gpu_check.log").read_text()
    result = json.loads((out / "gpu_check.json").read_text())
    stages = result["stages"]
    assert list(stages) == [
        "env",
        "install",
        "data",
        "resume",
        "cpu_sample",
        "torchrun",
        "speed",
        "sample",
        "fd",
        "tests",
        "compile",
        "memory",
    ]
    assert {k for k, v in stages.items() if v["status"] == "skipped"} == {"install", "tests", "compile"}
    assert all(v["status"] == "ok" for k, v in stages.items() if k not in ("install", "tests", "compile")), stages
    assert stages["resume"]["bit_exact"] is True
    assert stages["cpu_sample"]["images"] == 8
    assert stages["torchrun"]["process_group"]["backend"] == "gloo" and stages["torchrun"]["world_size"] == 1
    for preset in ("tiny-32", "tiny-64"):
        row = stages["speed"][preset]
        assert row["images_per_s"] > 0 and row["forward_gflops_per_image"] > 0
    assert stages["sample"]["images"] == 20
    assert stages["fd"]["eval"]["metrics"]["fd"] > 0
    assert len(stages["memory"]["rows"]) == 2
    assert "=== speed" in log and "wrote" in log
