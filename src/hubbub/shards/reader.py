"""The training reader: shards -> per-sample tensors, split over ranks and workers, resumable.

Typical use in a trainer (one process per rank)::

    ds = ShardDataset(corpus_dir, "train", targets=("reverberant",), crop_s=4.0, batch_size=8)
    loader = ShardLoader(ds, num_workers=4)
    loader.load_state_dict(checkpoint["data"])       # resume (skip what this rank consumed)
    for epoch in range(checkpoint["data"]["epoch"], num_epochs):
        loader.set_epoch(epoch)                      # same epoch: keeps the resume position
        for batch in loader:        # batch["mix"] (B, 1, T), batch["sources"]["reverberant"] (B, S, T)
            ...
            checkpoint["data"] = loader.state_dict() # {"epoch": e, "consumed": n, "global_consumed": n * W}

How an epoch is laid out (:class:`ShardSampler`, from the shards' sample counts alone, no I/O;
:class:`ShardDataset` fetches and decodes what the sampler hands out):

1. The epoch's *global sequence* of samples is the same in every process, whatever the rank,
   world size, worker count or batch size: shuffling permutes the shard order with
   rng(seed, epoch), concatenates the shards' keys, and permutes that within consecutive windows
   of ``shuffle_buffer`` samples with a second rng(seed, epoch) stream. It is what a one-process
   run reads (:meth:`ShardDataset.global_sequence`).
2. With ``B = batch_size`` per rank and ``W = world_size``, global batch ``g`` is positions
   ``[g*B*W, (g+1)*B*W)`` of the global sequence, cut into ``W`` chunks of ``B``; rank ``r``
   takes chunk ``r`` of every global batch. So W ranks x batch B see exactly the global batches
   (same samples, same crops) of one rank x batch B*W, and a distributed run reproduces a
   single-process one.
3. Every rank gets the same count, so DDP never waits on a rank that ran out: the global
   sequence is padded to a multiple of ``B*W`` by repeating its head (up to ``B*W - 1`` samples
   are seen twice in the epoch; a single rank pads too), or with ``drop_last`` cut to a multiple,
   dropping the incomplete last global batch (up to ``B*W - 1`` samples unseen; which ones
   changes with the epoch's order). Every sample is seen exactly once per epoch when ``B*W``
   divides the split's size; an evaluation that must count each sample once picks such a size
   or drops repeated keys.
4. Worker w of ``num_workers`` takes the chunks ``k`` of this rank (its k-th batch) with
   ``k % num_workers == w``. The DataLoader requests batches from its workers in the same
   round-robin, so batches arrive in order and after ``n`` samples the consumer has seen exactly
   the first ``n`` of the rank's sequence (:meth:`ShardDataset.rank_sequence`).
5. Resume is therefore one number per rank: ``{"epoch", "consumed"}``, in samples of this rank.
   ``load_state_dict`` makes the next iteration start at that position, whatever
   ``num_workers`` is. Only the consumer knows what it consumed when workers run in other
   processes, so :class:`ShardLoader` counts the batches it hands out; iterating the dataset
   in-process counts yields instead. At a batch boundary the state also carries
   ``"global_consumed" = consumed * W``, the position in the global sequence, which is right
   when all ranks are in step (a DDP loop steps every rank once per global batch). As the
   global sequence does not depend on W, ``load_state_dict`` given ``global_consumed`` resumes
   exactly even with another world size or batch size, provided the position is a multiple of
   the new ``B*W``.

Cost: each rank and worker reads only the members it yields, of only its own samples: the
sidecars record where each member's bytes lie in its shard, the writer gathers them per split
into ``{split}.members.npz`` (keys, shard, per member ``[offset, size]``), which a process loads
in one read; then a worker fetches exactly the wanted members of its next samples with ranged
reads, a window of samples at a time (``os.pread`` on a local disk, the kernel asked to read
the next window ahead; on an object store concurrent range requests through fsspec, the next
window's in a thread while the current one is decoded), and decodes only the crop (WAV seeks to
it; FLAC from the nearest seek point). With the default collation :class:`ShardLoader` has the
dataset build whole batches (:meth:`ShardDataset.iter_batches`): each crop is copied once, into
its batch, and 16-bit WAV is decoded there, from the shard's bytes, with no per-item tensors;
batches are built in memory reused once the consumer has dropped them (in DataLoader workers,
shared-memory slots that cross to the main process once). Across the whole job each byte of a
wanted member is read once per epoch (plus the padding and tar header, under 1 kB, between two
wanted members that lie next to each other, read to save a request), whatever the world size and
worker count.
Corpora of format version 1 (no member ranges) still read, the old way: every rank and worker
streams every shard of the split, skipping what is not its own (``W * num_workers`` times the
bytes); ``hubbub shards index DIR`` adds the ranges in one pass.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, Literal, NamedTuple, Sequence

import numpy as np
import orjson
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from hubbub import storage
from hubbub.schema import SampleMeta, find_member, member_name
from hubbub.shards.format import (CODECS, audio_member, audio_stem, decode_array, decode_audio, decode_audio_crop,
                                  decode_npy, decode_pcm16, is_audio_member, parse_source_member, pcm16_crop)
from hubbub.shards.ranges import RangeReader
from hubbub.shards.writer import load_index, read_members_table, record_from_json, sidecar_name
from hubbub.video import crop_roi, samples_per_frame

log = logging.getLogger(__name__)
# Ranges of two wanted members separated by no more than what a tar puts between them (the first
# one's padding to a 512-byte block, then the second one's 512-byte header) are read as one.
_MERGE_GAP = 1023
_READ_AHEAD_BYTES = 8 << 20  # what a window of samples read ahead may hold, about

_MIX_AUDIO = tuple(f"mix.{codec}" for codec in CODECS)
_DRY_AUDIO = tuple(f".dry.{codec}" for codec in CODECS)  # the ends of dry sources' names

# Tags that keep the three random streams of an epoch independent of each other.
_SHARD_ORDER, _WINDOWS, _CROP, _ROI = 0, 1, 2, 3


def _loads(data: bytes) -> dict:
    """A sample's JSON: orjson (a quarter of the time of Python's json, which the reader spent
    a tenth of its time in), Python's json where orjson refuses what the writer may have
    written (NaN and infinities)."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data))  # (it takes no memoryview)


