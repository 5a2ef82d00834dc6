"""The sample schema: what a sample's ``{key}.json`` holds, as typed records, and its members' names.

A sample describes itself: its JSON carries every parameter it was drawn with and what was
measured while rendering it, so it can be audited or re-rendered from its metadata alone. This
module is the one statement of that JSON (:class:`SampleMeta` and the records it holds), of the
targets a sample can store (:data:`TARGETS`) and of the members they are stored in
(:func:`member_name`). Units are in the field names, as in the JSON: ``*_s``, ``*_hz``,
``*_db``, ``*_m``, ``*_samples``. Example::

    meta = SampleMeta.from_json(raw["json"])   # SchemaError names every problem it finds
    meta.duration_s                           # num_samples / sample_rate_hz: computed, not read
    meta.sources[1].sir_db, meta.room.rt60_s_measured
    meta.member_names()                       # ["mix.flac", "noise.flac", "s0.dry.flac", ...]
    meta.to_json() == raw["json"]             # the bytes it was read from

Every corpus hubbub has written reads: simulated mixtures (:mod:`hubbub.simulate.sample`, rooms
drawn or taken from a RIR bank), ingested sets (:mod:`hubbub.shards.layouts`, ``kind:
"dataset"``: no mics), ingested recordings (:mod:`hubbub.shards.ingest`, ``labelled: false``:
no sources, room, noise or mixing), the dummy corpora of :mod:`hubbub.testing`, and corpora
written before recipes chose their storage (no ``storage``: 24-bit FLAC) or before lip streams
were compressed (``s{k}.lips.npy``). A sample's JSON has no version of its own (``index.json``'s
``format_version`` is the layout of sidecars and members tables, :mod:`hubbub.shards.writer`):
older forms are told apart by what they hold, so every field that some writer leaves out is
optional here, and what a reader needs beyond that (a labelled sample's room and mixing, say) is
checked by ``hubbub shards verify``.

Round trip. A record keeps the keys it does not know in ``extra`` (the provenance of ingested
samples: ``source_file``, ``offset_s``, ``dataset``, ...) and remembers which of its empty fields
its JSON held as null, so ``SampleMeta.from_json(b).to_json() == b`` for every corpus above: the
bytes a preset writes pass through this module unchanged. ``duration_s`` is written (readers of
older hubbub versions and other tools read it) but never read back: ``verify`` checks that the
stored value agrees with the computed one.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from hubbub.shards.format import ARRAY_EXTENSIONS, BITS, CODECS, DEFAULT_STORAGE, encode_json

# What a sample can store, as a recipe names it (its ``targets``). "lips" (audio-visual corpora) is
# one (F, 96, 96) uint8 stream per source; "noise" is one member per sample; the others one per
# source. A new target is added here (and to ARRAY_TARGETS if it is not audio) and rendered in
# hubbub.simulate.sample.
TARGETS = ("dry", "direct", "early", "reverberant", "noise", "rir", "lips")
# Targets stored as arrays, by the encoding a sample written now gets; the others are audio in
# the sample's codec: (num_mics, num_samples) images at every microphone, except "dry",
# (num_samples,) at the reference microphone.
ARRAY_TARGETS = {"rir": "npy", "lips": "npy.zst"}
# Members a later stage adds to a corpus, read like targets but never rendered: codec tokens
# (hubbub.shards.tokens), ``s{k}.codec.npy`` per source and ``mix.codec.npy``.
STAGE_TARGETS = {"codec": "npy"}
_SAMPLE_MEMBERS = ("mix", "noise")     # one member per sample, not one per source
_SOURCE_TARGETS = tuple(t for t in TARGETS if t not in _SAMPLE_MEMBERS) + tuple(STAGE_TARGETS)


class SchemaError(ValueError):
    """A sample's JSON does not fit the schema; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


