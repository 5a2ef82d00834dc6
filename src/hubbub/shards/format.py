"""The shard format: what one sample is, on disk and in memory.

A corpus directory holds ``{split}-%06d.tar`` WebDataset shards, one ``{split}-%06d.json`` sidecar
per finished shard, and ``index.json``. A sample's key has no dots (``train_00000012``); its
members are (``S`` sources, ``M`` microphones, ``T`` samples)::

    {key}.json                 metadata: every sampled parameter (hubbub.schema.SampleMeta)
    {key}.mix.flac             (T, M) mixture
    {key}.noise.flac           (T, M) noise image                       [target "noise"]
    {key}.s0.dry.flac          (T,)   dry source 0, aligned with its direct path at mic 0
    {key}.s0.direct.flac       (T, M) direct-path image of source 0     [target "direct"]
    {key}.s0.early.flac        (T, M) direct path + 50 ms               [target "early"]
    {key}.s0.reverberant.flac  (T, M) full reverberant image            [target "reverberant"]
    {key}.s0.rir.npy           (M, L) float32 room impulse responses    [target "rir"]
    {key}.s0.lips.npy.zst      (F, 96, 96) uint8 mouth ROI at 25 fps,   [target "lips"]
                               F = ceil(T * 25 / sample_rate_hz), on the mixture's time axis
    ... s1.*, s2.* for further sources. Later stages add *.codec.npy.

Audio members are FLAC (the default) or WAV (``.wav`` instead of ``.flac``: several times faster
to write and read, ~1.6-2x the bytes), holding 24-bit (default) or 16-bit integers ``q`` with
``x = q / 2**(bits - 1)``; a recipe's ``storage`` section chooses (see :data:`CODECS`, :data:`BITS`).
The mixture is written as the integer sum of the quantised reverberant images and noise, so
``mix == sum(reverberant) + noise`` holds exactly after decoding, not only up to rounding.

Array members are ``.npy`` (never pickled) or, for lip streams, ``.npy.zst``: the ``.npy`` bytes in
one zstd frame with its checksum (:func:`encode_npy_zst`), lossless, about half the bytes of the raw
frames and ~1 ms to decode per 3 s stream. Corpora written before lips were compressed hold
``s{k}.lips.npy``; readers find either (:func:`hubbub.schema.find_member`) and decode by the name
(:func:`decode_array`).

The targets and the member names are :mod:`hubbub.schema`'s (:data:`~hubbub.schema.TARGETS`,
:func:`~hubbub.schema.member_name`), as is the sample's JSON (:class:`~hubbub.schema.SampleMeta`).
"""
from __future__ import annotations

import io
import json
import re
import struct
from typing import Mapping

import numpy as np
import soundfile as sf
import zstandard

FULL_SCALE = 2**23
CODECS = ("flac", "wav")        # audio member formats; the extension is the codec's name
BITS = (16, 24)
# Array member encodings, the one new lip streams get first.
ARRAY_EXTENSIONS = ("npy.zst", "npy")
# On the project's lip streams level 5 is within 0.5% of level 12's bytes at a third of its encode
# time (level 3: 7% more bytes); decoding costs the same at every level.
_ZSTD_LEVEL = 5
_SOURCE_MEMBER = re.compile(r"^s(\d+)\.(\w+)\.(flac|wav|npy\.zst|npy)$")
_SUBTYPES = {16: "PCM_16", 24: "PCM_24"}
# What a sample's JSON without a "storage" entry (written before recipes had one) holds.
DEFAULT_STORAGE = {"codec": "flac", "bits": 24}


def sample_key(split: str, index: int) -> str:
    """The sample's key: no dots, sortable, unique across splits."""
    if not re.fullmatch(r"[A-Za-z0-9]+", split):
        raise ValueError(f"split name must be alphanumeric, got {split!r}")
    return f"{split}_{index:08d}"


def shard_name(split: str, shard_index: int) -> str:
    return f"{split}-{shard_index:06d}.tar"


def quantize(x: np.ndarray, bits: int = 24, scale: float = 1.0) -> np.ndarray:
    """Float audio ``x * scale`` in [-1, 1) -> int32 codes of ``bits`` bits (clipped, counted by
    the caller if it matters)."""
    full = _full_scale(bits)
    # float32 suffices: scaling by a power of two is exact, and 24-bit codes fit its mantissa.
    # One scaled float32 copy, rounded and clipped in place: this runs over every stored signal.
    q = np.multiply(x, np.float32(full) * np.float32(scale), dtype=np.float32)
    np.rint(q, out=q)
    return np.clip(q, -full, full - 1, out=q).astype(np.int32)


def dequantize(q: np.ndarray, bits: int = 24) -> np.ndarray:
    return (np.asarray(q, dtype=np.float32) / np.float32(_full_scale(bits))).astype(np.float32)


def _full_scale(bits: int) -> int:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits}")
    return 2 ** (bits - 1)


