"""Speech corpora: a folder with the speaker in the path, or a JSONL manifest, indexed once.

Built-in folder layouts (speaker taken from the path):

=============  ==============================================  ==========================
layout         example path                                     speaker
=============  ==============================================  ==========================
librispeech    ``103/1240/103-1240-0000.flac``                  ``103``
vctk           ``wav48_silence_trimmed/p225/p225_001_mic1.flac``  ``p225``
wsj0           ``si_tr_s/011/011a0101.wav``                     ``011``
voxceleb2      ``dev/aac/id00012/21Uxsk56VDQ/00001.wav``        ``id00012``
lrs            ``trainval/0af00UcTOSc/50001.wav``               ``0af00UcTOSc`` (the folder)
regex          any; the pattern's ``(?P<speaker>...)`` group     that group
=============  ==============================================  ==========================

``lrs`` (LRS2, LRS3: ``<folder>/<5 digits>.wav``) takes the parent folder as the speaker: a TED
talk in LRS3 (one main speaker), a BBC programme in LRS2 (several speakers, so splits are
programme-disjoint rather than strictly speaker-disjoint). Auto-detection tries the layouts in the
table's order and gives a tie to the earlier one: a VoxCeleb2 tree also matches the generic
``lrs`` pattern and is read as ``voxceleb2``. Both need 5-digit file stems, which
no LibriSpeech, VCTK or WSJ0 file name has, so those are detected as before.

A manifest is JSONL, one utterance a line: ``{"path": ..., "speaker": ..., "duration_s"?,
"transcript"?, "licence"?}`` with paths relative to the manifest's folder; other fields are kept
in ``Utterance.extra``. A folder holding ``manifest.jsonl`` (the built-in voices) is read as one.

With ``lips=True`` (a recipe whose targets include ``"lips"``) every utterance also needs a
mouth-ROI stream, ``Utterance.lips``: from the row's ``phonemes`` (the built-in voices), a row's
``"lips"`` path (relative to the manifest), or a ``{stem}.npy|.npz|/`` ROI file beside the audio
or under ``lips_dir``; one ROI file per utterance, not per mixture. Utterances without one are
skipped and reported (see :mod:`hubbub.sources.lips`).

A corpus (folder or manifest) is a local path or an fsspec URL (``s3://bucket/libri``, see
:mod:`hubbub.storage`): a store is listed with one recursive listing, its layout detected as for
a folder, and every ``Utterance.path`` is the file's full URL, which workers read from the store.

Indexing decodes every file once, so unreadable, empty, non-finite, silent and too-short files
are found up front and reported with a reason. The result is cached per corpus (keyed by its path
or URL and options, reusing entries whose stamp is unchanged: size and mtime on a disk, size and
ETag in a store), so reruns cost a directory walk or a listing.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from hubbub import storage
from hubbub.audio import AudioError, check_audio_file
from hubbub.sources.lips import attach_lip_sources
from hubbub.sources.utterance import Utterance

AUDIO_EXTENSIONS = {".wav", ".flac", ".ogg", ".mp3", ".sph", ".wv1", ".wv2", ".aif", ".aiff", ".opus"}

LAYOUT_PATTERNS = {
    "librispeech": r"(?:^|/)(?P<speaker>\d+)-\d+-\d+\.\w+$",
    "vctk": r"(?:^|/)(?P<speaker>p\d{3,4}|s\d+)_\d{3}(?:_mic\d)?\.\w+$",
    "wsj0": r"(?:^|/)(?P<speaker>[0-9a-z]{3})[0-9a-z]{5}\.\w+$",
    # After the three above and in this order: detect_layout gives ties to the earlier pattern,
    # and every VoxCeleb2 path also matches the generic LRS one (with the video as the speaker).
    "voxceleb2": r"(?:^|/)(?P<speaker>id\d{5})/[^/]+/\d{5}\.\w+$",
    "lrs": r"(?:^|/)(?P<speaker>[^/]+)/\d{5}\.\w+$",
}


@dataclass
class SpeechIndex:
    corpus: str
    utterances: list[Utterance]
    skipped: list[dict]          # {"path", "reason", "detail"}

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})

    def by_speaker(self) -> dict[str, list[Utterance]]:
        out: dict[str, list[Utterance]] = {}
        for u in self.utterances:
            out.setdefault(u.speaker, []).append(u)
        return out


def default_cache_dir() -> Path:
    return storage.cache_dir()


@dataclass
class ListedFile:
    """A file found under a corpus root."""

    path: str             # what readers open: an absolute local path or the full URL
    rel: str              # relative to the root, "/"-separated
    size: int
    stamp: list | None    # changes with the content: [size, mtime_ns] on a disk, [size, ETag] in a
                          # store; None where the store tells neither ETag nor time (never cached)


def _is_audio(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in AUDIO_EXTENSIONS


def _remote_stamp(info: dict) -> list | None:
    # Each store names them its own way; an ETag (a content hash on S3, GCS, Azure) is best.
    for key in ("ETag", "etag", "md5Hash", "LastModified", "last_modified", "updated", "mtime", "created"):
        if info.get(key) is not None:
            return [int(info.get("size") or 0), str(info[key])]
    return None


def _list_files(root: str | Path, keep) -> list[ListedFile]:
    """The files under ``root`` (a local folder or URL) whose name ``keep(name)`` accepts, sorted
    as paths (by their parts, as sorting Paths does). A store is listed recursively in one request
    tree (``fs.find``: on S3 one paged listing of the prefix, no request per folder or file)."""
    if storage.is_local(root):
        base, out = Path(root), []
        for p in base.rglob("*"):
            if not keep(p.name):
                continue
            try:
                st = p.stat()
            except OSError:  # a dangling link: not a file
                continue
            if stat.S_ISREG(st.st_mode):
                out.append(ListedFile(str(p), p.relative_to(base).as_posix(), st.st_size,
                                      [st.st_size, st.st_mtime_ns]))
    else:
        fs, path = storage.filesystem(root)

        def find():
            try:
                return fs.find(path, detail=True)
            except FileNotFoundError:
                return {}

        prefix = path.rstrip("/") + "/"
        out = [ListedFile(storage.join(root, name[len(prefix):]), name[len(prefix):], int(info.get("size") or 0),
                          _remote_stamp(info))
               for name, info in storage._call(str(root), "list it", find).items()
               if info.get("type") == "file" and name.startswith(prefix) and keep(name.rsplit("/", 1)[-1])]
    return sorted(out, key=lambda f: f.rel.split("/"))


def _walk_audio(root: str | Path) -> list[ListedFile]:
    return _list_files(root, _is_audio)


def _normalize(source: str | Path) -> str:
    """A local path (``~`` expanded) as an absolute path, a URL as itself without trailing slash."""
    return storage.normalize(storage.local_path(source).expanduser() if storage.is_local(source) else source)


def _kind(url: str) -> str | None:
    """``"file"``, ``"directory"``, or None where there is nothing (one metadata request in a store)."""
    if storage.is_local(url):
        p = Path(url)
        return "file" if p.is_file() else "directory" if p.is_dir() else None
    fs, path = storage.filesystem(url)
    try:
        return storage._call(url, "look it up", lambda: fs.info(path))["type"]
    except FileNotFoundError:
        return None


def resolve_folder(folder: str | Path, what: str) -> str:
    """``folder`` (a local path or URL) normalised (absolute path, or URL without trailing slash);
    FileNotFoundError naming ``what`` where it is not a folder (in a store: no object under it)."""
    url = _normalize(folder)
    if _kind(url) != "directory":
        raise FileNotFoundError(f"{what} {url} does not exist or is not a folder")
    return url


def _parent(url: str) -> str:
    return str(Path(url).parent) if storage.is_local(url) else url.rsplit("/", 1)[0]


def detect_layout(root: str | Path, files: list[ListedFile]) -> str:
    """Pick the built-in layout whose pattern matches most files (at least 90% of them); on a tie
    the one listed first in :data:`LAYOUT_PATTERNS` wins (``voxceleb2`` before ``lrs``).
    ``files`` are :func:`_walk_audio`'s listing of ``root`` (their paths relative to it count)."""
    rel = [f.rel for f in files[:500]]
    best, best_hits = None, 0
    for name, pattern in LAYOUT_PATTERNS.items():
        hits = sum(bool(re.search(pattern, r)) for r in rel)
        if hits > best_hits:
            best, best_hits = name, hits
    if best is None or best_hits < 0.9 * len(rel):
        raise ValueError(
            f"cannot tell the speaker layout of {root}: set speech.layout to one of "
            f"{sorted(LAYOUT_PATTERNS)} or 'regex' with speech.regex containing (?P<speaker>...)")
    return best


