"""Recipes: everything that decides what a corpus sounds like, as typed, validated dataclasses.

A recipe is a YAML file (or a built-in preset name, see ``hubbub/simulate/recipes/``) plus
``--set key=value`` overrides. It is validated completely before any work starts; errors name the
field (``room.rt60_s: min 0.9 is above max 0.3``). Ranges are ``[min, max]`` pairs drawn
uniformly per sample. A preset may start with ``base: other_preset`` to inherit and change a few
fields.

The recipe's content hash (:meth:`Recipe.content_hash`) seeds every sample, together with the
run seed, the split and the sample index; fields that do not change a sample's content
(``samples_per_shard``) are left out of it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

from hubbub.config import ConfigError, apply_overrides, check_range, from_dict, load_with_base, to_dict
from hubbub.schema import TARGETS
from hubbub.shards.format import BITS
from hubbub.video import FPS

Range = tuple[float, float]
SAMPLE_RATES_HZ = (8000, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass
class SpeechConfig:
    corpus: str = "builtin"            # "builtin" (the built-in voices), a folder, or a manifest .jsonl
    layout: Literal["auto", "librispeech", "vctk", "wsj0", "voxceleb2", "lrs", "regex", "manifest"] = "auto"
    regex: str | None = None           # with layout: regex, a pattern with (?P<speaker>...)
    min_duration_s: float = 1.0        # shorter utterances are skipped and reported
    # Target "lips": a tree of mouth-ROI files with the corpus's relative paths and stems
    # (``mouths/`` beside ``audio/`` in many LRS preparations); None: beside each audio file.
    # Relative to the working directory, like ``corpus``. One ROI file per utterance.
    lips_dir: str | None = None

    def validate(self):
        if self.layout == "regex" and (not self.regex or "(?P<speaker>" not in self.regex):
            raise ConfigError("speech.regex", "layout 'regex' needs a pattern with a (?P<speaker>...) group")
        if self.min_duration_s <= 0:
            raise ConfigError("speech.min_duration_s", "must be > 0")


@dataclass
class SpeakersConfig:
    count: int = 2                                     # used when distribution is empty
    distribution: dict[int, float] = field(default_factory=dict)   # {1: 0.2, 2: 0.8}: P(count)

    def validate(self):
        if not self.distribution and not 1 <= self.count <= 8:
            raise ConfigError("speakers.count", f"must be within 1..8, got {self.count}")
        for k, p in self.distribution.items():
            if not 1 <= k <= 8:
                raise ConfigError(f"speakers.distribution.{k}", "speaker counts must be within 1..8")
            if p < 0:
                raise ConfigError(f"speakers.distribution.{k}", f"probability must be >= 0, got {p}")
        if self.distribution and sum(self.distribution.values()) <= 0:
            raise ConfigError("speakers.distribution", "probabilities must not all be zero")

    @property
    def max_count(self) -> int:
        return max(self.distribution) if self.distribution else self.count


@dataclass
class DurationConfig:
    mode: Literal["fixed", "min", "max"] = "fixed"    # min/max: the shortest/longest utterance (wsj0-2mix)
    fixed_s: float = 4.0
    max_s: float = 12.0                               # cap on utterances in min/max modes

    def validate(self):
        if self.fixed_s <= 0.5:
            raise ConfigError("duration.fixed_s", f"must be > 0.5 s, got {self.fixed_s}")
        if self.max_s <= 0.5:
            raise ConfigError("duration.max_s", f"must be > 0.5 s, got {self.max_s}")


@dataclass
class OverlapConfig:
    mode: Literal["full", "partial", "sparse"] = "full"
    # partial/sparse: overlap between consecutive speakers as a fraction of the shorter
    # utterance; negative values leave a gap (SparseLibriMix-style sparse overlap).
    ratio: Range = (0.0, 1.0)

    def validate(self):
        check_range("overlap.ratio", self.ratio, -1.0, 1.0)


@dataclass
class RoomConfig:
    length_m: Range = (5.0, 10.0)
    width_m: Range = (5.0, 10.0)
    height_m: Range = (2.5, 3.5)
    rt60_s: Range = (0.2, 0.6)
    rir_mode: Literal["fast", "full", "anechoic"] = "fast"
    rir_bank: str | None = None        # a RIR bank corpus (hubbub simulate-rirs) to draw rooms from
    early_ms: float = 50.0             # the "early" target: direct path + this
    min_wall_distance_m: float = 0.5
    min_source_distance_m: float = 0.5     # between sources
    min_mic_distance_m: float = 0.75       # source to array centre
    source_height_m: Range = (1.2, 1.9)

    def validate(self):
        for name in ("length_m", "width_m", "height_m"):
            check_range(f"room.{name}", getattr(self, name), 1.0, 100.0)
        check_range("room.rt60_s", self.rt60_s, 0.0, 5.0)
        check_range("room.source_height_m", self.source_height_m, 0.0, 100.0)
        if self.rir_mode != "anechoic" and self.rt60_s[0] <= 0:
            raise ConfigError("room.rt60_s", "must be > 0 unless rir_mode is anechoic")
        if self.min_wall_distance_m < 0 or self.min_source_distance_m < 0 or self.min_mic_distance_m < 0:
            raise ConfigError("room.min_wall_distance_m", "distances must be >= 0")
        if 2 * self.min_wall_distance_m >= min(self.length_m[0], self.width_m[0]):
            raise ConfigError("room.min_wall_distance_m",
                              f"{self.min_wall_distance_m} m leaves no floor space in a "
                              f"{self.length_m[0]} x {self.width_m[0]} m room")
        if self.early_ms <= 0:
            raise ConfigError("room.early_ms", "must be > 0")


@dataclass
class MicsConfig:
    array: Literal["single", "pair", "circular"] = "single"
    count: int = 1                        # circular: number of mics (pair: 2, single: 1)
    spacing_m: Range = (0.15, 0.25)       # pair: distance between the two mics
    radius_m: float = 0.1                 # circular
    height_m: Range = (1.0, 1.6)
    reference: int = 0                    # mic at which SIR/SNR/loudness are measured

    def validate(self):
        expected = {"single": 1, "pair": 2}.get(self.array)
        if expected is not None and self.count != expected:
            raise ConfigError("mics.count", f"a {self.array} array has {expected} mic(s), got {self.count}")
        if self.array == "circular" and not 3 <= self.count <= 8:
            raise ConfigError("mics.count", f"a circular array needs 3..8 mics (FLAC holds 8 channels), got {self.count}")
        if not 0 <= self.reference < self.count:
            raise ConfigError("mics.reference", f"must be within 0..{self.count - 1}")
        check_range("mics.spacing_m", self.spacing_m, 0.001, 2.0)
        check_range("mics.height_m", self.height_m, 0.0, 100.0)
        if self.radius_m <= 0:
            raise ConfigError("mics.radius_m", "must be > 0")


@dataclass
class MixingConfig:
    sir_db: Range = (-5.0, 5.0)           # each further speaker vs the first, reverberant at the ref mic
    snr_db: Range = (0.0, 20.0)           # all speech vs noise at the ref mic
    loudness_lufs: Range = (-33.0, -25.0)  # mixture loudness (ITU-R BS.1770, pyloudnorm)
    max_peak: float = 0.9                 # lower the whole sample when any signal peaks above

    def validate(self):
        check_range("mixing.sir_db", self.sir_db, -60, 60)
        check_range("mixing.snr_db", self.snr_db, -60, 120)
        check_range("mixing.loudness_lufs", self.loudness_lufs, -70, 0)
        if not 0 < self.max_peak <= 1:
            raise ConfigError("mixing.max_peak", f"must be within (0, 1], got {self.max_peak}")


@dataclass
class NoiseConfig:
    kind: Literal["none", "folder", "coloured", "babble"] = "coloured"
    folder: str | None = None             # kind: folder
    colour_exponent: Range = (0.0, 2.0)   # coloured: 0 white, 1 pink, 2 brown
    babble_speakers: tuple[int, int] = (3, 6)
    spatial: Literal["diffuse", "mono"] = "diffuse"   # how mono noise reaches an array

    def validate(self):
        if self.kind == "folder" and not self.folder:
            raise ConfigError("noise.folder", "kind 'folder' needs noise.folder")
        check_range("noise.colour_exponent", self.colour_exponent, 0.0, 3.0)
        check_range("noise.babble_speakers", self.babble_speakers, 1, 20)


@dataclass
class StorageConfig:
    """How audio members are stored; it changes bytes, not what a corpus sounds like, so it is
    not part of the content hash (the same seed gives the same mixtures in any storage)."""

    codec: Literal["flac", "wav"] = "flac"   # wav: several times faster to write and read, more bytes
    bits: int = 24                         # 16: half the bytes, the resolution LibriMix/WHAMR! ship

    def validate(self):
        if self.bits not in BITS:
            raise ConfigError("storage.bits", f"must be one of {BITS}, got {self.bits}")


# What a recipe writes when it names no targets (of hubbub.schema.TARGETS). "lips" (audio-visual
# corpora, see hubbub.sources.lips) is left out: a recipe asks for it, and existing recipes keep
# their hashes.
DEFAULT_TARGETS = ("dry", "direct", "early", "reverberant", "noise", "rir")


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    sample_rate_hz: int = 16000
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    speakers: SpeakersConfig = field(default_factory=SpeakersConfig)
    duration: DurationConfig = field(default_factory=DurationConfig)
    overlap: OverlapConfig = field(default_factory=OverlapConfig)
    room: RoomConfig = field(default_factory=RoomConfig)
    mics: MicsConfig = field(default_factory=MicsConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    splits: dict[str, float] = field(default_factory=lambda: {"train": 0.8, "valid": 0.1, "test": 0.1})
    samples_per_shard: int = 100
    storage: StorageConfig = field(default_factory=StorageConfig)

    def validate(self):
        if self.sample_rate_hz not in SAMPLE_RATES_HZ:
            raise ConfigError("sample_rate_hz", f"must be one of {SAMPLE_RATES_HZ}, got {self.sample_rate_hz}")
        for t in self.targets:
            if t not in TARGETS:
                raise ConfigError("targets", f"unknown target {t!r} (known: {', '.join(TARGETS)})")
        if "lips" in self.targets and self.sample_rate_hz % FPS:
            # A video frame must span a whole number of samples for frames and audio to line up.
            raise ConfigError("sample_rate_hz", f"target 'lips' needs a rate divisible by {FPS} frames/s, "
                                                f"got {self.sample_rate_hz}")
        if not self.splits or any(v < 0 for v in self.splits.values()) or sum(self.splits.values()) <= 0:
            raise ConfigError("splits", f"needs non-negative fractions that add to > 0, got {self.splits}")
        for s in self.splits:
            if not s.isalnum():
                raise ConfigError(f"splits.{s}", "split names must be alphanumeric")
        if self.samples_per_shard < 1:
            raise ConfigError("samples_per_shard", "must be >= 1")

    def content_hash(self) -> str:
        """Hash of the recipe fields that shape a sample's content (with the sources' own
        fingerprint, it seeds every sample). Where the inputs live (``speech.corpus``,
        ``speech.lips_dir``, ``noise.folder``, ``room.rir_bank``) is left out: a corpus moved
        elsewhere gives the same mixtures; what the inputs hold is fingerprinted by
        :func:`hubbub.simulate.seeds.sources_fingerprint`.
        """
        d = to_dict(self)
        for k in ("samples_per_shard", "description", "splits", "storage"):
            d.pop(k)
        d["speech"].pop("corpus")
        d["speech"].pop("lips_dir")
        d["noise"].pop("folder")
        d["room"].pop("rir_bank")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("hubbub.simulate").joinpath("recipes").iterdir()
                  if p.name.endswith(".yaml"))


def _find(name_or_path: str):
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    if name_or_path in preset_names():
        return resources.files("hubbub.simulate").joinpath("recipes", f"{name_or_path}.yaml")
    raise ConfigError("recipe", f"{name_or_path!r} is neither a recipe file nor a preset "
                                f"({', '.join(preset_names())})")


def load_recipe(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """A preset name or YAML path, plus ``key=value`` overrides -> a validated :class:`Recipe`."""
    data = apply_overrides(load_with_base(name_or_path, _find), list(overrides))
    return from_dict(Recipe, data)


def recipe_from_dict(data: dict) -> Recipe:
    return from_dict(Recipe, data)