def encode_audio(q: np.ndarray, sample_rate_hz: int, codec: str = "flac", bits: int = 24) -> bytes:
    """``bits``-bit codes from :func:`quantize`, shape (T,) or (C, T) -> FLAC or WAV bytes
    (channels last on disk)."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    _full_scale(bits)  # checks bits
    q = np.asarray(q)
    # soundfile takes int16 as is, and int32 as left-justified (it drops the low byte for PCM_24).
    # Channels are interleaved one at a time: numpy's transposing copy of a (C, T) array is ~6x
    # slower than C strided row copies, and this runs over every stored signal.
    data = np.empty(q.shape[::-1], np.int16 if bits == 16 else np.int32)
    frames = data.reshape(len(data), -1)          # (T, C), a view
    for c, row in enumerate(np.atleast_2d(q)):
        frames[:, c] = row
    if bits == 24:
        data <<= 8
    buf = io.BytesIO()
    # compression_level 0: about 25% faster to write than the default for <1% more bytes.
    options = {"compression_level": 0.0} if codec == "flac" else {}
    sf.write(buf, data, sample_rate_hz, format=codec.upper(), subtype=_SUBTYPES[bits], **options)
    return buf.getvalue()


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """FLAC or WAV bytes, 16- or 24-bit -> (float32 audio (T,) or (C, T), sample rate)."""
    # read as left-justified int32: a 16-bit code becomes q << 16, which the shift and scale
    # below turn into q / 2**15 exactly, as a 24-bit one into q / 2**23
    q, sr = sf.read(io.BytesIO(data), dtype="int32", always_2d=False)
    x = (q >> 8).astype(np.float32) / np.float32(FULL_SCALE)
    return (x.T if x.ndim == 2 else x), sr


def _wav_layout(data: bytes) -> tuple[int, int, int, int] | None:
    """(data chunk offset, its size, channels, bytes per sample) of integer PCM WAV bytes as
    :func:`encode_audio` writes them (16/24-bit, plain or extensible format), else None."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk, size = _CHUNK.unpack_from(data, pos)
        if chunk == b"fmt " and size >= 16:
            tag, channels, _, _, _, bits = _FMT.unpack_from(data, pos + 8)
            fmt = (tag, channels, bits)
        elif chunk == b"data":
            if fmt is None or fmt[0] not in (1, 0xFFFE) or fmt[2] not in (16, 24) or fmt[1] < 1:
                return None
            return pos + 8, min(size, len(data) - pos - 8), fmt[1], fmt[2] // 8
        pos += 8 + size + (size & 1)
    return None


_CHUNK = struct.Struct("<4sI")  # RIFF chunk: id, size
_FMT = struct.Struct("<HHIIHH")  # fmt chunk: format tag, channels, rate, byte rate, block align, bits


def pcm16_crop(data: bytes, start: int, length: int) -> np.ndarray | None:
    """Frames ``[start, start + length)`` (fewer at the end) of 16-bit PCM WAV bytes as an int16
    view of ``data``, shaped as :func:`decode_audio_crop` gives them ((T,) or (C, T)), nothing
    decoded or copied; None for any other format. ``crop * 2**-15`` is the decoded float32."""
    layout = _wav_layout(data)
    return _pcm16_view(data, layout, start, length) if layout is not None and layout[3] == 2 else None


def _pcm16_view(data: bytes, layout: tuple[int, int, int, int], start: int, length: int) -> np.ndarray:
    offset, size, channels, _ = layout
    frames = size // (channels * 2)
    first, last = min(start, frames), min(start + length, frames)
    q = np.frombuffer(data, "<i2", count=(last - first) * channels, offset=offset + first * channels * 2)
    return q if channels == 1 else q.reshape(-1, channels).T


