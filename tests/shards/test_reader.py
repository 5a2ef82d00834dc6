from collections import Counter
from itertools import islice

import pytest
import torch

from hubbub.shards.reader import ShardDataset, ShardLoader, collate_mixtures
from hubbub.testing import make_dummy_corpus

SAMPLE_RATE_HZ = 8000
# More workers than the 2 CI cores on purpose: the order must not depend on the worker count.
many_workers = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # 14 train samples in shards of 4, 4, 4, 2: shards do not divide evenly over 2 ranks x 2 workers.
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": 14, "valid": 3},
                             samples_per_shard=4, num_speakers=[1, 2, 3], num_mics=2, seconds=0.5,
                             sample_rate_hz=SAMPLE_RATE_HZ)


def all_keys(split, n):
    return [f"{split}_{i:08d}" for i in range(n)]


def loader_keys(loader):
    return [k for batch in loader for k in batch["keys"]]


def test_each_sample_once_per_epoch_across_ranks_and_workers(corpus):
    orders = []
    for epoch in (0, 1):
        per_rank = []
        for rank in (0, 1):
            ds = ShardDataset(corpus, rank=rank, world_size=2, batch_size=2, shuffle_buffer=5, epoch=epoch)
            per_rank.append(loader_keys(ShardLoader(ds, num_workers=2)))
        assert [len(k) for k in per_rank] == [7, 7]
        assert sorted(per_rank[0] + per_rank[1]) == all_keys("train", 14)
        orders.append(per_rank)
    assert orders[0] != orders[1]


@many_workers
def test_order_does_not_depend_on_workers(corpus):
    ds = ShardDataset(corpus, rank=1, world_size=2, batch_size=2, shuffle_buffer=3, epoch=4)
    expected = ds.rank_sequence()
    assert [s["key"] for s in ds] == expected
    for num_workers in (1, 2, 3):
        assert loader_keys(ShardLoader(ds, num_workers=num_workers)) == expected


def test_seed_and_epoch_fix_the_order(corpus):
    def order(seed, epoch):
        return ShardDataset(corpus, seed=seed, epoch=epoch).rank_sequence()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == sorted(order(1, 0)) == all_keys("train", 14)
    assert ShardDataset(corpus, shuffle=False).rank_sequence() == all_keys("train", 14)


@pytest.mark.parametrize("drop_last", [False, True])
def test_uneven_split_gives_every_rank_the_same_count(corpus, drop_last):
    # 3 valid samples over 2 ranks: drop one, or repeat one.
    per_rank = [[s["key"] for s in ShardDataset(corpus, "valid", rank=r, world_size=2, drop_last=drop_last)]
                for r in (0, 1)]
    seen = Counter(per_rank[0] + per_rank[1])
    if drop_last:
        assert [len(k) for k in per_rank] == [1, 1] and len(seen) == 2 and max(seen.values()) == 1
    else:
        assert [len(k) for k in per_rank] == [2, 2] and set(seen) == set(all_keys("valid", 3))


