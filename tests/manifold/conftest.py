import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The method tests run many tiny torch ops; intra-op threads only add contention on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
