"""Unlabelled recordings -> a hubbub corpus of mixtures only, for MixIT pretraining.

(The trees of standard separation sets, LibriMix, WHAM!, WHAMR! and wsj0-mix, become labelled
corpora in :mod:`hubbub.shards.layouts`; :func:`ingest_folder`, what ``hubbub shards ingest``
runs, sends a folder to one or the other.)

:func:`ingest_recordings` walks a folder of recordings (meetings, podcasts, real noisy speech; a
local folder or a URL such as ``s3://bucket/meetings``, listed once), cuts each into consecutive
non-overlapping segments of ``segment_s`` and writes every segment as one sample of the
standard shard format (:mod:`hubbub.shards.format`) with only two members::

    {key}.json       {"labelled": false, "num_speakers": 0, "targets": [], "sources": [],
                      "source_file": "meeting1/array.wav", "offset_s": 8.0, ...}
    {key}.mix.flac   (T,) the segment, i.e. an (M=1, T) image at the reference mic, 24-bit
                     (``codec``/``bits`` choose FLAC or WAV, 24 or 16 bits: ``mix.wav``)

so the reader yields ``batch["mix"]`` (B, 1, T) with ``num_sources`` 0, and ``hubbub shards
verify`` / ``stats`` work on it as on a simulated corpus.

Choices, and why:

* Multichannel files keep **channel 0**. An average of the channels of a microphone array is a
  signal no microphone recorded (its comb filtering is an artefact the model would learn); one
  channel is a real recording, and it is what a simulated corpus stores at its reference mic.
* The **plan is made from the file headers** (frames, rate): each file's segment count, the
  split of each file, the sample index of each segment and so the shard of each sample are known
  before any audio is decoded. A segment later found silent or non-finite (or a file that fails
  to decode) is recorded as a failed sample in its shard's sidecar, as ``hubbub simulate`` records
  a failed mixture, and the plan stays fixed. That is what makes a rerun resumable and exact:
  complete shards are kept without decoding the files that fill them.
* Each file is decoded **once per run, streamed in blocks** and resampled block by block
  (with enough context that the result equals resampling the whole file), so an hours-long
  multichannel recording never sits in memory (a file in a store is read by ranged requests).
* **Splits are per file** (every segment of a recording in one split), drawn deterministically
  from the seed and the files' paths relative to ``folder``
  (:func:`hubbub.sources.speech.assign_splits`). The corpus's identity holds those relative paths
  and the files' sizes and headers: the same files give the same corpus on a disk or in a store.

Next to the shards: ``recipe.json`` (the identity of the corpus: a rerun with other settings or
other files is refused), ``report.json`` (skipped files and segments, each with its reason) and
``index.json`` (recipe ``{"kind": "recordings", ...}`` and a data card), written as every corpus
is (:func:`hubbub.shards.build.build_corpus`).
"""
from __future__ import annotations

import contextlib
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hubbub import storage
from hubbub.audio import AudioError, probe, resample
from hubbub.schema import member_name
from hubbub.shards.format import BITS, CODECS, encode_audio, encode_json, quantize, sample_key, shard_name
from hubbub.shards.layouts import LAYOUTS, LayoutError, detect_layout, ingest_dataset
from hubbub.shards.build import build_corpus
from hubbub.shards.writer import (ShardPlan, ShardRecord, count_reasons, fingerprint, plan_split, write_sidecar,
                                  writing_shard)
from hubbub.sources.speech import _walk_audio, assign_splits, resolve_folder

log = logging.getLogger(__name__)

KIND = "recordings"
LICENCE = "unknown (user recordings)"
CHANNEL = 0
# A segment whose peak is below -80 dBFS holds nothing a separation model can learn from.
SILENT_PEAK = 1e-4
# Output samples resampled per block: a few MB of float32, whatever the file's length.
_BLOCK_S = 30.0


@dataclass
class IngestResult:
    out_dir: Path | str  # a Path for a local corpus, else its URL
    index: dict
    written: int                 # shards written by this run
    skipped_complete: int        # shards found complete and kept
    skipped_files: list[dict]    # {"path" (relative to the folder), "reason", "detail"}
    skipped_segments: list[dict] = field(default_factory=list)  # of files that were otherwise used

    def summary(self) -> str:
        splits = ", ".join(f"{k}: {v['num_samples']}" for k, v in self.index["splits"].items())
        return (f"{self.out_dir}: {splits} segments; {self.written} shards written, {self.skipped_complete} already "
                f"complete; {len(self.skipped_files)} files skipped (see report.json)")


