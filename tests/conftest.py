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
