"""Shared test settings: deterministic, single-process torch."""

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny-tensor tests (faster, and immune to a busy
    machine); the previous count is restored. Use: ``pytestmark = pytest.mark.usefixtures(...)``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
