"""Shared test set-up."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from ddpm.checkpoint import load_checkpoint, load_training_state, state_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def session_cache(tmp_path_factory):
    """A cache folder of the suite's own ($DDPM_CACHE: reference features, FeatureNets, the precision and memory of
    the runs' networks), so the tests neither read nor fill the user's."""
    before = os.environ.get("DDPM_CACHE")
    os.environ["DDPM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("DDPM_CACHE", None)
    else:
        os.environ["DDPM_CACHE"] = before


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """One intra-op thread for the whole suite.

    The tensors in these tests are small, and on a 2-core machine shared with other work PyTorch's worker
    threads wait on each other: the same tests ran 20x slower with 2 threads under load. Restored at the end.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# A tiny model trained for 12 steps on digits (checkpoints and grids at steps 6 and 12), shared by the CLI,
# sample and edit tests: training it once per session instead of once per file.
TRAIN = [
    "train",
    "--data",
    "digits",
    "--preset",
    "tiny",
    "--steps",
    "12",
    "--batch-size",
    "16",
    "--sample-every",
    "6",
    "--sample-steps",
    "4",
    "--num-samples",
    "4",
    "--checkpoint-every",
    "6",
    "--warmup",
    "2",
    "--log-every",
    "4",
    "--quiet",
]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A run directory holding that model; tests read it and must not write into it."""
    from ddpm.cli import main

    out = tmp_path_factory.mktemp("run")
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out


# The training flags of the resume and multi-process tests (tests/train).
BASE = [
    "--data",
    "digits",
    "--preset",
    "tiny",
    "--batch-size",
    "16",
    "--warmup",
    "3",
    "--sample-every",
    "0",
    "--sample-steps",
    "2",
    "--num-samples",
    "2",
    "--log-every",
    "2",
    "--quiet",
]


def subprocess_env() -> dict[str, str]:
    """The environment of a child ddpm process: this checkout's src first, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def run_weights(run: Path) -> dict[str, torch.Tensor]:
    """Every tensor a resume must restore: model, EMA and AdamW moments of a run's latest checkpoint."""
    ck = load_checkpoint(run)
    out = {f"model.{k}": v for k, v in ck.model.items()}
    out.update({f"ema.{k}": v for k, v in ck.ema.items()})
    state = load_training_state(state_path(ck.path))["optimizer"]["state"]
    for i, s in state.items():
        out[f"adam.{i}.exp_avg"] = s["exp_avg"]
        out[f"adam.{i}.exp_avg_sq"] = s["exp_avg_sq"]
    return out


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


_TORCHRUN_SCRIPT = """
import json, os, sys
from safetensors.torch import save_file
from ddpm.train import TrainConfig, train
out = sys.argv[1]
r = train(TrainConfig(out=out, **json.loads(sys.argv[2])))
save_file({k: v.contiguous() for k, v in r.model.state_dict().items()}, f"{out}/rank{os.environ['RANK']}.safetensors")
"""


def assert_torchrun_is_one_process(tmp_path: Path, **settings: Any) -> None:
    """Two ``torchrun`` ranks of TrainConfig(**settings, batch_size=B) end with identical weights, equal (to float
    rounding) to one process's with batch 2B: the guarantee for a training path that draws more than the basics."""
    from safetensors.torch import load_file

    from ddpm.train import TrainConfig, train

    batch = settings.pop("batch_size")
    script = tmp_path / "ddp.py"
    script.write_text(_TORCHRUN_SCRIPT)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path / "ddp"), json.dumps({**settings, "batch_size": batch})],
                       capture_output=True, text=True, env=subprocess_env(), timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = load_file(str(tmp_path / "ddp" / "rank0.safetensors"))
    assert_identical(w0, load_file(str(tmp_path / "ddp" / "rank1.safetensors")))
    one = train(TrainConfig(out=str(tmp_path / "one"), **settings, batch_size=2 * batch)).model.state_dict()
    assert max((one[k] - w0[k]).abs().max().item() for k in one) < 1e-4