@dataclass
class _File:
    """One recording as its header describes it, and its place in the plan."""

    path: str  # an absolute local path or the file's URL
    rel: str
    sample_rate_hz: int
    frames: int
    channels: int
    num_segments: int
    split: str = ""
    first_index: int = 0  # sample index of its first segment within its split


def ingest_folder(folder, out_dir, *, layout: str = "auto", sample_rate_hz: int | None = None,
                  segment_s: float | None = None, seed: int | None = None, mixture: str | None = None,
                  mode: str | None = None, splits=None, targets=None, samples_per_shard: int = 200,
                  codec: str = "flac", bits: int = 24, progress: bool = False):
    """What ``hubbub shards ingest`` runs: the tree of a standard separation set (LibriMix, WHAM!,
    WHAMR!, wsj0-mix; :mod:`hubbub.shards.layouts`) into a labelled corpus, any other folder into
    unlabelled recordings (:func:`ingest_recordings`).

    ``layout``: ``"auto"`` (a standard layout where the folder names show one, else recordings),
    ``"recordings"``, or a layout of :data:`hubbub.shards.layouts.LAYOUTS`. ``sample_rate_hz``
    resamples recordings (default 16000) and picks a set's ``wav8k``/``wav16k`` variant;
    ``segment_s`` and ``seed`` apply to recordings only, ``mixture``, ``mode``, ``splits`` and
    ``targets`` to standard sets only (see :func:`hubbub.shards.layouts.ingest_dataset`): one given
    for the other kind is a ValueError, not silently ignored. Returns the function's result; both
    have ``summary()``.
    """
    if layout not in ("auto", "recordings", *LAYOUTS):
        raise LayoutError(f"unknown layout {layout!r} (known: auto, recordings, {', '.join(LAYOUTS)})")
    if layout == "auto":
        layout = detect_layout(folder) or "recordings"
    if layout == "recordings":
        given = [k for k, v in {"mixture": mixture, "mode": mode, "splits": splits, "targets": targets}.items()
                 if v is not None]
        if given:
            raise LayoutError(f"{folder} is read as recordings: {', '.join(given)} only "
                              f"appl{'ies' if len(given) == 1 else 'y'} to standard sets ({', '.join(LAYOUTS)})")
        return ingest_recordings(folder, out_dir, segment_s=4.0 if segment_s is None else segment_s,
                                 sample_rate_hz=16000 if sample_rate_hz is None else sample_rate_hz,
                                 seed=0 if seed is None else seed, samples_per_shard=samples_per_shard,
                                 codec=codec, bits=bits, progress=progress)
    given = [k for k, v in {"segment_s": segment_s, "seed": seed}.items() if v is not None]
    if given:
        raise LayoutError(f"{folder} is read as a {layout} set: {', '.join(given)} only "
                          f"appl{'ies' if len(given) == 1 else 'y'} to recordings")
    return ingest_dataset(folder, out_dir, layout=layout, sample_rate_hz=sample_rate_hz, mode=mode, mixture=mixture,
                          splits=splits, targets=targets, samples_per_shard=samples_per_shard, codec=codec,
                          bits=bits, progress=progress)