def _key_unit(seed: int, epoch: int, tag: int, key: str) -> float:
    """A uniform number in [0, 1) drawn from (seed, epoch, tag, key): the same in every process
    and run, independent of the position the sample is read at. A 64-bit keyed digest, ~20x
    cheaper than seeding a numpy Generator per sample."""
    digest = hashlib.blake2b(f"{seed}/{epoch}/{tag}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _key_seed(key: str) -> int:
    # Python's hash() is salted per process; a digest is the same in every worker and every run.
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


def stack_padded(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack CPU tensors of equal rank, zero-padding every axis at its end to the largest size."""
    # In numpy, on the tensors' memory: torch's intra-op threads would spin against the loader's
    # read-ahead thread for these small copies (2.5x slower with 2 threads on 2 cores).
    arrays = [t.numpy() for t in tensors]
    shape = [max(sizes) for sizes in zip(*(a.shape for a in arrays))]
    out = np.zeros((len(arrays), *shape), dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = a
    return torch.from_numpy(out)


class ShardSampler:
    """Which samples, in which order, for this rank and worker: computed from the shards' sample
    counts alone, with no I/O (lhotse's sampler/dataset split). :class:`ShardDataset` fetches and
    decodes what it hands out. Positions are ordinals ``0 .. N-1`` of the split in shard order.

    The epoch's global sequence, its split into ranks and workers, padding, ``drop_last`` and
    the resume position are described in the module docstring; every argument is as in
    :class:`ShardDataset`. Example: ``ShardSampler([5, 5, 3], batch_size=2, world_size=2,
    rank=1).rank_ordinals(0)`` are the ordinals rank 1 of 2 reads in epoch 0.
    """

    def __init__(self, shard_sizes: Sequence[int], *, shuffle: bool = True, shuffle_buffer: int = 256,
                 seed: int = 0, epoch: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False,
                 batch_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        if batch_size < 1 or shuffle_buffer < 1:
            raise ValueError("batch_size and shuffle_buffer must be positive")
        self.shard_start = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
        self.shuffle, self.shuffle_buffer, self.seed, self.epoch = shuffle, shuffle_buffer, seed, epoch
        self.rank, self.world_size, self.drop_last, self.batch_size = rank, world_size, drop_last, batch_size
        self.start = 0  # first rank-sequence position of the next iteration
        self.consumed = 0  # samples of this epoch yielded in this process, counting start

    @property
    def size(self) -> int:
        """Samples of the split."""
        return int(self.shard_start[-1])

    @property
    def global_num_samples(self) -> int:
        """Samples of the epoch's global sequence over all ranks: the split's size rounded up
        (padded) or, with ``drop_last``, down to a multiple of ``batch_size * world_size``."""
        n, per_step = self.size, self.batch_size * self.world_size
        return (n // per_step if self.drop_last else math.ceil(n / per_step)) * per_step

    @property
    def num_samples(self) -> int:
        """Samples this rank yields in a full epoch (equal on every rank, a multiple of batch_size)."""
        return self.global_num_samples // self.world_size

    def set_epoch(self, epoch: int) -> None:
        """See :meth:`ShardDataset.set_epoch`."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.start = self.consumed = 0

    def state(self, consumed: int) -> dict:
        """``{"epoch", "consumed"[, "global_consumed"]}`` after ``consumed`` samples of this rank."""
        state = {"epoch": self.epoch, "consumed": consumed}
        # Mid-batch, this rank's consumed samples are not a prefix of the global sequence.
        if consumed % self.batch_size == 0:
            state["global_consumed"] = consumed * self.world_size
        return state

    def load_state_dict(self, state: dict) -> None:
        """See :meth:`ShardDataset.load_state_dict`."""
        if "global_consumed" in state:
            position, per_step = int(state["global_consumed"]), self.batch_size * self.world_size
            if position < 0:
                raise ValueError(f"global_consumed={position} is negative")
            if position >= min(self.size, self.global_num_samples):
                consumed = self.num_samples  # every sample of the epoch was seen: it is done
            elif position % per_step == 0:
                consumed = position // self.world_size
            else:
                raise ValueError(f"global_consumed={position} is not a multiple of batch_size x world_size "
                                 f"= {per_step}: it falls inside a global batch of this run, so it cannot "
                                 "resume there exactly")
        else:
            consumed = int(state["consumed"])
            if not 0 <= consumed <= self.num_samples:
                raise ValueError(f"consumed={consumed} outside this rank's epoch of {self.num_samples}")
        self.epoch = int(state["epoch"])
        self.start = self.consumed = consumed

    def global_ordinals(self, epoch: int) -> np.ndarray:
        """The epoch's global sequence, padded or cut: what one rank with batch ``B * W`` reads."""
        order = np.arange(len(self.shard_start) - 1)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch, _SHARD_ORDER]).permutation(order)
        seq = np.concatenate([np.arange(self.shard_start[s], self.shard_start[s + 1]) for s in order])
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, _WINDOWS])
            window = np.arange(len(seq)) // self.shuffle_buffer
            seq = seq[np.lexsort((rng.random(len(seq)), window))]
        # np.resize repeats the sequence cyclically when it grows (the padding repeats its head)
        # and keeps its head when it shrinks (drop_last).
        return np.resize(seq, self.global_num_samples)

    def rank_ordinals(self, epoch: int) -> np.ndarray:
        """This rank's share of the epoch, in order: chunk ``rank`` of every global batch."""
        steps = self.global_ordinals(epoch).reshape(-1, self.world_size, self.batch_size)
        return steps[:, self.rank].reshape(-1)

    def worker_share(self, worker: int, num_workers: int) -> tuple[np.ndarray, np.ndarray]:
        """(rank-sequence positions, ordinals) that DataLoader worker ``worker`` reads from the
        resume position on: its batches ``k % num_workers == worker``, as the DataLoader asks."""
        ordinals = self.rank_ordinals(self.epoch)
        positions = np.arange(self.start, len(ordinals))
        chunk = (positions - self.start) // self.batch_size
        mine = positions[chunk % num_workers == worker]
        return mine, ordinals[mine]


