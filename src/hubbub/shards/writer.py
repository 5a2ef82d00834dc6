"""Atomic shard writing, shard sidecars and the corpus index, on a local disk or in an object store.

A shard is written to a local file under a temporary name unique to the writing process and
renamed when complete; for a corpus in an object store (any fsspec URL, :mod:`hubbub.storage`)
it is built in local scratch and uploaded in one PUT. Then its sidecar ``{split}-%06d.json`` is
written the same way. A shard counts as complete when its sidecar exists and the shard's size
equals the one the sidecar records: a rerun finds what is complete from one listing and the
sidecars, with no shard read back. The sidecar also keeps the shard's sha256, which
``hubbub shards verify`` checks on demand.

The sidecar records where each member's bytes lie in the tar (``members``: key -> member ->
``[offset, size]``), so a reader fetches exactly the members it needs with ranged reads; the
driver gathers them per split into ``{split}.members.npz`` (:func:`write_members_table`) next to
``index.json``, which it writes last.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
from tqdm import tqdm

from hubbub import storage
from hubbub.shards.format import DEFAULT_STORAGE, shard_name

INDEX_NAME = "index.json"
LOCK_NAME = ".hubbub.lock"  # held while a run writes the corpus (hubbub.storage.exclusive)
# 2: sidecars record each member's byte range, and each split has a members table. Corpora of
# version 1 still read (the reader streams their tars; `hubbub shards index` upgrades them).
FORMAT_VERSION = 2
_TAR_BLOCK = 512


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, local or at any fsspec URL."""
    with storage.open_file(path) as f:
        return sha256_fileobj(f, chunk)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace ``path`` (a local path or any fsspec URL) with ``data`` atomically."""
    storage.write_bytes(path, data)


def atomic_write_json(path: str | Path, obj) -> None:
    storage.write_json(path, obj)


def sidecar_path(tar_path: str | Path) -> str | Path:
    """``x/train-000001.json`` for ``x/train-000001.tar`` (a Path stays a Path, a URL a string)."""
    if isinstance(tar_path, Path):
        return tar_path.with_suffix(".json")
    return str(tar_path)[: -len(".tar")] + ".json"


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
    # key -> member -> [offset, size] of the member's bytes in the tar (format version 2)
    members: dict[str, dict[str, list[int]]] | None = None

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
        # unique to this process and writer: concurrent runs never write into each other's file
        self.tmp = storage.temporary_name(self.path)
        self.members: dict[str, dict[str, list[int]]] = {}
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
        key = members["__key__"]
        if "." in key or "/" in key:
            raise ValueError(f"sample key must not contain dots or slashes: {key!r}")
        where = self.members.setdefault(key, {})
        for name in sorted(k for k in members if not k.startswith("__")):
            data = members[name]
            info = tarfile.TarInfo(f"{key}.{name}")
            info.size = len(data)
            info.mtime = self._mtime
            info.mode = 0o444
            info.uname = info.gname = "hubbub"
            # a USTAR header is one block (longer names are refused by tarfile), the data follows
            where[name] = [self._hashing.size + _TAR_BLOCK, len(data)]
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


def scratch_dir() -> Path:
    """Local scratch for shards bound for an object store: ``HUBBUB_SCRATCH``, else the system's
    temporary folder. A shard lies there only between its writing and its upload."""
    root = Path(os.environ.get("HUBBUB_SCRATCH") or tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def writing_shard(out_dir: str | Path, name: str) -> Iterator[ShardWriter]:
    """A :class:`ShardWriter` for shard ``name`` of the corpus at ``out_dir`` (a folder or URL).

    In a folder the shard is renamed into place when the block ends cleanly; for an object store
    it is written in local scratch (:func:`scratch_dir`) and uploaded in one PUT then. Either way
    nothing appears under the shard's name if the block raises."""
    if storage.is_local(out_dir):
        with ShardWriter(storage.local_path(out_dir) / name) as writer:
            yield writer
        return
    folder = Path(tempfile.mkdtemp(prefix="hubbub-shard-", dir=scratch_dir()))
    try:
        with ShardWriter(folder / name) as writer:
            yield writer
        storage.put_file(folder / name, storage.join(out_dir, name))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# What makes a corpus directory one corpus: a rerun must match its recipe.json on all of these.
IDENTITY_KEYS = ("kind", "recipe_hash", "sources_hash", "seed", "samples_per_shard", "splits", "positions", "storage")


