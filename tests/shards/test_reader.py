import math
import os
from collections import Counter
from itertools import islice

import pytest
import torch

from hubbub.shards import reader
from hubbub.shards.format import decode_audio
from hubbub.shards.reader import SampleError, ShardDataset, ShardLoader, collate_mixtures
from hubbub.testing import make_dummy_corpus

SAMPLE_RATE_HZ = 8000
# More workers than the 2 CI cores on purpose: the order must not depend on the worker count.
many_workers = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # 16 train samples in shards of 5, 5, 5, 1: no split of ranks x workers divides the shards evenly,
    # while 16 samples fill global batches of 2, 4 and 8 (and not of 3, 6 or 12).
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": 16, "valid": 3},
                             samples_per_shard=5, num_speakers=[1, 2, 3], num_mics=2, seconds=0.5,
                             sample_rate_hz=SAMPLE_RATE_HZ)


def all_keys(split, n):
    return [f"{split}_{i:08d}" for i in range(n)]


def loader_keys(loader):
    return [k for batch in loader for k in batch["keys"]]


def rank_batches(corpus, world_size, batch_size, num_workers=0, state=None, **kwargs):
    """For each rank, the keys of each batch its ShardLoader yields."""
    per_rank = []
    for rank in range(world_size):
        ds = ShardDataset(corpus, rank=rank, world_size=world_size, batch_size=batch_size, **kwargs)
        loader = ShardLoader(ds, num_workers=num_workers)
        if state is not None:
            loader.load_state_dict(state)
        per_rank.append([batch["keys"] for batch in loader])
    return per_rank


