"""Run folders in object stores: ``--out s3://bucket/runs/x`` for training, and that URL wherever
a run is read (``--init``, ``hubbub evaluate``, ``separate``, ``publish``).

Training works in a local mirror of the run, ``$HUBBUB_CACHE/runs/<digest of the URL>``, which
the Solver treats as its run folder on a disk (locks, temporaries, atomic renames); the URL gets
what a user or another node reads, each file in one PUT (object creation is atomic):

* a checkpoint, once written and renamed into place locally: its files, then
  ``checkpoints/step_N/files.json`` (name -> size) last. A checkpoint in the store is complete
  when its ``files.json`` is there and every file it names has that size; older checkpoints
  beyond ``keep_checkpoints`` are removed from the store, ``files.json`` first;
* ``run.json``, ``metrics.jsonl``, ``curves.png`` and the TensorBoard event files at each
  checkpoint and at the end; ``model/`` at the end (its files, ``config.json`` last).

A run started anywhere (another node, a fresh machine, after the local mirror was lost) pulls
``run.json``, ``metrics.jsonl`` and the newest complete checkpoint from the URL into its mirror
before it starts, and so resumes where the run stopped; every node of a multi-node job pulls into
its own mirror (no shared disk needed), and only the main process pushes. One run per URL: the
Solver's lock is a lease object in the store (:func:`hubbub.storage.exclusive`).

Readers of a finished run (:func:`fetch_run`) download ``run.json`` and ``model/`` once into the
same kind of mirror; a local path is returned as it is.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from hubbub import storage

log = logging.getLogger(__name__)

MANIFEST = "files.json"                 # written last into each checkpoint in the store
RUN_FILES = ("run.json", "metrics.jsonl", "curves.png")
MODEL_LAST = "config.json"              # a model directory is read only once its config is there


def is_remote(url: str | os.PathLike) -> bool:
    return not storage.is_local(url)


def is_file(url: str) -> bool:
    """``url`` names an object (not a prefix that objects live under)."""
    fs, path = storage.filesystem(url)
    try:
        return fs.isfile(path)
    except FileNotFoundError:
        return False


def local_mirror(url: str | os.PathLike) -> Path:
    """Where a remote run is worked on locally: the same folder for the same URL, however spelt."""
    digest = hashlib.sha256(storage.normalize(url).encode()).hexdigest()[:16]
    return storage.cache_dir() / "runs" / f"{storage.name_of(url)}-{digest}"


def _walk(folder: Path):
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith(".") and ".tmp" not in path.name:
            yield path


def _listing(url: str) -> dict[str, dict]:
    """Relative name -> fsspec's details of every object under ``url`` (one recursive listing)."""
    fs, root = storage.filesystem(url)
    try:
        found = fs.find(root, detail=True, withdirs=False)
    except FileNotFoundError:
        return {}
    root = root.rstrip("/") + "/"
    return {name[len(root):]: info for name, info in found.items() if name.startswith(root)}


def _remote_files(url: str) -> dict[str, int]:
    """Relative name -> size of every object under ``url``."""
    return {name: int(info.get("size") or 0) for name, info in _listing(url).items()}


def _versions(url: str) -> dict[str, str]:
    """Relative name -> what tells one version of the object from another (size, ETag or mtime)."""
    return {name: f"{info.get('size')}:{info.get('ETag') or info.get('etag') or info.get('mtime') or ''}"
            for name, info in _listing(url).items()}


def push_checkpoint(ckpt: Path, url: str) -> None:
    """Upload a complete local checkpoint folder; its ``files.json`` goes last."""
    target = storage.join(url, "checkpoints", ckpt.name)
    sizes = {}
    for path in _walk(ckpt):
        name = path.relative_to(ckpt).as_posix()
        storage.put_file(path, storage.join(target, name))
        sizes[name] = path.stat().st_size
    storage.write_json(storage.join(target, MANIFEST), sizes)


def remote_checkpoints(url: str) -> dict[str, dict[str, int]]:
    """The complete checkpoints in the store: name (``step_N``) -> {file: size}, oldest first."""
    listed = _remote_files(storage.join(url, "checkpoints"))
    by_ckpt: dict[str, dict[str, int]] = {}
    for name, size in listed.items():
        ckpt, _, rest = name.partition("/")
        by_ckpt.setdefault(ckpt, {})[rest] = size
    complete = {}
    for ckpt in sorted(by_ckpt):
        files = by_ckpt[ckpt]
        if MANIFEST not in files:
            continue  # being written, or being removed
        try:
            manifest = storage.read_json(storage.join(url, "checkpoints", ckpt, MANIFEST))
        except (OSError, ValueError) as exc:
            log.warning("%s/checkpoints/%s: unreadable %s (%s): passed over", url, ckpt, MANIFEST, exc)
            continue
        missing = [f for f, size in manifest.items() if files.get(f) != size]
        if missing:
            log.warning("%s/checkpoints/%s: %s missing or of another size than %s records: passed over", url, ckpt,
                        ", ".join(missing), MANIFEST)
            continue
        complete[ckpt] = manifest
    return complete