def check_same_corpus(out_dir: str | Path, identity: dict, labels: Mapping[str, str] | None = None) -> None:
    """Refuse to add to ``out_dir`` when its ``recipe.json`` describes another corpus than
    ``identity`` (any of :data:`IDENTITY_KEYS` differs); ``labels`` renames keys in the error."""
    try:
        old = storage.read_json(storage.join(out_dir, "recipe.json"))
    except FileNotFoundError:
        # A new folder. Every run records recipe.json before its first shard, so shards or an index
        # without one are another tool's (or a hand-made) corpus, which a run must not add to.
        theirs = sorted(n for n in storage.list_sizes(out_dir) if n == "index.json" or n.endswith(".tar"))
        if theirs:
            raise ValueError(f"{out_dir} holds a corpus without recipe.json ({', '.join(theirs[:3])}"
                             f"{', ...' if len(theirs) > 3 else ''}), made by something else: use another output "
                             "folder") from None
        return
    if "storage" in identity:  # corpora from before storage was recorded were 24-bit FLAC
        old.setdefault("storage", DEFAULT_STORAGE)
    for key in IDENTITY_KEYS:
        if old.get(key) != identity.get(key):
            what = (labels or {}).get(key, key)
            raise ValueError(f"{out_dir} holds a corpus made with different {what} ({old.get(key)!r} vs "
                             f"{identity.get(key)!r}): use another output folder, or delete it to start over")


def fingerprint(obj) -> str:
    """16 hex digits of the sha256 of ``obj`` as sorted-key JSON: the ``recipe_hash`` and
    ``sources_hash`` an ingested corpus records (its identity, which a rerun must match)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def count_reasons(skipped: Iterable[Mapping]) -> str:
    """The ``reason`` of each skipped item, counted for a one-line message: ``"2 silent, 1 unreadable"``."""
    counts = Counter(s["reason"] for s in skipped)
    return ", ".join(f"{n} {r}" for r, n in sorted(counts.items())) or "none"


def write_sidecar(record: ShardRecord, out_dir: str | Path, writer: ShardWriter | None = None) -> str | Path:
    """The sidecar of a finished shard in ``out_dir`` (a folder or URL); its size, sha256 and
    member ranges from ``writer`` (which recorded them as it wrote the shard) or, without one,
    read back from the shard."""
    tar_url = storage.join(out_dir, record.name)
    if writer is not None and writer.sha256 is not None:
        record.size_bytes, record.sha256, record.members = writer.size_bytes, writer.sha256, writer.members
    else:
        with storage.open_file(tar_url) as f:
            record.sha256 = sha256_fileobj(f)
        record.size_bytes = storage.size(tar_url)
        record.members = member_ranges(tar_url)
    path = sidecar_path(tar_url)
    atomic_write_json(path, record.__dict__)
    return path


def sha256_fileobj(f, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    while block := f.read(chunk):
        h.update(block)
    return h.hexdigest()


def member_ranges(tar_url: str | Path) -> dict[str, dict[str, list[int]]]:
    """key -> member -> [offset, size] of every member of a tar, from its headers only (data is
    seeked over, so a remote shard costs a few ranged reads, not a download)."""
    out: dict[str, dict[str, list[int]]] = {}
    with storage.open_file(tar_url) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for info in tar:
            if info.isfile() and "." in info.name:
                key, _, member = info.name.partition(".")
                out.setdefault(key, {})[member] = [info.offset_data, info.size]
    return out


def read_sidecar(path: str | Path) -> ShardRecord:
    return record_from_json(storage.read_json(path), path)


def record_from_json(obj, where: str | Path) -> ShardRecord:
    """A sidecar's record from its parsed JSON, or from its bytes; a damaged one names ``where``."""
    if isinstance(obj, (bytes, str)):
        try:
            obj = json.loads(obj)
        except ValueError as exc:
            raise storage.StorageError(f"{where} is not valid JSON ({exc}): damaged or partly written") from None
    try:
        return ShardRecord(**obj)
    except TypeError as exc:
        raise storage.StorageError(f"{where} is not a shard sidecar: {exc}") from None


def complete_shards(out_dir: str | Path, planned: Mapping[str, int | None]) -> dict[str, ShardRecord]:
    """The shards of ``planned`` (name -> planned sample count, or None for any) that are complete
    in ``out_dir``: sidecar present and parsing, the planned count, and the shard's size equal to
    the size the sidecar records. One listing of the folder and one read per sidecar (concurrent
    on object stores); no shard is read, so a rerun over a large corpus starts at once."""
    sizes = storage.list_sizes(out_dir)
    candidates = [n for n in planned if n in sizes and sidecar_name(n) in sizes]
    raw = storage.read_many([storage.join(out_dir, sidecar_name(n)) for n in candidates])
    done = {}
    for name in candidates:
        data = raw.get(storage.join(out_dir, sidecar_name(name)))
        try:
            rec = record_from_json(data, name) if data is not None else None
        except storage.StorageError:
            continue  # a damaged sidecar: the shard is rewritten
        if rec is None or (planned[name] is not None and rec.num_planned != planned[name]):
            continue
        if rec.size_bytes == sizes[name]:
            done[name] = rec
    return done


def sidecar_name(tar_name: str) -> str:
    return tar_name[: -len(".tar")] + ".json"


def members_table_name(split: str) -> str:
    return f"{split}.members.npz"


