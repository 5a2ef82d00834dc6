import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session indexes into its own cache: no state leaks from the user's ~/.cache."""
    monkeypatch.setenv("HUBBUB_CACHE", str(tmp_path_factory.getbasetemp() / "hubbub-cache"))