def global_batches(per_rank):
    """Rank batches joined into global batches: batch g of every rank, in rank order."""
    assert len({len(batches) for batches in per_rank}) == 1, "ranks yield different batch counts"
    return [[k for batch in step for k in batch] for step in zip(*per_rank)]


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_global_batches_do_not_depend_on_world_size(corpus, world_size, num_workers, drop_last):
    # W ranks x batch 3 must see the batches of 1 rank x batch 3W: what lets a distributed
    # trainer reproduce a single-process one. 16 samples leave the last global batch incomplete.
    kwargs = dict(shuffle_buffer=5, epoch=3, drop_last=drop_last)
    reference = rank_batches(corpus, 1, 3 * world_size, **kwargs)[0]
    assert global_batches(rank_batches(corpus, world_size, 3, num_workers, **kwargs)) == reference

    size = 3 * world_size
    assert len(reference) == (16 // size if drop_last else math.ceil(16 / size))
    assert all(len(batch) == size for batch in reference)
    epoch = ShardDataset(corpus, **kwargs).global_sequence()  # batch 1: the unpadded sequence
    assert sorted(epoch) == all_keys("train", 16)
    keys = [k for batch in reference for k in batch]
    if drop_last:
        assert keys == epoch[:len(keys)]
    else:  # padded by repeating the head
        assert keys == epoch + epoch[:len(keys) - 16]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_each_sample_once_per_epoch_across_ranks_and_workers(corpus, world_size):
    orders = []
    for epoch in (0, 1):
        per_rank = rank_batches(corpus, world_size, 2, num_workers=2, shuffle_buffer=5, epoch=epoch)
        keys = [[k for batch in batches for k in batch] for batches in per_rank]
        assert [len(k) for k in keys] == [16 // world_size] * world_size
        assert sorted(k for rank in keys for k in rank) == all_keys("train", 16)
        orders.append(keys)
    assert orders[0] != orders[1]


@many_workers
def test_order_does_not_depend_on_workers(corpus):
    ds = ShardDataset(corpus, rank=1, world_size=2, batch_size=2, shuffle_buffer=3, epoch=4)
    expected = ds.rank_sequence()
    glob = ds.global_sequence()
    assert expected == [k for g in range(0, len(glob), 4) for k in glob[g + 2:g + 4]]
    assert [s["key"] for s in ds] == expected
    for num_workers in (1, 2, 3):
        assert loader_keys(ShardLoader(ds, num_workers=num_workers)) == expected


def test_seed_and_epoch_fix_the_order(corpus):
    def order(seed, epoch, **kwargs):
        return ShardDataset(corpus, seed=seed, epoch=epoch, shuffle_buffer=5, **kwargs).global_sequence()

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == sorted(order(1, 0)) == all_keys("train", 16)
    # Neither the rank, the world size nor the batch size changes the epoch's sequence.
    for world_size, batch_size in [(2, 1), (4, 1), (2, 2), (4, 4), (3, 5)]:
        assert order(0, 1, rank=world_size - 1, world_size=world_size, batch_size=batch_size)[:16] == order(0, 1)
    assert ShardDataset(corpus, shuffle=False).rank_sequence() == all_keys("train", 16)


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


@pytest.mark.parametrize("consumed", [0, 3, 7, 16])
def test_resume_in_process(corpus, consumed):
    ds = ShardDataset(corpus, epoch=2, shuffle_buffer=5)
    full = ds.rank_sequence()
    assert [s["key"] for s in islice(iter(ds), consumed)] == full[:consumed]
    state = ds.state_dict()
    assert state == {"epoch": 2, "consumed": consumed, "global_consumed": consumed}
    resumed = ShardDataset(corpus, shuffle_buffer=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a resumed training loop sets the epoch again: the position stays
    assert [s["key"] for s in resumed] == full[consumed:]
    resumed.set_epoch(3)
    assert [s["key"] for s in resumed] == ds.rank_sequence(3)


def test_resume_in_process_inside_a_batch(corpus):
    def make():
        return ShardDataset(corpus, rank=1, world_size=2, batch_size=2, epoch=2, shuffle_buffer=5)

    ds = make()
    full = ds.rank_sequence()
    assert [s["key"] for s in islice(iter(ds), 3)] == full[:3]
    # Mid-batch this rank's position is no prefix of the global sequence: no global_consumed.
    assert ds.state_dict() == {"epoch": 2, "consumed": 3}
    resumed = make()
    resumed.load_state_dict(ds.state_dict())
    assert [s["key"] for s in resumed] == full[3:]


@many_workers
@pytest.mark.parametrize("resume_workers", [0, 1, 3])
@pytest.mark.parametrize("world_size", [1, 2])
def test_resume_with_workers(corpus, world_size, resume_workers):
    def make():
        return ShardDataset(corpus, rank=world_size - 1, world_size=world_size, batch_size=2,
                            shuffle_buffer=4, epoch=1)

    loader = ShardLoader(make(), num_workers=2)
    full = loader.dataset.rank_sequence()
    num_batches = 8 // world_size
    assert len(loader) == num_batches and len(full) == 16 // world_size
    seen = []
    for batch in islice(loader, 3):
        seen += batch["keys"]
    state = loader.state_dict()
    assert state == {"epoch": 1, "consumed": 6, "global_consumed": 6 * world_size} and seen == full[:6]

    resumed = ShardLoader(make(), num_workers=resume_workers)
    resumed.load_state_dict(state)
    assert len(resumed) == num_batches - 3
    assert loader_keys(resumed) == full[6:]
    assert resumed.state_dict()["consumed"] == len(full)


@pytest.mark.parametrize("world_size, batch_size", [(1, 4), (4, 1), (1, 2), (4, 2), (2, 4)])
def test_resume_with_another_world_size(corpus, world_size, batch_size):
    kwargs = dict(shuffle_buffer=5, epoch=1)
    full = ShardDataset(corpus, **kwargs).global_sequence()
    states = []
    for rank in (0, 1):  # 2 ranks x batch 2 stop after 2 global batches
        loader = ShardLoader(ShardDataset(corpus, rank=rank, world_size=2, batch_size=2, **kwargs))
        assert sum(len(batch["keys"]) for batch in islice(loader, 2)) == 4
        states.append(loader.state_dict())
    assert states == [{"epoch": 1, "consumed": 4, "global_consumed": 8}] * 2
    rest = global_batches(rank_batches(corpus, world_size, batch_size, state=states[0], **kwargs))
    assert [k for batch in rest for k in batch] == full[8:]


def test_resume_with_another_world_size_needs_a_global_batch_boundary(corpus):
    ds = ShardDataset(corpus, world_size=3, batch_size=1)
    with pytest.raises(ValueError, match="global_consumed=8"):
        ds.load_state_dict({"epoch": 0, "consumed": 4, "global_consumed": 8})
    # A finished epoch stays finished, although the new run would pad it further.
    ds = ShardDataset(corpus, rank=3, world_size=4, batch_size=3)
    ds.load_state_dict({"epoch": 0, "consumed": 16, "global_consumed": 16})
    assert ds.start == ds.num_samples == 6 and list(ds) == []


def test_skipped_samples_are_not_decoded(corpus, monkeypatch):
    # Every rank streams every shard: what it skips must cost no decoding.
    decoded = []

    def counting_decode_audio(data):
        decoded.append(len(data))
        return decode_audio(data)

    monkeypatch.setattr(reader, "decode_audio", counting_decode_audio)
    items = list(ShardDataset(corpus, rank=3, world_size=4, batch_size=2))
    assert len(items) == 4
    assert len(decoded) == sum(1 + item["num_sources"] for item in items)  # mix + sources


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
    with pytest.raises(SampleError, match=r"no member s0\.lips\.\* \(the corpus stores targets"):
        next(iter(ShardDataset(corpus, targets=("lips",))))


@pytest.mark.parametrize("world_size, batch_size, workers", [(1, 4, 1), (2, 2, 2), (3, 1, 2)])
def test_the_sampler_splits_the_global_sequence_from_counts_alone(world_size, batch_size, workers):
    """ShardSampler needs only each shard's sample count (no corpus, no I/O): its ranks' and
    workers' shares put together are the global sequence, batch by batch."""
    from hubbub.shards.reader import ShardSampler

    sizes = [5, 4, 7, 2]
    samplers = [ShardSampler(sizes, seed=3, shuffle_buffer=6, rank=r, world_size=world_size, batch_size=batch_size)
                for r in range(world_size)]
    full = samplers[0].global_ordinals(0)
    assert sorted(set(full.tolist())) == list(range(sum(sizes)))
    for step in range(len(full) // (batch_size * world_size)):
        batch = [o for s in samplers for o in s.rank_ordinals(0)[step * batch_size:(step + 1) * batch_size]]
        assert batch == full[step * batch_size * world_size:(step + 1) * batch_size * world_size].tolist()
    for s in samplers:
        shares = [s.worker_share(w, workers) for w in range(workers)]
        positions = sorted(p for pos, _ in shares for p in pos.tolist())
        assert positions == list(range(s.num_samples))
    assert ShardSampler(sizes, seed=3, epoch=1).global_ordinals(1).tolist() != full.tolist()


def test_a_damaged_members_table_says_how_to_rebuild_it(tmp_path):
    import numpy as np

    from hubbub import storage
    from hubbub.shards.writer import index_members
    from hubbub.testing import make_dummy_corpus

    corpus = make_dummy_corpus(tmp_path / "c", splits={"train": 6}, samples_per_shard=3)
    table = corpus / "train.members.npz"
    with np.load(table, allow_pickle=False) as z:
        keys, shard = z["keys"], z["shard"]
    np.savez_compressed(table, keys=keys, shard=shard)  # the member columns lost
    with pytest.raises(storage.StorageError, match="hubbub shards index"):
        ShardDataset(corpus, "train")
    index_members(corpus)
    assert len(list(ShardDataset(corpus, "train", shuffle=False))) == 6


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_a_damaged_shard_fails_before_the_first_sample_naming_it(corpus, tmp_path, damage):
    import shutil

    from hubbub.storage import StorageError

    damaged = shutil.copytree(corpus, tmp_path / "damaged")
    tar = sorted(damaged.glob("train-*.tar"))[-1]
    if damage == "truncated":
        tar.write_bytes(tar.read_bytes()[:1024])
        expected = rf"{tar.name}: 1024 bytes, index.json says \d+: truncated or replaced"
    else:
        tar.unlink()
        expected = rf"{tar.name}: shard missing"
    with pytest.raises(StorageError, match=expected):
        ShardDataset(damaged, "train")
    ShardDataset(damaged, "valid")  # the other split is whole and reads


def assert_same_batch(got, want):
    assert got.keys() == want.keys() and got["keys"] == want["keys"] and got["meta"] == want["meta"]
    for field in ("mix", "num_sources", "source_mask", "num_samples", "start_sample"):
        assert got[field].dtype == want[field].dtype and torch.equal(got[field], want[field]), field
    for group in ("sources", "extras"):
        assert got[group].keys() == want[group].keys()
        for name, x in want[group].items():
            assert got[group][name].dtype == x.dtype and torch.equal(got[group][name], x), (group, name)


@pytest.fixture(scope="module")
def wav_corpora(tmp_path_factory):
    # 16-bit WAV is decoded straight into the batch; 24-bit WAV and FLAC go through arrays.
    return {f"{codec}{bits}": make_dummy_corpus(tmp_path_factory.mktemp(f"{codec}{bits}"), splits={"train": 7},
                                                samples_per_shard=3, num_speakers=[2, 1, 3], num_mics=2,
                                                seconds=0.5, codec=codec, bits=bits)
            for codec, bits in (("wav", 16), ("wav", 24))}


@pytest.mark.parametrize("settings", [
    dict(),
    dict(crop_s=0.2, mic=None, targets=("reverberant", "dry", "rir"), extras=("noise.flac",)),
    dict(crop_s=0.75, max_sources=3, targets=("early",)),  # longer than the samples: zero-padded
    dict(targets=(), extras=("noise.wav",), mic=1),
])
@pytest.mark.parametrize("stored", ["flac24", "wav16", "wav24"])
@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_batches_equal_collated_items(corpus, wav_corpora, stored, settings, num_workers):
    # ShardLoader builds batches from the decoded arrays (16-bit WAV decoded into the batch; in
    # workers, in shared memory): the same values as collate_mixtures of the dataset's items,
    # whatever is stored and asked.
    d = corpus if stored == "flac24" else wav_corpora[stored]
    kwargs = dict(batch_size=3, epoch=1, shuffle_buffer=4, **settings)
    items = list(ShardDataset(d, **kwargs))
    batches = list(ShardLoader(ShardDataset(d, **kwargs), num_workers=num_workers))
    assert len(batches) == math.ceil(len(items) / 3)
    for b, batch in enumerate(batches):
        assert_same_batch(batch, collate_mixtures(items[3 * b:3 * b + 3]))


def test_loader_batches_equal_collated_items_with_lips(tmp_path):
    d = make_dummy_corpus(tmp_path, splits={"train": 4}, num_speakers=[1, 2], seconds=0.4, lips=True,
                          codec="wav", bits=16)
    for settings in (dict(crop_s=0.24, roi_crop="random"), dict(roi_crop=None)):
        kwargs = dict(batch_size=2, targets=("reverberant", "lips"), **settings)
        items = list(ShardDataset(d, **kwargs))
        for b, batch in enumerate(ShardLoader(ShardDataset(d, **kwargs))):
            assert_same_batch(batch, collate_mixtures(items[2 * b:2 * b + 2]))


@pytest.mark.parametrize("private_api", [True, False])
def test_worker_batches_are_allocated_in_shared_memory(monkeypatch, private_api):
    # one storage per dtype, in shared memory from the start (torch's private _new_shared, or
    # the public share_memory_ where a torch lacks it)
    import numpy as np

    if not private_api:
        monkeypatch.setattr(torch.UntypedStorage, "_new_shared", None)
    specs = [((2, 1, 5), np.float32), ((2, 3, 5), np.float32), ((2, 4), np.int16)]
    out = reader._allocate(specs, shared=True)
    assert [tuple(t.shape) for t in out] == [s for s, _ in specs]
    assert [t.dtype for t in out] == [torch.float32, torch.float32, torch.int16]
    assert all(t.is_shared() for t in out)
    assert out[0].untyped_storage().data_ptr() == out[1].untyped_storage().data_ptr()
    out[0].fill_(0.0)
    out[1].fill_(1.0)  # the views do not overlap
    assert not out[0].any() and out[1].eq(1.0).all()


@pytest.mark.parametrize("num_workers", [0, 1])
def test_batch_memory_is_reused_only_once_the_consumer_dropped_the_batch(wav_corpora, num_workers):
    # Batches are built in reused memory (a few slots per process or worker): a batch the
    # consumer still holds is never written over, a dropped one's memory is taken again.
    d = wav_corpora["wav16"]
    kwargs = dict(batch_size=1, epoch=2, crop_s=0.2, targets=("reverberant",))
    items = list(ShardDataset(d, **kwargs))
    held, seen_ptrs, reused = [], [], False
    loader = ShardLoader(ShardDataset(d, **kwargs), num_workers=num_workers, prefetch_factor=num_workers or None)
    for b, batch in enumerate(loader):  # 7 batches; a worker has 4 slots with prefetch_factor=1
        ptr = batch["mix"].data_ptr()
        reused |= ptr in seen_ptrs
        seen_ptrs.append(ptr)
        if b % 2 == 0:
            held.append((b, batch))  # kept to the end: its memory must stay as it was
        assert_same_batch(batch, collate_mixtures(items[b:b + 1]))
        del batch
    assert reused
    assert len(held) == 4 and len({batch["mix"].data_ptr() for _, batch in held}) == 4
    for b, batch in held:
        assert_same_batch(batch, collate_mixtures(items[b:b + 1]))


def test_worker_slots_never_block_a_consumer_that_keeps_every_batch(wav_corpora):
    # with more batches held than there are slots, workers give each further batch memory of its own
    d = wav_corpora["wav16"]
    kwargs = dict(batch_size=1, crop_s=0.2)
    items = list(ShardDataset(d, **kwargs))
    batches = list(ShardLoader(ShardDataset(d, **kwargs), num_workers=1, prefetch_factor=1))
    assert len(batches) == 7 and len({b["mix"].data_ptr() for b in batches}) == 7
    for b, batch in enumerate(batches):
        assert_same_batch(batch, collate_mixtures(items[b:b + 1]))


def test_worker_slots_reach_spawned_workers(wav_corpora):
    d = wav_corpora["wav16"]
    kwargs = dict(batch_size=1, crop_s=0.2)
    items = list(ShardDataset(d, **kwargs))
    ptrs = []
    for b, batch in enumerate(ShardLoader(ShardDataset(d, **kwargs), num_workers=1, prefetch_factor=1,
                                          multiprocessing_context="spawn")):
        assert_same_batch(batch, collate_mixtures(items[b:b + 1]))
        ptrs.append(batch["mix"].data_ptr())
    assert len(set(ptrs)) < len(ptrs)  # the worker writes in the slots the main process handed back


@pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="posix_fadvise is Linux's")
def test_local_shards_are_read_ahead_by_the_kernel(corpus, monkeypatch):
    # Read in the loader's own thread; each window's ranges are hinted to the kernel
    # (WILLNEED) while the window before is read, so every range read past the first window
    # was hinted first.
    import threading

    events, real_pread, real_advise = [], os.pread, os.posix_fadvise

    def pread(fd, n, offset):
        events.append(("read", os.fstat(fd).st_ino, offset, n, threading.current_thread().name))
        return real_pread(fd, n, offset)

    def advise(fd, offset, n, advice):
        assert advice == os.POSIX_FADV_WILLNEED
        events.append(("hint", os.fstat(fd).st_ino, offset, n, threading.current_thread().name))
        return real_advise(fd, offset, n, advice)

    monkeypatch.setattr(os, "pread", pread)
    monkeypatch.setattr(os, "posix_fadvise", advise)
    ds = ShardDataset(corpus, batch_size=2, crop_s=0.2)
    ds.read_ahead = 3
    assert len(list(ShardLoader(ds))) == math.ceil(ds.num_samples / 2)
    assert {e[4] for e in events} == {threading.current_thread().name}  # no thread of its own
    hinted, hints_before, unhinted = set(), [], []
    for kind, *rng, _ in events:
        if kind == "hint":
            hinted.add(tuple(rng))
        else:
            hints_before.append(len(hinted))
            if tuple(rng) not in hinted:
                unhinted.append(len(hinted))
    # only the first window (read once the second window is hinted) is read without a hint
    assert len(hints_before) > 3 * 2 and unhinted and max(unhinted) == min(unhinted) == unhinted[0]
    assert len(unhinted) < len(hints_before) / 2


@pytest.mark.parametrize("batched", [True, False])
def test_persistent_workers_read_each_epoch_and_position_set_in_the_main_process(wav_corpora, batched):
    d = wav_corpora["wav16"]
    kwargs = dict(batch_size=2, crop_s=0.2, shuffle_buffer=4)
    collate = {} if batched else dict(collate_fn=lambda items: collate_mixtures(items))
    fresh = ShardLoader(ShardDataset(d, **kwargs), num_workers=2, **collate)
    kept = ShardLoader(ShardDataset(d, **kwargs), num_workers=2, persistent_workers=True, **collate)
    workers = set()
    for epoch, state in [(0, None), (1, None), (1, {"epoch": 1, "consumed": 2}), (3, None)]:
        for loader in (fresh, kept):
            loader.set_epoch(epoch)
            if state:
                loader.load_state_dict(state)
        want, got = list(fresh), list(kept)
        assert len(got) == len(want) == (4 if state is None else 3)
        for g, w in zip(got, want):
            assert_same_batch(g, w)
        workers.add(tuple(w.pid for w in kept._kept[1]._iterator._workers))
    assert len(workers) == 1  # the same two processes every epoch

    kept.dataset.crop_s = 0.3  # any other setting changed: new workers that know it
    got = list(kept)
    assert tuple(w.pid for w in kept._kept[1]._iterator._workers) not in workers
    want = list(ShardLoader(ShardDataset(d, **{**kwargs, "crop_s": 0.3}, epoch=3), num_workers=2, **collate))
    for g, w in zip(got, want):
        assert_same_batch(g, w)


def test_persistent_workers_reuse_their_slots_after_epochs_left_early(wav_corpora):
    # batches a worker made for an epoch the consumer left early never reach it; their slots
    # are handed back when the next epoch starts, so the workers still write in reused memory
    d = wav_corpora["wav16"]
    ds = ShardDataset(d, batch_size=1, crop_s=0.2)
    loader = ShardLoader(ds, num_workers=1, prefetch_factor=1, persistent_workers=True)
    for epoch in range(4):
        loader.set_epoch(epoch)
        for batch in loader:
            break  # one batch, the prefetched ones are left in flight
        del batch
    loader.set_epoch(4)
    assert sum(1 for _ in loader) == 7
    received = loader._kept[2]
    received.release()
    assert not received.flags.any()  # every slot free again: none lost to a batch that never came


def test_sample_json_with_nan_reads_as_pythons_json_writes_it():
    # orjson refuses NaN and infinities, which json.dumps (the writer) writes; members may be
    # views of a larger read
    import json

    meta = {"num_speakers": 2, "snr_db": float("nan"), "rt60_s": float("inf"), "nested": {"x": [1, 2.5]}}
    data = json.dumps(meta).encode()
    for given in (data, memoryview(b"xx" + data)[2:]):
        got = reader._loads(given)
        assert got.keys() == meta.keys() and got["nested"] == meta["nested"]
        assert math.isnan(got["snr_db"]) and got["rt60_s"] == math.inf
    with pytest.raises(ValueError):
        reader._loads(memoryview(b'{"num_speakers": '))
