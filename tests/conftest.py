"""Shared test set-up."""

import pytest
import torch


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
TRAIN = ["train", "--data", "digits", "--preset", "tiny", "--steps", "12", "--batch-size", "16",
         "--sample-every", "6", "--sample-steps", "4", "--num-samples", "4", "--checkpoint-every", "6",
         "--warmup", "2", "--log-every", "4", "--quiet"]


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A run directory holding that model; tests read it and must not write into it."""
    from ddpm.cli import main

    out = tmp_path_factory.mktemp("run")
    assert main([*TRAIN, "--out", str(out)]) == 0
    return out
