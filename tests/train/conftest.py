import pytest

from hubbub.testing import make_dummy_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """16 train and 4 valid samples of 1 or 2 speakers, 1 s, in shards of 5."""
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": 16, "valid": 4},
                             samples_per_shard=5, num_speakers=[1, 2], seconds=1.0)