class _Sampled:
    """A :class:`ShardDataset` attribute that lives on its sampler (the Solver sets rank and
    world size on the dataset; the order is the sampler's business)."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else getattr(obj.sampler, self.name)

    def __set__(self, obj, value):
        setattr(obj.sampler, self.name, value)


def _check_sizes(corpus_dir: str, shards: list[dict]) -> None:
    """One listing before any sample is read: a shard missing, truncated or replaced since it was
    indexed fails here, naming it, and not steps into a training run."""
    sizes = storage.list_sizes(corpus_dir)
    for shard in shards:
        expected, found = shard.get("size_bytes"), sizes.get(shard["name"])
        if found is None:
            raise storage.StorageError(f"{storage.join(corpus_dir, shard['name'])}: shard missing (or not a file); "
                                       f"run `hubbub shards verify {corpus_dir}`")
        if expected is not None and found != int(expected):
            raise storage.StorageError(f"{storage.join(corpus_dir, shard['name'])}: {found} bytes, index.json says "
                                       f"{expected}: truncated or replaced; run `hubbub shards verify {corpus_dir}`")


class SampleError(ValueError):
    """A stored sample cannot give what was asked: its JSON and its members disagree (a damaged
    or hand-edited corpus), or it does not store the target asked for. Names the corpus, split and
    key; ``hubbub shards verify`` finds every such sample."""


class ShardDataset(IterableDataset):
    """Samples of one split of a hubbub corpus as tensors, for ``torch.utils.data``.

    Each item is a dict::

        key           str
        mix           (C, T) float32: C = 1 with ``mic`` set, else all M microphones
        sources       {target: (S, T) float32}  FLAC targets with ``mic`` set ("dry" is always
                      (S, T)); (S, M, T) with ``mic=None``; npy targets whole: "rir" (S, M, L),
                      "lips" (S, frames, 96, 96) uint8
        num_sources   int, the real speaker count S0; sources beyond it (``max_sources``) are zero
        extras        {member: tensor} for the sample-level members named in ``extras``
        start_sample  int, where the crop starts in the stored sample (0 without ``crop_s``), so
                      later stages can crop their own time bases (video frames, codec tokens)
        meta          the sample's JSON (``{key}.json``)

    Args:
        corpus_dir: directory with ``index.json``, shards and sidecars.
        split: split name as in ``index.json``.
        targets: per-source targets to return, members ``s{i}.{target}.flac|wav|npy[.zst]``: any of
            "dry", "direct", "early", "reverberant", "rir", or a later stage's ("lips", "codec").
        extras: sample-level members to return, by member name ("noise.flac", "mix.codec.npy");
            an audio member is found whatever its codec (``noise.flac`` returns a ``noise.wav``).
        crop_s: random crop length in seconds (audio members only; shorter samples are zero-padded
            to it); the crop start is drawn from (seed, epoch, key). None returns whole samples.
            With "lips" among the targets the crop starts on a video frame (a multiple of
            ``sample_rate_hz / 25`` samples) and must last whole frames; the lip frames are cut
            with it (frame ``j`` covers samples ``[j, j + 1) * sample_rate_hz / 25``), a short
            sample's last frame repeated where its audio is zero-padded.
        roi_crop: how "lips" frames (96x96 as stored) are cropped to 88x88: ``"center"``
            (evaluation), ``"random"`` (training: one offset per sample and epoch, drawn from
            (seed, epoch, key), the same for all its frames and sources), or None (kept at 96x96).
        shuffle: permute shards and samples per epoch (see the module docstring).
        shuffle_buffer: window, in samples, within which the epoch's global sequence is permuted.
        seed: seed of every random choice; with the epoch it fixes the order and the crops.
        epoch: starting epoch (see :meth:`set_epoch`).
        rank, world_size: this process's share; default from ``torch.distributed`` when it is
            initialised at construction, else 0 and 1.
        drop_last: cut the epoch's global sequence to a multiple of ``batch_size * world_size``
            (dropping the incomplete last global batch) instead of padding it with its head.
        mic: microphone channel of audio members to keep; None keeps all.
        max_sources: pad every sample's sources with zero sources to this count (models with a
            fixed number of outputs); a sample with more speakers raises ValueError, because
            skipping it would give ranks unequal sample counts.
        batch_size: the per-rank batch size of the DataLoader that reads this dataset. Ranks and
            workers take chunks of this many samples, which makes global batches independent of
            the world size and keeps batches in order (and resume exact) with
            ``num_workers > 0``; :class:`ShardLoader` batches by it.
        skip_damaged: a sample whose members disagree with its JSON (:class:`SampleError`) is
            skipped with a warning and listed in :attr:`skipped` (``{"key", "reason"}``) instead
            of raising: for evaluation, which reports it. Training raises (skipping would give
            ranks unequal batches).

    Iteration starts at the position set by :meth:`load_state_dict` until the epoch changes.
    Example: ``ShardDataset(d, "valid", shuffle=False, mic=None)`` gives every valid sample
    whole, in corpus order.
    """

    def __init__(self, corpus_dir: str | Path, split: str = "train", *,
                 targets: Sequence[str] = ("reverberant",), extras: Sequence[str] = (),
                 crop_s: float | None = None, shuffle: bool = True, shuffle_buffer: int = 256,
                 seed: int = 0, epoch: int = 0, rank: int | None = None,
                 world_size: int | None = None, drop_last: bool = False, mic: int | None = 0,
                 max_sources: int | None = None, batch_size: int = 1,
                 roi_crop: Literal["center", "random"] | None = "center", skip_damaged: bool = False):
        self.skip_damaged = skip_damaged
        self.skipped: list[dict] = []
        if "noise" in targets:
            raise ValueError('noise is not a per-source target: pass extras=("noise.flac",)')
        for target in targets:
            member_name(target, 0)  # a ValueError naming the known targets for one no sample stores
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        if world_size is None:
            world_size = torch.distributed.get_world_size() if distributed else 1
        if roi_crop not in ("center", "random", None):
            raise ValueError(f"roi_crop must be 'center', 'random' or None, got {roi_crop!r}")
        self.sampler = ShardSampler([], shuffle=shuffle, shuffle_buffer=shuffle_buffer, seed=seed, epoch=epoch,
                                    rank=rank, world_size=world_size, drop_last=drop_last, batch_size=batch_size)
        self.split = split
        self.targets = tuple(targets)
        self.extras = tuple(extras)
        self.crop_s = crop_s
        self.mic = mic
        self.max_sources = max_sources
        self.roi_crop = roi_crop

        self.corpus_dir = storage.normalize(corpus_dir)
        listed = [s for s in load_index(self.corpus_dir)["shards"] if s["split"] == split]
        names = [s["name"] for s in listed]
        if not names:
            raise ValueError(f"split {split!r} has no shards in {storage.join(self.corpus_dir, 'index.json')}")
        _check_sizes(self.corpus_dir, listed)
        self._paths = [storage.join(self.corpus_dir, n) for n in names]
        self._extra_stems = {audio_stem(m) or m for m in self.extras}
        # only the wanted members' columns are read: a process holds ~40 bytes a sample for them
        table = read_members_table(self.corpus_dir, split, wanted=self._wanted)
        if table is not None and "json" not in table["member_names"]:
            raise storage.StorageError(f"{storage.join(self.corpus_dir, f'{split}.members.npz')} lists no json "
                                       f"members: damaged; rebuild it with `hubbub shards index {self.corpus_dir}`")
        if table is not None and len(table["shard"]) and int(table["shard"].max()) >= len(names):
            raise ValueError(f"{self.corpus_dir}: {split}.members.npz does not match index.json; "
                             f"rebuild it with `hubbub shards index {self.corpus_dir}`")
        if table is not None:
            # Fixed-width bytes, not a list of str: millions of keys stay compact and are shared
            # copy-on-write with forked workers (refcounts would dirty the pages of a list).
            self._keys, self._shard_of = table["keys"], table["shard"]
            self._member_names = [str(m) for m in table["member_names"]]
            # a member is < 2 GiB: int32 sizes (offsets stay int64, shards may be larger)
            self._offsets, self._sizes = table["offsets"], table["sizes"].astype(np.int32)
            counts = np.bincount(self._shard_of, minlength=len(names))
        else:
            log.warning("%s has no member byte ranges (format version 1): every worker streams whole shards; "
                        "`hubbub shards index %s` adds them", self.corpus_dir, self.corpus_dir)
            sidecars = [storage.join(self.corpus_dir, sidecar_name(n)) for n in names]
            raw = storage.read_many(sidecars)
            missing = [u for u in sidecars if u not in raw]
            if missing:
                raise FileNotFoundError(f"sidecar {missing[0]} not found: run `hubbub shards verify {self.corpus_dir}`")
            keys = [record_from_json(raw[u], u).keys for u in sidecars]
            self._keys = np.array([k for ks in keys for k in ks], dtype="S")
            self._shard_of = np.repeat(np.arange(len(keys)), [len(ks) for ks in keys])
            self._member_names, self._offsets, self._sizes = None, None, None
            counts = np.array([len(ks) for ks in keys])
        self.sampler.shard_start = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if len(self._keys) == 0:
            raise ValueError(f"split {split!r} of {self.corpus_dir} has no samples")
        # Samples fetched ahead of the one being decoded, in one window: up to 32 (fewer Python
        # and numpy calls per sample than 8: 1-10% faster here) within ~8 MB of wanted members
        rows = None if self._sizes is None else self._sizes[::max(1, len(self._sizes) // 10_000)]
        per_sample = 0 if rows is None else float(np.clip(rows, 0, None).sum(axis=1).mean())
        self.read_ahead = max(batch_size, min(32, int(_READ_AHEAD_BYTES // max(per_sample, 1.0))), 1)

    seed = _Sampled()
    shuffle = _Sampled()
    shuffle_buffer = _Sampled()
    epoch = _Sampled()
    rank = _Sampled()
    world_size = _Sampled()
    drop_last = _Sampled()
    batch_size = _Sampled()

    @property
    def global_num_samples(self) -> int:
        """See :attr:`ShardSampler.global_num_samples`."""
        return self.sampler.global_num_samples

    @property
    def num_samples(self) -> int:
        """Samples this rank yields in a full epoch (equal on every rank, a multiple of batch_size)."""
        return self.sampler.num_samples

    @property
    def start(self) -> int:
        """Rank-sequence position where the next iteration starts (0 unless resumed)."""
        return self.sampler.start

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate. A new epoch starts at its beginning; setting the current
        epoch again keeps the position from :meth:`load_state_dict`, so a resumed loop may call
        ``set_epoch(epoch)`` at the top of every epoch as usual."""
        self.sampler.set_epoch(epoch)

    def state_dict(self) -> dict:
        """``{"epoch", "consumed"[, "global_consumed"]}``: samples of this epoch this rank has
        yielded in this process, and at a batch boundary the global position (module docstring).

        Exact when iterated in this process (directly or with ``num_workers=0``); with DataLoader
        workers use :meth:`ShardLoader.state_dict`, which counts what the consumer received.
        """
        return self.sampler.state(self.sampler.consumed)

    def _state(self, consumed: int) -> dict:
        return self.sampler.state(consumed)

    def load_state_dict(self, state: dict) -> None:
        """Continue epoch ``state["epoch"]`` after its first ``state["consumed"]`` samples on this
        rank: "skip the first n samples of this epoch" for a resumed run.

        ``state["global_consumed"]``, when present, is used instead: the position in the global
        sequence, divided among the ranks of this dataset's world size. It must be a multiple of
        ``batch_size * world_size`` (ValueError otherwise), except that a position at or past
        the split's end means the epoch is done. Example: a checkpoint of 2 ranks x batch 2 with
        ``{"epoch": 1, "consumed": 6, "global_consumed": 12}`` resumes 1 rank x batch 4 at
        sample 12 of epoch 1, and 4 ranks x batch 1 at sample 3 of each rank.
        """
        self.sampler.load_state_dict(state)

    def global_sequence(self, epoch: int | None = None) -> list[str]:
        """The keys of ``epoch``'s global sequence (default: the current one) over all ranks, in
        order, padded or cut: what one rank with batch ``batch_size * world_size`` yields."""
        return [k.decode() for k in self._keys[self.sampler.global_ordinals(self.epoch if epoch is None else epoch)]]

    def rank_sequence(self, epoch: int | None = None) -> list[str]:
        """The keys this rank yields in ``epoch`` (default: the current one), in order."""
        return [k.decode() for k in self._keys[self.sampler.rank_ordinals(self.epoch if epoch is None else epoch)]]

    def __iter__(self) -> Iterator[dict]:
        for _, arrays in self._decoded():
            yield _as_item(arrays)

    def iter_batches(self, _memory: _SharedSlots | None = None) -> Iterator[dict]:
        """This rank's (and DataLoader worker's) batches, collated as :func:`collate_mixtures` does
        from :meth:`__iter__`'s items: the same values, without building each item's tensors
        (each signal is copied once, from its decoded crop into the batch). A batch is one chunk
        of ``batch_size`` positions of the rank sequence, less the samples ``skip_damaged`` skips;
        after a resume inside a batch the first is that batch's rest. :class:`ShardLoader` reads
        these when it collates with :func:`collate_mixtures`. Outside DataLoader workers the
        batches' memory is reused once the consumer has dropped a batch (:class:`_HeapSlots`)."""
        shared = get_worker_info() is not None  # then ShardLoader makes the small fields tensors
        memory = _memory if shared else _HeapSlots()
        chunk, current = None, []
        for position, arrays in self._decoded(with_skipped=True):
            k = (position - self.sampler.start) // self.batch_size
            if k != chunk and current:
                yield collate_arrays(current, shared=shared, memory=memory)
                current = []
            chunk = k
            if arrays is not None:
                current.append(arrays)
        if current:
            yield collate_arrays(current, shared=shared, memory=memory)

    def _decoded(self, with_skipped: bool = False) -> Iterator[tuple[int, dict | None]]:
        """(rank-sequence position, decoded arrays) of this process's samples, in order; a sample
        skipped by ``skip_damaged`` gives None (with ``with_skipped``) or nothing."""
        info = get_worker_info()
        positions, ordinals = self.sampler.worker_share(*((info.id, info.num_workers) if info else (0, 1)))
        self.sampler.consumed = self.sampler.start
        for position, raw in zip(positions, self._read_raw(ordinals)):
            try:
                arrays = self._decode(raw)
            except SampleError as exc:
                if not self.skip_damaged:
                    raise
                log.warning("skipped: %s", exc)
                self.skipped.append({"key": raw["__key__"], "reason": str(exc)})
                arrays = None
            finally:
                self.sampler.consumed = int(position) + 1
            if arrays is not None or with_skipped:
                yield int(position), arrays

    def _read_raw(self, ordinals: np.ndarray) -> Iterator[dict]:
        """Raw samples (member name -> bytes, the wanted members only) for ``ordinals``, in order."""
        if self._member_names is None:
            return self._stream_raw(ordinals)
        return self._ranged_raw(ordinals)

    def _ranged_raw(self, ordinals: np.ndarray) -> Iterator[dict]:
        """Fetch each sample's wanted members by their byte ranges, one window of ``read_ahead``
        samples ahead. Local shards are read in this thread while the kernel fetches the next
        window from the disk (``RangeReader.will_need``): a read from the page cache takes
        microseconds, which a thread would spend in waiting for the GIL (a fifth of the reader's
        time). From an object store the next window's requests run in a thread while this
        one is decoded."""
        windows = [ordinals[i:i + self.read_ahead] for i in range(0, len(ordinals), self.read_ahead)]
        if not windows:
            return
        reader = RangeReader()
        try:
            if storage.is_local(str(self._paths[0])):
                plan = self._plan_window(windows[0])
                for i, window in enumerate(windows):
                    upcoming = self._plan_window(windows[i + 1]) if i + 1 < len(windows) else None
                    if upcoming is not None:
                        reader.will_need(upcoming[0])
                    yield from self._assemble(window, reader.read(plan[0]), plan[1])
                    plan = upcoming
                return
            # the pool is shut down (its fetch finished) before the reader's files are closed
            with ThreadPoolExecutor(1, thread_name_prefix="hubbub-read-ahead") as pool:
                future = pool.submit(self._fetch_window, reader, windows[0])
                try:
                    for i in range(len(windows)):
                        samples = future.result()
                        if i + 1 < len(windows):
                            future = pool.submit(self._fetch_window, reader, windows[i + 1])
                        yield from samples
                finally:
                    future.cancel()
        finally:
            reader.close()

    def _fetch_window(self, reader: "RangeReader", ordinals: np.ndarray) -> list[dict]:
        ranges, parts = self._plan_window(ordinals)
        return self._assemble(ordinals, reader.read(ranges), parts)

    def _plan_window(self, ordinals: np.ndarray) -> tuple[list[tuple[str, int, int]], list[tuple]]:
        """The byte ranges to read for ``ordinals`` (wanted members lying next to each other in
        one range) and where each member is in them: (sample, member column, offset in its
        range, size, range)."""
        offsets, sizes = self._offsets[ordinals], self._sizes[ordinals]  # the wanted members' columns
        # each sample's members in the order they lie in its shard (absent ones, -1, last and dropped)
        order = np.argsort(np.where(offsets >= 0, offsets, np.iinfo(np.int64).max), axis=1, kind="stable")
        starts = np.take_along_axis(offsets, order, 1).ravel()
        present = starts >= 0
        starts, columns = starts[present], order.ravel()[present]
        ends = starts + np.take_along_axis(sizes, order, 1).ravel()[present]
        sample = np.repeat(np.arange(len(ordinals)), offsets.shape[1])[present]
        shard = self._shard_of[ordinals][sample]
        # a member starts a new range unless it follows the previous one in its shard, within a tar's gap
        gap = starts[1:] - ends[:-1]
        first = np.concatenate([[True], (shard[1:] != shard[:-1]) | (gap < 0) | (gap > _MERGE_GAP)])
        heads = np.flatnonzero(first)
        request = np.cumsum(first) - 1
        ranges = [(self._paths[r], a, b) for r, a, b in zip(shard[heads].tolist(), starts[heads].tolist(),
                                                               np.maximum.reduceat(ends, heads).tolist())]
        parts = list(zip(sample.tolist(), columns.tolist(), (starts - starts[heads][request]).tolist(),
                         (ends - starts).tolist(), request.tolist()))
        return ranges, parts

    def _assemble(self, ordinals: np.ndarray, data: list[bytes], parts: list[tuple]) -> list[dict]:
        """Raw samples (member name -> bytes) from the ranges read for them."""
        samples = [{"__key__": self._keys[o].decode()} for o in ordinals]
        for i, j, at, size, r in parts:
            # a member read with its neighbours is a view of their bytes (no copy of the audio)
            member = data[r] if size == len(data[r]) else memoryview(data[r])[at:at + size]
            samples[i][self._member_names[j]] = member
        return samples

    def _stream_raw(self, ordinals: np.ndarray) -> Iterator[dict]:
        """Format version 1: stream whole shards, each tar read once by this worker.

        Shards are opened when first needed and stay open while they still hold samples this
        worker needs; samples read ahead of their turn wait in ``ready``, and so do samples
        needed again later (the epoch's padding repeats its head).
        """
        needed: dict[int, set[str]] = {}
        for o in ordinals:
            needed.setdefault(int(self._shard_of[o]), set()).add(self._keys[o].decode())
        pending = {s: len(keys) for s, keys in needed.items()}
        uses = Counter(int(o) for o in ordinals)
        open_shards: dict[int, tuple] = {}
        ready: dict[str, dict] = {}
        try:
            for o in ordinals:
                shard, key = int(self._shard_of[o]), self._keys[o].decode()
                while key not in ready:
                    if shard not in open_shards:
                        f = storage.open_file(self._paths[shard], block_size=1 << 22)
                        open_shards[shard] = (f, self._tar_samples(f, shard, needed[shard]))
                    raw = next(open_shards[shard][1], None)
                    if raw is None:
                        raise RuntimeError(f"{self._paths[shard]}: sample {key} listed in its sidecar is "
                                           f"missing; run `hubbub shards verify {self.corpus_dir}`")
                    ready[raw["__key__"]] = raw
                    pending[shard] -= 1
                    if pending[shard] == 0:
                        open_shards.pop(shard)[0].close()
                uses[int(o)] -= 1
                yield ready[key] if uses[int(o)] else ready.pop(key)
        finally:
            for f, _ in open_shards.values():
                f.close()

    def _tar_samples(self, fileobj, shard: int, keys: set[str]) -> Iterator[dict]:
        def select(name: str) -> bool:
            key, _, member = name.partition(".")
            return key in keys and self._wanted(member)

        source = {"url": str(self._paths[shard]), "stream": fileobj}
        return group_by_keys(tar_file_expander([source], select_files=select))

    def _wanted(self, member: str) -> bool:
        # Members nobody asked for are read past, not kept: they cost neither memory nor decoding.
        source = parse_source_member(member)
        return (member == "json" or audio_stem(member) == "mix" or (source is not None and source[1] in self.targets)
                or (audio_stem(member) or member) in self._extra_stems)

    def _decode(self, raw: dict) -> dict:
        """One raw sample -> its item's fields as numpy arrays (see :func:`_as_item`): sources as
        lists per target, audio crops possibly shorter than ``length``, the crop's length, to
        which they are zero-padded when the item or batch is built."""
        key = raw["__key__"]
        where = f"{self.corpus_dir} ({self.split}) sample {key}"
        try:
            meta = _loads(raw["json"])
            # the three numbers this needs, checked by the schema (a SchemaError names what is
            # wrong); the whole record would cost a quarter of the reader's time per sample
            num_sources, num_samples, rate = SampleMeta.read_fields(
                meta, ("num_speakers", "num_samples", "sample_rate_hz"))
        except (ValueError, KeyError, TypeError) as exc:
            raise SampleError(f"{where}: its JSON is damaged ({type(exc).__name__}: {exc}); "
                              f"run `hubbub shards verify {self.corpus_dir}`") from None
        if self.max_sources is not None and num_sources > self.max_sources:
            raise ValueError(f"{key} has {num_sources} speakers, more than max_sources={self.max_sources}")
        crop = self._crop(key, num_samples, rate)
        sources, audio = {}, set()  # audio: the fields that are audio crops (padded to the crop's length)
        for target in self.targets:
            per_source = []
            for i in range(num_sources):
                name = find_member(raw, target, i)
                if name is None:
                    stored = list(meta.get("targets") or [])
                    why = (f"the corpus stores targets {stored}" if target not in (stored or [target]) else
                           f"its JSON says {num_sources} speakers: the JSON and the members disagree")
                    raise SampleError(f"{where} has no member s{i}.{target}.* ({why}); "
                                      f"run `hubbub shards verify {self.corpus_dir}`")
                if target == "lips":
                    per_source.append(self._lips(key, name, raw[name], crop, rate))
                else:
                    per_source.append(self._member(name, raw[name], crop))
                    if is_audio_member(name):
                        audio.add(("sources", target))
            if self.max_sources is not None:
                zeros = np.zeros(per_source[0].shape, per_source[0].dtype)
                per_source += [zeros] * (self.max_sources - num_sources)
            sources[target] = per_source
        stored = {m: audio_member(raw, audio_stem(m)) if is_audio_member(m) else m for m in self.extras}
        missing = [m for m, name in stored.items() if name not in raw]
        if missing:
            raise SampleError(f"{where} has no member(s) {missing}")
        mix = find_member(raw, "mix")
        return {
            "key": key,
            "mix": self._member(mix, raw[mix], crop),
            "sources": sources,
            "num_sources": num_sources,
            "extras": {m: self._member(name, raw[name], crop) for m, name in stored.items()},
            "start_sample": crop[0] if crop else 0,
            "meta": meta,
            "length": crop[1] if crop else None,
            "audio": audio | {("extras", m) for m, name in stored.items() if is_audio_member(name)},
        }

    def _crop(self, key: str, num_samples: int, sample_rate_hz: int) -> tuple[int, int] | None:
        if self.crop_s is None:
            return None
        length = round(self.crop_s * sample_rate_hz)
        u = _key_unit(self.seed, self.epoch, _CROP, key)
        if "lips" not in self.targets:
            return int(u * (max(num_samples - length, 0) + 1)), length
        per_frame = samples_per_frame(sample_rate_hz)
        if length % per_frame:
            raise ValueError(f"crop_s={self.crop_s} is not a whole number of 25 fps video frames "
                             f"({per_frame} samples at {sample_rate_hz} Hz): lip frames could not be cut with the audio")
        return int(u * (max(num_samples - length, 0) // per_frame + 1)) * per_frame, length

    def _lips(self, key: str, name: str, data: bytes, crop: tuple[int, int] | None,
              sample_rate_hz: int) -> np.ndarray:
        """A source's stored (F, 96, 96) lip frames, cut to the audio crop and cropped by roi_crop."""
        frames = decode_array(name, data)
        if frames.ndim != 3:
            raise ValueError(f"{key}: lip frames must be (frames, height, width), got shape {frames.shape}")
        if crop is not None:
            per_frame = samples_per_frame(sample_rate_hz)
            first, count = crop[0] // per_frame, crop[1] // per_frame
            index = np.clip(np.arange(first, first + count), 0, len(frames) - 1)  # repeat the last frame
            frames = frames[index]
        if self.roi_crop is not None:
            rng = np.random.default_rng([self.seed, self.epoch, _ROI, _key_seed(key)])
            frames = crop_roi(frames, train=self.roi_crop == "random", rng=rng)
        return frames

    def _member(self, name: str, data: bytes, crop: tuple[int, int] | None) -> np.ndarray:
        if name.endswith(".npy"):
            return decode_npy(data)
        if not is_audio_member(name):
            raise ValueError(f"cannot decode member {name!r}: only audio (.flac, .wav) and .npy members are tensors")
        # Only the crop is decoded; every channel of it (one is picked below). A crop past the
        # end comes out shorter and is zero-padded where the item or batch is built. 16-bit WAV
        # is not decoded here at all: its codes are decoded where the item or batch places them.
        codes = None if crop is None else pcm16_crop(data, *crop)
        if codes is not None:
            audio = codes
        else:
            audio = decode_audio(data)[0] if crop is None else decode_audio_crop(data, *crop)
        # Every audio member but a dry source is an (M, T) image; one microphone decodes as (T,).
        if not name.endswith(_DRY_AUDIO):
            audio = audio if audio.ndim == 2 else audio[None]
            if self.mic is not None:
                audio = audio[self.mic:self.mic + 1] if name in _MIX_AUDIO else audio[self.mic]
        return audio if codes is None else _Pcm16(audio)


class _Pcm16:
    """A 16-bit audio crop still as the int16 codes in its member's bytes (a view, no copy):
    decoded to float32 where the item or the batch puts it."""
    __slots__ = ("codes", "shape")
    dtype = np.dtype(np.float32)

    def __init__(self, codes: np.ndarray):
        self.codes, self.shape = codes, codes.shape

    def decode(self, out: np.ndarray | None = None) -> np.ndarray:
        return decode_pcm16(self.codes, out)


def _array(a: np.ndarray | _Pcm16) -> np.ndarray:
    return a.decode() if isinstance(a, _Pcm16) else a


def _padded(array: np.ndarray | _Pcm16, length: int | None) -> np.ndarray:
    """An audio crop zero-padded at its end to ``length`` samples (None: as it is)."""
    array = _array(array)
    if length is None or array.shape[-1] >= length:
        return array
    return np.pad(array, [(0, 0)] * (array.ndim - 1) + [(0, length - array.shape[-1])])


def _as_item(arrays: dict) -> dict:
    """A decoded sample as :class:`ShardDataset` yields it: audio crops padded to the crop length,
    each target's sources stacked (padded to the largest), numpy arrays as tensors."""
    def tensor(field: tuple[str, str], a: np.ndarray) -> torch.Tensor:
        a = _padded(a, arrays["length"]) if field in arrays["audio"] else _array(a)
        return torch.from_numpy(np.ascontiguousarray(a))

    return {
        "key": arrays["key"],
        "mix": torch.from_numpy(np.ascontiguousarray(_padded(arrays["mix"], arrays["length"]))),
        "sources": {t: stack_padded([tensor(("sources", t), a) for a in per_source])
                    for t, per_source in arrays["sources"].items()},
        "num_sources": arrays["num_sources"],
        "extras": {m: tensor(("extras", m), a) for m, a in arrays["extras"].items()},
        "start_sample": arrays["start_sample"],
        "meta": arrays["meta"],
    }


def collate_mixtures(batch: Sequence[dict]) -> dict:
    """Batch :class:`ShardDataset` items with variable speaker counts and lengths.

    Sources are padded to the largest speaker count in the batch with all-zero sources, and every
    tensor is zero-padded at its end to the longest in the batch (crop in the dataset with
    ``crop_s`` for equal lengths). Returns::

        keys          list[str]
        mix           (B, C, T)
        sources       {target: (B, S, T) or (B, S, C, T), ...}, S = max speakers in the batch
        num_sources   (B,) int64, real speakers per mixture
        source_mask   (B, S) bool, True for real sources: ``source_mask[b, s] == s < num_sources[b]``
        num_samples   (B,) int64, unpadded length of each mixture
        start_sample  (B,) int64
        extras        {member: (B, ...)}
        meta          list[dict]

    Example: items with 1 and 3 speakers give ``sources[t].shape[1] == 3`` and
    ``source_mask == [[True, False, False], [True, True, True]]``.
    """
    # the items' tensors as decoded arrays already padded (no crop length to pad to)
    return collate_arrays([{**item, "mix": item["mix"].numpy(), "length": None, "audio": (),
                            "sources": {t: list(x.numpy()) for t, x in item["sources"].items()},
                            "extras": {m: x.numpy() for m, x in item["extras"].items()}} for item in batch])


def _stacked_shape(groups: Sequence[Sequence[np.ndarray | _Pcm16]], lengths: Sequence[int | None]) -> tuple:
    """(B, S, *shape) of :func:`_stack_into`'s result."""
    shape = [max(sizes) for sizes in zip(*(a.shape for g in groups for a in g))]
    shape[-1] = max([shape[-1], *(n for n in lengths if n is not None)])
    return (len(groups), max(len(g) for g in groups), *shape)


def _stack_into(out: np.ndarray, groups: Sequence[Sequence[np.ndarray | _Pcm16]]) -> None:
    """Fill ``out`` (B, S, *shape) with B groups of up to S arrays, every axis zero-padded at its
    end, and the groups to S arrays with all-zero ones: what stacking each group, then the groups,
    with :func:`stack_padded` gives, each array copied once."""
    full = out.shape[2:]
    for b, group in enumerate(groups):
        row = out[b]
        for s, a in enumerate(group):
            slot, shape = row[s], a.shape
            if shape != full:
                if shape[:-1] == full[:-1]:  # a shorter crop
                    slot[..., shape[-1]:] = 0
                    slot = slot[..., :shape[-1]]
                else:
                    slot.fill(0)
                    slot = slot[tuple(slice(0, n) for n in shape)]
            if type(a) is _Pcm16:
                decode_pcm16(a.codes, slot)
            else:
                slot[...] = a
        if len(group) < len(row):
            row[len(group):] = 0


_ALIGN = 64  # bytes: where each field of a batch's memory starts


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype


def _allocate(specs: Sequence[tuple[tuple, np.dtype]], shared: bool) -> list[torch.Tensor]:
    """An uninitialised tensor per (shape, dtype), those of one dtype views of one storage; with
    ``shared``, the storage is in shared memory from the start, as torch's own collation does in
    DataLoader workers: a batch then crosses to the main process as one segment per dtype, not
    copied into one per tensor."""
    out: list = [None] * len(specs)
    by_dtype: dict[np.dtype, list[int]] = {}
    for i, (_, dtype) in enumerate(specs):
        by_dtype.setdefault(np.dtype(dtype), []).append(i)
    for dtype, indices in by_dtype.items():
        sizes = [math.prod(specs[i][0]) for i in indices]
        flat = _new_tensor(sum(sizes), _torch_dtype(dtype), shared)
        offset = 0
        for i, n in zip(indices, sizes):
            out[i] = flat[offset:offset + n].view(specs[i][0])
            offset += n
    return out


def _new_tensor(n: int, dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised flat tensor of ``n`` elements, in shared memory with ``shared``."""
    new_shared = getattr(torch.UntypedStorage, "_new_shared", None)  # what torch's default_collate calls
    if shared and new_shared is not None:
        storage = new_shared(max(n, 1) * torch.empty(0, dtype=dtype).element_size())
        return torch.empty(0, dtype=dtype).set_(storage, 0, (n,), (1,))
    if shared:  # a torch without it: the public way, one copy of the empty storage
        return torch.empty(n, dtype=dtype).share_memory_()
    return torch.empty(n, dtype=dtype)


def _layout(specs: Sequence[tuple[tuple, np.dtype]]) -> tuple[list[int], int]:
    """Byte offsets of the fields ``specs`` in one block of memory, each aligned, and its size."""
    offsets, end = [], 0
    for shape, dtype in specs:
        offsets.append(end)
        end += -(-math.prod(shape) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
    return offsets, max(end, _ALIGN)


def _field_of(owner: np.ndarray, offset: int, shape: tuple, dtype: np.dtype) -> torch.Tensor:
    """A tensor over bytes ``[offset, ...)`` of the uint8 array ``owner`` through a numpy view,
    so that it holds a reference to ``owner`` (how the slot pools see that a batch is gone)."""
    dtype = np.dtype(dtype)
    return torch.from_numpy(owner[offset:offset + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape))


class _HeapSlots:
    """Reused memory for the batches built in this process (``iter_batches`` outside DataLoader
    workers). Each batch's tensors are made from numpy views of one slot's array, so they hold a
    reference to it; a slot is taken again only when nothing but this pool refers to it (the
    consumer has dropped that batch's every tensor and view). A batch's worth of fresh memory
    comes from the system and faults in page by page on first touch: with a few batches alive at
    once (a consumer that keeps the last ones), decoding into it took 3.5x as long as into reused
    memory (a one-off timing, 2026-12-06). With every slot in use a batch gets memory of its own,
    as without the pool."""

    def __init__(self, count: int = 4):
        self._owners: list[np.ndarray | None] = [None] * count

    def take(self, specs: Sequence[tuple[tuple, np.dtype]]) -> list[torch.Tensor]:
        offsets, nbytes = _layout(specs)
        owners, owner = self._owners, None
        free = [k for k in range(len(owners)) if owners[k] is None or sys.getrefcount(owners[k]) == 2]
        for k in free:  # (the list's reference and the call's: nobody else holds the slot)
            if owners[k] is not None and owners[k].nbytes >= nbytes:
                owner = owners[k]
                break
        else:
            owner = np.empty(nbytes, np.uint8)
            if free:
                owners[free[0]] = owner
        return [_field_of(owner, o, shape, dtype) for (shape, dtype), o in zip(specs, offsets)]


class _SharedSlots:
    """Reused shared memory for the batches of one DataLoader worker, so that a batch does not
    need a new shared-memory segment (created, zeroed and faulted in here, sent as a file
    descriptor, mapped and faulted in again by the main process: 1.1 ms for a batch of 1.5 MB).

    ``flags`` (this worker's row of a shared array made by :class:`ShardLoader`) says which of
    the worker's slots the main process still uses: the worker sets a slot's flag when it fills
    the slot, the main process clears it once the batch it received from the slot is gone
    (:class:`_ReceivedSlots`); each flag thus has one writer per transition. A slot's segment
    crosses to the main process with the slot's first batch of an iteration; later batches carry
    only where each field lies in it. With every slot in use the batch gets a segment of its own, as without
    slots, so a consumer that keeps batches never blocks a worker."""

    def __init__(self, flags: np.ndarray, worker: int):
        self.flags, self.worker = flags, worker
        self._slots: list[torch.Tensor | None] = [None] * len(flags)
        self._taken: tuple[int, bool] | None = None  # (slot, its segment goes along) of the last take
        self.generation = 1  # what a filled slot's flag says: the iteration it was filled in
        # The iteration in which each slot's segment last went along: again in each iteration,
        # since a DataLoader drops what is in flight when an epoch is left early
        self._sent = [0] * len(flags)

    def take(self, specs: Sequence[tuple[tuple, np.dtype]]) -> list[torch.Tensor]:
        offsets, nbytes = _layout(specs)
        free = [k for k in range(len(self._slots)) if not self.flags[k]]
        k = next((k for k in free if self._slots[k] is not None and self._slots[k].numel() >= nbytes),
                 free[0] if free else None)
        if k is None:
            self._taken = None
            return _allocate(specs, shared=True)
        if self._slots[k] is None or self._slots[k].numel() < nbytes:
            self._slots[k], self._sent[k] = _new_tensor(nbytes, torch.uint8, shared=True), 0
        self.flags[k] = self.generation
        self._taken = (k, self._sent[k] != self.generation)
        self._sent[k] = self.generation
        flat = self._slots[k]
        return [flat[o:o + math.prod(shape) * np.dtype(dtype).itemsize].view(_torch_dtype(dtype)).view(shape)
                for (shape, dtype), o in zip(specs, offsets)]

    def message(self, batch: dict) -> dict:
        """``batch`` as it crosses to the main process: if its signals are in a slot, each is
        replaced by its place there (and the slot's segment goes along, the first time in an
        iteration)."""
        if self._taken is None:
            return batch
        k, new = self._taken
        self._taken = None
        base = self._slots[k].data_ptr()

        def place(t: torch.Tensor) -> _Place:
            return _Place(t.data_ptr() - base, tuple(t.shape), t.numpy().dtype.str)

        return {**_map_signals(batch, place), "__slot__": (self.worker, k, self._slots[k] if new else None)}


class _Place(NamedTuple):
    """Where a batch field lies in its slot: byte offset, shape, numpy dtype string."""
    offset: int
    shape: tuple
    dtype: str


def _map_signals(batch: dict, fn: Callable) -> dict:
    """``batch`` with ``fn`` applied to its signal fields (mix, each target, each extra)."""
    return {**batch, "mix": fn(batch["mix"]), "sources": {t: fn(x) for t, x in batch["sources"].items()},
            "extras": {m: fn(x) for m, x in batch["extras"].items()}}


class _ReceivedSlots:
    """The main process's side of :class:`_SharedSlots`: each worker slot's segment, mapped once,
    and the slots whose batches the consumer may still hold. A batch's tensors are made from
    numpy views of its slot's array, so they hold a reference to it; the slot is handed back to
    its worker once nothing else refers to that array."""

    def __init__(self, flags: torch.Tensor):
        self.shared_flags, self.flags = flags, flags.numpy()  # the tensor travels to spawned workers
        self._owners: dict[tuple[int, int], np.ndarray] = {}
        self._held: set[tuple[int, int]] = set()

    def release(self) -> None:
        for slot in [s for s in self._held if sys.getrefcount(self._owners[s]) == 2]:
            self._held.discard(slot)  # (the dict's reference and the call's: the batch is gone)
            self.flags[slot] = 0

    def forget(self, generation: int) -> None:
        """At the start of iteration ``generation`` of persistent workers: hand back the slots of
        batches made in an earlier one that never arrived (the consumer left that epoch early
        and the DataLoader dropped what was in flight). Batches of this iteration keep their
        slots (filled, not yet received), and so do those the consumer still holds."""
        for slot in zip(*np.nonzero((self.flags != 0) & (self.flags != generation))):
            if slot not in self._held:
                self.flags[slot] = 0

    def open(self, message: dict) -> dict:
        """The batch a worker sent: as it is, or its slot's fields as tensors."""
        if "__slot__" not in message:
            return message
        worker, k, segment = message.pop("__slot__")
        if segment is not None:
            self._owners[worker, k] = segment.numpy()
        owner = self._owners[worker, k]
        self._held.add((worker, k))
        return _map_signals(message, lambda place: _field_of(owner, place.offset, place.shape, place.dtype))


def collate_arrays(samples: Sequence[dict], *, shared: bool = False,
                   memory: _HeapSlots | _SharedSlots | None = None) -> dict:
    """:func:`collate_mixtures` of the items of decoded samples (:meth:`ShardDataset._decode`),
    the same values built straight from their arrays: the loader's batch path. ``shared``: for
    a DataLoader worker, the signals go in shared memory (:func:`_allocate`) and the small
    per-sample fields stay numpy arrays, which travel inside the batch's pickle
    (:class:`ShardLoader` makes them tensors). ``memory``: where the signals go instead (reused
    slots, :class:`_HeapSlots` or :class:`_SharedSlots`)."""
    lengths = [s["length"] for s in samples]

    def field_lengths(field: tuple[str, str]) -> list[int | None]:
        return [n if field in s["audio"] else None for s, n in zip(samples, lengths)]

    # (where, groups, lengths) of every stacked field: mix, then each target, then each extra
    fields = [(("mix",), [[s["mix"]] for s in samples], lengths)]
    fields += [(("sources", t), [s["sources"][t] for s in samples], field_lengths(("sources", t)))
               for t in samples[0]["sources"]]
    fields += [(("extras", m), [[s["extras"][m]] for s in samples], field_lengths(("extras", m)))
               for m in samples[0]["extras"]]
    specs = [(_stacked_shape(groups, n), next(a for g in groups for a in g).dtype) for _, groups, n in fields]
    stacked = {}
    for (where, groups, _), out in zip(fields, memory.take(specs) if memory else _allocate(specs, shared)):
        _stack_into(out.numpy(), groups)
        stacked[where] = out if where[0] == "sources" else out[:, 0]
    num_sources = np.array([s["num_sources"] for s in samples], dtype=np.int64)
    sources = {t: stacked[("sources", t)] for t in samples[0]["sources"]}
    width = max((v.shape[1] for v in sources.values()), default=int(num_sources.max()))
    small = {
        "num_sources": num_sources,
        "source_mask": np.arange(width)[None, :] < num_sources[:, None],
        "num_samples": np.array([max(s["mix"].shape[-1], n or 0) for s, n in zip(samples, lengths)], dtype=np.int64),
        "start_sample": np.array([s["start_sample"] for s in samples], dtype=np.int64),
    }
    if not shared:
        small = _small_tensors(small)
    return {
        "keys": [s["key"] for s in samples],
        "mix": stacked[("mix",)],
        "sources": sources,
        **small,
        "extras": {m: stacked[("extras", m)] for m in samples[0]["extras"]},
        "meta": [s["meta"] for s in samples],
    }


_SMALL_FIELDS = ("num_sources", "source_mask", "num_samples", "start_sample")


def _small_tensors(batch: dict) -> dict:
    """The per-sample fields of a batch from :func:`collate_arrays`, numpy arrays as tensors."""
    return {**batch, **{k: torch.from_numpy(batch[k]) for k in _SMALL_FIELDS if isinstance(batch.get(k), np.ndarray)}}


def _as_is(batch):
    return batch  # not torch's default_convert, which would walk every batch's meta


class _InWorkers(IterableDataset):
    """What a ShardLoader's DataLoader iterates: the dataset's collated batches
    (:meth:`ShardDataset.iter_batches`, ``batched``: workers hand over whole batches, in the
    reused slots of ``flags`` when it is given, see :class:`_SharedSlots`) or its items. With
    persistent workers ``position`` (shared memory) carries the epoch and start position the
    main process set before each iteration to the workers' copies of the dataset, and the
    iteration's number (1-255, cycling), which marks the slots filled in it."""

    def __init__(self, dataset: ShardDataset, batched: bool, flags: torch.Tensor | None = None,
                 position: torch.Tensor | None = None):
        self.dataset, self.batched, self.flags, self.position = dataset, batched, flags, position
        self._slots: _SharedSlots | None = None

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        generation = 1
        if info is not None and self.position is not None:
            epoch, start, generation = (int(v) for v in self.position)
            self.dataset.sampler.epoch, self.dataset.sampler.start = epoch, start
        if not self.batched:
            yield from self.dataset
        elif info is None or self.flags is None:
            yield from self.dataset.iter_batches()
        else:
            if self._slots is None:  # kept for the next epochs when the worker persists
                self._slots = _SharedSlots(self.flags.numpy()[info.id], info.id)
            self._slots.generation = generation
            for batch in self.dataset.iter_batches(self._slots):
                yield self._slots.message(batch)


def _settings(dataset: ShardDataset) -> tuple:
    """What persistent workers took from ``dataset`` when they started, but its epoch and
    position: scalars by value, anything else by identity."""
    def value(v):
        return v if isinstance(v, (int, float, str, bytes, tuple, frozenset, type(None))) else id(v)

    sampler = {k: value(v) for k, v in vars(dataset.sampler).items() if k not in ("epoch", "start", "consumed")}
    return tuple(sorted({**{k: value(v) for k, v in vars(dataset).items() if k not in ("sampler", "skipped")},
                         **{f"sampler.{k}": v for k, v in sampler.items()}}.items()))


class ShardLoader:
    """A DataLoader over a :class:`ShardDataset` that knows where it is, for exact resume.

    Batches by ``dataset.batch_size`` and counts the samples it has handed out, so
    :meth:`state_dict` is exact with any ``num_workers``. With the default ``collate_fn``
    (:func:`collate_mixtures`) the dataset's workers build the batches themselves
    (:meth:`ShardDataset.iter_batches`: the same values, nearly twice as fast); any other
    ``collate_fn`` is handed the items. Workers are started afresh for every epoch unless
    ``persistent_workers``: then they live as long as the loader, the epoch and position set in
    this process reach them through shared memory at the start of each iteration, and a change of
    any other setting of the dataset (its world size, batch size, crop, targets...) restarts them.
    Move batches to the device in the trainer rather than handing a DataLoader over this dataset
    to ``accelerate``'s ``prepare``: the dataset already splits by rank, and prepare would wrap
    it in an ``IterableDatasetShard`` that splits it again. Example::

        loader = ShardLoader(ShardDataset(d, batch_size=4, rank=r, world_size=2), num_workers=2)
        loader.load_state_dict({"epoch": 3, "consumed": 40})         # resume after 10 batches
        loader.load_state_dict({"epoch": 3, "global_consumed": 80})  # the same, saved by any world size
    """

    def __init__(self, dataset: ShardDataset, *, num_workers: int = 0,
                 collate_fn: Callable[[list[dict]], object] = collate_mixtures, pin_memory: bool = False,
                 prefetch_factor: int | None = None, multiprocessing_context=None, persistent_workers: bool = False):
        self.dataset = dataset
        self.num_workers = num_workers
        self.persistent_workers = persistent_workers and num_workers > 0
        self._kept: tuple | None = None  # (settings, DataLoader, received slots) of persistent workers
        self._generation = 0  # persistent workers' iterations, 1-255 cycling (see _InWorkers)
        # With the default collation the dataset builds whole batches itself (each signal copied
        # once, no per-item tensors); any other collate_fn gets the items.
        self._batched = collate_fn is collate_mixtures
        self._loader_kwargs = dict(batch_size=None if self._batched else dataset.batch_size, num_workers=num_workers,
                                   collate_fn=_as_is if self._batched else collate_fn, pin_memory=pin_memory,
                                   prefetch_factor=prefetch_factor,
                                   multiprocessing_context=multiprocessing_context)
        self._consumed = dataset.start

    def __len__(self) -> int:
        """Batches the next iteration yields: the epoch's, fewer after a resume; equal on every rank."""
        return math.ceil((self.dataset.num_samples - self.dataset.start) / self.dataset.batch_size)

    def __iter__(self) -> Iterator:
        ds = self.dataset
        self._consumed = ds.start
        # Batches come out in rank-sequence order, every one full except the epoch's last after a
        # resume inside a batch, so the count is exact without looking inside the (user-collated)
        # batches.
        loader, slots = self._data_loader()
        batches = iter(loader)  # persistent workers have started this iteration when it returns
        if slots is not None and self.persistent_workers:
            slots.forget(self._generation)
        for batch in batches:
            if slots is not None:
                slots.release()
                batch = slots.open(batch)
            if self._batched:
                batch = _small_tensors(batch)
            self._consumed = min(self._consumed + ds.batch_size, ds.num_samples)
            yield batch

    def _data_loader(self) -> tuple[DataLoader, _ReceivedSlots | None]:
        ds = self.dataset
        self._generation = self._generation % 255 + 1
        if self._kept is not None and self._kept[0] == _settings(ds):
            self._kept[1].dataset.position.copy_(torch.tensor([ds.epoch, ds.start, self._generation]))
            return self._kept[1:]
        self._kept = None  # persistent workers of other settings end with their DataLoader
        # Worker slots: the batches in flight (prefetch_factor per worker), the one being built
        # and the consumer's (which it drops when it asks for the next)
        slots = None
        if self._batched and self.num_workers and not self._loader_kwargs["pin_memory"]:
            per_worker = (self._loader_kwargs["prefetch_factor"] or 2) + 3
            slots = _ReceivedSlots(torch.zeros((self.num_workers, per_worker), dtype=torch.uint8).share_memory_())
        position = None
        if self.persistent_workers:
            position = torch.tensor([ds.epoch, ds.start, self._generation], dtype=torch.int64).share_memory_()
        data = _InWorkers(ds, self._batched, slots and slots.shared_flags, position)
        loader = DataLoader(data, **self._loader_kwargs, persistent_workers=self.persistent_workers)
        if self.persistent_workers:
            self._kept = (_settings(ds), loader, slots)
        return loader, slots

    def set_epoch(self, epoch: int) -> None:
        """See :meth:`ShardDataset.set_epoch`."""
        if epoch != self.dataset.epoch:
            self._consumed = 0
        self.dataset.set_epoch(epoch)

    def state_dict(self) -> dict:
        """``{"epoch", "consumed", "global_consumed"}``: samples of the epoch this rank has
        received, and the position in the global sequence, for checkpoints (see
        :meth:`ShardDataset.load_state_dict`). ``global_consumed`` is left out only after a
        resume inside a batch, where this rank's position is no global batch boundary."""
        return self.dataset._state(self._consumed)

    def load_state_dict(self, state: dict) -> None:
        """Resume: the next iteration starts after ``state["consumed"]`` samples of ``state["epoch"]``
        (or at ``state["global_consumed"]``, see :meth:`ShardDataset.load_state_dict`)."""
        self.dataset.load_state_dict(state)
        self._consumed = self.dataset.start


class PairedLoader:
    """Two streams stepped together: each batch of ``main`` gets a batch of ``extra`` under ``key``.

    ``extra`` (e.g. unlabelled mixtures next to labelled ones) runs through its own epochs
    independently: it restarts at its next epoch whenever it ends, however long ``main``'s epoch
    is. The state is ``main``'s with ``extra``'s under ``key``, so resume is exact for both.
    Example::

        loader = PairedLoader(ShardLoader(labelled), ShardLoader(unlabelled), key="unlabelled")
        for batch in loader:                 # batch["mix"], ..., batch["unlabelled"]["mix"]
            ...
    """

    def __init__(self, main: ShardLoader, extra: ShardLoader, key: str = "extra"):
        self.main, self.extra, self.key = main, extra, key
        self.dataset = main.dataset
        self._extra_batches: Iterator | None = None

    def _extra_stream(self) -> Iterator:
        while True:
            yield from self.extra
            self.extra.set_epoch(self.extra.dataset.epoch + 1)

    def __len__(self) -> int:
        return len(self.main)

    def __iter__(self) -> Iterator:
        if self._extra_batches is None:
            self._extra_batches = self._extra_stream()
        for batch in self.main:
            batch[self.key] = next(self._extra_batches)
            yield batch

    def set_epoch(self, epoch: int) -> None:
        self.main.set_epoch(epoch)

    def state_dict(self) -> dict:
        return {**self.main.state_dict(), self.key: self.extra.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.main.load_state_dict({k: v for k, v in state.items() if k != self.key})
        self.extra.load_state_dict(state[self.key])
        self._extra_batches = None