def _librispeech_transcripts(files: list[ListedFile]) -> dict[str, str]:
    out = {}
    texts = storage.read_many([f.path for f in files])  # concurrent requests in a store
    for f in files:
        for line in texts.get(f.path, b"").decode(errors="replace").splitlines():
            utt_id, _, text = line.partition(" ")
            out[utt_id] = text.strip()
    return out


def _file_entries(root: str, layout: str, regex: str | None) -> tuple[list[dict], list[dict]]:
    listed = _list_files(root, lambda name: _is_audio(name) or name.endswith(".trans.txt"))
    files = [f for f in listed if _is_audio(f.rel)]
    if not files:
        raise ValueError(f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) under {root}")
    if layout == "auto":
        layout = detect_layout(root, files)
    if layout == "regex":
        if not regex or "(?P<speaker>" not in regex:
            raise ValueError("speech.regex must be a pattern with a (?P<speaker>...) group")
        pattern = re.compile(regex)
    else:
        pattern = re.compile(LAYOUT_PATTERNS[layout])
    transcripts = (_librispeech_transcripts([f for f in listed if f.rel.endswith(".trans.txt")])
                   if layout == "librispeech" else {})
    entries, skipped = [], []
    for f in files:
        m = pattern.search(f.rel)
        if not m:
            skipped.append({"path": f.path, "reason": "no-speaker", "detail": f"path does not match {layout} layout"})
            continue
        entries.append({"path": f.path, "speaker": m.group("speaker"), "stamp": f.stamp,
                        "transcript": transcripts.get(Path(f.rel).stem)})
    return entries, skipped


