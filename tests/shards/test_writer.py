import os
import tarfile

import numpy as np
import pytest

from hubbub.shards.writer import ShardWriter, sha256_file


def _samples(n, size=300_000):
    rng = np.random.default_rng(0)
    return [{"__key__": f"train_{i:08d}", "json": b"{}", "mix.wav": rng.bytes(size)} for i in range(n)]


def test_writer_hashes_what_lands_on_disk(tmp_path):
    path = tmp_path / "train-000000.tar"
    with ShardWriter(path) as w:
        for members in _samples(5):
            w.write(members)
    assert w.sha256 == sha256_file(path) and w.size_bytes == os.path.getsize(path)
    assert not list(tmp_path.glob("*.tmp"))
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names == [f"train_{i:08d}.{m}" for i in range(5) for m in ("json", "mix.wav")]


def test_failed_shard_leaves_nothing_and_no_hash(tmp_path):
    path = tmp_path / "train-000000.tar"
    with pytest.raises(RuntimeError):
        with ShardWriter(path) as w:
            w.write(_samples(1)[0])
            raise RuntimeError("rendering failed")
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))
    assert w.sha256 is None


def test_disk_error_while_syncing_is_raised_not_renamed(tmp_path, monkeypatch):
    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken, raising=False)
    path = tmp_path / "train-000000.tar"
    with pytest.raises(OSError, match="Input/output"):
        with ShardWriter(path) as w:
            for members in _samples(3, size=1000):
                w.write(members)
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))
