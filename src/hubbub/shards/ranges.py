"""Byte ranges of shard members, read locally (``os.pread``) or from an object store
(concurrent range requests through fsspec): what the reader, ``hubbub shards stats`` and other
tools that need one member of every sample fetch with. Free of torch, so that those tools start
quickly."""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np

from hubbub import storage
from hubbub.shards.writer import load_index, read_members_table


def read_members(corpus_dir: str | Path, split: str, member: str, *, window: int = 256
                 ) -> Iterator[tuple[str, bytes]] | None:
    """``(key, bytes)`` of one member (``"json"``, ``"mix.wav"``) of every sample of ``split`` in
    corpus order, fetched by byte range in windows of ``window`` concurrent requests; None when
    the corpus records no member ranges (format version 1). Samples without the member are
    left out."""
    table = read_members_table(corpus_dir, split, wanted=lambda name: name == member)
    if table is None:
        return None
    if not len(table["member_names"]):
        return iter(())
    column = 0
    shard_names = [s["name"] for s in load_index(corpus_dir)["shards"] if s["split"] == split]
    urls = [storage.join(corpus_dir, n) for n in shard_names]
    rows = np.flatnonzero(table["offsets"][:, column] >= 0)

    def gen():
        reader = RangeReader()
        try:
            for i in range(0, len(rows), window):
                chunk = rows[i:i + window]
                ranges = [(urls[table["shard"][r]], int(table["offsets"][r, column]),
                           int(table["offsets"][r, column] + table["sizes"][r, column])) for r in chunk]
                for r, data in zip(chunk, reader.read(ranges)):
                    yield table["keys"][r].decode(), data
        finally:
            reader.close()
    return gen()


class RangeReader:
    """Byte ranges of shards, local (``os.pread`` on descriptors kept open, a few shards at a
    time) or remote (fsspec ``cat_ranges``: one concurrent batch of range requests)."""

    def __init__(self, max_open: int = 16):
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._max_open = max_open

    def read(self, ranges: list[tuple[str, int, int]]) -> list[bytes]:
        if not ranges:
            return []
        if storage.is_local(ranges[0][0]):
            return [self._pread(url, start, end) for url, start, end in ranges]
        fs, _ = storage.filesystem(ranges[0][0])
        paths = [storage.filesystem(url)[1] for url, _, _ in ranges]
        try:
            out = fs.cat_ranges(paths, [r[1] for r in ranges], [r[2] for r in ranges], on_error="raise")
        except OSError as exc:
            raise storage.StorageError(f"{ranges[0][0]}: cannot read: {type(exc).__name__}: {exc}") from exc
        for (url, start, end), data in zip(ranges, out):
            if isinstance(data, Exception) or len(data) != end - start:
                raise storage.StorageError(f"{url}: bytes {start}-{end} could not be read ({data!r:.200}); "
                                           "the shard changed or is truncated: run `hubbub shards verify`")
        return out

    def will_need(self, ranges: list[tuple[str, int, int]]) -> None:
        """Local shards: have the kernel read ``ranges`` into the page cache in the background
        (``posix_fadvise`` WILLNEED), so that a later :meth:`read` of them does not wait on the
        disk; elsewhere (object stores, systems without it) nothing."""
        if not ranges or not hasattr(os, "posix_fadvise") or not storage.is_local(ranges[0][0]):
            return
        for url, start, end in ranges:
            try:
                os.posix_fadvise(self._fd(url), start, end - start, os.POSIX_FADV_WILLNEED)
            except OSError:
                return  # a hint: a shard that cannot be opened fails where it is read

    def _fd(self, url: str) -> int:
        """A descriptor of ``url`` kept open (the last ``max_open`` used)."""
        fd = self._fds.get(url)
        if fd is not None:
            self._fds.move_to_end(url)
            return fd
        fd = os.open(storage.local_path(url), os.O_RDONLY)
        if len(self._fds) >= self._max_open:
            os.close(self._fds.popitem(last=False)[1])
        self._fds[url] = fd
        return fd

    def _pread(self, url: str, start: int, end: int) -> bytes:
        try:
            data = os.pread(self._fd(url), end - start, start)
        except OSError as exc:  # gone, a directory or a dangling link in its place, unreadable
            raise storage.StorageError(f"{url}: cannot read ({exc.strerror or exc}): the shard is missing or damaged; "
                                       "run `hubbub shards verify`") from None
        if len(data) != end - start:
            raise storage.StorageError(f"{url}: truncated (bytes {start}-{end} asked, {len(data)} read): "
                                       "run `hubbub shards verify`")
        return data

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