def _manifest_path(base: str, path: str) -> str:
    """A manifest row's path: a URL or absolute path as it is, else relative to ``base``."""
    if "://" in path or os.path.isabs(path):
        return path
    if storage.is_local(base):
        return str(Path(base) / path)
    scheme, rest = base.split("://", 1)
    # A store resolves no "." or "..": a key must be spelled as it is stored.
    return f"{scheme}://{posixpath.normpath(f'{rest}/{path}')}"


def _manifest_entries(manifest: str) -> tuple[list[dict], list[dict]]:
    entries, skipped = [], []
    base = _parent(manifest)
    for lineno, line in enumerate(storage.read_bytes(manifest).decode().split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            path, speaker = _manifest_path(base, row.pop("path")), row.pop("speaker")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            skipped.append({"path": f"{manifest}:{lineno}", "reason": "bad-manifest-line", "detail": str(exc)})
            continue
        entries.append({"path": path, "speaker": str(speaker), "transcript": row.pop("transcript", None),
                        "licence": row.pop("licence", None), "declared_duration_s": row.pop("duration_s", None),
                        "extra": row})
    if not storage.is_local(base):
        # One listing stamps the files under the manifest's folder: no request per file.
        stamps = {f.path: f.stamp for f in _walk_audio(base)}
        for entry in entries:
            if entry["path"] in stamps:
                entry["stamp"] = stamps[entry["path"]]
    return entries, skipped


def _stamp(path: str) -> list | None:
    """The stamp (:class:`ListedFile`) of one file: a stat, or a metadata request in a store."""
    if storage.is_local(path):
        st = os.stat(path)
        return [st.st_size, st.st_mtime_ns]
    fs, key = storage.filesystem(path)
    return _remote_stamp(storage._call(path, "look it up", lambda: fs.info(key)))


def _check(entry: dict, min_duration_s: float, cached: dict | None) -> dict:
    path = entry["path"]
    try:
        stamp = entry["stamp"] if "stamp" in entry else _stamp(path)
    except storage.StorageError:
        raise  # the store is unreachable: nothing is known about the file
    except OSError as exc:
        return {"skip": {"path": path, "reason": "missing", "detail": exc.strerror or str(exc)}}
    if stamp is not None and cached is not None and cached.get("stamp") == stamp:
        return cached
    try:
        info = check_audio_file(path, min_duration_s=min_duration_s)
    except AudioError as exc:
        return {"stamp": stamp, "skip": {"path": path, "reason": exc.reason, "detail": exc.detail}}
    return {"stamp": stamp, "info": info}


def check_files(entries: list[dict], *, min_duration_s: float, cache_key: str,
                cache_dir: str | Path | None = None, max_workers: int | None = None
                ) -> tuple[list[tuple[dict, dict]], list[dict]]:
    """Decode each entry's ``path`` (a local path or URL) once, in threads; return ([(entry,
    info)], skipped).

    Results are cached under ``cache_key`` and reused for files whose stamp (:class:`ListedFile`)
    matches. An entry's ``stamp``, where a listing gave it, saves a stat (a metadata request in
    a store) per file; a file whose stamp is None is decoded on every run.
    """
    digest = hashlib.sha1(cache_key.encode()).hexdigest()[:16]
    cache_path = Path(cache_dir or default_cache_dir()) / "index" / f"{digest}.json"
    cache = {}
    if cache_path.exists():
        try:
            cache = json.loads(cache_path.read_text())
        except ValueError:
            cache = {}
    with ThreadPoolExecutor(max_workers or min(8, (os.cpu_count() or 1) + 1)) as pool:
        results = list(pool.map(lambda e: _check(e, min_duration_s, cache.get(e["path"])), entries))
    checked, skipped, new_cache = [], [], {}
    for entry, result in zip(entries, results):
        if result.get("stamp") is not None:
            new_cache[entry["path"]] = result
        if "skip" in result:
            skipped.append(result["skip"])
        else:
            checked.append((entry, result["info"]))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(new_cache))
    os.replace(tmp, cache_path)
    return checked, skipped


