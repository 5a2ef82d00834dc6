"""Reading user audio defensively: every fault becomes an :class:`AudioError` with a reason.

Corpora in the wild hold unreadable, empty, NaN-filled, too-short and non-audio files; a long job
must skip them with a reason rather than crash. Other sample rates are resampled (polyphase,
``scipy.signal.resample_poly``) and multichannel files downmixed to mono.

Where the bytes come from: a local path is read from the disk, an fsspec URL (``s3://...``)
from its store, and while a source provider is set (:func:`use_sources`, what a Ray worker on a
node without the driver's disk gets: the files shipped through Ray's object store) every path
from the provider only. A file that cannot be fetched is an OSError, not an AudioError: it says
nothing about the file's content, so the task fails (and is retried) instead of skipping it.
"""
from __future__ import annotations

import io
import os
from collections import OrderedDict
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from hubbub import storage


_PROVIDER = None  # callable: path -> bytes, set by use_sources()
_PROVIDER_TOKEN = None


def use_sources(provider, token: str | None) -> None:
    """From now on read every source path through ``provider(path) -> bytes`` (which raises
    OSError for a path it cannot give); ``use_sources(None, None)`` goes back to paths and URLs.
    ``token`` names the provider: setting the same one again is free, a new one drops the decoded
    audio cached so far, so nothing read another way is served from the cache."""
    global _PROVIDER, _PROVIDER_TOKEN
    if token != _PROVIDER_TOKEN:
        _PROVIDER, _PROVIDER_TOKEN = provider, token
        _CACHE.clear()


def _open_source(path: str | Path, data: bytes | None = None):
    """What soundfile reads for ``path``: the path itself, or its bytes (``data`` if already
    fetched, else from the provider or store)."""
    if data is not None:
        return io.BytesIO(data)
    if _PROVIDER is not None:
        return io.BytesIO(_PROVIDER(str(path)))
    if "://" in str(path) and not storage.is_local(path):
        return io.BytesIO(storage.read_bytes(path))
    if not os.path.exists(path):  # gone since it was indexed, or not on this machine: not its content's fault
        raise FileNotFoundError(f"{path}: source file not found on this machine")
    return str(path)


class AudioError(ValueError):
    """A file cannot be used as audio; ``reason`` is a short machine-friendly tag."""

    def __init__(self, path: str | Path, reason: str, detail: str = ""):
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))


def probe(path: str | Path, *, data: bytes | None = None) -> tuple[int, int, int]:
    """(sample_rate_hz, frames, channels) from the header, or AudioError('unreadable').
    ``data``: the file's bytes, already fetched (``path`` then only names it in errors)."""
    source = _open_source(path, data)
    try:
        info = sf.info(source)
    except Exception as exc:  # libsndfile raises several types for non-audio input
        raise AudioError(path, "unreadable", str(exc).splitlines()[0][:200]) from None
    return int(info.samplerate), int(info.frames), int(info.channels)


def resample(x: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Polyphase resampling along the last axis (exact rational ratio)."""
    if from_hz == to_hz:
        return x
    ratio = Fraction(to_hz, from_hz)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=-1).astype(np.float32)


def load_audio(path: str | Path, sample_rate_hz: int, *, start_s: float = 0.0,
               stop_s: float | None = None, min_duration_s: float = 0.0, data: bytes | None = None) -> np.ndarray:
    """Mono float32 audio at ``sample_rate_hz`` (optionally a [start_s, stop_s) excerpt).

    Raises :class:`AudioError` with reason ``unreadable``, ``empty``, ``non-finite``, ``silent``
    or ``too-short``. ``data``: as for :func:`probe`.
    """
    sr, frames, _ = probe(path, data=data)
    if frames == 0:
        raise AudioError(path, "empty")
    start = int(round(start_s * sr))
    stop = frames if stop_s is None else min(frames, int(round(stop_s * sr)))
    try:
        source = _open_source(path, data)
        x, sr = sf.read(source, start=start, stop=stop, dtype="float32", always_2d=True)
    except OSError:
        raise
    except Exception as exc:
        raise AudioError(path, "unreadable", str(exc).splitlines()[0][:200]) from None
    if x.size == 0:
        raise AudioError(path, "empty")
    if not np.all(np.isfinite(x)):
        raise AudioError(path, "non-finite", "NaN or inf samples")
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if not np.any(x):
        raise AudioError(path, "silent", "all samples are zero")
    duration_s = len(x) / sr
    if duration_s < min_duration_s:
        raise AudioError(path, "too-short", f"{duration_s:.3f} s < {min_duration_s} s")
    return resample(np.ascontiguousarray(x), sr, sample_rate_hz)


class _AudioCache:
    """Decoded, resampled files kept per process up to ``max_bytes`` (least recently used out).

    Mixing draws the same utterances and noise files again and again; decoding and resampling
    them each time costs as much as the acoustics.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.bytes = 0
        self.items: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0

    def get(self, path: str, sample_rate_hz: int) -> np.ndarray:
        key = (str(path), sample_rate_hz)
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        x = load_audio(path, sample_rate_hz)
        x.flags.writeable = False  # shared between callers: nobody may change it in place
        if x.nbytes <= self.max_bytes:
            self.items[key] = x
            self.bytes += x.nbytes
            while self.bytes > self.max_bytes:
                _, old = self.items.popitem(last=False)
                self.bytes -= old.nbytes
        return x


_CACHE = _AudioCache(int(os.environ.get("HUBBUB_AUDIO_CACHE_MB", "512")) << 20)


def load_audio_cached(path: str | Path, sample_rate_hz: int) -> np.ndarray:
    """The whole file as :func:`load_audio` gives it, from a per-process LRU cache (read-only).

    Always the whole file, then sliced by the caller: the result must not depend on whether
    the file was cached, so a sample re-rendered elsewhere is bit-identical.
    """
    return _CACHE.get(str(path), sample_rate_hz)


def check_audio_file(path: str | Path, *, min_duration_s: float = 0.0) -> dict:
    """Decode a whole file once and describe it: {sample_rate_hz, channels, duration_s}.

    Used when indexing a corpus, so bad files are found once, up front, not deep in a job.
    """
    try:
        source = _open_source(path)
        # A file fetched from a store is decoded from these bytes, not fetched twice more.
        data = source.getvalue() if isinstance(source, io.BytesIO) else None
        sr, frames, channels = probe(path, data=data)
        load_audio(path, sr, min_duration_s=min_duration_s, data=data)
    except FileNotFoundError as exc:  # listed but not there (a dangling link): a bad file of the corpus
        raise AudioError(path, "unreadable", str(exc)) from None
    return {"sample_rate_hz": sr, "channels": channels, "duration_s": frames / sr}
