import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session indexes into its own cache: no state leaks from the user's ~/.cache."""
    monkeypatch.setenv("HUBBUB_CACHE", str(tmp_path_factory.getbasetemp() / "hubbub-cache"))


@pytest.fixture(autouse=True)
def _one_intra_op_thread():
    """Test models are too small to gain from intra-op threads, and on a busy 2-core machine the
    threads' spin-waiting makes them many times slower; run on one, then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def _s3_server():
    from hubbub.testing import s3_server

    with s3_server() as bucket:
        yield bucket


@pytest.fixture
def s3_bucket(_s3_server, request):
    """``s3://hubbub-test/<test name>``: a fresh prefix of the session's S3 server (moto, 127.0.0.1)."""
    return f"{_s3_server}/{request.node.name.replace('[', '-').replace(']', '')}"