# -- member names ------------------------------------------------------------------------------------
def member_name(target: str, source: int | None = None, codec: str = "flac") -> str:
    """The member a sample written now stores ``target`` in (the name after ``{key}.``).

    ``"mix"`` and ``"noise"`` (no ``source``) are ``mix.{codec}``, ``noise.{codec}``; a per-source
    target is ``s{source}.{target}.{ext}``: audio in ``codec`` (``"flac"`` or ``"wav"``, the
    sample's :attr:`SampleMeta.stored_as`), ``rir`` as ``.npy``, ``lips`` as ``.npy.zst``, codec
    tokens as ``.npy`` (the mixture's, with no ``source``: ``mix.codec.npy``). Example:
    ``member_name("reverberant", 1, "wav") == "s1.reverberant.wav"``.
    Raises ValueError for an unknown target, a missing or needless source index, an unknown codec.
    """
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    return f"{_stem(target, source)}.{_encodings(target, codec)[0]}"


def stored_members(names: Iterable[str], target: str, source: int | None = None) -> list[str]:
    """Every member among ``names`` (a sample's member dict or set of names) holding ``target``
    of ``source``, in any encoding a corpus may have it in: FLAC or WAV audio, ``.npy.zst`` or
    ``.npy`` arrays (lip streams of corpora written before they were compressed). One in a sound
    sample, none where the sample lacks it; more is a fault (``verify`` reports it)."""
    return [name for name in _member_names(target, source) if name in names]


@functools.lru_cache(maxsize=None)
def _member_names(target: str, source: int | None) -> tuple[str, ...]:
    """Every name a member holding ``target`` of ``source`` may have (what the reader looks up
    in every sample, so computed once)."""
    stem = _stem(target, source)
    return tuple(f"{stem}.{ext}" for ext in _encodings(target))


def find_member(names: Iterable[str], target: str, source: int | None = None) -> str | None:
    """The member among ``names`` holding ``target`` of ``source`` (see :func:`stored_members`),
    None if there is none."""
    found = stored_members(names, target, source)
    return found[0] if found else None


def _stem(target: str, source: int | None) -> str:
    if target in STAGE_TARGETS and source is None:
        return f"mix.{target}"             # the mixture's own, e.g. mix.codec.npy
    if target in _SAMPLE_MEMBERS:
        if source is not None:
            raise ValueError(f"{target!r} is one member per sample: no source index (got {source})")
        return target
    if target not in _SOURCE_TARGETS:
        raise ValueError(f"unknown target {target!r} (known: {', '.join(TARGETS + tuple(STAGE_TARGETS))})")
    if isinstance(source, bool) or not isinstance(source, int) or source < 0:
        raise ValueError(f"target {target!r} is stored per source: needs a source index >= 0, got {source!r}")
    return f"s{source}.{target}"


def _encodings(target: str, codec: str | None = None) -> tuple[str, ...]:
    """The extensions ``target`` may have, the one written now first."""
    array = ARRAY_TARGETS.get(target) or STAGE_TARGETS.get(target)
    if array is not None:
        return (array,) + tuple(e for e in ARRAY_EXTENSIONS if e != array)
    return (codec,) if codec else CODECS


# -- records -----------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class _Record:
    """JSON object <-> dataclass: type checks from the annotations, keys it does not know kept in
    ``extra``, and the keys of the JSON it was read from (``_read_keys``), so that an empty field
    the JSON held as null is written back as null and one it lacked stays out."""

    extra: dict = field(default_factory=dict)
    _read_keys: frozenset | None = field(default=None, repr=False, compare=False)

    # Keys the JSON holds that the record computes instead of reading.
    _DERIVED: typing.ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_dict(cls, data: dict):
        """The record of a JSON object (as ``json.loads`` gives it); SchemaError lists every
        missing or mistyped field."""
        problems: list[str] = []
        record = cls._parse(data, "json", problems)
        if problems:
            raise SchemaError(problems)
        return record

    @classmethod
    def read_fields(cls, data: dict, names: Iterable[str]) -> tuple:
        """Only the named top-level fields of a JSON object, type-checked as :meth:`from_dict`
        checks them (None for an absent optional one): what a training reader needs of every
        sample (three numbers) at a small part of the cost of the whole record."""
        if type(data) is not dict:
            raise SchemaError([f"json is {_short(data)}, expected an object"])
        problems: list[str] = []
        by_name = _fields_by_name(cls)
        values = []
        for name in names:
            f = by_name[name]
            if name in data:
                values.append(f.check(data[name], ("json", name), problems))
            else:
                values.append(None)
                if f.required:
                    problems.append(f"json lacks {name}")
        if problems:
            raise SchemaError(problems)
        return tuple(values)

    def to_dict(self) -> dict:
        """The JSON object: fields that hold a value, empty ones the JSON it was read from held as
        null (required ones when built in code), then ``extra``."""
        out = {}
        for f in _fields_of(type(self)):
            value = getattr(self, f.name)
            if value is None and not (f.name in self._read_keys if self._read_keys is not None else f.required):
                continue
            out[f.name] = _plain(value)
        out.update(self.extra)
        return out

    @classmethod
    def _parse(cls, data: Any, where, problems: list[str]):
        if type(data) is not dict:
            problems.append(f"{_path(where)} is {_short(data)}, expected an object")
            return None
        before = len(problems)
        kwargs = {}
        for f in _fields_of(cls):
            if f.name in data:
                kwargs[f.name] = f.check(data[f.name], (where, f.name), problems)
            elif f.required:
                problems.append(f"{_path(where)} lacks {f.name}")
        if len(problems) > before:
            return None
        known = _NAMES[cls]
        extra = {k: v for k, v in data.items() if k not in known}
        try:
            return cls(**kwargs, extra=extra, _read_keys=frozenset(data))
        except SchemaError as exc:  # the record's own checks (__post_init__)
            where = _path(where)
            problems += exc.problems if where == "json" else [f"{where}: {p}" for p in exc.problems]
            return None


