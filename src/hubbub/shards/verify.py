"""Check a corpus against its own bookkeeping and the shard format, reporting every fault.

``verify_corpus(dir)`` is what ``hubbub shards verify DIR`` runs before a corpus is trained on or
published. It checks, and keeps going after a fault so one run lists everything wrong:

* files: ``index.json`` parses; every shard it lists exists with its sidecar, with the size and
  sha256 both record and the member byte ranges its sidecar records; no shard or sidecar exists that the index does not list; split totals add
  up; ``.tmp`` leftovers of an interrupted run are warnings, not faults.
* samples (every tar is read through webdataset, as the reader reads it): keys match the
  sidecar's list in order, are unique across the corpus and have no dots; the JSON is a sample's
  (:class:`hubbub.schema.SampleMeta` reads it: every field it lacks or holds wrongly is a fault),
  a labelled one with room and mixing, its stored ``duration_s`` agrees with ``num_samples /
  sample_rate_hz``; the members its ``targets`` promise (:func:`hubbub.schema.member_name`)
  exist for every source ``0..num_speakers-1`` and no others.
* audio (``check_audio=True``): every audio member (FLAC or WAV, of the bit depth the json
  says) and array member (``.npy``, ``.npy.zst``) decodes, without pickle, and is finite; the
  mixture is (num_mics, num_samples) at ``sample_rate_hz``, images (direct, early, reverberant,
  noise) the same shape, dry sources (num_samples,), RIRs (num_mics, L); and
  ``mix == sum(reverberant) + noise`` to 1e-6 (exact: integer sums).
* lips (target ``"lips"``, audio-visual corpora): every source has one lip member,
  ``s{i}.lips.npy.zst`` (``s{i}.lips.npy`` in corpora written before lips were compressed), and a
  ``sources[i].lips`` entry whose ``num_frames`` is ``F = ceil(num_samples * 25 / sample_rate_hz)``;
  with ``check_audio`` the member decodes without pickle (a damaged zstd frame fails its checksum)
  as uint8 ``(F, 96, 96)``.

Members it does not know (or lips in a sample without the target) are decoded by extension and
otherwise left alone. Codec tokens (``mix.codec.npy``, ``s{i}.codec.npy``, see
:mod:`hubbub.shards.tokens`) must be non-negative 2-D integer arrays; where ``index.json`` has a
``"codec"`` entry every sample must carry them, with (Q, L) = (num_codebooks, frames of
num_samples) and codes < codebook_size.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
from webdataset.tariterators import group_by_keys, tar_file_expander

from hubbub.schema import ARRAY_TARGETS, TARGETS, SampleMeta, SchemaError, find_member, member_name, stored_members
from hubbub.shards.format import decode_array, decode_audio, is_array_member, is_audio_member, parse_source_member
from hubbub import storage
from hubbub.shards.writer import INDEX_NAME, member_ranges, read_sidecar, sha256_fileobj, sidecar_name
from hubbub.video import num_video_frames

# What a labelled sample's JSON holds beyond what the schema asks of every sample: unlabelled
# samples ("labelled": false, cut from recordings by hubbub.shards.ingest) have no room or mixing
# parameters, and no sources.
SIMULATION_FIELDS = ("room.rt60_s_target", "room.rt60_s_measured", "mixing.overlap_ratio")
MIXTURE_TOLERANCE = 1e-6
# Sample JSON fields that must equal index.json's: samples of two corpora never mix unnoticed.
IDENTITY_FIELDS = ("seed", "recipe_hash", "sources_hash")
_SIDECAR = re.compile(r"^[A-Za-z0-9]+-\d{6}\.json$")
# (num_mics, num_samples): the mixture and every audio target but the dry sources
_IMAGE_TARGETS = ("mix",) + tuple(t for t in TARGETS if t not in ARRAY_TARGETS and t != "dry")
_MISSING = object()


@dataclass(frozen=True)
class Fault:
    """One problem: the file it is in (relative to the corpus), the sample key if any, what."""

    file: str
    key: str | None
    message: str

    def __str__(self) -> str:
        return f"{self.file}{f' [{self.key}]' if self.key else ''}: {self.message}"


@dataclass
class VerifyReport:
    """What :func:`verify_corpus` found. ``ok`` is True when there are no faults (warnings allowed).

    Counts cover what could be read: ``num_shards`` tars opened, ``num_samples`` samples read
    from them, ``num_bytes`` bytes hashed.
    """

    corpus_dir: str
    checked_audio: bool
    faults: list[Fault] = field(default_factory=list)
    warnings: list[Fault] = field(default_factory=list)
    num_shards: int = 0
    num_samples: int = 0
    num_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.faults

    def fault(self, file: str, key: str | None, message: str) -> None:
        self.faults.append(Fault(file, key, message))

    def format(self, max_faults: int = 50) -> str:
        """A human summary: one line of counts, then faults (the first ``max_faults``) and warnings."""
        audio = "" if self.checked_audio else " (audio not decoded)"
        verdict = "OK" if self.ok else f"{len(self.faults)} fault(s)"
        lines = [f"{self.corpus_dir}: {verdict}, {len(self.warnings)} warning(s); {self.num_shards} shards, "
                 f"{self.num_samples} samples, {self.num_bytes / 1e6:.1f} MB checked{audio}"]
        lines += [f"  FAULT {f}" for f in self.faults[:max_faults]]
        if len(self.faults) > max_faults:
            lines.append(f"  ... and {len(self.faults) - max_faults} more faults")
        lines += [f"  warning {w}" for w in self.warnings]
        return "\n".join(lines)


def _missing_shard(corpus_dir: str, name: str) -> str:
    """Why a shard is not among the corpus's files: absent, or something else in its place."""
    if storage.is_local(corpus_dir):
        path = storage.local_path(storage.join(corpus_dir, name))
        if path.is_symlink() and not path.exists():
            return f"shard missing: a dangling symbolic link to {os.readlink(path)}"
        if path.is_dir():
            return "shard missing: a directory in its place"
    return "shard missing"


