import pytest
import torch

from hubbub.shards.format import decode_audio
from hubbub.shards.reader import ShardDataset
from hubbub.testing import make_dummy_corpus

datasets = pytest.importorskip("datasets")

from hubbub.shards.hf import load_hf_dataset  # noqa: E402  (needs datasets)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """No network and no shared cache: the packaged webdataset builder must work from disk alone."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    return tmp_path / "hf-cache"


def test_hf_rows_decode_to_what_the_reader_gives(tmp_path, offline):
    corpus = make_dummy_corpus(tmp_path / "corpus", splits={"train": 6}, samples_per_shard=4,
                               num_speakers=[1, 2, 3], num_mics=2, seconds=0.25)
    reader = {s["key"]: s for s in ShardDataset(corpus, mic=None, shuffle=False, targets=("reverberant", "rir"))}
    ds = load_hf_dataset(corpus, "train", cache_dir=offline)
    assert len(ds) == 6 and sorted(ds["__key__"]) == sorted(reader)
    for row in ds:
        item = reader[row["__key__"]]
        mix, sample_rate_hz = decode_audio(row["mix.flac"])
        assert sample_rate_hz == 8000
        assert torch.equal(torch.from_numpy(mix), item["mix"])
        # datasets.Json stores floats with 10 decimals (pandas' ujson): equal up to that rounding.
        meta = row["json"]
        assert (meta["key"], meta["num_speakers"], meta["targets"]) == (item["key"], item["num_sources"],
                                                                       item["meta"]["targets"])
        assert meta["room"]["rt60_s_measured"] == pytest.approx(item["meta"]["room"]["rt60_s_measured"], abs=1e-9)
        for i in range(3):
            if i < item["num_sources"]:
                rev = torch.from_numpy(decode_audio(row[f"s{i}.reverberant.flac"])[0])
                assert torch.equal(rev, item["sources"]["reverberant"][i])
                assert torch.equal(torch.tensor(row[f"s{i}.rir.npy"]), item["sources"]["rir"][i])
            else:  # members a mixture with fewer speakers lacks
                assert row[f"s{i}.reverberant.flac"] is None
    streamed = load_hf_dataset(corpus, "train", streaming=True)
    assert [r["__key__"] for r in streamed] == ds["__key__"][:]
