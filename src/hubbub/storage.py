"""Where corpora live: a local path or any URL that fsspec resolves (``s3://``, ``gs://``, ``az://``,
``file://``, ``memory://``, ...).

Every function takes a URL string (a plain path is a local URL) and works the same on a local
disk and in an object store, with the atomicity each offers:

* local files are written under a unique temporary name in the same folder, synced and renamed
  over the final name (never half a file under the final name, and two processes writing the
  same file never share a temporary name);
* an object is created by one PUT (``pipe``/``put``), which object stores apply atomically:
  readers see the old object or the whole new one.

An unknown scheme, or a scheme whose fsspec package is not installed, is a :class:`StorageError`
with one line that says what to do (never a local folder named ``s3:``). Credentials and options
come from the usual places for each protocol (environment, config files), as for fsspec itself;
``HUBBUB_STORAGE_OPTIONS`` (JSON, ``{"s3": {"endpoint_url": ...}}``) adds per-protocol options.

Example::

    from hubbub import storage
    storage.write_json(storage.join("s3://bucket/corpus", "index.json"), {"format_version": 2})
    storage.read_json("s3://bucket/corpus/index.json")
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import fsspec
from fsspec.implementations.local import LocalFileSystem

# Extras that bring each protocol's fsspec package (pyproject.toml).
_EXTRA_OF = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs", "az": "azure", "abfs": "azure", "abfss": "azure"}


_LOCAL = LocalFileSystem()


def cache_dir() -> Path:
    """hubbub's local cache (source indexes, the default voices, mirrors of runs in object
    stores): ``$HUBBUB_CACHE``, else ``~/.cache/hubbub``."""
    return Path(os.environ.get("HUBBUB_CACHE", Path.home() / ".cache" / "hubbub"))


class StorageError(OSError, ValueError):
    """A URL that cannot be used: unknown scheme, missing protocol package, unreachable store,
    damaged file. An OSError (a long job's task fails and is retried, as for a local I/O error)
    and a ValueError (the command line prints it as one line)."""


def _options(protocol: str) -> dict:
    raw = os.environ.get("HUBBUB_STORAGE_OPTIONS")
    if not raw:
        return {}
    try:
        options = json.loads(raw)
    except ValueError as exc:
        raise StorageError(f"HUBBUB_STORAGE_OPTIONS is not valid JSON: {exc}") from None
    return dict(options.get(protocol, {}))


def protocol_of(url: str | os.PathLike) -> str:
    """``"s3"`` for ``s3://b/k``; ``"file"`` for a plain path or ``file://``."""
    url = os.fspath(url)
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def is_local(url: str | os.PathLike) -> bool:
    return protocol_of(url) in ("file", "local")


def local_path(url: str | os.PathLike) -> Path:
    """The local path of a local URL (``file:///x`` -> ``/x``); StorageError for a remote one."""
    url = os.fspath(url)
    if not is_local(url):
        raise StorageError(f"{url} is not on a local disk")
    return Path(url.split("://", 1)[1] if "://" in url else url)


def _filesystem(protocol: str) -> fsspec.AbstractFileSystem:
    # fsspec keeps one instance per protocol and options, and drops its instances in a forked
    # child: s3fs/gcsfs clients hold event loops and connection pools that must not cross a fork.
    # fsspec.filesystem also applies FSSPEC_<PROTOCOL>_<OPTION> environment variables.
    try:
        return fsspec.filesystem(protocol, **_options(protocol))
    except ValueError as exc:
        if "Protocol not known" not in str(exc) and "not known" not in str(exc):
            raise StorageError(f"{protocol}://: {exc}") from None
        raise StorageError(f"unknown storage scheme {protocol}:// (fsspec knows "
                           f"{', '.join(sorted(fsspec.available_protocols())[:12])}, ...)") from None
    except ImportError as exc:
        extra = _EXTRA_OF.get(protocol)
        hint = f"pip install 'hubbub[{extra}]'" if extra else "install its fsspec package"
        raise StorageError(f"{protocol}:// needs a package that is not installed ({exc}): {hint}") from None


def filesystem(url: str | os.PathLike) -> tuple[fsspec.AbstractFileSystem, str]:
    """(fsspec filesystem, its path for ``url``); one filesystem object per protocol and process."""
    url = os.fspath(url)
    if is_local(url):
        return _LOCAL, str(local_path(url).absolute())
    protocol = protocol_of(url)
    fs = _filesystem(protocol)
    return fs, fs._strip_protocol(url)


def as_path(url: str | os.PathLike) -> Path | str:
    """A local URL as a Path (what callers of the local-only API got), a remote one unchanged."""
    return local_path(url) if is_local(url) else os.fspath(url)


def join(url: str | os.PathLike, *names: str) -> str:
    """``url/name/...``; a local path stays a plain path string."""
    url = os.fspath(url)
    if is_local(url):
        return str(local_path(url).joinpath(*names))
    return "/".join([url.rstrip("/"), *names])


def name_of(url: str | os.PathLike) -> str:
    return os.fspath(url).rstrip("/").rsplit("/", 1)[-1]


def normalize(url: str | os.PathLike) -> str:
    """An absolute local path, or the URL without a trailing slash; checks the scheme is usable."""
    url = os.fspath(url)
    if is_local(url):
        return str(local_path(url).resolve())
    filesystem(url)  # unknown scheme or missing package: say so before any work
    return url.rstrip("/")


def _call(url: str, what: str, fn):
    try:
        return fn()
    except FileNotFoundError:
        raise
    except (OSError, ValueError, TypeError, RuntimeError) as exc:  # network, permissions, bad JSON
        if isinstance(exc, StorageError):
            raise
        raise StorageError(f"{url}: cannot {what}: {type(exc).__name__}: {exc}") from exc


def exists(url: str | os.PathLike) -> bool:
    fs, path = filesystem(url)
    return _call(os.fspath(url), "check whether it exists", lambda: fs.exists(path))


def size(url: str | os.PathLike) -> int:
    fs, path = filesystem(url)
    return int(_call(os.fspath(url), "read its size", lambda: fs.size(path)))


def read_bytes(url: str | os.PathLike) -> bytes:
    fs, path = filesystem(url)
    return _call(os.fspath(url), "read it", lambda: fs.cat_file(path))


def read_range(url: str | os.PathLike, start: int, end: int) -> bytes:
    """Bytes ``[start, end)`` of a file (one ranged request on an object store)."""
    if is_local(url):
        with open(local_path(url), "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    else:
        fs, path = filesystem(url)
        data = _call(os.fspath(url), "read it", lambda: fs.cat_file(path, start=start, end=end))
    if len(data) != end - start:
        raise StorageError(f"{os.fspath(url)}: truncated (bytes {start}-{end} asked, {len(data)} there)")
    return data


def read_json(url: str | os.PathLike):
    """The JSON at ``url``; a damaged file is a StorageError that names it."""
    data = read_bytes(url)
    try:
        return json.loads(data)
    except ValueError as exc:
        raise StorageError(f"{os.fspath(url)} is not valid JSON ({exc}): damaged or partly written") from None


def read_many(urls: list[str]) -> dict[str, bytes]:
    """Several small files at once (concurrent requests on object stores); missing ones are left out."""
    if not urls:
        return {}
    fs, _ = filesystem(urls[0])
    paths = {filesystem(u)[1]: u for u in urls}
    got = _call(urls[0], "read files", lambda: fs.cat(list(paths), on_error="omit"))
    return {paths[p]: data for p, data in got.items() if p in paths}


def list_sizes(url: str | os.PathLike) -> dict[str, int]:
    """Name -> size of the files directly in the folder ``url`` (one listing; {} if it is absent)."""
    fs, path = filesystem(url)

    def ls():
        try:
            entries = fs.ls(path, detail=True, refresh=True) if not is_local(url) else fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        return entries
    return {name_of(e["name"]): int(e["size"] or 0) for e in _call(os.fspath(url), "list it", ls)
            if e.get("type") == "file"}


def makedirs(url: str | os.PathLike) -> None:
    fs, path = filesystem(url)
    if is_local(url):
        target = local_path(url)
        if target.exists() and not target.is_dir():
            raise StorageError(f"{url} exists and is not a folder")
        target.mkdir(parents=True, exist_ok=True)
    else:  # object stores have no folders; a bucket must exist
        _call(os.fspath(url), "create it", lambda: fs.makedirs(path, exist_ok=True))


def temporary_name(path: str | os.PathLike) -> Path:
    """A hidden name next to ``path`` unique to this writer: ``.{name}.{host}.{pid}.{random}.tmp``.
    Two processes writing the same file never share it, and :func:`remove_stale_temporaries` can
    tell which writer is gone."""
    path = Path(path)
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _host() -> str:
    return socket.gethostname().replace(".", "-")


def remove_stale_temporaries(folder: str | os.PathLike) -> int:
    """Delete the temporaries (:func:`temporary_name`) in a local ``folder`` left by processes of
    this host that no longer run (a killed run's partial shards); those of live processes, such
    as a concurrent run's, and of other hosts sharing the disk are kept. Returns how many."""
    host, removed = _host(), 0
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 4)  # [".name", host, pid, random, "tmp"]
        if len(parts) != 5 or parts[1] != host or not parts[2].isdigit():
            continue
        try:
            os.kill(int(parts[2]), 0)
            continue  # alive (or another user's): not ours to delete
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


@contextlib.contextmanager
def _replacing(path: Path):
    """A unique temporary next to ``path`` to fill; synced and renamed over ``path`` when the
    block ends cleanly, removed otherwise."""
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.filename is None:  # a failed write (a full disk) names no file: name the one being written
            raise OSError(exc.errno, exc.strerror or str(exc), os.fspath(path)) from exc
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(url: str | os.PathLike, data: bytes) -> None:
    """Replace ``url`` with ``data`` atomically (see the module docstring)."""
    if is_local(url):
        with _replacing(local_path(url)) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = filesystem(url)
    _call(os.fspath(url), "write it", lambda: fs.pipe_file(path, data))


def write_json(url: str | os.PathLike, obj) -> None:
    write_bytes(url, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def put_file(local: str | os.PathLike, url: str | os.PathLike) -> None:
    """Copy the local file ``local`` to ``url`` atomically (a local target is renamed into place)."""
    if is_local(url):
        path = local_path(url)
        if Path(local).resolve() == path.resolve():
            return
        with _replacing(path) as tmp:
            shutil.copyfile(local, tmp)
        return
    fs, path = filesystem(url)
    _call(os.fspath(url), "upload to it", lambda: fs.put_file(os.fspath(local), path))


def remove(url: str | os.PathLike) -> None:
    fs, path = filesystem(url)
    try:
        _call(os.fspath(url), "remove it", lambda: fs.rm_file(path))
    except FileNotFoundError:
        pass


def open_file(url: str | os.PathLike, mode: str = "rb", **kwargs):
    """A file object for ``url`` (ranged reads on object stores: ``seek`` costs nothing until read)."""
    fs, path = filesystem(url)
    return _call(os.fspath(url), "open it", lambda: fs.open(path, mode, **kwargs))


class LockedError(ValueError):
    """Another process holds the lock: a one-line refusal, nothing was written."""


LEASE_S = 120.0  # an object-store lock not renewed for this long belongs to a dead run


@contextlib.contextmanager
def exclusive(url: str | os.PathLike, what: str):
    """Hold the lock at ``url`` for the block, or raise :class:`LockedError` at once.

    On a local disk it is ``flock`` on that file: the kernel releases it when the holder exits,
    however it dies. In an object store it is a lease object created only if absent (a
    conditional PUT, ``If-None-Match: *``), renewed every ``LEASE_S / 4`` seconds by a thread and
    deleted at the end; a lease not renewed for ``LEASE_S`` seconds (its run was killed) is taken
    over. ``what`` says in the refusal what the holder is doing.
    """
    url = os.fspath(url)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "what": what}
    if is_local(url):
        path = local_path(url)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    held = json.loads(path.read_text())
                    holder = f"{held['what']} (pid {held['pid']} on {held['host']})"
                except (OSError, ValueError, KeyError, TypeError):
                    holder = "another process"  # it has the lock but has not written who it is yet
                raise LockedError(f"{path.parent} is in use by {holder}: wait for it to finish, or use "
                                  "another folder") from None
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(me).encode())
            yield
        finally:
            os.close(fd)  # releases the lock; the file stays (removing it would race a new holder)
        return
    fs, path = filesystem(url)

    def lease() -> bytes:
        return json.dumps({**me, "expires_unix": time.time() + LEASE_S}).encode()

    try:
        fs.pipe_file(path, lease(), mode="create")
    except FileExistsError:
        try:
            held = json.loads(fs.cat_file(path))
        except (OSError, ValueError):
            held = {}
        if held.get("expires_unix", 0) > time.time():
            raise LockedError(f"{url.rsplit('/', 1)[0]} is in use by {held.get('what')} (pid {held.get('pid')} on "
                              f"{held.get('host')}); its lease runs out in "
                              f"{held['expires_unix'] - time.time():.0f} s if that run is gone") from None
        fs.rm_file(path)  # expired: a killed run's; of two takers, the conditional create picks one
        try:
            fs.pipe_file(path, lease(), mode="create")
        except FileExistsError:
            raise LockedError(f"{url.rsplit('/', 1)[0]} was just taken by another run") from None
    stop = threading.Event()

    def renew():
        while not stop.wait(LEASE_S / 4):
            with contextlib.suppress(OSError):
                fs.pipe_file(path, lease())

    thread = threading.Thread(target=renew, name="hubbub-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(OSError):
            fs.rm_file(path)