def decode_pcm16(q: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 codes -> float32 ``q / 2**15`` (exact), into ``out`` (any layout) when given."""
    # the cast, then the scale in place: a quarter faster than one mixed-type multiply
    if out is None:
        out = q.astype(np.float32)
    else:
        np.copyto(out, q, casting="unsafe")
    out *= np.float32(2**-15)
    return out


def decode_audio_crop(data: bytes, start: int, length: int) -> np.ndarray:
    """Frames ``[start, start + length)`` of FLAC or WAV bytes as :func:`decode_audio` gives them
    (fewer at the end), decoding only those: WAV is sliced where its frames lie, FLAC decodes from
    the nearest seek point (libsndfile), not from the start of the member."""
    layout = _wav_layout(data)
    if layout is not None and layout[3] == 2:  # ~20x faster than libsndfile through Python's file callbacks
        return decode_pcm16(_pcm16_view(data, layout, start, length))
    if layout is not None:  # 24-bit
        offset, size, channels, width = layout
        frames = size // (channels * width)
        first, last = min(start, frames), min(start + length, frames)
        b = np.frombuffer(data, np.uint8, count=(last - first) * channels * width,
                          offset=offset + first * channels * width).reshape(-1, 3)
        q = b[:, 0].astype(np.int32) | (b[:, 1].astype(np.int32) << 8) | (b[:, 2].view(np.int8).astype(np.int32) << 16)
        x = (q.astype(np.float32) / np.float32(FULL_SCALE)).reshape(-1, channels)
        return x.T.copy() if channels > 1 else x[:, 0]
    with sf.SoundFile(io.BytesIO(data)) as f:
        f.seek(min(start, f.frames))
        q = f.read(length, dtype="int32", always_2d=False)
    x = (q >> 8).astype(np.float32) / np.float32(FULL_SCALE)
    return x.T if x.ndim == 2 else x


def storage_of(meta: Mapping) -> dict:
    """``{"codec", "bits"}`` of a sample's audio members, from its JSON."""
    return meta.get("storage") or DEFAULT_STORAGE


def is_audio_member(name: str) -> bool:
    return name.rpartition(".")[2] in CODECS


def audio_stem(name: str) -> str | None:
    """``"s0.reverberant.wav"`` -> ``"s0.reverberant"``; None for members that are not audio."""
    stem, _, ext = name.rpartition(".")
    return stem if ext in CODECS else None


def audio_member(names, stem: str) -> str | None:
    """The member holding audio ``stem`` (``"mix"``, ``"s0.reverberant"``) among ``names``
    (a sample dict or set of member names), whatever its codec; None if there is none."""
    for codec in CODECS:
        if f"{stem}.{codec}" in names:
            return f"{stem}.{codec}"
    return None


def encode_npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_npy_zst(a: np.ndarray) -> bytes:
    """An array -> the bytes of a ``.npy.zst`` member: its ``.npy`` in one zstd frame that records
    the content size and a checksum, so a damaged member fails to decode instead of decoding to
    other pixels. Lossless; a (75, 96, 96) uint8 lip stream (3 s) takes ~8 ms on one core."""
    return zstandard.ZstdCompressor(level=_ZSTD_LEVEL, write_checksum=True).compress(encode_npy(a))


def decode_array(name: str, data: bytes) -> np.ndarray:
    """An array member's bytes -> the array, by the encoding its name ends with (``.npy`` or
    ``.npy.zst``). Never unpickles: an object array raises ValueError, a damaged or truncated
    zstd frame (or bytes after it) ``zstandard.ZstdError``."""
    if name.endswith(".npy.zst"):
        # A fresh decompressor per call: they are cheap, and one shared by threads is not safe.
        data = zstandard.ZstdDecompressor().decompress(data, allow_extra_data=False)
    elif not name.endswith(".npy"):
        raise ValueError(f"{name!r} is not an array member (.npy or .npy.zst)")
    return decode_npy(data)


def is_array_member(name: str) -> bool:
    return name.endswith(tuple(f".{ext}" for ext in ARRAY_EXTENSIONS))


def array_member(names, stem: str) -> str | None:
    """The member holding array ``stem`` (``"s0.lips"``, ``"s1.rir"``) among ``names`` (a sample
    dict or set of member names), whichever its encoding; None if there is none."""
    for ext in ARRAY_EXTENSIONS:
        if f"{stem}.{ext}" in names:
            return f"{stem}.{ext}"
    return None


def encode_json(meta: Mapping) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def decode_member(name: str, data: bytes):
    """Decode one member by its extension (``s0.reverberant.flac`` -> float32 array)."""
    if is_audio_member(name):
        return decode_audio(data)[0]
    if is_array_member(name):
        return decode_array(name, data)
    if name == "json" or name.endswith(".json"):
        return json.loads(data)
    return data


def parse_source_member(name: str) -> tuple[int, str] | None:
    """``"s1.early.flac"`` -> (1, "early"); None for members that are not per-source."""
    m = _SOURCE_MEMBER.match(name)
    return (int(m.group(1)), m.group(2)) if m else None


def decode_sample(raw: Mapping[str, bytes]) -> dict:
    """A raw WebDataset sample (member name -> bytes) -> structured arrays.

    Returns ``{"key", "meta", "mix": (M, T), "noise": (M, T) | None, "sources": {target: [per
    source arrays]}}`` where per-source lists are ordered by source index.
    """
    out: dict = {"key": raw.get("__key__"), "meta": None, "mix": None, "noise": None, "sources": {}}
    per_source: dict[str, dict[int, np.ndarray]] = {}
    for name, data in raw.items():
        if name.startswith("__"):
            continue
        if name == "json":
            out["meta"] = json.loads(data)
        elif audio_stem(name) in ("mix", "noise"):
            out[audio_stem(name)] = np.atleast_2d(decode_audio(data)[0])
        else:
            parsed = parse_source_member(name)
            if parsed is None:
                out[name] = decode_member(name, data)
                continue
            idx, target = parsed
            value = decode_member(name, data)
            if is_audio_member(name) and target != "dry":  # images are (M, T); one mic decodes as (T,)
                value = np.atleast_2d(value)
            per_source.setdefault(target, {})[idx] = value
    for target, by_idx in per_source.items():
        out["sources"][target] = [by_idx[i] for i in sorted(by_idx)]
    return out