@dataclass(kw_only=True)
class Storage(_Record):
    """How the audio members are stored (a recipe's ``storage`` section)."""

    codec: str                  # "flac" or "wav": the audio members' extension
    bits: int                   # 16 or 24: integer codes q, x = q / 2**(bits - 1)

    def __post_init__(self):
        problems = [f"codec is {self.codec!r}, expected one of {CODECS}"] * (self.codec not in CODECS)
        problems += [f"bits is {self.bits!r}, expected one of {BITS}"] * (self.bits not in BITS)
        if problems:
            raise SchemaError(problems)


@dataclass(kw_only=True)
class Lips(_Record):
    """How a source's lip stream was made (:func:`hubbub.sources.lips.draw_lips`): drawn from
    phonemes, or cut from a ROI file, at ``fps`` frames/s on the mixture's time axis."""

    kind: str                               # "phonemes" or "file"
    num_frames: int                         # F = ceil(num_samples * fps / sample_rate_hz)
    fps: int | None = None
    seed: int | None = None                 # kind "phonemes": the mouth shapes' randomness
    phoneme_set: str | None = None          # kind "phonemes": "ipa" or "cmu"
    phonemes: list | None = None            # kind "phonemes": [[phoneme, start_s, end_s], ...]
    path: str | None = None                 # kind "file": the ROI file
    roi_num_frames: int | None = None       # kind "file": frames the ROI file holds


@dataclass(kw_only=True)
class Source(_Record):
    """One speaker of the mixture: the utterance it says, where it is, how loud it is.

    Simulated sources have everything; ingested sets' have speaker, sir_db and the utterance id.
    """

    speaker: str | None                     # None where an ingested set's ids do not say
    sir_db: float | None                    # vs source 0 at the reference mic (0 for source 0)
    path: str | None = None                 # the utterance's audio file
    corpus: str | None = None
    licence: str | None = None
    transcript: str | None = None
    utterance: str | None = None            # ingested sets: the utterance's id
    utterance_duration_s: float | None = None
    utterance_start_s: float | None = None  # the excerpt of the utterance that is placed
    utterance_stop_s: float | None = None
    start_sample: int | None = None         # where the excerpt starts in the mixture
    num_samples: int | None = None          # the excerpt's length
    position_m: list[float] | None = None
    distance_m: float | None = None         # to the array's centre
    gain_db: float | None = None            # of the stored signals vs the normalised utterance
    dry_delay_samples: int | None = None    # direct-path delay at the reference mic: the dry target's lag
    lips: Lips | None = None                # target "lips"


