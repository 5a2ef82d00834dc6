import pytest
import torch


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """The debug models are too small to gain from intra-op threads, and on a busy machine the
    threads' spin-waiting makes them many times slower; run them on one, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