def verify_corpus(corpus_dir: str | Path, *, check_audio: bool = True) -> VerifyReport:
    """Check every file and sample of a corpus; see the module docstring for the checks.

    Args:
        corpus_dir: the directory written by ``hubbub simulate`` (shards, sidecars, index.json).
        check_audio: decode FLAC and npy members and check shapes, finiteness and the mixture
            identity. Without it, files, hashes, keys and JSON are still checked (much faster).

    Example::

        report = verify_corpus("corpora/libri2mix")
        print(report.format())
        sys.exit(0 if report.ok else 1)
    """
    corpus_dir = storage.normalize(corpus_dir)
    report = VerifyReport(corpus_dir=corpus_dir, checked_audio=check_audio)
    if storage.is_local(corpus_dir) and not storage.local_path(corpus_dir).is_dir():
        report.fault(str(corpus_dir), None, "not a directory")
        return report
    sizes = storage.list_sizes(corpus_dir)
    if not sizes:
        report.fault(str(corpus_dir), None, "no files: not a corpus, or the store is empty at this URL")
        return report
    for tmp in sorted(n for n in sizes if n.endswith(".tmp")):
        report.warnings.append(Fault(tmp, None, "leftover of an interrupted write"))

    index = _read_index(corpus_dir, report)
    listed = {s["name"]: s for s in index["shards"]} if index else None
    tars = {n for n in sizes if n.endswith(".tar")}
    sidecars = {n[: -len(".json")] + ".tar" for n in sizes if _SIDECAR.match(n)}
    owner_of_key: dict[str, str] = {}
    for name in sorted(tars | sidecars | set(listed or ())):
        if listed is not None and name not in listed:
            report.fault(name, None, "not listed in index.json (stray shard or sidecar)")
        if name not in tars:
            report.fault(name, None, _missing_shard(corpus_dir, name) + (" (listed in index.json)" if listed else ""))
        if name not in sidecars:
            report.fault(sidecar_name(name), None, "sidecar missing")
        if name in tars:
            _check_shard(corpus_dir, name, sizes[name], (listed or {}).get(name), name in sidecars, owner_of_key,
                         report, codec=(index or {}).get("codec"), identity=_identity(index))
    if index:
        _check_split_totals(index, report)
    return report