@pytest.mark.parametrize("consumed", [0, 3, 7, 14])
def test_resume_in_process(corpus, consumed):
    ds = ShardDataset(corpus, epoch=2, shuffle_buffer=5)
    full = ds.rank_sequence()
    assert [s["key"] for s in islice(iter(ds), consumed)] == full[:consumed]
    state = ds.state_dict()
    assert state == {"epoch": 2, "consumed": consumed}
    resumed = ShardDataset(corpus, shuffle_buffer=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a resumed training loop sets the epoch again: the position stays
    assert [s["key"] for s in resumed] == full[consumed:]
    resumed.set_epoch(3)
    assert [s["key"] for s in resumed] == ds.rank_sequence(3)


@many_workers
@pytest.mark.parametrize("resume_workers", [2, 3])
def test_resume_with_workers(corpus, resume_workers):
    def make():
        return ShardDataset(corpus, rank=0, world_size=2, batch_size=2, shuffle_buffer=4, epoch=1)

    loader = ShardLoader(make(), num_workers=2)
    full = loader.dataset.rank_sequence()
    assert len(loader) == 4
    seen = []
    for batch in islice(loader, 3):
        seen += batch["keys"]
    state = loader.state_dict()
    assert state == {"epoch": 1, "consumed": 6} and seen == full[:6]

    resumed = ShardLoader(make(), num_workers=resume_workers)
    resumed.load_state_dict(state)
    assert len(resumed) == 1
    assert loader_keys(resumed) == full[6:]
    assert resumed.state_dict() == {"epoch": 1, "consumed": 7}


def test_crops_have_the_length_asked_and_are_deterministic(corpus):
    whole = {s["key"]: s for s in ShardDataset(corpus, mic=None, targets=("reverberant", "dry"), shuffle=False)}

    def crops(crop_s, epoch=0):
        return list(ShardDataset(corpus, mic=None, targets=("reverberant", "dry"), crop_s=crop_s, epoch=epoch))

    first = crops(0.25)
    for item, again in zip(first, crops(0.25)):
        assert item["key"] == again["key"] and item["start_sample"] == again["start_sample"]
        assert torch.equal(item["mix"], again["mix"])
        start, n = item["start_sample"], 2000
        ref = whole[item["key"]]
        assert item["mix"].shape == (2, n)
        assert torch.equal(item["mix"], ref["mix"][:, start:start + n])
        assert torch.equal(item["sources"]["reverberant"], ref["sources"]["reverberant"][..., start:start + n])
        assert torch.equal(item["sources"]["dry"], ref["sources"]["dry"][..., start:start + n])
    starts = {s["key"]: s["start_sample"] for s in first}
    assert starts != {s["key"]: s["start_sample"] for s in crops(0.25, epoch=1)}
    assert len(set(starts.values())) > 1

    longer = crops(0.75)[0]  # samples are 0.5 s: zero-padded to the crop
    assert longer["start_sample"] == 0 and longer["mix"].shape == (2, 6000)
    assert torch.equal(longer["mix"][:, :4000], whole[longer["key"]]["mix"]) and not longer["mix"][:, 4000:].any()


def test_shapes_per_target_and_mic(corpus):
    ds = ShardDataset(corpus, targets=("reverberant", "dry", "rir"), extras=("noise.flac",), shuffle=False)
    item = next(iter(ds))  # train_00000000 has 1 speaker
    assert item["mix"].shape == (1, 4000) and item["mix"].dtype == torch.float32
    assert {t: tuple(x.shape) for t, x in item["sources"].items()} == {
        "reverberant": (1, 4000), "dry": (1, 4000), "rir": (1, 2, 64)}
    assert item["extras"]["noise.flac"].shape == (4000,)
    all_mics = next(iter(ShardDataset(corpus, targets=("reverberant",), mic=None, shuffle=False)))
    assert all_mics["mix"].shape == (2, 4000) and all_mics["sources"]["reverberant"].shape == (1, 2, 4000)
    assert torch.equal(all_mics["mix"][0], item["mix"][0])
    # The format's identity survives reading: mix == sum of reverberant images + noise.
    mix, rev, noise = item["mix"][0], item["sources"]["reverberant"].sum(0), item["extras"]["noise.flac"]
    assert torch.allclose(mix, rev + noise, atol=1e-6)


def test_collate_pads_speakers_with_zero_sources(corpus):
    items = list(islice(iter(ShardDataset(corpus, shuffle=False, targets=("reverberant", "rir"))), 3))
    assert [i["num_sources"] for i in items] == [1, 2, 3]
    batch = collate_mixtures(items)
    assert batch["keys"] == all_keys("train", 3)
    assert batch["mix"].shape == (3, 1, 4000)
    assert batch["sources"]["reverberant"].shape == (3, 3, 4000)
    assert batch["sources"]["rir"].shape == (3, 3, 2, 64)
    assert batch["num_sources"].tolist() == [1, 2, 3]
    assert batch["source_mask"].tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    for b, item in enumerate(items):
        n = item["num_sources"]
        assert torch.equal(batch["sources"]["reverberant"][b, :n], item["sources"]["reverberant"])
        assert not batch["sources"]["reverberant"][b, n:].any()
        assert torch.equal(batch["mix"][b], item["mix"])
    assert len(batch["meta"]) == 3 and batch["meta"][2]["num_speakers"] == 3


def test_collate_pads_lengths(corpus):
    short, long_ = (next(iter(ShardDataset(corpus, crop_s=c, shuffle=False))) for c in (0.1, 0.2))
    batch = collate_mixtures([short, long_])
    assert batch["mix"].shape == (2, 1, 1600) and batch["num_samples"].tolist() == [800, 1600]
    assert not batch["mix"][0, :, 800:].any()


def test_max_sources(corpus):
    items = list(islice(iter(ShardDataset(corpus, shuffle=False, max_sources=3)), 3))
    assert [tuple(i["sources"]["reverberant"].shape) for i in items] == [(3, 4000)] * 3
    assert [i["num_sources"] for i in items] == [1, 2, 3]
    assert not items[0]["sources"]["reverberant"][1:].any()
    with pytest.raises(ValueError, match="max_sources=2"):
        list(ShardDataset(corpus, shuffle=False, max_sources=2))


def test_rank_defaults_to_torch_distributed(corpus, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    ds = ShardDataset(corpus)
    assert (ds.rank, ds.world_size) == (1, 2)
    assert ds.rank_sequence() == ShardDataset(corpus, rank=1, world_size=2).rank_sequence()


def test_bad_arguments(corpus):
    with pytest.raises(ValueError, match="noise"):
        ShardDataset(corpus, targets=("noise",))
    with pytest.raises(ValueError, match="rank"):
        ShardDataset(corpus, rank=2, world_size=2)
    with pytest.raises(ValueError, match="nosuch"):
        ShardDataset(corpus, "nosuch")
    with pytest.raises(KeyError, match="lips"):
        next(iter(ShardDataset(corpus, targets=("lips",))))
