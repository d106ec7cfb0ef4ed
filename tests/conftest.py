"""Shared test set-up."""

import os
from pathlib import Path

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