def _read_index(corpus_dir: str, report: VerifyReport) -> dict | None:
    try:
        index = storage.read_json(storage.join(corpus_dir, INDEX_NAME))
    except FileNotFoundError:
        report.fault(INDEX_NAME, None, "missing: shards are checked against their sidecars only")
        return None
    except storage.StorageError as e:
        report.fault(INDEX_NAME, None, f"does not parse as a hubbub index: {e}")
        return None
    try:
        if not isinstance(index.get("shards"), list) or not isinstance(index.get("splits"), dict):
            raise ValueError("no shards list or splits dict")
        for entry in index["shards"]:
            lacking = [f for f in ("name", "split", "num_samples", "size_bytes", "sha256") if f not in entry]
            if lacking:
                raise ValueError(f"shard entry {entry.get('name')} lacks {lacking}")
    except (ValueError, AttributeError) as e:
        report.fault(INDEX_NAME, None, f"does not parse as a hubbub index: {e}")
        return None
    return index


def _check_split_totals(index: dict, report: VerifyReport) -> None:
    for split, totals in index["splits"].items():
        counted = sum(s["num_samples"] for s in index["shards"] if s["split"] == split)
        if totals.get("num_samples") != counted:
            report.fault(INDEX_NAME, None, f"split {split}: num_samples {totals.get('num_samples')} "
                                           f"but its shards hold {counted}")


def _identity(index: dict | None) -> dict:
    """What every sample of the corpus must have been drawn with (the fields index.json records)."""
    return {k: index[k] for k in IDENTITY_FIELDS if index and k in index}