def ingest_recordings(folder, out_dir, *, segment_s: float = 4.0, min_segment_s: float = 1.0,
                      sample_rate_hz: int = 16000, splits: dict[str, float] | None = None,
                      samples_per_shard: int = 200, seed: int = 0, codec: str = "flac", bits: int = 24,
                      progress: bool = False) -> IngestResult:
    """Cut the recordings under ``folder`` into segments and write them as a corpus in ``out_dir``.

    Args:
        folder: searched recursively for audio files (the extensions of
            :data:`hubbub.sources.speech.AUDIO_EXTENSIONS`): a local folder or a URL
            (``s3://bucket/meetings``; one listing, each header read through :mod:`hubbub.storage`).
        out_dir: the corpus directory, local or a URL (created; a rerun of the same call finishes
            or keeps it).
        segment_s: segment length in seconds; segments are consecutive and do not overlap.
        min_segment_s: a recording's last, shorter piece is kept when at least this long, else
            dropped; a recording shorter than this is skipped as ``too-short``.
        sample_rate_hz: every segment is resampled to this rate.
        splits: split name -> fraction of the files (default ``{"train": 0.95, "valid": 0.05}``);
            every split with a positive fraction gets at least one file.
        samples_per_shard: segments per shard.
        seed: picks which files go to which split (nothing else is random).
        codec, bits: how the segments are stored, as a recipe's ``storage`` section: ``"flac"``
            or ``"wav"``, 24 or 16 bits (WAV decodes several times faster, FLAC takes fewer bytes).
        progress: show a progress bar over the files decoded.

    Files that cannot be used are skipped with a reason (``unreadable``, ``empty``,
    ``too-short``, ``non-finite``, ``silent``, ``truncated``), as are single silent or
    non-finite segments; both are listed in ``report.json``. Raises ValueError, with nothing
    written, when the folder holds no usable audio or fewer usable files than splits, and when
    ``out_dir`` holds a corpus made with other settings or files.

    Example::

        res = ingest_recordings("/data/meetings", "corpora/meetings", segment_s=4.0)
        ds = ShardDataset("corpora/meetings", "train", targets=(), crop_s=3.0, batch_size=8)
    """
    splits = dict({"train": 0.95, "valid": 0.05} if splits is None else splits)
    _check_settings(segment_s, min_segment_s, sample_rate_hz, splits, samples_per_shard)
    if codec not in CODECS or bits not in BITS:
        raise ValueError(f"codec must be one of {CODECS} and bits one of {BITS}, got {codec!r} and {bits}")
    stored_as = {"codec": codec, "bits": int(bits)}
    folder = resolve_folder(folder, "recordings folder")
    out_dir = storage.normalize(Path(out_dir).expanduser() if storage.is_local(out_dir) else out_dir)
    segment_len = int(round(segment_s * sample_rate_hz))
    min_len = max(1, int(round(min_segment_s * sample_rate_hz)))

    # Everything up to the first write is header reads: a folder with no usable audio, or too
    # few files for the splits, is refused before out_dir is touched.
    files, header_skipped, sources_hash = _index_files(folder, sample_rate_hz, segment_len, min_len,
                                                       min_segment_s)
    if not files:
        raise ValueError(f"no usable audio under {folder}: {len(header_skipped)} file(s) skipped "
                         f"({count_reasons(header_skipped)}); nothing written")
    by_split = _assign(files, splits, seed)
    # Normalised types: segment_s=4 and segment_s=4.0 are the same corpus.
    recipe = {"kind": KIND, "sample_rate_hz": int(sample_rate_hz), "segment_s": float(segment_s),
              "min_segment_s": float(min_segment_s), "source": storage.name_of(folder)}
    # The folder's name is provenance, not identity: a renamed copy of the same files is the same corpus.
    recipe_hash = fingerprint({k: v for k, v in recipe.items() if k != "source"} | {"channel": CHANNEL})
    # Storage changes the bytes, not the segments: not in the recipe hash, but a rerun keeps it.
    identity = {"kind": KIND, "recipe_hash": recipe_hash, "sources_hash": sources_hash, "seed": seed,
                "samples_per_shard": samples_per_shard, "splits": splits, "storage": stored_as, "recipe": recipe}
    plans = {split: plan_split(split, sum(f.num_segments for f in fs), samples_per_shard)
             for split, fs in by_split.items()}

    def write(pending: list[ShardPlan]) -> list[ShardRecord]:
        names = {p.name for p in pending}
        to_decode = [f for fs in by_split.values() for f in fs
                     if any(shard_name(f.split, k) in names for k in _shards_of(f, samples_per_shard))]
        with tqdm(total=len(to_decode), desc="recordings", unit="file", disable=not progress) as bar:
            return [rec for split, fs in by_split.items()
                    for rec in _write_split(fs, plans[split], names, out_dir, bar, sample_rate_hz, segment_len,
                                            min_len, samples_per_shard, stored_as)]

    def report(records: list[ShardRecord]) -> dict:
        decode_skipped, skipped_segments = _failures(records, files)
        skipped_files = header_skipped + decode_skipped
        return {"folder": str(folder), "skipped_files": skipped_files, "skipped_segments": skipped_segments,
                "summary": {"files_found": len(files) + len(header_skipped), "skipped_files": len(skipped_files),
                            "skipped_segments": len(skipped_segments),
                            "empty_splits": [s for s in plans if not any(r.keys for r in records if r.split == s)]}}

    built = build_corpus(
        out_dir, identity, [p for ps in plans.values() for p in ps], write=write, report=report,
        index_extra=lambda records, content: {
            "kind": KIND, "seed": seed, "recipe_hash": recipe_hash, "sources_hash": sources_hash,
            "data_card": _data_card(folder, by_split, records, content["skipped_files"])},
        what="hubbub shards ingest", labels={"sources_hash": "recordings"},
        nothing_usable=lambda content: (f"no usable audio under {folder}: every segment of {len(files)} file(s) "
                                        f"was skipped ({count_reasons(content['skipped_files'])}); nothing written"))
    content = built.report
    for s in content["summary"]["empty_splits"]:
        log.warning("split %s holds no usable segment: all its files were skipped (see report.json)", s)
    log.info("%d shards written, %d complete kept; %d files skipped", built.written, built.kept,
             len(content["skipped_files"]))
    return IngestResult(storage.as_path(out_dir), built.index, built.written, built.kept, content["skipped_files"],
                        content["skipped_segments"])