@dataclass(kw_only=True)
class Room(_Record):
    """The room: simulated (``rir_mode`` "fast", "full", "anechoic"), taken from a RIR bank
    ("bank", with the bank room's own mode in ``bank_room_mode``), or an ingested set's
    ("anechoic", or "unknown" for reverberant sets that record no RT60)."""

    rir_mode: str | None = None
    rt60_s_target: float | None = None      # None: anechoic, or not known
    rt60_s_measured: float | None = None    # from the reference mic's RIR of source 0
    dim_m: list[float] | None = None        # length, width, height
    early_ms: float | None = None           # the "early" target: direct path + this much
    rir_seed: int | None = None
    max_order: int | None = None            # image-source order simulated
    full_order: int | None = None           # bank rooms: the order the full RT60 would need
    absorption: float | None = None         # wall energy absorption (1.0 anechoic)
    bank: str | None = None                 # the RIR bank (``rir_mode`` "bank")
    bank_split: str | None = None
    bank_room: int | None = None            # room index within the bank split
    bank_room_mode: str | None = None
    bank_positions: list[int] | None = None  # the bank room's source positions used, per source


@dataclass(kw_only=True)
class Mics(_Record):
    """The microphone array; ``reference`` is the mic SIR, SNR, loudness and "dry" refer to."""

    array: str                              # "single", "pair" or "circular"
    reference: int
    center_m: list[float]
    positions_m: list[list[float]]          # (num_mics, 3)


@dataclass(kw_only=True)
class NoiseFile(_Record):
    """A noise recording (kind "folder", ``start_s``) or babble talker (kind "babble")."""

    path: str
    start_s: float | None = None
    speaker: str | None = None
    licence: str | None = None
    offset_samples: int | None = None       # babble: the talker's circular shift


@dataclass(kw_only=True)
class Noise(_Record):
    """The noise: none, coloured, files, babble (simulated) or an ingested set's ("dataset")."""

    kind: str
    snr_db: float | None                    # all speech vs noise at the reference mic; None: no noise
    spatial: str | None = None              # "diffuse" or "mono"
    seed: int | None = None
    shifts: list[int] | None = None         # per mic: circular shift in samples before mixing
    colour_exponent: float | None = None    # kind "coloured": 1/f**exponent
    files: list[NoiseFile] | None = None
    gain_db: float | None = None


@dataclass(kw_only=True)
class Mixing(_Record):
    """Levels: the loudness asked for and reached, the peak limit, the overlap of the speakers."""

    loudness_lufs_target: float | None = None
    max_peak: float | None = None
    overlap_ratio: float | None = None      # active time with two or more speakers
    loudness_lufs: float | None = None      # None where the loudness could not be measured
    gain_db: float | None = None
    peak_limited: bool | None = None


@dataclass(kw_only=True)
class SampleMeta(_Record):
    """A sample's ``{key}.json``: its identity, shape, targets and every parameter of its sources,
    room, mics, noise and mixing. ``from_json``/``to_json`` read and write it (see the module
    docstring); :meth:`member_names` says which members its targets promise."""

    key: str
    split: str
    index: int
    sample_rate_hz: int
    num_samples: int
    num_speakers: int
    num_mics: int
    targets: tuple[str, ...]
    sources: list[Source]
    seed: int | None = None                 # the corpus's seed (simulated samples)
    recipe: str | None = None
    recipe_hash: str | None = None
    sources_hash: str | None = None
    kind: str | None = None                 # ingested samples: "recordings" or "dataset"
    labelled: bool | None = None            # False: cut from recordings, no sources
    storage: Storage | None = None          # None: written before recipes chose (24-bit FLAC)
    room: Room | None = None
    mics: Mics | None = None
    noise: Noise | None = None
    mixing: Mixing | None = None

    _DERIVED: typing.ClassVar[tuple[str, ...]] = ("duration_s",)

    def __post_init__(self):
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise SchemaError([f"targets: unknown target {t!r} (known: {', '.join(TARGETS)})" for t in unknown])
        if self.sample_rate_hz <= 0:
            raise SchemaError([f"sample_rate_hz is {self.sample_rate_hz}, expected a positive rate"])

    @property
    def duration_s(self) -> float:
        return self.num_samples / self.sample_rate_hz

    @property
    def stored_as(self) -> Storage:
        """The audio members' codec and bit depth (24-bit FLAC where the JSON does not say)."""
        return self.storage or Storage(**DEFAULT_STORAGE)

    @property
    def unlabelled(self) -> bool:
        """Cut from recordings (:mod:`hubbub.shards.ingest`): a mixture with no sources."""
        return self.labelled is False

    @classmethod
    def from_json(cls, data: bytes | str) -> "SampleMeta":
        """The record of a sample's JSON bytes; SchemaError for JSON that is not a sample's."""
        try:
            parsed = json.loads(data)
        except ValueError as exc:
            raise SchemaError([f"json does not parse: {exc}"]) from None
        return cls.from_dict(parsed)

    def to_dict(self) -> dict:
        return {**_Record.to_dict(self), "duration_s": self.duration_s}

    def to_json(self) -> bytes:
        """The bytes of the ``{key}.json`` member (:func:`hubbub.shards.format.encode_json`)."""
        return encode_json(self.to_dict())

    def member_names(self) -> list[str]:
        """The members this sample's targets promise, as a sample written now names them: the
        mixture, then noise, then each target of each source (``json`` aside)."""
        codec = self.stored_as.codec
        names = [member_name("mix", codec=codec)]
        if "noise" in self.targets:
            names.append(member_name("noise", codec=codec))
        return names + [member_name(t, k, codec) for t in self.targets if t != "noise"
                        for k in range(self.num_speakers)]