def write_members_table(out_dir: str | Path, split: str, records: Iterable[ShardRecord]) -> str | None:
    """``{split}.members.npz``: the split's keys in shard order and, per member name, each
    sample's byte range in its shard, so a reader loads a whole split's layout in one read, and
    only the columns it needs. Arrays only (loaded with ``allow_pickle=False``), compressed::

        keys (N,) bytes; shard (N,) int32 (position among index.json's shards of the split);
        offset:{member} (N,) int64 and size:{member} (N,) int64, -1 where a sample lacks it

    None (nothing written) when a record has no member ranges (shards of format version 1)."""
    records = sorted(records, key=lambda r: r.shard_index)
    if any(r.members is None for r in records):
        return None
    keys = [k for r in records for k in r.keys]
    arrays = {"keys": np.array(keys, dtype="S"),
              "shard": np.repeat(np.arange(len(records), dtype=np.int32), [len(r.keys) for r in records])}
    for m in sorted({m for r in records for k in r.keys for m in r.members[k]}):
        ranges = np.array([r.members[k].get(m, (-1, -1)) for r in records for k in r.keys], dtype=np.int64)
        arrays[f"offset:{m}"], arrays[f"size:{m}"] = ranges[:, 0], ranges[:, 1]
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    url = storage.join(out_dir, members_table_name(split))
    atomic_write_bytes(url, buf.getvalue())
    return url


def read_members_table(corpus_dir: str | Path, split: str, wanted=None) -> dict | None:
    """``{"keys", "shard", "member_names", "offsets" (N, K), "sizes" (N, K)}`` of the split's
    members table (:func:`write_members_table`) for the members ``wanted(name)`` accepts (all by
    default; the others are not even read from the store), or None where the corpus has none."""
    url = storage.join(corpus_dir, members_table_name(split))
    try:
        f = storage.open_file(url)
    except FileNotFoundError:
        return None
    try:
        with f, np.load(f, allow_pickle=False) as z:
            names = sorted(n.split(":", 1)[1] for n in z.files if n.startswith("offset:"))
            names = [n for n in names if wanted is None or wanted(n)]
            keys, shard = z["keys"], z["shard"]
            offsets = np.stack([z[f"offset:{n}"] for n in names], axis=1) if names else np.empty((len(keys), 0), np.int64)
            sizes = np.stack([z[f"size:{n}"] for n in names], axis=1) if names else np.empty((len(keys), 0), np.int64)
    except (ValueError, KeyError, OSError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            return None
        raise storage.StorageError(f"{url} is damaged ({exc}): rebuild it with `hubbub shards index {corpus_dir}`")
    return {"keys": keys, "shard": shard, "member_names": np.array(names), "offsets": offsets, "sizes": sizes}


def build_index(out_dir: str | Path, records: Iterable[ShardRecord], *, recipe: Mapping,
                extra: Mapping | None = None) -> dict:
    """Assemble ``index.json`` from shard records (recipe, counts, durations, size and sha256 per
    shard), after each split's members table; ``index.json`` is written last."""
    records = list(records)
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
    version = FORMAT_VERSION
    for split in splits:
        if write_members_table(out_dir, split, [r for r in records if r.split == split]) is None:
            version = 1
    for s in splits.values():
        s["duration_s"] = round(s["duration_s"], 3)
        s["hours"] = round(s["duration_s"] / 3600.0, 4)
    index = {"format_version": version, "recipe": dict(recipe), "splits": splits, "shards": shards}
    if extra:
        index.update(extra)
    atomic_write_json(storage.join(out_dir, INDEX_NAME), index)
    return index


def index_members(corpus_dir: str | Path, *, progress: bool = False) -> dict:
    """Give a corpus the member byte ranges the reader fetches by (``hubbub shards index``): each
    sidecar without them gets them from its shard's tar headers (data is seeked over: one pass,
    header reads only), then each split's members table is written and ``index.json`` says
    format version 2. Also rebuilds stale tables after shards were rewritten (codec tokens).
    Refuses a shard whose size differs from its sidecar's. Returns the new index."""
    index = load_index(corpus_dir)
    records: dict[str, list[ShardRecord]] = {}
    for entry in tqdm(index["shards"], desc="shards", unit="shard", disable=not progress):
        tar_url = storage.join(corpus_dir, entry["name"])
        rec = read_sidecar(sidecar_path(tar_url))
        if rec.members is None:
            size = storage.size(tar_url)
            if size != rec.size_bytes:
                raise ValueError(f"{tar_url} has {size} bytes, its sidecar says {rec.size_bytes}: "
                                 f"run `hubbub shards verify {corpus_dir}` first")
            rec.members = member_ranges(tar_url)
            atomic_write_json(sidecar_path(tar_url), rec.__dict__)
        records.setdefault(entry["split"], []).append(rec)
    for split, recs in records.items():
        write_members_table(corpus_dir, split, recs)
    index["format_version"] = FORMAT_VERSION
    atomic_write_json(storage.join(corpus_dir, INDEX_NAME), index)
    return index


def load_index(corpus_dir: str | Path) -> dict:
    path = storage.join(corpus_dir, INDEX_NAME)
    try:
        return storage.read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {corpus_dir} a hubbub corpus (made by hubbub simulate)?") from None