def _check_settings(segment_s, min_segment_s, sample_rate_hz, splits, samples_per_shard) -> None:
    if not segment_s > 0 or not 0 < min_segment_s <= segment_s:
        raise ValueError(f"need 0 < min_segment_s <= segment_s, got {min_segment_s} and {segment_s}")
    if int(sample_rate_hz) != sample_rate_hz or sample_rate_hz <= 0:
        raise ValueError(f"sample_rate_hz must be a positive integer, got {sample_rate_hz}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    if not splits or any(f < 0 for f in splits.values()) or not any(f > 0 for f in splits.values()):
        raise ValueError(f"splits must map names to fractions >= 0, one of them positive; got {splits}")
    for name in splits:
        sample_key(name, 0)  # raises for names a key cannot hold


def _resampled_length(frames: int, from_hz: int, to_hz: int) -> int:
    ratio = Fraction(to_hz, from_hz)
    return -(-frames * ratio.numerator // ratio.denominator)  # resample_poly's ceil(n * up / down)


def _index_files(folder: str, sample_rate_hz: int, segment_len: int, min_len: int,
                 min_segment_s: float) -> tuple[list[_File], list[dict], str]:
    """Read every header: (usable files, skipped files, fingerprint of what the folder holds).
    The fingerprint's rows are paths relative to ``folder`` and sizes from its listing, so a
    copy of the folder in a store fingerprints as the folder does."""
    files, skipped, rows = [], [], []
    for listed in _walk_audio(folder):
        path, rel = listed.path, listed.rel
        try:
            sr, frames, channels = probe(path)
            if frames == 0:
                raise AudioError(path, "empty")
        except AudioError as exc:
            rows.append([rel, listed.size])
            skipped.append({"path": rel, "reason": exc.reason, "detail": exc.detail})
            continue
        rows.append([rel, listed.size, sr, frames, channels])
        n = _resampled_length(frames, sr, sample_rate_hz)
        count = n // segment_len + (n % segment_len >= min_len)
        if count == 0:
            skipped.append({"path": rel, "reason": "too-short",
                            "detail": f"{frames / sr:.3f} s < {min_segment_s} s"})
            continue
        files.append(_File(path, rel, sr, frames, channels, count))
    return files, skipped, fingerprint(rows)


def _assign(files: list[_File], splits: dict[str, float], seed: int) -> dict[str, list[_File]]:
    names = [n for n, f in splits.items() if f > 0]
    if len(files) < len(names):
        raise ValueError(f"{len(files)} usable recording(s) cannot fill {len(names)} splits {names} "
                         f"with one file each: add recordings or use fewer splits; nothing written")
    try:
        assigned = assign_splits([f.rel for f in files], splits, seed=seed)
    except ValueError:
        raise ValueError(f"{len(files)} usable recordings are too few for the split fractions {splits}; "
                         f"nothing written") from None
    by_rel = {f.rel: f for f in files}
    out = {}
    for split, rels in assigned.items():
        first = 0
        for rel in rels:  # sorted: a split's samples follow the files' path order
            f = by_rel[rel]
            f.split, f.first_index = split, first
            first += f.num_segments
        out[split] = [by_rel[r] for r in rels]
    return out


def _shards_of(f: _File, per: int) -> set[int]:
    return set(range(f.first_index // per, (f.first_index + f.num_segments - 1) // per + 1))


def _write_split(files: list[_File], plans: list[ShardPlan], pending: set[str], out_dir: str, bar,
                 sample_rate_hz: int, segment_len: int, min_len: int, per: int, stored_as: dict
                 ) -> list[ShardRecord]:
    """Write the pending shards of one split, decoding only the files that fill them, and return
    their records.

    Sample indices only grow along the split's files, so one shard is open at a time. A file
    whose segments straddle two pending shards is decoded once, for both: why the recordings are
    written a split at a time rather than a shard at a time.
    """
    current = None  # (context manager, ShardWriter, ShardRecord) of the open shard
    written: list[ShardRecord] = []

    def close(exc_info=(None, None, None)):
        nonlocal current
        if current is not None:
            opened, writer, rec = current
            current = None
            opened.__exit__(*exc_info)
            if exc_info[0] is None:
                write_sidecar(rec, out_dir, writer)
                written.append(rec)

    try:
        for f in files:
            if not any(plans[k].name in pending for k in _shards_of(f, per)):
                continue
            for i, segment, reason, detail in _segments(f, sample_rate_hz, segment_len, min_len):
                index = f.first_index + i
                plan = plans[index // per]
                if plan.name not in pending:
                    continue  # decoded for a later shard; this one is complete
                if current is None or current[2].shard_index != plan.shard_index:
                    close()
                    opened = writing_shard(out_dir, plan.name)
                    current = (opened, opened.__enter__(),
                               ShardRecord(name=plan.name, split=plan.split, shard_index=plan.shard_index,
                                           first_sample=plan.first_sample, num_planned=plan.num_samples))
                _, writer, rec = current
                key = sample_key(f.split, index)
                offset_samples = i * segment_len
                if segment is None:
                    rec.failed.append({"index": index, "key": key, "split": f.split, "source_file": f.rel,
                                       "offset_s": round(offset_samples / sample_rate_hz, 6), "reason": reason,
                                       "error": f"{reason}: {detail}" if detail else reason})
                    continue
                members = _members(f, key, index, segment, offset_samples, sample_rate_hz, stored_as)
                writer.write(members)
                rec.keys.append(key)
                rec.durations_s.append(len(segment) / sample_rate_hz)
            bar.update(1)
        close()
    except BaseException:
        close(sys.exc_info())  # the open shard's .tmp is removed, never renamed
        raise
    return written


def _members(f: _File, key: str, index: int, segment: np.ndarray, offset_samples: int,
             sample_rate_hz: int, stored_as: dict) -> dict:
    n = len(segment)
    meta = {
        "key": key, "split": f.split, "index": index, "kind": KIND, "labelled": False,
        "sample_rate_hz": sample_rate_hz, "num_samples": n, "duration_s": n / sample_rate_hz,
        "num_speakers": 0, "num_mics": 1, "targets": [], "sources": [],
        "source_file": f.rel, "offset_s": round(offset_samples / sample_rate_hz, 6),
        "offset_samples": offset_samples, "channel": CHANNEL, "source_channels": f.channels,
        "source_sample_rate_hz": f.sample_rate_hz, "storage": stored_as,
    }
    audio = encode_audio(quantize(segment, stored_as["bits"]), sample_rate_hz, **stored_as)
    return {"__key__": key, "json": encode_json(meta), member_name("mix", codec=stored_as["codec"]): audio}


def _segments(f: _File, sample_rate_hz: int, segment_len: int, min_len: int
              ) -> Iterator[tuple[int, np.ndarray | None, str | None, str]]:
    """Exactly ``f.num_segments`` items ``(i, segment or None, reason, detail)``, in order.

    The header's plan wins over what the decoder delivers: audio beyond the planned length is
    dropped, planned segments the file cannot deliver are failures (``truncated``, ``unreadable``).
    """
    done, buffer, filled = 0, np.zeros(segment_len, np.float32), 0
    try:
        for block in _stream_channel(f.path, f.sample_rate_hz, sample_rate_hz, f.frames):
            while block.size and done < f.num_segments:
                take = min(segment_len - filled, block.size)
                buffer[filled:filled + take] = block[:take]
                filled, block = filled + take, block[take:]
                if filled == segment_len:
                    yield (done, *_judge(buffer.copy()))
                    done, filled = done + 1, 0
        if done < f.num_segments and filled >= min_len:
            yield (done, *_judge(buffer[:filled].copy()))
            done += 1
        reason, detail = "truncated", f"decoded fewer samples than its header's {f.frames}"
    except Exception as exc:  # libsndfile raises several types for damaged data
        reason, detail = "unreadable", (str(exc).splitlines() or [type(exc).__name__])[0][:200]
    for i in range(done, f.num_segments):
        yield i, None, reason, detail


def _judge(segment: np.ndarray) -> tuple[np.ndarray | None, str | None, str]:
    if not np.isfinite(segment).all():
        return None, "non-finite", "NaN or inf samples"
    peak = float(np.abs(segment).max())
    if peak < SILENT_PEAK:
        return None, "silent", f"peak {peak:.2g} < {SILENT_PEAK:g}"
    return segment, None, ""


def _stream_channel(path: str, from_hz: int, to_hz: int, frames: int) -> Iterator[np.ndarray]:
    """Channel ``CHANNEL`` of a file at ``to_hz``, as consecutive float32 blocks whose
    concatenation equals :func:`hubbub.audio.resample` of the whole channel (to float rounding).

    Each block is resampled with ``margin`` input samples of context on both sides (zeros past
    the file's ends, as ``resample_poly`` pads), more than the half-length of its filter; the
    margin and the block are multiples of the decimation factor so block outputs land on the
    whole signal's output grid. A file in a store is read through a ranged-read file object,
    block by block as decoding goes, never whole.
    """
    ratio = Fraction(to_hz, from_hz)
    up, down = ratio.numerator, ratio.denominator
    out_block = up * max(1, round(_BLOCK_S * to_hz / up))
    in_block = out_block // up * down
    # resample_poly's filter reaches 10 * max(up, down) samples of the upsampled signal each way.
    margin = 0 if up == down else down * -(-(10 * max(up, down) // up + 2) // down)
    trim = margin // down * up
    limit = _resampled_length(frames, from_hz, to_hz)  # the header's length: audio past it is dropped
    emitted, read, eof = 0, 0, False
    buffer = np.zeros(margin, np.float32)  # input from (block start - margin) on
    opened = contextlib.nullcontext(path) if storage.is_local(path) else storage.open_file(path)
    with opened as source, sf.SoundFile(source) as audio:
        while emitted < limit:
            while not eof and buffer.size < in_block + 2 * margin:
                chunk = audio.read(in_block, dtype="float32", always_2d=True)[:, CHANNEL]
                eof, read = chunk.size < in_block, read + chunk.size
                buffer = np.concatenate([buffer, chunk])
                if eof:  # a file shorter than its header ends here (the caller reports it truncated)
                    limit = min(limit, _resampled_length(read, from_hz, to_hz))
            window = buffer[:in_block + 2 * margin]
            window = np.pad(window, (0, in_block + 2 * margin - window.size))
            out = resample(window, from_hz, to_hz)[trim:trim + out_block][:limit - emitted]
            if out.size == 0:
                return
            emitted += out.size
            yield out
            buffer = buffer[in_block:]


def _failures(records: list[ShardRecord], files: list[_File]) -> tuple[list[dict], list[dict]]:
    """From the sidecars (so a resumed run reports what the first run found): files none of
    whose segments were usable, and the skipped segments of the other files."""
    failed_by_file: dict[str, list[dict]] = {}
    for rec in records:
        for entry in rec.failed:
            failed_by_file.setdefault(entry["source_file"], []).append(entry)
    files_out, segments_out = [], []
    for f in files:
        failed = failed_by_file.get(f.rel, [])
        if failed and len(failed) == f.num_segments:
            reason = Counter(e["reason"] for e in failed).most_common(1)[0][0]
            files_out.append({"path": f.rel, "reason": reason,
                              "detail": f"all {f.num_segments} segment(s) skipped: {failed[0]['error']}"})
        else:
            segments_out += [{"path": e["source_file"], "offset_s": e["offset_s"], "key": e["key"],
                              "split": e["split"], "reason": e["reason"], "error": e["error"]} for e in failed]
    return files_out, segments_out


def _data_card(folder: str, by_split: dict[str, list[_File]], records: list[ShardRecord],
               skipped_files: list[dict]) -> dict:
    unusable = {s["path"] for s in skipped_files}  # a file skipped from its header is in no split
    return {
        "kind": KIND, "source": storage.name_of(folder), "licence": LICENCE,
        "files": sum(f.rel not in unusable for fs in by_split.values() for f in fs),
        "files_per_split": {s: sum(f.rel not in unusable for f in fs) for s, fs in by_split.items()},
        "hours_per_split": {s: round(sum(sum(r.durations_s) for r in records if r.split == s) / 3600, 4)
                            for s in by_split},
        "channel": f"channel {CHANNEL} of multichannel files",
        "skipped_files": len(skipped_files),
    }