# -- reading and writing records ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Field:
    name: str
    required: bool
    check: Callable[[Any, Any, list], Any]   # (value, where, problems) -> the value to keep


_FIELDS: dict[type, tuple[_Field, ...]] = {}
_NAMES: dict[type, frozenset] = {}
# The JSON types a field of each type takes (an integer is a number; true is not an integer), and
# how a problem names them.
_SCALARS = {str: ((str,), "a string"), int: ((int,), "an integer"), float: ((int, float), "a number"),
            bool: ((bool,), "true or false"), dict: ((dict,), "an object")}


@functools.lru_cache(maxsize=None)
def _fields_by_name(cls: type) -> dict[str, _Field]:
    return {f.name: f for f in _fields_of(cls)}


def _fields_of(cls: type) -> tuple[_Field, ...]:
    """The record's JSON fields with their checks, built once per class from its annotations."""
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        _FIELDS[cls] = tuple(
            _Field(f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
                   _checker(hints[f.name]))
            for f in dataclasses.fields(cls) if f.name not in ("extra", "_read_keys"))
        _NAMES[cls] = frozenset(f.name for f in _FIELDS[cls]) | frozenset(cls._DERIVED)
    return _FIELDS[cls]


def _checker(tp, nullable: bool = False) -> Callable[[Any, Any, list], Any]:
    """A check of JSON values against the type annotation ``tp`` (``X``, ``X | None``,
    ``list[X]``, ``tuple[X, ...]``, a record): the value, or None with a problem appended.
    ``where`` is a path in parts (``(("json", "sources"), 0)``), joined only for a problem: the
    reader checks every sample it reads."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in args if a is not type(None)]  # only X | None is used
        return _checker(inner, nullable=True)
    if isinstance(tp, type) and issubclass(tp, _Record):
        check = tp._parse
    elif origin in (list, tuple) or tp is list:
        item = _checker(args[0]) if args else None
        make = tuple if origin is tuple else list

        def check(v, where, problems):
            if type(v) is not list and type(v) is not tuple:
                problems.append(f"{_path(where)} is {_short(v)}, expected a list")
                return None
            return make(v if item is None else [item(x, (where, i), problems) for i, x in enumerate(v)])
    else:
        types_, what = _SCALARS[tp]
        allowed = frozenset(types_ + ((type(None),) if nullable else ()))

        def check_scalar(v, where, problems):
            if type(v) not in allowed:
                problems.append(f"{_path(where)} is {_short(v)}, expected {what}")
            return v

        return check_scalar
    if nullable:
        return lambda v, where, problems: None if v is None else check(v, where, problems)
    return check


def _plain(value):
    """A field's value as JSON: records as objects, tuples as lists."""
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _path(where) -> str:
    """``(((("json", "sources"), 0), "lips"), "fps")`` -> ``"sources[0].lips.fps"``."""
    if isinstance(where, str):
        return where
    parent, part = where
    parent = _path(parent)
    if isinstance(part, int):
        return f"{parent}[{part}]"
    return part if parent == "json" else f"{parent}.{part}"