def prune_checkpoints(url: str, keep: int) -> None:
    """Remove all but the newest ``keep`` checkpoints from the store, each ``files.json`` first (a
    half-removed checkpoint is never taken for a complete one)."""
    listed = _remote_files(storage.join(url, "checkpoints"))
    names = sorted({name.split("/", 1)[0] for name in listed})
    for ckpt in names[:-keep] if keep > 0 else names:
        files = sorted((n for n in listed if n.startswith(ckpt + "/")), key=lambda n: not n.endswith("/" + MANIFEST))
        for name in files:
            storage.remove(storage.join(url, "checkpoints", name))


def push_files(local: Path, url: str, include_tensorboard: bool = True) -> None:
    """``run.json``, ``metrics.jsonl``, ``curves.png`` (those that exist) and the TensorBoard files."""
    for name in RUN_FILES:
        if (local / name).is_file():
            storage.put_file(local / name, storage.join(url, name))
    if include_tensorboard and (local / "tensorboard").is_dir():
        # event files only grow: one listing, and only those whose size changed go up again
        stored = _remote_files(storage.join(url, "tensorboard"))
        for path in _walk(local / "tensorboard"):
            name = path.relative_to(local / "tensorboard").as_posix()
            if stored.get(name) != path.stat().st_size:
                storage.put_file(path, storage.join(url, "tensorboard", name))


def push_model(local: Path, url: str, name: str = "model") -> None:
    """Upload the model directory ``local/name``; its ``config.json`` last."""
    folder = local / name
    files = sorted(_walk(folder), key=lambda p: p.name == MODEL_LAST)
    for path in files:
        storage.put_file(path, storage.join(url, name, path.relative_to(folder).as_posix()))


def _download(url: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    storage.write_bytes(path, storage.read_bytes(url))


def pull_run(url: str, local: Path) -> str | None:
    """Bring the run's state from the store into its local mirror before training starts:
    ``run.json`` and ``metrics.jsonl`` when the store holds a newer checkpoint than the mirror (or
    the mirror has none), and that checkpoint. Returns the checkpoint pulled, or None."""
    local.mkdir(parents=True, exist_ok=True)
    remote = remote_checkpoints(url)
    ckpt_dir = local / "checkpoints"
    have = sorted(p.name for p in ckpt_dir.glob("step_*[0-9]")) if ckpt_dir.is_dir() else []
    newest = max(remote) if remote else None
    if newest is None or (have and have[-1] >= newest):
        return None
    tmp = ckpt_dir / f"{newest}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for name in remote[newest]:
        _download(storage.join(url, "checkpoints", newest, name), tmp / name)
    shutil.rmtree(ckpt_dir / newest, ignore_errors=True)
    tmp.rename(ckpt_dir / newest)
    for name in ("run.json", "metrics.jsonl"):
        source = storage.join(url, name)
        if storage.exists(source):
            _download(source, local / name)
    log.info("pulled %s/checkpoints/%s into %s", url, newest, local)
    return newest


def fetch_run(url: str | os.PathLike) -> Path:
    """A run (or model directory) to read: a local path as it is; a URL's ``run.json`` and
    ``model/`` (or, for a model directory, its files) downloaded once into a local mirror,
    downloaded again when any of those objects changed (size or ETag)."""
    if not is_remote(url):
        return Path(url)
    url = storage.normalize(url)
    listed = _versions(url)
    if not listed:
        raise FileNotFoundError(f"{url}: no such run or model directory (nothing is stored under it)")
    local = local_mirror(url) / "fetched"
    wanted = [n for n in listed if n in ("run.json", "config.json", "model.safetensors")
              or (n.startswith("model/") and "/" not in n[len("model/"):])
              or (n.count("/") == 0 and n.endswith((".json", ".md", ".safetensors")))]
    stamp = json.dumps({n: listed[n] for n in sorted(wanted)})
    if (local / ".fetched").is_file() and (local / ".fetched").read_text() == stamp:
        return local
    shutil.rmtree(local, ignore_errors=True)
    for name in sorted(wanted, key=lambda n: n.endswith(MODEL_LAST)):
        _download(storage.join(url, name), local / name)
    storage.write_bytes(local / ".fetched", stamp.encode())
    return local