def _check_shard(corpus_dir: str, name: str, size: int, entry: dict | None, has_sidecar: bool,
                 owner_of_key: dict[str, str], report: VerifyReport, codec: dict | None = None,
                 identity: dict | None = None) -> None:
    tar_path = storage.join(corpus_dir, name)
    with storage.open_file(tar_path) as f:
        sha = sha256_fileobj(f)
    report.num_shards += 1
    report.num_bytes += size
    record = None
    if has_sidecar:
        try:
            record = read_sidecar(storage.join(corpus_dir, sidecar_name(name)))
        except (OSError, ValueError, TypeError) as e:
            report.fault(sidecar_name(name), None, f"does not parse: {e}")
    for source, expected in (("sidecar", record and record.__dict__), ("index.json", entry)):
        if not expected:
            continue
        if expected["size_bytes"] != size:
            report.fault(name, None, f"size {size} bytes, {source} says {expected['size_bytes']}")
        if expected["sha256"] != sha:
            report.fault(name, None, f"sha256 differs from {source}: the shard changed after it was written")
    if record and entry and entry["num_samples"] != record.num_samples:
        report.fault(name, None, f"index.json says {entry['num_samples']} samples, sidecar {record.num_samples}")
    if record is not None and record.members is not None and (record.size_bytes == size and record.sha256 == sha):
        try:
            actual = member_ranges(tar_path)
        except (OSError, tarfile.TarError) as e:
            actual = None
            report.fault(name, None, f"tar headers unreadable: {e}")
        if actual is not None and actual != record.members:
            report.fault(sidecar_name(name), None, "member byte ranges differ from the shard's: a reader would "
                                                   "fetch the wrong bytes (rebuild with `hubbub shards index`)")

    split = name.rsplit("-", 1)[0]
    sidecar_durations_s = dict(zip(record.keys, record.durations_s)) if record else {}
    keys, tar_errors = [], []

    def handler(exn: Exception) -> bool:
        # webdataset appends " @ <file object>" to the message; the fault names the file already.
        tar_errors.append(str(exn.args[0] if exn.args else repr(exn)).split(" @ <")[0])
        return True  # read on: a damaged tar may still yield its other samples

    with storage.open_file(tar_path, block_size=1 << 22) as f:
        files = tar_file_expander([{"url": str(tar_path), "stream": f}], handler=handler)
        for raw in group_by_keys(files, handler=handler):
            key = raw["__key__"]
            keys.append(key)
            report.num_samples += 1
            if key in owner_of_key:
                report.fault(name, key, f"duplicate key, also in {owner_of_key[key]}")
            owner_of_key[key] = name
            try:
                messages = _check_sample(raw, split, sidecar_durations_s.get(key), report.checked_audio, codec,
                                         identity)
            except Exception as e:  # e.g. a field of the wrong type: a fault of this sample, read on
                messages = [f"cannot be checked: {type(e).__name__}: {e}"]
            for message in messages:
                report.fault(name, key, message)
    if tar_errors:
        # One damage usually raises twice (in the member, then in the next header): report it once.
        more = f" (and {len(tar_errors) - 1} more errors)" if len(tar_errors) > 1 else ""
        report.fault(name, None, f"unreadable tar ({len(keys)} samples read): {tar_errors[0]}{more}")
    if record is not None and keys != record.keys:
        missing = sorted(set(record.keys) - set(keys))
        extra = sorted(set(keys) - set(record.keys))
        report.fault(name, None, f"{len(keys)} samples, sidecar lists {len(record.keys)}"
                                 f"{f'; missing {missing[:5]}' if missing else ''}"
                                 f"{f'; not in sidecar {extra[:5]}' if extra else ''}"
                                 f"{'; order differs' if not (missing or extra) else ''}")


