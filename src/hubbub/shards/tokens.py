"""Cache codec tokens in a corpus: add ``mix.codec.npy`` and ``s{i}.codec.npy`` to every sample.

``add_codec_tokens(corpus_dir, load_codec(...))`` rewrites each shard with two kinds of new member
per sample, keeping every other member byte for byte::

    {key}.mix.codec.npy   (Q, L) int16  tokens of the mixture at the reference mic (channel 0)
    {key}.s{i}.codec.npy  (Q, L) int16  tokens of source i's ``source_target`` image at mic 0
                                        (samples with sources only)

``L = ceil(num_samples * frame_rate_hz / sample_rate_hz)``; frame ``l`` covers seconds
``[l / frame_rate_hz, (l + 1) / frame_rate_hz)`` of the sample (see :mod:`hubbub.codec`). The
reader returns them whole (``targets=("codec",)``, ``extras=("mix.codec.npy",)``); crop them with
:func:`hubbub.codec.token_span` and the item's ``start_sample``.

Bookkeeping. ``index.json`` gains a top-level ``"codec"`` entry (``codec.info()`` and
``source_target``) once every shard carries tokens. Each tokenised shard has a token record
``{split}-%06d.codec.json`` next to its sidecar (the codec, ``source_target``, and the size and
sha256 of the tar it vouches for): the sidecar itself cannot hold it, as
:func:`hubbub.shards.writer.read_sidecar` accepts only :class:`ShardRecord`'s fields.

Atomic and resumable. A shard is rewritten to ``{name}.tmp``; its token record is written, then
the tar is renamed over the old one, then the sidecar is rewritten. A tar is accepted as input
only if it matches its sidecar (untouched) or its token record (already rewritten), so a run
killed at any point leaves every shard either as it was or complete with tokens, and a rerun
skips finished shards and repairs a sidecar left stale by a kill between rename and sidecar.
Tokens of another codec (or another ``source_target``) are never mixed in: that raises
:class:`CodecMismatchError` unless ``overwrite=True``.

Tokens are deterministic for a given codec, device and ``batch_size``. Frames at a near-tie
between two codewords can flip with the batch composition or device (floating-point rounding),
more often in the later residual codebooks; waveforms are batched only with others of the same
length, so padding never changes a sample's tokens.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from webdataset.tariterators import group_by_keys, tar_file_expander

from hubbub.codec import Codec
from hubbub.schema import SampleMeta, find_member, member_name
from hubbub.shards.format import decode_audio, encode_npy
from hubbub.shards.stats import iter_sample_json
from hubbub.shards.writer import (INDEX_NAME, ShardRecord, ShardWriter, atomic_write_json, index_members, load_index,
                                  read_sidecar, sha256_file, sidecar_path, write_sidecar)

# The image a source's tokens are taken from by default: the first of these a corpus stores.
SOURCE_TARGET_PREFERENCE = ("reverberant", "early", "direct", "dry")
MIX_MEMBER = member_name("codec")   # mix.codec.npy


class CodecMismatchError(ValueError):
    """The corpus (or a shard) already holds tokens of another codec or source target."""


def token_record_path(tar_path: str | Path) -> Path:
    """``train-000003.tar`` -> ``train-000003.codec.json``."""
    return Path(tar_path).with_suffix(".codec.json")


def source_member(i: int) -> str:
    return member_name("codec", i)


def add_codec_tokens(corpus_dir: str | Path, codec: Codec, *, source_target: str | None = None,
                     batch_size: int = 16, overwrite: bool = False, progress: bool = False) -> dict:
    """Add codec tokens of the mixture and of every source to each sample of a corpus, in place.

    Args:
        corpus_dir: a corpus written by ``hubbub simulate`` (or any corpus in the shard format,
            including unlabelled recordings with ``num_speakers`` 0, which get mixture tokens only).
        codec: the codec (:func:`hubbub.codec.load_codec`), on the device to encode on.
        source_target: the source image tokenised for ``s{i}.codec.npy``, one of
            "reverberant", "early", "direct", "dry"; default the first of those the corpus's
            samples store (their JSON's ``targets``).
        batch_size: waveforms per codec call (a sample contributes 1 + S; only waveforms of equal
            length share a call). One shard is held in memory at a time, with the reference-mic
            waveforms it encodes.
        overwrite: replace tokens of another codec or source target instead of raising
            :class:`CodecMismatchError`.
        progress: show a progress bar over shards.

    Returns ``{"shards", "processed", "skipped", "samples", "seconds", "codec", "source_target"}``:
    shards in the corpus, shards rewritten now, shards that already had these tokens, samples
    tokenised now, wall time.

    Example::

        codec = load_codec("facebook/encodec_24khz", device="cuda")       # 6 kbps: Q = 8
        add_codec_tokens("corpora/libri2mix", codec)
        ds = ShardDataset("corpora/libri2mix", targets=("codec",), extras=("mix.codec.npy",))
    """
    started = time.perf_counter()
    corpus_dir = Path(corpus_dir)
    index = load_index(corpus_dir)
    if index.get("kind") == "rir_bank":
        raise ValueError(f"{corpus_dir} is an RIR bank, not a corpus of mixtures")
    if codec.codebook_size > 2**15:
        raise ValueError(f"codebook_size {codec.codebook_size} does not fit int16 tokens")
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    names = [s["name"] for s in index["shards"]]
    if source_target is None:
        source_target = _default_source_target(corpus_dir, names)
    elif source_target not in SOURCE_TARGET_PREFERENCE:
        raise ValueError(f"source_target must be one of {SOURCE_TARGET_PREFERENCE}, got {source_target!r}")
    entry = {**codec.info(), "source_target": source_target}
    _check_not_mismatched(corpus_dir, index, names, entry, overwrite)
    if "codec" in index and not _same_tokens(index["codec"], entry):
        del index["codec"]  # overwrite: the corpus no longer holds one codec's tokens throughout
        atomic_write_json(corpus_dir / INDEX_NAME, index)

    done: set[str] = set()
    processed = skipped = samples = 0
    try:
        for name in tqdm(names, desc="tokens", unit="shard", disable=not progress):
            tar_path = corpus_dir / name
            if _already_tokenised(tar_path, entry):
                skipped += 1
            else:
                samples += _tokenise_shard(tar_path, codec, source_target, batch_size, overwrite)
                processed += 1
            done.add(name)
    finally:
        # Also after an error: the shards finished so far stay consistent with index.json.
        _update_index(corpus_dir, done, entry if len(done) == len(names) else None)
    return {"shards": len(names), "processed": processed, "skipped": skipped, "samples": samples,
            "seconds": time.perf_counter() - started, "codec": codec.info(), "source_target": source_target}


def _same_tokens(a: dict, b: dict) -> bool:
    """Whether two codec entries give the same tokens: all but the name (path) agree."""
    strip = lambda d: {k: v for k, v in d.items() if k != "name"}  # noqa: E731
    return strip(a) == strip(b)


def _default_source_target(corpus_dir: Path, names: list[str]) -> str | None:
    """The first preferred target the first sample with sources stores; None if no sample has sources."""
    for name in names:
        for meta in map(SampleMeta.from_dict, iter_sample_json(corpus_dir / name)):
            if meta.num_speakers > 0:
                for target in SOURCE_TARGET_PREFERENCE:
                    if target in meta.targets:
                        return target
                raise ValueError(f"{meta.key} stores none of {SOURCE_TARGET_PREFERENCE} "
                                 f"(targets {list(meta.targets)}): nothing to tokenise its sources from")
    return None


def _read_token_record(tar_path: Path) -> dict | None:
    """The shard's token record, with ``"entry"``: its codec info plus source_target, as index.json
    records them; None if there is none (or it does not parse)."""
    try:
        record = json.loads(token_record_path(tar_path).read_text())
        record["entry"] = {**record["codec"], "source_target": record["source_target"]}
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return record


def _check_not_mismatched(corpus_dir: Path, index: dict, names: list[str], entry: dict,
                          overwrite: bool) -> None:
    """Raise before anything is written if the corpus or a shard has another codec's tokens."""
    if overwrite:
        return
    found = [("the corpus", index["codec"])] if "codec" in index else []
    found += [(name, record["entry"]) for name in names if (record := _read_token_record(corpus_dir / name))]
    for where, other in found:
        if not _same_tokens(other, entry):
            raise CodecMismatchError(f"{where} holds tokens of another codec ({_describe(other)}), not "
                                     f"{_describe(entry)}; pass overwrite=True to replace them")


def _describe(entry: dict) -> str:
    return (f"{entry.get('name')}, model sha256 {str(entry.get('model_sha256'))[:12]}, "
            f"{entry.get('bandwidth_kbps')} kbps, sources from {entry.get('source_target')}")


def _already_tokenised(tar_path: Path, entry: dict) -> bool:
    """True if the tar is a finished rewrite with these tokens (repairing a stale sidecar); False if
    it is as its sidecar describes and needs tokens; raises if it is neither."""
    if not tar_path.exists():
        raise FileNotFoundError(f"{tar_path} is listed in index.json but missing")
    size = tar_path.stat().st_size
    record = _read_token_record(tar_path)
    sha = sha256_file(tar_path)
    if record and record.get("size_bytes") == size and record.get("sha256") == sha:
        sidecar = read_sidecar(sidecar_path(tar_path))
        if (sidecar.size_bytes, sidecar.sha256) != (size, sha):
            write_sidecar(sidecar, tar_path.parent)  # killed between rename and sidecar: finish it
        # Another codec's tokens get here only with overwrite (checked before): rewrite them.
        return _same_tokens(record["entry"], entry)
    sidecar = read_sidecar(sidecar_path(tar_path))
    if (sidecar.size_bytes, sidecar.sha256) != (size, sha):
        raise RuntimeError(f"{tar_path} matches neither its sidecar nor a token record: it changed or is "
                           f"damaged; run `hubbub shards verify {tar_path.parent}` before adding tokens")
    return False


def _read_samples(tar_path: Path) -> list[dict]:
    """The shard's samples in order, as ``{"__key__", member: bytes}`` (member bytes untouched);
    webdataset's grouping, as the reader uses, which refuses a member name that occurs twice."""
    with open(tar_path, "rb") as f:
        return [{k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")}
                for sample in group_by_keys(tar_file_expander([{"url": str(tar_path), "stream": f}]))]


def _reference_channel(data: bytes) -> tuple[np.ndarray, int]:
    audio, sample_rate_hz = decode_audio(data)
    return np.ascontiguousarray(np.atleast_2d(audio)[0]), sample_rate_hz


def _tokenise_shard(tar_path: Path, codec: Codec, source_target: str | None, batch_size: int,
                    overwrite: bool) -> int:
    """Rewrite one shard with tokens (see the module docstring for the order of the steps)."""
    sidecar: ShardRecord = read_sidecar(sidecar_path(tar_path))
    samples = _read_samples(tar_path)
    keys = [s["__key__"] for s in samples]
    if keys != sidecar.keys:
        raise RuntimeError(f"{tar_path} holds keys {keys[:3]}... in an order its sidecar does not list; "
                           f"run `hubbub shards verify {tar_path.parent}`")
    # (sample index, output member, waveform, rate) for every waveform to encode.
    jobs: list[tuple[int, str, np.ndarray, int]] = []
    for n, members in enumerate(samples):
        key = members["__key__"]
        stale = sorted(m for m in members if m.endswith(".codec.npy"))
        if stale and not overwrite:
            raise CodecMismatchError(f"{tar_path.name} [{key}] already has {stale} that no token record "
                                     f"vouches for; pass overwrite=True to replace them")
        for m in stale:
            del members[m]
        meta = SampleMeta.from_json(members["json"])
        jobs.append((n, MIX_MEMBER, *_reference_channel(members[find_member(members, "mix")])))
        for i in range(meta.num_speakers):
            name = find_member(members, source_target, i)
            if name is None:
                raise ValueError(f"{tar_path.name} [{key}] has no s{i}.{source_target} audio to tokenise source {i} from "
                                 f"(targets {list(meta.targets)}); pick another source_target")
            jobs.append((n, source_member(i), *_reference_channel(members[name])))

    # Equal lengths share a call: padding would change the last frames' tokens.
    groups: dict[tuple[int, int], list[int]] = {}
    for j, (_, _, wave, rate) in enumerate(jobs):
        groups.setdefault((len(wave), rate), []).append(j)
    for (_, rate), members_of in groups.items():
        for start in range(0, len(members_of), batch_size):
            batch = members_of[start:start + batch_size]
            codes = codec.encode(torch.from_numpy(np.stack([jobs[j][2] for j in batch])), rate)
            codes = codes.cpu().numpy().astype(np.int16)
            for j, c in zip(batch, codes):
                n, member = jobs[j][0], jobs[j][1]
                samples[n][member] = encode_npy(c)

    # ShardWriter writes {name}.tmp.tmp and renames it to {name}.tmp when complete; the final
    # rename over the shard waits until the token record vouches for the new bytes.
    staged = tar_path.with_name(tar_path.name + ".tmp")
    try:
        with ShardWriter(staged) as writer:
            for members in samples:
                writer.write(members)
        atomic_write_json(token_record_path(tar_path), {
            "codec": codec.info(), "source_target": source_target, "name": tar_path.name,
            "size_bytes": writer.size_bytes, "sha256": writer.sha256})
        os.replace(staged, tar_path)
    finally:
        staged.unlink(missing_ok=True)  # gone after the rename; a failed attempt's leftover otherwise
    write_sidecar(sidecar, tar_path.parent, writer)
    return len(samples)


def _update_index(corpus_dir: Path, done: set[str], entry: dict | None) -> None:
    """Copy the finished shards' sizes and hashes from their sidecars into index.json; record the
    codec when every shard has its tokens."""
    index = load_index(corpus_dir)
    changed = False
    for shard in index["shards"]:
        if shard["name"] in done:
            sidecar = read_sidecar(sidecar_path(corpus_dir / shard["name"]))
            if (shard["size_bytes"], shard["sha256"]) != (sidecar.size_bytes, sidecar.sha256):
                shard["size_bytes"], shard["sha256"] = sidecar.size_bytes, sidecar.sha256
                changed = True
    if entry is not None and index.get("codec") != entry:
        index["codec"] = entry
        changed = True
    if changed:
        atomic_write_json(corpus_dir / INDEX_NAME, index)
    if done:
        index_members(corpus_dir)  # the rewritten shards' members moved: new byte ranges
