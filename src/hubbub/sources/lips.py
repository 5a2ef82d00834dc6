"""Lip sources: the mouth-ROI stream each utterance brings, and that stream on a mixture's time axis.

An audio-visual corpus (recipe target ``"lips"``) needs, per utterance, one of (first match wins):

1. ``file``, named by the manifest: a row's ``"lips"`` field, a path relative to the manifest;
2. ``phonemes``: a manifest row with ``"phonemes"`` (``[[name, start_s, end_s], ...]``) and
   ``"phoneme_set"`` (``"ipa"`` | ``"cmu"``), as the built-in voices write: frames are drawn
   from the timings (:mod:`hubbub.sources.mouths`);
3. ``file``, found by name: ``{stem}.npy``, ``{stem}.npz`` or a folder ``{stem}/`` of frame images
   beside the audio file, or at the audio's relative path under ``speech.lips_dir`` (a parallel
   tree, e.g. ``lrs3/audio/trainval/0af00UcTOSc/50001.wav`` -> ``lrs3/mouths/trainval/0af00UcTOSc/50001.npz``).

A ROI file belongs to one utterance (one audio file, one face), not to a mixture: a corpus of N
utterances needs N ROI files whatever the number of mixtures simulated from it.

:func:`attach_lip_sources` checks each file cheaply when the corpus is indexed (its header:
:func:`hubbub.video.probe_roi`, cached by size and mtime) and skips, with a reason, utterances
that have ``no-lips`` (nothing found), ``bad-lips`` (unreadable, pickled, NaN, empty, wrong axes,
malformed phonemes), ``lips-too-small`` (frames under 88x88) or ``lips-length-mismatch`` (more than
:data:`LIPS_FRAME_TOLERANCE` frames away from the audio's duration x 25 fps).

On the mixture (:func:`draw_lips`, :func:`render_source_lips`): a sample of ``T`` samples at
``sr`` has ``F = ceil(T * 25 / sr)`` frames per source, frame ``j`` covering mixture samples
``[j * sr / 25, (j + 1) * sr / 25)`` with time 0 = emission (the source's excerpt starts at its
``start_sample``; the ``dry`` target lags by its ``dry_delay_samples``, a few ms of sound
propagation, as audio does behind video in a real recording).

* ``phonemes``: the phonemes inside the excerpt, clipped to it and shifted to the mixture axis,
  are drawn directly on the mixture's frame grid (exact alignment); outside the excerpt the
  mouth is at rest. Head jitter and sensor noise come from a per-source seed.
* ``file``: mixture frame ``j`` shows the utterance frame nearest in time to the frame's centre;
  before and after the excerpt it holds the excerpt's first or last frame (a still face: the
  speaker is silent there).
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hubbub.sources.mouths import mouth_shapes, render_lips
from hubbub.sources.utterance import Utterance
from hubbub.video import CROP_SIZE, FPS, ROI_EXTENSIONS, ROI_SIZE, load_roi, num_video_frames, probe_roi

LIPS_FRAME_TOLERANCE = 2   # frames a ROI file may differ from its audio's duration x 25 fps
PER_UTTERANCE = ("ROI files are per utterance (one per audio file), not per mixture: hubbub simulate "
                 "places each utterance's frames on the mixture's time axis itself")


class LipsError(ValueError):
    """An utterance has no usable lip source: ``reason`` is one of the skip reasons above."""

    def __init__(self, reason: str, detail: str, roi: str | None = None):
        super().__init__(detail)
        self.reason, self.detail, self.roi = reason, detail, roi


def find_roi(audio_path: str | Path, *, root: str | Path | None = None,
             lips_dir: str | Path | None = None) -> Path | None:
    """The ROI file of one audio file: ``{stem}.npy``, ``{stem}.npz`` or a ``{stem}/`` frame folder,
    beside it or, with ``lips_dir``, at its path relative to ``root`` under ``lips_dir``."""
    audio_path = Path(audio_path)
    if lips_dir is None:
        folder = audio_path.parent
    else:
        try:
            rel = audio_path.parent.relative_to(root) if root is not None else Path()
        except ValueError:  # a manifest may name audio outside its folder: look at lips_dir's top
            rel = Path()
        folder = Path(lips_dir) / rel
    stem = audio_path.stem
    for candidate in [folder / f"{stem}{ext}" for ext in ROI_EXTENSIONS] + [folder / stem]:
        if candidate.exists():
            return candidate
    return None


def _check_phonemes(u: Utterance) -> dict:
    phoneme_set, phonemes = u.extra.get("phoneme_set"), u.extra.get("phonemes")
    if phoneme_set not in ("ipa", "cmu"):
        raise LipsError("bad-lips", f"phoneme_set must be 'ipa' or 'cmu' to draw lips from phonemes, "
                                    f"got {phoneme_set!r}")
    try:
        rows = [[str(name), float(a), float(b)] for name, a, b in phonemes]
    except (TypeError, ValueError) as exc:
        raise LipsError("bad-lips", f"phonemes must be [[name, start_s, end_s], ...]: {exc}") from None
    if not rows or any(not (np.isfinite(a) and np.isfinite(b) and b >= a) for _, a, b in rows):
        raise LipsError("bad-lips", "phonemes must be a non-empty list of [name, start_s, end_s] with start_s <= end_s")
    return {"kind": "phonemes", "phoneme_set": phoneme_set, "phonemes": rows}


def _stamp(path: Path) -> list:
    st = path.stat()
    # A frame folder's mtime changes when frames are added or removed (not when one is rewritten).
    return [-1 if path.is_dir() else st.st_size, st.st_mtime_ns]


def _probe_cached(roi: Path, cache: dict, new_cache: dict) -> list[int]:
    key = str(roi)
    try:
        stamp = _stamp(roi)
    except OSError as exc:
        raise LipsError("bad-lips", f"{roi}: {exc.strerror or exc}", key) from None
    hit = cache.get(key)
    if hit is None or hit.get("stamp") != stamp:
        try:
            info = probe_roi(roi)
            hit = {"stamp": stamp, "info": [info.num_frames, info.height, info.width]}
        except (ValueError, OSError) as exc:
            hit = {"stamp": stamp, "error": str(exc)}
    new_cache[key] = hit
    if "error" in hit:
        raise LipsError("bad-lips", hit["error"], key)
    return hit["info"]


def _file_source(u: Utterance, roi: Path, cache: dict, new_cache: dict) -> dict:
    num_frames, height, width = _probe_cached(roi, cache, new_cache)
    if min(height, width) < CROP_SIZE:
        raise LipsError("lips-too-small", f"ROI frames of {height}x{width} are smaller than the "
                                          f"{CROP_SIZE}x{CROP_SIZE} crop of the models", str(roi))
    expected = u.duration_s * FPS
    if abs(num_frames - expected) > LIPS_FRAME_TOLERANCE:
        raise LipsError("lips-length-mismatch",
                        f"ROI file has {num_frames} frames, the audio's {u.duration_s:.3f} s need "
                        f"{expected:.1f} +- {LIPS_FRAME_TOLERANCE} at {FPS} fps; {PER_UTTERANCE}", str(roi))
    return {"kind": "file", "path": str(roi), "num_frames": int(num_frames)}


def lip_source(u: Utterance, *, root: Path, lips_dir: Path | None, cache: dict | None = None,
               new_cache: dict | None = None) -> dict:
    """The lip source of one utterance (see the module docstring), or :class:`LipsError`.

    Returns ``{"kind": "phonemes", "phoneme_set", "phonemes"}`` or ``{"kind": "file", "path",
    "num_frames"}`` (the ROI file's own frame count).
    """
    cache = {} if cache is None else cache
    new_cache = {} if new_cache is None else new_cache
    named = u.extra.get("lips")
    if named:
        roi = Path(named) if Path(named).is_absolute() else root / named
        if not roi.exists():
            raise LipsError("no-lips", f"the manifest's lips file {roi} does not exist", str(roi))
        return _file_source(u, roi, cache, new_cache)
    if "phonemes" in u.extra:
        return _check_phonemes(u)
    roi = find_roi(u.path, root=root, lips_dir=lips_dir)
    if roi is None:
        where = f"under {lips_dir}" if lips_dir is not None else "beside the audio file"
        stem = Path(u.path).stem
        raise LipsError("no-lips", f"no mouth-ROI file {stem}.npy, {stem}.npz or {stem}/ (frame images) {where}; "
                                   f"{PER_UTTERANCE}")
    return _file_source(u, roi, cache, new_cache)


def attach_lip_sources(utterances: list[Utterance], *, root: str | Path, lips_dir: str | Path | None = None,
                       cache_key: str, cache_dir: str | Path, max_workers: int | None = None
                       ) -> tuple[list[Utterance], list[dict]]:
    """Set ``u.lips`` (:func:`lip_source`) on every utterance that has a usable lip source.

    Returns (kept utterances, skipped): each skip is ``{"path": audio file, "reason", "detail",
    "roi": the ROI file or None}``. ROI headers are cached under ``cache_key`` in ``cache_dir``
    and re-read only for files whose size or mtime changed.
    """
    root = Path(root)
    lips_dir = Path(lips_dir).expanduser().resolve() if lips_dir is not None else None
    digest = hashlib.sha1(cache_key.encode()).hexdigest()[:16]
    cache_path = Path(cache_dir) / "index" / f"lips-{digest}.json"
    try:
        cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    except ValueError:
        cache = {}
    new_cache: dict = {}

    def one(u):
        try:
            return lip_source(u, root=root, lips_dir=lips_dir, cache=cache, new_cache=new_cache)
        except LipsError as exc:
            return exc

    with ThreadPoolExecutor(max_workers or min(8, (os.cpu_count() or 1) + 1)) as pool:
        results = list(pool.map(one, utterances))
    kept, skipped = [], []
    for u, result in zip(utterances, results):
        if isinstance(result, LipsError):
            skipped.append({"path": u.path, "reason": result.reason, "detail": result.detail, "roi": result.roi})
        else:
            u.lips = result
            kept.append(u)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(new_cache))
    os.replace(tmp, cache_path)
    return kept, skipped


# -- on the mixture ----------------------------------------------------------------------------------
def draw_lips(u: Utterance, source: dict, sample_rate_hz: int, num_samples: int, seed: int) -> dict:
    """The ``sources[k]["lips"]`` entry of a sample: everything :func:`render_source_lips` needs.

    ``source`` is the sample's source entry (``utterance_start_s``, ``utterance_stop_s``,
    ``start_sample``). Returns, with ``F = num_video_frames(num_samples, sample_rate_hz)``::

        {"kind": "phonemes", "fps": 25, "num_frames": F, "seed": int, "phoneme_set": "ipa" | "cmu",
         "phonemes": [[name, start_s, end_s], ...]}   # the excerpt's, in mixture seconds
        {"kind": "file", "fps": 25, "num_frames": F, "path": str, "roi_num_frames": int}
    """
    if u.lips is None:
        raise ValueError(f"utterance {u.path} has no lip source: index the corpus with lips=True "
                         "(the recipe's targets include 'lips')")
    base = {"kind": u.lips["kind"], "fps": FPS, "num_frames": num_video_frames(num_samples, sample_rate_hz)}
    if u.lips["kind"] == "file":
        return {**base, "path": u.lips["path"], "roi_num_frames": u.lips["num_frames"]}
    start_s, stop_s = source["utterance_start_s"], source["utterance_stop_s"]
    shift_s = source["start_sample"] / sample_rate_hz - start_s
    phonemes = [[name, round(max(a, start_s) + shift_s, 6), round(min(b, stop_s) + shift_s, 6)]
                for name, a, b in u.lips["phonemes"] if min(b, stop_s) > max(a, start_s)]
    return {**base, "seed": int(seed), "phoneme_set": u.lips["phoneme_set"], "phonemes": phonemes}


def roi_frame_indices(num_frames: int, sample_rate_hz: int, source: dict, roi_num_frames: int) -> np.ndarray:
    """For each of ``num_frames`` mixture frames, the utterance frame it shows (``(F,)`` int64).

    The frame's centre on the mixture axis, ``(j + 1/2) * sr / 25``, moved to the utterance's axis
    and clipped to the excerpt ``[start, start + num_samples)``; the utterance frame holding that
    sample (frame ``i`` covers ``[i * sr / 25, (i + 1) * sr / 25)``), clipped to the file's frames.
    """
    first = int(round(source["utterance_start_s"] * sample_rate_hz))
    centre = (2 * np.arange(num_frames, dtype=np.int64) + 1) * sample_rate_hz // (2 * FPS)
    u = np.clip(centre - source["start_sample"] + first, first, first + max(source["num_samples"], 1) - 1)
    return np.clip(u * FPS // sample_rate_hz, 0, roi_num_frames - 1)


def render_source_lips(lips: dict, source: dict, sample_rate_hz: int) -> np.ndarray:
    """One source's lip stream on the mixture's frame grid, ``(F, 96, 96)`` uint8, from its
    ``sources[k]["lips"]`` entry (:func:`draw_lips`) and the source entry itself."""
    num_frames = lips["num_frames"]
    if lips["kind"] == "phonemes":
        shapes = mouth_shapes(lips["phonemes"], lips["phoneme_set"], num_frames, lips["fps"])
        return render_lips(shapes, source["speaker"], seed=lips["seed"], size=ROI_SIZE)
    if lips["kind"] == "file":
        roi = load_roi(lips["path"])
        if len(roi) != lips["roi_num_frames"]:
            raise ValueError(f"{lips['path']} has {len(roi)} frames, {lips['roi_num_frames']} when the corpus was "
                             "indexed: the ROI file changed")
        return roi[roi_frame_indices(num_frames, sample_rate_hz, source, len(roi))]
    raise ValueError(f"unknown lips kind {lips['kind']!r} (expected 'phonemes' or 'file')")
