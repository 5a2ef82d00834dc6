"""Atomic shard writing, shard sidecars and the corpus index.

A shard is written to ``{name}.tmp`` and renamed when complete; then its sidecar
``{split}-%06d.json`` is written the same way. A shard counts as complete only when its sidecar
exists and the tar's size and sha256 match it, so a rerun skips complete shards and rewrites
anything partial. ``index.json`` is assembled from the sidecars at the end of a run.
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from hubbub.shards.format import DEFAULT_STORAGE, shard_name

INDEX_NAME = "index.json"
FORMAT_VERSION = 1


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def sidecar_path(tar_path: str | Path) -> Path:
    tar_path = Path(tar_path)
    return tar_path.with_suffix(".json")


@dataclass
class ShardPlan:
    """One shard to write: samples ``first_sample .. first_sample + num_samples - 1`` of ``split``."""

    split: str
    shard_index: int
    first_sample: int
    num_samples: int

    @property
    def name(self) -> str:
        return shard_name(self.split, self.shard_index)


def plan_split(split: str, num_samples: int, samples_per_shard: int) -> list[ShardPlan]:
    """The shards of a split of ``num_samples``, ``samples_per_shard`` each (the last may be short)."""
    return [ShardPlan(split, i, first, min(samples_per_shard, num_samples - first))
            for i, first in enumerate(range(0, num_samples, samples_per_shard))]


@dataclass
class ShardRecord:
    """What a sidecar says about one finished shard."""

    name: str
    split: str
    shard_index: int
    first_sample: int
    num_planned: int
    keys: list[str] = field(default_factory=list)
    durations_s: list[float] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)  # {"index", "key", "error"}: samples skipped
    size_bytes: int = 0
    sha256: str = ""

    @property
    def num_samples(self) -> int:
        return len(self.keys)


class _HashingFile:
    """A binary file that also hashes (sha256) and counts what goes through it."""

    def __init__(self, f):
        self.file, self.hash, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()


class ShardWriter:
    """Write one shard atomically: ``with ShardWriter(path) as w: w.write(members)``.

    ``members`` maps member names (``"mix.flac"``, ``"json"``) to bytes and carries ``__key__``.
    Nothing appears under the final name unless the context exits cleanly; then ``sha256`` and
    ``size_bytes`` describe the file, hashed as it was written (no second read).

    While samples are being made, a thread pushes what is written so far to the disk
    (``fdatasync``), so the ``fsync`` before the rename has only the last sample left to wait for:
    the wait for the disk overlaps the rendering of the next samples instead of following them.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self._tar: tarfile.TarFile | None = None
        self._mtime = 0.0  # fixed mtime: identical samples give identical shard bytes
        self._flusher: threading.Thread | None = None
        self._flush_error: OSError | None = None
        self.sha256: str | None = None
        self.size_bytes: int | None = None

    def __enter__(self) -> "ShardWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "wb")
        self._hashing = _HashingFile(self._file)
        # members are copied in 1 MiB blocks, not tarfile's 16 KiB: half the writing time
        self._tar = tarfile.open(fileobj=self._hashing, mode="w", format=tarfile.USTAR_FORMAT, copybufsize=1 << 20)
        return self

    def write(self, members: Mapping[str, bytes]) -> None:
        import io

        key = members["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key must not contain dots or slashes: {key!r}")
        for name in sorted(k for k in members if not k.startswith("__")):
            data = members[name]
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size = len(data)
            info.mtime = self._mtime
            info.mode = 0o444
            info.uname = info.gname = "hubbub"
            self._tar.addfile(info, io.BytesIO(data))
        if self._flusher is None or not self._flusher.is_alive():
            self._file.flush()
            self._flusher = threading.Thread(target=self._sync, args=(self._file.fileno(),), daemon=True)
            self._flusher.start()

    def _sync(self, fd: int) -> None:
        try:
            getattr(os, "fdatasync", os.fsync)(fd)     # macOS has no fdatasync
        except OSError as exc:  # raised in the writing thread, at exit
            self._flush_error = exc

    def __exit__(self, exc_type, exc, tb) -> None:
        complete = False
        try:
            if self._flusher is not None:
                self._flusher.join()
            if exc_type is None:
                if self._flush_error is not None:
                    raise self._flush_error
                self._tar.close()
                self._file.flush()
                os.fsync(self._file.fileno())
                complete = True
        finally:
            self._file.close()
            if complete:
                os.replace(self.tmp, self.path)
                self.sha256, self.size_bytes = self._hashing.hash.hexdigest(), self._hashing.size
            else:
                self.tmp.unlink(missing_ok=True)