def index_speech(source: str | Path, *, layout: str = "auto", regex: str | None = None,
                 min_duration_s: float = 0.5, cache_dir: str | Path | None = None,
                 max_workers: int | None = None, lips: bool = False,
                 lips_dir: str | Path | None = None) -> SpeechIndex:
    """Index a speech corpus (folder or manifest, a local path or URL) into utterances with
    speakers and durations.

    In a store, the folder is listed once (``fs.find``), each file is read whole once through
    :mod:`hubbub.storage` and decoded from memory, and ``Utterance.path`` is its full URL. A rerun
    reuses the cached result of every file whose stamp (size and ETag in a store, size and mtime
    on a disk) is unchanged: a listing, and no audio read.

    ``lips=True`` also gives every utterance its lip source (``Utterance.lips``) and skips, with a
    reason, those without a usable one; ``lips_dir`` is a tree of ROI files parallel to the corpus
    (same relative paths and stems), default beside the audio. See :mod:`hubbub.sources.lips`
    (ROI files are found on a local disk only).

    Example::

        idx = index_speech("/data/LibriSpeech/train-clean-100")   # layout detected
        idx.speakers[:3], len(idx.utterances), idx.skipped[:1]
        idx = index_speech("s3://bucket/LibriSpeech/train-clean-100")  # the same, from a store
        idx.utterances[0].path   # "s3://bucket/LibriSpeech/train-clean-100/103/1240/103-1240-0000.flac"
        av = index_speech("/data/lrs3/audio", layout="lrs", lips=True, lips_dir="/data/lrs3/mouths")
        av.utterances[0].lips   # {"kind": "file", "path": ".../50001.npz", "num_frames": 63}
    """
    source = _normalize(source)
    kind = _kind(source)
    if kind is None:
        raise FileNotFoundError(f"speech corpus {source} does not exist")
    manifest = source if kind == "file" else storage.join(source, "manifest.jsonl")
    is_manifest = kind == "file" or (layout in ("auto", "manifest") and storage.exists(manifest))
    if is_manifest:
        entries, skipped = _manifest_entries(manifest)
        corpus = storage.name_of(_parent(manifest))
    else:
        entries, skipped = _file_entries(source, layout, regex)
        corpus = storage.name_of(source)

    key = json.dumps([source, layout, regex, min_duration_s])
    checked, bad = check_files(entries, min_duration_s=min_duration_s, cache_key=key, cache_dir=cache_dir,
                               max_workers=max_workers)
    skipped.extend(bad)
    utterances = [
        Utterance(path=entry["path"], speaker=entry["speaker"], duration_s=info["duration_s"],
                  sample_rate_hz=info["sample_rate_hz"], corpus=corpus, transcript=entry.get("transcript"),
                  licence=entry.get("licence"), extra=entry.get("extra", {}))
        for entry, info in checked
    ]
    utterances.sort(key=lambda u: u.path)
    if lips:
        utterances, no_lips = attach_lip_sources(
            utterances, root=_parent(manifest) if is_manifest else source, lips_dir=lips_dir,
            cache_dir=cache_dir or default_cache_dir(), cache_key=json.dumps([source, str(lips_dir)]),
            max_workers=max_workers)
        skipped.extend(no_lips)
    return SpeechIndex(corpus=corpus, utterances=utterances, skipped=skipped)


def assign_splits(speakers: Iterable[str], fractions: dict[str, float], *, seed: int,
                  min_per_split: int = 1) -> dict[str, list[str]]:
    """Partition speakers into disjoint splits by ``fractions`` (deterministic from ``seed``).

    Every split with a positive fraction gets at least ``min_per_split`` speakers, or a
    ValueError says how many are missing.
    """
    speakers = sorted(set(speakers))
    names = [n for n, f in fractions.items() if f > 0]
    need = min_per_split * len(names)
    if len(speakers) < need:
        raise ValueError(f"{len(speakers)} speakers cannot fill {len(names)} splits with "
                         f"{min_per_split} speakers each: use a corpus with more speakers")
    order = np.random.default_rng([seed, 0x5B1]).permutation(len(speakers))
    total = sum(fractions[n] for n in names)
    counts = {n: max(min_per_split, int(round(fractions[n] / total * len(speakers)))) for n in names}
    # Give or take from the largest split so the counts add up.
    largest = max(names, key=lambda n: fractions[n])
    counts[largest] = len(speakers) - sum(c for n, c in counts.items() if n != largest)
    if counts[largest] < min_per_split:
        raise ValueError(f"too few speakers ({len(speakers)}) for the split fractions {fractions}")
    out, start = {}, 0
    for n in names:
        out[n] = sorted(speakers[i] for i in order[start:start + counts[n]])
        start += counts[n]
    return out


def utterance_to_dict(u: Utterance) -> dict:
    return asdict(u)