def _get(meta: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(meta, dict) or part not in meta:
            return _MISSING
        meta = meta[part]
    return meta


def _check_sample(raw: dict, split: str, sidecar_duration_s: float | None, check_audio: bool,
                  codec: dict | None = None, identity: dict | None = None) -> list[str]:
    """Faults of one raw sample (member name -> bytes), as messages. ``identity``: the fields
    every sample of the corpus shares with index.json (:data:`IDENTITY_FIELDS`)."""
    key = raw["__key__"]
    if "json" not in raw:
        return ["no json member"]
    try:
        stored = json.loads(raw["json"])
    except ValueError as e:
        return [f"json does not parse: {e}"]
    try:
        meta = SampleMeta.from_dict(stored)
    except SchemaError as e:
        return e.problems
    required = ("duration_s",) + (() if meta.unlabelled else SIMULATION_FIELDS)
    faults = [f"json lacks {f}" for f in required if _get(stored, f) is _MISSING]
    if faults:
        return faults
    num_speakers = meta.num_speakers
    if meta.unlabelled and (num_speakers != 0 or meta.targets):
        faults.append(f"unlabelled sample with num_speakers={num_speakers}, targets={list(meta.targets)}")
    faults += [f"drawn with {k} {stored[k]!r}, the corpus with {v!r}: a sample of another corpus"
               for k, v in (identity or {}).items() if k in stored and stored[k] != v]
    if meta.key != key:
        faults.append(f"json key {meta.key!r} differs from the member names' key")
    if "." in meta.key:
        faults.append(f"key {meta.key!r} contains a dot")
    if meta.split != split:
        faults.append(f"json split {meta.split!r} but the shard is in split {split!r}")
    # the stored duration is only ever compared: readers compute it (SampleMeta.duration_s)
    if abs(stored["duration_s"] - meta.duration_s) > 1e-3:
        faults.append(f"duration_s {stored['duration_s']} != num_samples / sample_rate_hz")
    if sidecar_duration_s is not None and abs(sidecar_duration_s - meta.duration_s) > 1e-3:
        faults.append(f"duration_s {meta.duration_s}, sidecar says {sidecar_duration_s}")
    if len(meta.sources) != num_speakers:
        faults.append(f"{len(meta.sources)} entries in sources for num_speakers={num_speakers}")

    members = {name for name in raw if not name.startswith("__")}
    ext = meta.stored_as.codec
    expected = {"json", member_name("mix", codec=ext)}
    for target in meta.targets:
        if target == "noise":
            expected.add(member_name("noise", codec=ext))
            continue
        if target == "lips":
            for i in range(num_speakers):
                found = stored_members(members, "lips", i)
                if not found:
                    faults.append(f"target lips of source {i} missing (no {member_name('lips', i)})")
                elif len(found) > 1:  # a reader would take the first and never look at the other
                    faults.append(f"lips of source {i} stored twice: {', '.join(found)}")
            faults += _check_lips_meta(meta)
            continue
        faults += [f"target {target} of source {i} missing" for i in range(num_speakers)
                   if member_name(target, i, ext) not in members]
    if codec:  # index.json's "codec": every sample carries tokens of the mixture and its sources
        expected.add(member_name("codec"))
        if codec.get("source_target"):
            expected.update(member_name("codec", i) for i in range(num_speakers))
    faults += [f"member {m} missing" for m in sorted(expected - members)]
    for m in sorted(members):
        parsed = parse_source_member(m)
        if parsed and parsed[0] >= num_speakers:
            faults.append(f"member {m} for a mixture of {num_speakers} speaker(s)")
    if check_audio:
        faults += _check_audio(raw, members, meta, codec)
    return faults


def _check_audio(raw: dict, members: set[str], meta: SampleMeta, codec: dict | None = None) -> list[str]:
    num_mics, num_samples, sample_rate_hz = meta.num_mics, meta.num_samples, meta.sample_rate_hz
    image = (num_mics, num_samples)
    faults, audio = [], {}
    bits = meta.stored_as.bits
    for m in sorted(members - {"json"}):
        try:
            if is_audio_member(m):
                subtype = sf.info(io.BytesIO(raw[m])).subtype
                x, sr = decode_audio(raw[m])
                if sr != sample_rate_hz:
                    faults.append(f"{m}: {sr} Hz, json says {sample_rate_hz}")
                if subtype != f"PCM_{bits}":
                    faults.append(f"{m}: {subtype}, json says {bits}-bit")
            elif is_array_member(m):
                x = decode_array(m, raw[m])
            else:
                if m.endswith(".json"):
                    json.loads(raw[m])
                continue
        except Exception as e:  # any decoder error is a fault of this member, not of the run
            faults.append(f"{m} does not decode: {type(e).__name__}: {e}")
            continue
        if x.dtype.kind in "fc" and not np.isfinite(x).all():
            faults.append(f"{m} has non-finite values")
        audio[m] = x

    for m, x in audio.items():
        parsed = parse_source_member(m)
        target = parsed[1] if parsed else m.split(".")[0]
        if is_audio_member(m):
            # A one-microphone image decodes as (T,): compare images as (M, T).
            if target == "dry" and x.shape != (num_samples,):
                faults.append(f"{m} has shape {x.shape}, expected ({num_samples},)")
            elif target in _IMAGE_TARGETS and np.atleast_2d(x).shape != image:
                faults.append(f"{m} has shape {x.shape}, expected {image}")
            elif x.shape[-1] != num_samples:
                faults.append(f"{m} has {x.shape[-1]} samples, json says {num_samples}")
        elif target == "lips" and "lips" in meta.targets:  # else another stage's, left alone
            faults += _check_lips(m, x, parsed[0] if parsed else None, meta)
        elif target == "rir" and (x.ndim != 2 or x.shape[0] != num_mics):
            faults.append(f"{m} has shape {x.shape}, expected ({num_mics}, L)")
        elif m.endswith(".codec.npy"):
            faults += _check_codes(m, x, num_samples, sample_rate_hz, codec)

    reverberant = [audio.get(find_member(audio, "reverberant", i)) for i in range(meta.num_speakers)]
    noise, mix = find_member(audio, "noise"), find_member(audio, "mix")
    noiseless = meta.noise is None or meta.noise.snr_db is None
    if reverberant and all(r is not None for r in reverberant) and mix and (noise or noiseless):
        try:
            expected = np.sum([np.atleast_2d(r) for r in reverberant], axis=0, dtype=np.float64)
            if noise:
                expected = expected + np.atleast_2d(audio[noise])
            error = float(np.max(np.abs(np.atleast_2d(audio[mix]) - expected)))
        except ValueError:
            return faults  # shape faults already reported
        if error > MIXTURE_TOLERANCE:
            faults.append(f"mix differs from sum(reverberant) + noise by up to {error:.3g}")
    return faults


def _lip_frames(meta: SampleMeta) -> int:
    return num_video_frames(meta.num_samples, meta.sample_rate_hz)


def _check_lips_meta(meta: SampleMeta) -> list[str]:
    frames, faults = _lip_frames(meta), []
    for i, source in enumerate(meta.sources):
        if source.lips is None:
            faults.append(f"sources[{i}] lacks lips.num_frames (the sample has target lips)")
        elif source.lips.num_frames != frames:
            faults.append(f"sources[{i}].lips.num_frames is {source.lips.num_frames}, expected {frames} "
                          f"(ceil(num_samples * 25 / sample_rate_hz))")
    return faults


def _check_lips(m: str, frames: np.ndarray, source: int | None, meta: SampleMeta) -> list[str]:
    """A lip stream: uint8 (F, 96, 96) with F the video frames of num_samples at 25 fps."""
    expected = (_lip_frames(meta), 96, 96)
    faults = []
    if frames.dtype != np.uint8:
        faults.append(f"{m} is {frames.dtype}, expected uint8 mouth frames")
    if frames.shape != expected:
        faults.append(f"{m} has shape {frames.shape}, expected {expected} (frames at 25 fps, 96, 96)")
    lips = meta.sources[source].lips if source is not None and source < len(meta.sources) else None
    if lips is not None and frames.ndim >= 1 and lips.num_frames != frames.shape[0]:
        faults.append(f"{m} has {frames.shape[0]} frames, sources[{source}].lips.num_frames says {lips.num_frames}")
    return faults


def _check_codes(m: str, codes: np.ndarray, num_samples: int, sample_rate_hz: int,
                 codec: dict | None) -> list[str]:
    """Codec tokens (hubbub.shards.tokens): non-negative (Q, L) integers; with index.json's "codec"
    entry also Q == num_codebooks, L == the frame count of num_samples, codes < codebook_size."""
    if codes.ndim != 2 or codes.dtype.kind not in "iu":
        return [f"{m} is {codes.dtype} of shape {codes.shape}, expected 2-D integer (Q, L) codes"]
    codec = codec or {}
    faults = []
    if "num_codebooks" in codec and "frame_rate_hz" in codec:
        # Here, not at the top: hubbub.codec adds 0.7 s (scipy), and only tokenised corpora need it.
        from hubbub.codec import frame_count

        expected = (codec["num_codebooks"], frame_count(num_samples, sample_rate_hz, codec["frame_rate_hz"]))
        if codes.shape != expected:
            faults.append(f"{m} has shape {codes.shape}, expected {expected} (Q, frames) for {num_samples} "
                          f"samples at {codec['frame_rate_hz']} frames/s")
    limit = codec.get("codebook_size")
    if codes.size and (codes.min() < 0 or (limit is not None and codes.max() >= limit)):
        upper = "inf" if limit is None else limit
        faults.append(f"{m} has codes in [{codes.min()}, {codes.max()}], outside [0, {upper})")
    return faults