# What makes a corpus directory one corpus: a rerun must match its recipe.json on all of these.
IDENTITY_KEYS = ("kind", "recipe_hash", "sources_hash", "seed", "samples_per_shard", "splits", "positions", "storage")


def check_same_corpus(out_dir: str | Path, identity: dict, labels: Mapping[str, str] | None = None) -> None:
    """Refuse to add to ``out_dir`` when its ``recipe.json`` describes another corpus than
    ``identity`` (any of :data:`IDENTITY_KEYS` differs); ``labels`` renames keys in the error."""
    path = Path(out_dir) / "recipe.json"
    if not path.exists():
        return
    old = json.loads(path.read_text())
    if "storage" in identity:  # corpora from before storage was recorded were 24-bit FLAC
        old.setdefault("storage", DEFAULT_STORAGE)
    for key in IDENTITY_KEYS:
        if old.get(key) != identity.get(key):
            what = (labels or {}).get(key, key)
            raise ValueError(f"{out_dir} holds a corpus made with different {what} ({old.get(key)!r} vs "
                             f"{identity.get(key)!r}): use another output folder, or delete it to start over")


def write_sidecar(record: ShardRecord, out_dir: str | Path, writer: ShardWriter | None = None) -> Path:
    """The sidecar of a finished shard; its size and sha256 from ``writer`` (which hashed the
    shard as it wrote it) or, without one, read back from the file."""
    tar_path = Path(out_dir) / record.name
    if writer is not None and writer.sha256 is not None:
        record.size_bytes, record.sha256 = writer.size_bytes, writer.sha256
    else:
        record.size_bytes = tar_path.stat().st_size
        record.sha256 = sha256_file(tar_path)
    path = sidecar_path(tar_path)
    atomic_write_json(path, record.__dict__)
    return path


def read_sidecar(path: str | Path) -> ShardRecord:
    with open(path) as f:
        return ShardRecord(**json.load(f))


def shard_is_complete(out_dir: str | Path, name: str, num_planned: int | None = None) -> bool:
    """A shard is complete when its sidecar exists and the tar matches its size and sha256."""
    tar_path = Path(out_dir) / name
    side = sidecar_path(tar_path)
    if not (tar_path.exists() and side.exists()):
        return False
    try:
        rec = read_sidecar(side)
    except (OSError, ValueError, TypeError):
        return False
    if num_planned is not None and rec.num_planned != num_planned:
        return False
    return rec.size_bytes == tar_path.stat().st_size and rec.sha256 == sha256_file(tar_path)


def build_index(out_dir: str | Path, records: Iterable[ShardRecord], *, recipe: Mapping,
                extra: Mapping | None = None) -> dict:
    """Assemble ``index.json`` from shard records: recipe, counts, durations, sha256 per shard."""
    splits: dict[str, dict] = {}
    shards = []
    for rec in sorted(records, key=lambda r: (r.split, r.shard_index)):
        s = splits.setdefault(rec.split, {"num_samples": 0, "num_failed": 0, "duration_s": 0.0, "shards": 0})
        s["num_samples"] += rec.num_samples
        s["num_failed"] += len(rec.failed)
        s["duration_s"] += float(sum(rec.durations_s))
        s["shards"] += 1
        shards.append({"name": rec.name, "split": rec.split, "num_samples": rec.num_samples,
                       "duration_s": round(float(sum(rec.durations_s)), 3),
                       "size_bytes": rec.size_bytes, "sha256": rec.sha256})
    for s in splits.values():
        s["duration_s"] = round(s["duration_s"], 3)
        s["hours"] = round(s["duration_s"] / 3600.0, 4)
    index = {"format_version": FORMAT_VERSION, "recipe": dict(recipe), "splits": splits, "shards": shards}
    if extra:
        index.update(extra)
    atomic_write_json(Path(out_dir) / INDEX_NAME, index)
    return index


def load_index(corpus_dir: str | Path) -> dict:
    path = Path(corpus_dir) / INDEX_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {corpus_dir} a hubbub corpus (made by hubbub simulate)?")
    with open(path) as f:
        return json.load(f)
