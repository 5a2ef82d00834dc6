"""Standard separation sets (LibriMix, WHAM!, WHAMR!, wsj0-2mix/3mix) -> a labelled hubbub corpus.

:func:`ingest_dataset` reads a set's folder tree as its generation scripts write it, a local
folder or a URL (``s3://bucket/Libri2Mix``), and writes every mixture with its reference
sources in the standard shard format, so ``hubbub evaluate``, ``hubbub finetune`` and ``hubbub
shards verify`` take it as they take a simulated corpus::

    LibriMix  ROOT/wav8k|wav16k/min|max/train-360|train-100|dev|test/
                  {mix_clean, mix_both, mix_single, s1, s2, (s3), noise}/ID.wav
    WHAM!     ROOT/wav8k|wav16k/min|max/tr|cv|tt/{mix_clean, mix_both, mix_single, s1, s2, noise}/ID.wav
    WHAMR!    ROOT/wav8k|wav16k/min|max/tr|cv|tt/{mix_{clean,both,single}_{anechoic,reverb},
                  s1_anechoic, s2_anechoic, s1_reverb, s2_reverb, noise}/ID.wav
    wsj0mix   ROOT/wav8k|wav16k/min|max/tr|cv|tt/{mix, s1, s2, (s3)}/ID.wav

``ROOT`` may also be one of the rate or mode folders. The layout is found from the folder names
(:func:`detect_layout`); three speakers where ``s3`` exists (Libri3Mix, wsj0-3mix).

Targets, as hubbub names them (:data:`hubbub.simulate.recipe.TARGETS`). The sources of LibriMix,
WHAM! and wsj0-mix, and WHAMR!'s ``s*_anechoic`` in its anechoic mixtures, are heard without a
room: each is at once the dry source and its direct, early and reverberant image, the way a
hubbub corpus simulated with ``room.rir_mode=anechoic`` stores them. In WHAMR!'s reverberant
mixtures ``s*_reverb`` is the ``reverberant`` image and ``s*_anechoic`` (the source through the
direct path, aligned with it) the ``dry`` and ``direct`` target; it has no ``early`` one. The
``noise`` folder is the ``noise`` target of ``mix_both*`` and ``mix_single*`` (one speaker plus
noise). ``targets`` picks which are stored (default: dry, reverberant and noise where the mixture
has them: enough for runs trained on either default target); each is a separate member, so
asking for all four names of an anechoic source stores it four times.

Choices, and why:

* **The mixture is the set's file, sample for sample**, so scores are comparable with published
  ones. The format promises ``mix == sum(reverberant) + noise`` exactly (``hubbub shards
  verify`` checks it), but the sets round the mixture and each source to 16 bits separately,
  which leaves them up to about one step apart. The difference is spread over the summed
  signals (each moves by at most one step of the files' bit depth; the other targets are the
  files' samples) and recorded as ``dataset.mix_sum_error``. A larger difference means the
  mixture is not the sum of those files: the sample is skipped as ``not-a-sum``.
* **Nothing is resampled or remixed**: the rate is the folder's (``wav8k`` or ``wav16k``), a
  file at another rate or of another length than its mixture is skipped with the reason
  (``rate-mismatch``, ``length-mismatch``), as is an id missing from a folder the sample needs
  (``missing``) and a file that does not decode (``unreadable``); all are in ``report.json``.
  Multichannel files keep channel 0, as recordings do.
* **SIR, SNR and overlap are measured** from the sources (the sets do not record them in the
  tree), with hubbub's definitions: each further speaker's power over the first's, all speech
  over noise, and the share of active 20 ms frames with two speakers or more. The room is
  unknown (``room.rt60_s_measured`` is None, also for WHAMR!'s reverberant mixtures).
* **Splits are the set's**, renamed to hubbub's (``dev``/``cv`` -> ``valid``, ``train-360``/``tr``
  -> ``train``, ``test``/``tt`` -> ``test``; ``train-100`` -> ``train100``); ``splits`` maps
  them otherwise, e.g. ``{"train-100": "train", "dev": "valid"}``. Samples are in id order.
* **Provenance and licences** go into every sample's JSON (``dataset``: set, split, id, files)
  and the index's data card (``licences``, ``redistribution``): LibriSpeech is CC BY 4.0, WHAM!
  noise CC BY-NC 4.0, and WSJ0 (WHAM!, WHAMR!, wsj0-mix) is licensed by the LDC and may not be
  redistributed, which the card says.

Like the recordings ingest (:mod:`hubbub.shards.ingest`) the plan is made from the listings
alone, so a rerun keeps complete shards and a rerun with other settings or files is refused
(:func:`hubbub.shards.build.build_corpus`).
"""
from __future__ import annotations

import io
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hubbub import storage
from hubbub.audio import probe
from hubbub.schema import member_name
from hubbub.shards.format import BITS, CODECS, encode_audio, encode_json, quantize, sample_key
from hubbub.shards.build import build_corpus
from hubbub.shards.writer import (ShardPlan, ShardRecord, count_reasons, fingerprint, plan_split, write_sidecar,
                                  writing_shard)
from hubbub.sources.speech import ListedFile, _walk_audio, resolve_folder

log = logging.getLogger(__name__)

KIND = "dataset"
CHANNEL = 0
SOURCE_TARGETS = ("dry", "direct", "early", "reverberant")  # the per-source targets a set's files can be
DEFAULT_TARGETS = ("dry", "reverberant", "noise")
LIBRISPEECH = "CC-BY-4.0"
WHAM_NOISE = "CC-BY-NC-4.0"
WSJ0 = "LicenseRef-LDC-WSJ0"  # SPDX's form for a licence without an SPDX id: the LDC User Agreement
_LICENCE_NOTES = {LIBRISPEECH: "CC BY 4.0", WHAM_NOISE: "CC BY-NC 4.0",
                  WSJ0: "LDC93S6A, LDC User Agreement: not redistributable"}
_SUBTYPE_BITS = {"PCM_S8": 8, "PCM_U8": 8, "PCM_16": 16, "PCM_24": 24}  # others (float, PCM_32) are finer
_WINDOW = 16  # samples whose files are fetched together (concurrent requests in a store)


@dataclass(frozen=True)
class Layout:
    """The folder layout of one set family."""

    name: str                     # what layout= takes
    title: str                    # the set's name, "{n}" for its speaker count
    splits: Mapping[str, str]     # the set's split folders -> hubbub split names (the default mapping)
    mixtures: tuple[str, ...]     # mixture folders, the default first
    speech: str                   # the speech corpus, and its licence
    speech_licence: str
    ids: str                      # how an id names its utterances: "librispeech" or "wsj0"
    max_speakers: int = 3

    def display(self, num_speakers: int) -> str:
        return self.title.format(n=num_speakers)


_TRAIN_SPLITS = {"tr": "train", "cv": "valid", "tt": "test"}
LAYOUTS = {
    "librimix": Layout("librimix", "Libri{n}Mix", {"train-360": "train", "train-100": "train100", "dev": "valid",
                                                   "test": "test"},
                       ("mix_clean", "mix_both", "mix_single"), "LibriSpeech", LIBRISPEECH, "librispeech"),
    "wham": Layout("wham", "WHAM!", _TRAIN_SPLITS, ("mix_clean", "mix_both", "mix_single"), "WSJ0", WSJ0, "wsj0", 2),
    "whamr": Layout("whamr", "WHAMR!", _TRAIN_SPLITS,
                    ("mix_both_reverb", "mix_clean_reverb", "mix_single_reverb", "mix_both_anechoic",
                     "mix_clean_anechoic", "mix_single_anechoic"), "WSJ0", WSJ0, "wsj0", 2),
    "wsj0mix": Layout("wsj0mix", "wsj0-{n}mix", _TRAIN_SPLITS, ("mix",), "WSJ0", WSJ0, "wsj0"),
}
_RATE_DIR = re.compile(r"wav(\d+)k")
_MODES = ("min", "max")
# Folders that say "a standard set lives here", though not in a form ingest reads: one level too high.
_COLLECTION_DIR = re.compile(r"(\d+speakers|Libri\dMix)")
# Or one level too low: the folders of a single split (a mixture folder and a source folder).
_SPLIT_CONTENT = re.compile(r"(mix|mix_(clean|both|single)(_reverb|_anechoic)?|s\d(_reverb|_anechoic)?)")


class LayoutError(ValueError):
    """A tree that is not the layout asked for, or lacks a folder the ingest needs: one line."""


@dataclass
class Tree:
    """What :func:`resolve_tree` found: which variant of which set, and the folders a sample needs."""

    layout: Layout
    root: str                         # the folder given (normalised)
    variant: str                      # the folder holding the split folders
    variant_rel: str                  # its path relative to root ("wav8k/min"; "" when it is root)
    sample_rate_hz: int | None        # from the rate folder's name; None: from the first mixture's header
    mode: str | None                  # "min", "max", or None when no folder says
    splits: dict[str, str]            # the set's split folders used -> hubbub splits, in order
    mixture: str
    num_speakers: int
    sources: list[str]                # the folders the mixture sums, one per speaker
    noise: str | None                 # the noise folder, for mixtures with noise
    target_folders: dict[str, list[str]]  # per-source target -> its folder per speaker

    @property
    def name(self) -> str:
        return self.layout.display(self.num_speakers)

    @property
    def parts(self) -> list[str]:
        """The folders whose files add up to the mixture."""
        return self.sources + ([self.noise] if self.noise else [])

    def available_targets(self) -> list[str]:
        return [t for t in SOURCE_TARGETS if t in self.target_folders] + (["noise"] if self.noise else [])

    def licences(self) -> list[str]:
        return sorted({self.layout.speech_licence} | ({WHAM_NOISE} if self.noise else set()))

    def redistribution(self) -> str:
        if self.layout.speech_licence == WSJ0:
            return "not allowed: the speech is WSJ0's (LDC93S6A), licensed by the LDC to its members only"
        if self.noise:
            return "non-commercial only, with attribution (WHAM! noise: CC BY-NC 4.0; LibriSpeech: CC BY 4.0)"
        return "with attribution (LibriSpeech: CC BY 4.0)"


@dataclass
class DatasetResult:
    out_dir: Path | str               # a Path for a local corpus, else its URL
    index: dict
    tree: Tree
    written: int                      # shards written by this run
    skipped_complete: int             # shards found complete and kept
    skipped: list[dict] = field(default_factory=list)  # {"split", "id", "reason", "detail"}: samples left out

    def summary(self) -> str:
        t = self.tree
        counts = ", ".join(f"{k}: {v['num_samples']}" for k, v in self.index["splits"].items())
        return (f"{self.out_dir}: {t.name} ({t.layout.name}, {t.mixture}, {self.index['recipe']['sample_rate_hz']} Hz"
                f"{f', {t.mode}' if t.mode else ''}), {counts} samples; {self.written} shards written, "
                f"{self.skipped_complete} already complete; {len(self.skipped)} samples skipped (see report.json)")


@dataclass
class _Sample:
    split: str                        # hubbub's
    index: int
    dataset_split: str
    id: str
    files: dict[str, ListedFile]      # folder -> file


class _Skip(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


# -- finding the layout -----------------------------------------------------------------------------

def _subdirs(url: str) -> list[str]:
    """Names of the folders directly in ``url`` (one listing), sorted."""
    if storage.is_local(url):
        path = storage.local_path(url)
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    fs, path = storage.filesystem(url)

    def ls():
        try:
            return fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
    return sorted(storage.name_of(e["name"]) for e in storage._call(url, "list it", ls) if e.get("type") == "directory")


def _variant_levels(url: str) -> list[tuple[str, str]]:
    """``(kind, name)`` of the rate and mode folders below ``url`` on the way to the split folders,
    following the first of each (enough to tell the layout)."""
    names, path = _subdirs(url), []
    for kind, match in (("rate", _RATE_DIR.fullmatch), ("mode", lambda n: n in _MODES)):
        found = [n for n in names if match(n)]
        if found:
            path.append((kind, found[0]))
            url = storage.join(url, found[0])
            names = _subdirs(url)
    return path


def _layout_of(variant: str, split_dirs: list[str]) -> str | None:
    """The layout whose split folders and mixture folders are there."""
    for split in split_dirs:
        if split in LAYOUTS["librimix"].splits:
            if any(n.startswith("mix_") for n in _subdirs(storage.join(variant, split))):
                return "librimix"
        elif split in _TRAIN_SPLITS:
            folders = set(_subdirs(storage.join(variant, split)))
            if any(f.endswith(("_reverb", "_anechoic")) for f in folders):
                return "whamr"
            if "mix" in folders:
                return "wsj0mix"
            if folders & set(LAYOUTS["wham"].mixtures):
                return "wham"
    return None


def detect_layout(folder: str | Path) -> str | None:
    """The standard layout of the tree at ``folder`` (a key of :data:`LAYOUTS`), or None where it
    shows no sign of one (a folder of recordings). A few folder listings, no file is read.

    Raises LayoutError where the folder holds several sets one level up (``2speakers/`` and
    ``3speakers/``, ``Libri2Mix/`` and ``Libri3Mix/``) or rate/mode folders without a known layout below.
    """
    root = resolve_folder(folder, "folder")
    variant = root
    levels = _variant_levels(root)
    for _, name in levels:
        variant = storage.join(variant, name)
    split_dirs = _subdirs(variant)
    found = _layout_of(variant, split_dirs)
    if found is None and not levels:
        collections = [n for n in split_dirs if _COLLECTION_DIR.fullmatch(n)]
        if collections:
            raise LayoutError(f"{root} holds {', '.join(collections)}: ingest one of them "
                              f"(e.g. {storage.join(root, collections[0])})")
        folders = [n for n in split_dirs if _SPLIT_CONTENT.fullmatch(n)]
        if any(f.startswith("mix") for f in folders) and any(f.startswith("s") for f in folders):
            raise LayoutError(f"{root} looks like one split of a set ({', '.join(f + '/' for f in folders)}): "
                              f"give the set's folder and pick splits (e.g. splits test=test)")
        return None
    if found is None:
        raise LayoutError(f"{variant} holds no split folders of a known layout ({_expected()}); found "
                          f"{', '.join(split_dirs) or 'no folders'} (layout=recordings reads any folder as recordings)")
    return found


def _expected() -> str:
    return "; ".join(f"{name}: {', '.join(lay.splits)} with {lay.mixtures[0]}/ ..." for name, lay in LAYOUTS.items())


def _pick(root: str, names: list[str], wanted: str | None, what: str, option: str) -> str:
    if wanted is not None:
        if wanted not in names:
            raise LayoutError(f"{root} has no {wanted}/ (it has {', '.join(names)})")
        return wanted
    if len(names) > 1:
        raise LayoutError(f"{root} holds {what} {', '.join(names)}: pick one with {option}")
    return names[0]


def resolve_tree(folder: str | Path, layout: str = "auto", *, sample_rate_hz: int | None = None,
                 mode: str | None = None, mixture: str | None = None,
                 splits: Mapping[str, str] | str | None = None, targets=None) -> Tree:
    """Find the variant (rate, mode), split folders, speaker count and the folders the mixture
    and ``targets`` need under ``folder``; LayoutError (one line) where any is missing.

    ``splits``: the set's split folders to read -> hubbub split names (a dict, or
    ``"dev=valid,test=test"``); default: the layout's mapping, for the split folders present.
    ``targets``: hubbub target names, checked against what the mixture offers (default
    :data:`DEFAULT_TARGETS` where available).
    """
    root = resolve_folder(folder, "dataset folder")
    if layout == "auto":
        found = detect_layout(root)
        if found is None:
            raise LayoutError(f"{root} is not in a known layout ({_expected()})")
        layout = found
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r} (known: {', '.join(LAYOUTS)})")
    lay = LAYOUTS[layout]
    if mode is not None and mode not in _MODES:
        raise LayoutError(f"mode must be min or max, got {mode!r}")

    # Down the rate and mode folders, where the tree has them; else the folder's own name says.
    variant, rel = root, []
    names = _subdirs(variant)
    rates = {int(m.group(1)) * 1000: n for n in names if (m := _RATE_DIR.fullmatch(n))}
    if rates:
        if sample_rate_hz is not None and sample_rate_hz not in rates:
            raise LayoutError(f"{root} has no wav{sample_rate_hz // 1000}k/ (it has {', '.join(rates.values())})")
        pick = _pick(root, list(rates.values()), rates.get(sample_rate_hz), "rates",
                     "sample_rate_hz (--sample-rate-hz)")
        variant, rate_hz = storage.join(variant, pick), next(r for r, n in rates.items() if n == pick)
        rel.append(pick)
        names = _subdirs(variant)
    else:
        rate_hz = _named_rate(root)
        if sample_rate_hz is not None and rate_hz is not None and rate_hz != sample_rate_hz:
            raise LayoutError(f"{root} is a {rate_hz} Hz folder, {sample_rate_hz} Hz was asked for")
    modes = [n for n in names if n in _MODES]
    if modes:
        picked_mode = _pick(variant, modes, mode, "modes", "mode (--mode)")
        variant = storage.join(variant, picked_mode)
        rel.append(picked_mode)
        names = _subdirs(variant)
    else:
        picked_mode = storage.name_of(root) if storage.name_of(root) in _MODES else None
        if mode is not None and picked_mode not in (None, mode):
            raise LayoutError(f"{root} is a {picked_mode} folder, mode {mode} was asked for")

    split_map = _split_map(lay, variant, names, splits)
    first = storage.join(variant, next(iter(split_map)))
    folders = set(_subdirs(first))
    if mixture is None:
        present = [m for m in lay.mixtures if m in folders]
        if not present:
            raise LayoutError(f"{first} has no mixture folder of {lay.name} ({', '.join(lay.mixtures)})")
        mixture = present[0]
    elif mixture not in lay.mixtures:
        raise LayoutError(f"{lay.name} has no mixture {mixture!r} (its mixtures: {', '.join(lay.mixtures)})")
    suffix = mixture[mixture.rfind("_"):] if layout == "whamr" else ""  # "_reverb" or "_anechoic"
    single = mixture.startswith("mix_single")
    num_speakers = 1 if single else max(k for k in range(1, lay.max_speakers + 1)
                                        if k <= 2 or f"s{k}{suffix}" in folders)
    sources = [f"s{k}{suffix}" for k in range(1, num_speakers + 1)]
    noise = "noise" if mixture.startswith(("mix_both", "mix_single")) else None
    target_folders = {t: sources for t in SOURCE_TARGETS}
    if suffix == "_reverb":
        anechoic = [f"s{k}_anechoic" for k in range(1, num_speakers + 1)]
        target_folders = {"dry": anechoic, "direct": anechoic, "reverberant": sources}
    tree = Tree(lay, root, variant, "/".join(rel), rate_hz, picked_mode, split_map, mixture, num_speakers, sources,
                noise, target_folders)
    chosen = choose_targets(tree, targets)
    needed = needed_folders(tree, chosen)
    for split in split_map:
        have = set(_subdirs(storage.join(variant, split))) if split != next(iter(split_map)) else folders
        missing = [f for f in needed if f not in have]
        if missing:
            raise LayoutError(f"{storage.join(variant, split)} lacks {', '.join(m + '/' for m in missing)} "
                              f"(needed for {mixture} with targets {', '.join(chosen)})")
    return tree


def _named_rate(url: str) -> int | None:
    """The rate a ``wav8k`` folder at or above ``url`` names."""
    for part in reversed(str(url).replace("\\", "/").split("/")):
        if m := _RATE_DIR.fullmatch(part):
            return int(m.group(1)) * 1000
    return None


def parse_split_map(splits: Mapping[str, str] | str) -> dict[str, str]:
    """``"dev=valid,test=test"`` (or a dict) -> ``{"dev": "valid", "test": "test"}``."""
    if isinstance(splits, str):
        pairs = [p.strip() for p in splits.split(",") if p.strip()]
        if not pairs or any(p.count("=") != 1 for p in pairs):
            raise LayoutError(f"splits must read SET_SPLIT=HUBBUB_SPLIT[,...], e.g. dev=valid,test=test; "
                              f"got {splits!r}")
        splits = dict(p.split("=") for p in pairs)
    out = {str(k).strip(): str(v).strip() for k, v in splits.items()}
    for name in out.values():
        try:
            sample_key(name, 0)
        except ValueError:
            raise LayoutError(f"split name {name!r} must be alphanumeric (hubbub's keys hold it)") from None
    return out


def _split_map(lay: Layout, variant: str, names: list[str], splits) -> dict[str, str]:
    if splits is None:
        out = {s: h for s, h in lay.splits.items() if s in names}
        if not out:
            raise LayoutError(f"{variant} is not a {lay.name} tree: no split folder {', '.join(lay.splits)} "
                              f"(found {', '.join(names) or 'no folders'})")
        return out
    out = parse_split_map(splits)
    missing = [s for s in out if s not in names]
    if missing:
        raise LayoutError(f"{variant} has no split folder {', '.join(missing)} (it has {', '.join(names) or 'none'})")
    return out


def choose_targets(tree: Tree, targets=None) -> list[str]:
    """The targets to store: ``targets`` (names or ``"dry,reverberant"``), each offered by the
    mixture, or by default those of :data:`DEFAULT_TARGETS` it offers."""
    available = tree.available_targets()
    if targets is None:
        return [t for t in DEFAULT_TARGETS if t in available]
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    unknown = [t for t in targets if t not in available]
    if unknown or not targets:
        raise LayoutError(f"{tree.name} {tree.mixture} offers targets {', '.join(available)}; "
                          f"{', '.join(unknown) or 'none'} asked for")
    return [t for t in (*SOURCE_TARGETS, "noise") if t in targets]


def needed_folders(tree: Tree, targets: list[str]) -> list[str]:
    """The mixture, what it sums (always read: the sum is checked, SIR and SNR measured), and the
    folders of the stored targets."""
    out = [tree.mixture, *tree.parts]
    for t in targets:
        out += tree.target_folders.get(t, [])
    return list(dict.fromkeys(out))


# -- planning -----------------------------------------------------------------------------------------

def _plan(tree: Tree, folders: list[str]) -> tuple[dict[str, list[_Sample]], list[dict], str, dict]:
    """(samples per hubbub split, samples skipped for a missing file, fingerprint of the files,
    counts of files without a mixture per folder), from one listing per folder."""
    by_split: dict[str, list[_Sample]] = {}
    skipped, rows, orphans = [], [], {}
    for split, hubbub_split in tree.splits.items():
        listed = {}
        for folder in folders:
            files = _walk_audio(storage.join(tree.variant, split, folder))
            listed[folder] = {_stem(f.rel): f for f in files}
            rows += [[split, folder, f.rel, f.size] for f in files]
        ids = sorted(listed[tree.mixture])
        samples = by_split.setdefault(hubbub_split, [])
        for id_ in ids:
            missing = [f for f in folders if id_ not in listed[f]]
            if missing:
                skipped.append({"split": split, "id": id_, "reason": "missing",
                                "detail": f"no {' or '.join(f'{m}/{id_}.*' for m in missing)}"})
                continue
            samples.append(_Sample(hubbub_split, len(samples), split, id_, {f: listed[f][id_] for f in folders}))
        ids_set = set(ids)
        for folder in folders:
            extra = sum(i not in ids_set for i in listed[folder])
            if extra:
                orphans[f"{split}/{folder}"] = extra
    return by_split, skipped, fingerprint(rows), orphans


def _stem(rel: str) -> str:
    return rel.rsplit(".", 1)[0]


# -- writing ------------------------------------------------------------------------------------------

def ingest_dataset(folder: str | Path, out_dir: str | Path, *, layout: str = "auto",
                   sample_rate_hz: int | None = None, mode: str | None = None, mixture: str | None = None,
                   splits: Mapping[str, str] | str | None = None, targets=None, samples_per_shard: int = 200,
                   codec: str = "flac", bits: int = 24, progress: bool = False) -> DatasetResult:
    """Write the standard set at ``folder`` as a labelled corpus in ``out_dir``.

    Args:
        folder: the set's root (``Libri2Mix``, ``whamr``, ``wsj0-mix/2speakers``), or one of its
            rate or mode folders; a local folder or a URL.
        out_dir: the corpus directory, local or a URL (a rerun of the same call finishes or keeps it).
        layout: ``"auto"`` (from the folder names) or a key of :data:`LAYOUTS`.
        sample_rate_hz, mode: which variant (``wav8k``/``wav16k``, ``min``/``max``); needed only
            where the tree holds several.
        mixture: the mixture folder (``mix_clean``, ``mix_both``, ``mix_single``; WHAMR!'s
            ``mix_both_reverb``, ...); default the layout's first present (:data:`LAYOUTS`).
        splits: the set's split folders -> hubbub split names (dict or ``"dev=valid,test=test"``);
            default the layout's mapping for the folders present.
        targets: hubbub target names to store (list or ``"dry,reverberant,noise"``); default
            :data:`DEFAULT_TARGETS` where the mixture has them.
        samples_per_shard, codec, bits: as for :func:`hubbub.shards.ingest.ingest_recordings`.
        progress: a progress bar over the samples written.

    Raises LayoutError (one line, nothing written) for a tree that is not the layout or lacks a
    folder the mixture or targets need, ValueError when no sample is complete, and when
    ``out_dir`` holds a corpus made from other files or settings.

    Example::

        res = ingest_dataset("/data/Libri2Mix", "corpora/libri2mix-8k", sample_rate_hz=8000, mode="min")
        ds = ShardDataset("corpora/libri2mix-8k", "test", targets=("dry",), shuffle=False)
    """
    if codec not in CODECS or bits not in BITS:
        raise ValueError(f"codec must be one of {CODECS} and bits one of {BITS}, got {codec!r} and {bits}")
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be positive, got {samples_per_shard}")
    tree = resolve_tree(folder, layout, sample_rate_hz=sample_rate_hz, mode=mode, mixture=mixture, splits=splits,
                        targets=targets)
    chosen = choose_targets(tree, targets)
    folders = needed_folders(tree, chosen)
    stored_as = {"codec": codec, "bits": int(bits)}
    out_dir = storage.normalize(Path(out_dir).expanduser() if storage.is_local(out_dir) else out_dir)

    by_split, skipped, sources_hash, orphans = _plan(tree, folders)
    by_split = {s: v for s, v in by_split.items() if v}
    if not by_split:
        raise ValueError(f"no complete sample under {tree.variant}: {len(skipped)} id(s) of {tree.mixture}/ lack a "
                         f"file in {', '.join(folders[1:])}; nothing written")
    if tree.sample_rate_hz is None:  # a variant folder given whose name says no rate: its first mixture does
        first = next(iter(by_split.values()))[0].files[tree.mixture]
        tree.sample_rate_hz = probe(first.path)[0]
        if sample_rate_hz is not None and sample_rate_hz != tree.sample_rate_hz:
            raise LayoutError(f"{tree.variant} holds {tree.sample_rate_hz} Hz mixtures ({first.rel}), "
                              f"{sample_rate_hz} Hz was asked for")
    # "dataset", not "name": a recipe's name is a simulation preset's (publish's model card says so)
    recipe = {"kind": KIND, "dataset": tree.name, "layout": tree.layout.name, "source": storage.name_of(tree.root),
              "variant": tree.variant_rel, "sample_rate_hz": tree.sample_rate_hz, "mode": tree.mode,
              "mixture": tree.mixture, "targets": chosen, "splits": dict(tree.splits),
              "speakers": {"count": tree.num_speakers, "distribution": {}}}
    recipe_hash = fingerprint({k: v for k, v in recipe.items() if k != "source"} | {"channel": CHANNEL})
    identity = {"kind": KIND, "recipe_hash": recipe_hash, "sources_hash": sources_hash, "seed": None,
                "samples_per_shard": samples_per_shard, "splits": dict(tree.splits), "storage": stored_as,
                "recipe": recipe}
    context = {"tree": tree, "targets": chosen, "stored_as": stored_as, "recipe_hash": recipe_hash,
               "sources_hash": sources_hash}

    plans = [p for split, samples in by_split.items() for p in plan_split(split, len(samples), samples_per_shard)]

    def write(pending: list[ShardPlan]) -> list[ShardRecord]:
        with tqdm(total=sum(p.num_samples for p in pending), desc=tree.name, unit="sample",
                  disable=not progress) as bar:
            return [_write_shard(plan, by_split[plan.split][plan.first_sample:plan.first_sample + plan.num_samples],
                                 out_dir, context, bar) for plan in pending]

    def report(records: list[ShardRecord]) -> dict:
        # left out from the listing (missing files), then by the shards' sidecars (a rerun reports them too)
        left_out = skipped + [{"split": e["dataset_split"], "id": e["id"], "reason": e["reason"],
                               "detail": e["detail"]} for r in records for e in r.failed]
        return {"folder": str(tree.root), "layout": tree.layout.name, "variant": tree.variant_rel,
                "mixture": tree.mixture, "skipped_samples": left_out,
                "summary": {"samples_skipped": len(left_out), "reasons": count_reasons(left_out),
                            "files_without_mixture": orphans}}

    built = build_corpus(
        out_dir, identity, plans, write=write, report=report,
        index_extra=lambda records, content: {
            "kind": KIND, "recipe_hash": recipe_hash, "sources_hash": sources_hash,
            "data_card": _data_card(tree, chosen, records, content["skipped_samples"], by_split)},
        what="hubbub shards ingest", labels={"sources_hash": "files", "recipe_hash": "settings"},
        nothing_usable=lambda content: (f"no usable sample under {tree.variant}: all "
                                        f"{len(content['skipped_samples'])} skipped "
                                        f"({content['summary']['reasons']}); nothing written"))
    left_out = built.report["skipped_samples"]
    log.info("%d shards written, %d complete kept; %d samples skipped", built.written, built.kept, len(left_out))
    return DatasetResult(storage.as_path(out_dir), built.index, tree, built.written, built.kept, left_out)


def _write_shard(plan: ShardPlan, samples: list[_Sample], out_dir: str, context: dict, bar) -> ShardRecord:
    rec = ShardRecord(name=plan.name, split=plan.split, shard_index=plan.shard_index,
                      first_sample=plan.first_sample, num_planned=plan.num_samples)
    with writing_shard(out_dir, plan.name) as writer:
        for sample, data in _fetched(samples):
            key = sample_key(sample.split, sample.index)
            try:
                members, seconds = _members(sample, key, data, context)
            except _Skip as skip:
                rec.failed.append({"index": sample.index, "key": key, "split": sample.split,
                                   "dataset_split": sample.dataset_split, "id": sample.id, "reason": skip.reason,
                                   "detail": skip.detail, "error": str(skip)})
            else:
                writer.write(members)
                rec.keys.append(key)
                rec.durations_s.append(seconds)
            bar.update(1)
    write_sidecar(rec, out_dir, writer)
    return rec


def _fetched(samples: list[_Sample]) -> Iterator[tuple[_Sample, dict[str, bytes]]]:
    """Each sample with its files' bytes (folder -> bytes), the next window fetched in a thread
    while this one is decoded (concurrent requests in a store, where latency dominates)."""
    windows = [samples[i:i + _WINDOW] for i in range(0, len(samples), _WINDOW)]
    if not windows:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="hubbub-ingest-read") as pool:
        future = pool.submit(_read_window, windows[0])
        for i, window in enumerate(windows):
            got = future.result()
            if i + 1 < len(windows):
                future = pool.submit(_read_window, windows[i + 1])
            for sample in window:
                yield sample, {folder: got.get(f.path) for folder, f in sample.files.items()}


def _read_window(window: list[_Sample]) -> dict[str, bytes]:
    paths = [f.path for s in window for f in s.files.values()]
    if storage.is_local(paths[0]):
        return {p: storage.local_path(p).read_bytes() for p in paths}
    return storage.read_many(paths)


def _decode(folder: str, sample: _Sample, data: bytes | None) -> tuple[np.ndarray, int, int]:
    """(channel 0 as float32, rate, bit depth) of one file of a sample."""
    rel = f"{folder}/{sample.files[folder].rel}"
    if data is None:
        raise _Skip("unreadable", f"{rel} could not be read")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, subtype = f.samplerate, f.subtype
            x = f.read(dtype="float32", always_2d=True)[:, CHANNEL]
    except Exception as exc:  # libsndfile raises several types for damaged data
        raise _Skip("unreadable", f"{rel}: {(str(exc).splitlines() or [type(exc).__name__])[0][:200]}") from None
    if not np.isfinite(x).all():
        raise _Skip("non-finite", f"{rel} has NaN or inf samples")
    return x, rate, _SUBTYPE_BITS.get(subtype, 24)


def _members(sample: _Sample, key: str, data: dict[str, bytes], context: dict) -> tuple[dict, float]:
    tree, targets, stored_as = context["tree"], context["targets"], context["stored_as"]
    bits = stored_as["bits"]
    audio = {folder: _decode(folder, sample, data[folder]) for folder in sample.files}
    mix = audio[tree.mixture][0]
    n, rate = len(mix), tree.sample_rate_hz
    if n == 0:
        raise _Skip("empty", f"{tree.mixture}/{sample.files[tree.mixture].rel} holds no samples")
    for folder, (x, sr, _) in audio.items():
        rel = f"{folder}/{sample.files[folder].rel}"
        if sr != rate:
            raise _Skip("rate-mismatch", f"{rel} is at {sr} Hz, the set's folder at {rate} Hz")
        if len(x) != n:
            raise _Skip("length-mismatch", f"{rel} has {len(x)} samples, its mixture {n}")

    codes = {folder: quantize(x, bits) for folder, (x, _, _) in audio.items()}
    error, adjusted = _add_up(tree, codes, min(bits, *(b for _, _, b in audio.values())), bits)
    codes.update(adjusted)
    sources = [audio[f][0] for f in tree.sources]
    noise = audio[tree.noise][0] if tree.noise else None

    files = {"mix": _rel(tree, sample, tree.mixture)}
    members = {"__key__": key}
    codec = stored_as["codec"]

    def put(folder: str, target: str, source: int | None = None) -> None:
        name = member_name(target, source, codec)
        members[name] = encode_audio(codes[folder], rate, **stored_as)
        files[name.removesuffix(f".{codec}")] = _rel(tree, sample, folder)  # "mix", "noise", "s0.dry"

    put(tree.mixture, "mix")
    for target in targets:
        if target == "noise":
            put(tree.noise, "noise")
            continue
        for k, folder in enumerate(tree.target_folders[target]):
            put(folder, target, k)
    powers = [_active_power(s) for s in sources]
    utterances = _utterances(tree.layout, sample.id, tree.num_speakers)
    meta = {
        "key": key, "split": sample.split, "index": sample.index, "kind": KIND, "labelled": True,
        "sample_rate_hz": rate, "num_samples": n, "duration_s": n / rate, "num_speakers": tree.num_speakers,
        "num_mics": 1, "targets": list(targets), "storage": stored_as, "channel": CHANNEL,
        "recipe_hash": context["recipe_hash"], "sources_hash": context["sources_hash"],
        "sources": [{"speaker": _speaker(tree.layout, u), "utterance": u,
                     "sir_db": 0.0 if k == 0 else _db(powers[k], powers[0])}
                    for k, u in enumerate(utterances)],
        "room": {"rir_mode": "unknown" if tree.sources[0].endswith("_reverb") else "anechoic",
                 "rt60_s_target": None, "rt60_s_measured": None},
        "mixing": {"overlap_ratio": _overlap_ratio(np.stack(sources), rate)},
        "noise": ({"kind": "dataset", "snr_db": _db(_active_power(np.sum(sources, axis=0)), _active_power(noise))}
                  if noise is not None else None),
        "dataset": {"name": tree.name, "layout": tree.layout.name, "split": sample.dataset_split, "id": sample.id,
                    "mixture": tree.mixture, "files": files, "licences": tree.licences(),
                    "mix_sum_error": error},
    }
    members["json"] = encode_json(meta)
    return members, n / rate


def _rel(tree: Tree, sample: _Sample, folder: str) -> str:
    return "/".join(p for p in (tree.variant_rel, sample.dataset_split, folder, sample.files[folder].rel) if p)


def _add_up(tree: Tree, codes: dict[str, np.ndarray], file_bits: int, bits: int
            ) -> tuple[float, dict[str, np.ndarray]]:
    """Make the summed signals add up to the mixture exactly, in ``bits``-bit codes.

    The residual ``mix - sum(parts)`` is spread over the parts as evenly as integers allow (the
    first ones take the remainder), so no part moves by more than ``ceil(|r| / P)`` codes.
    Returns (the largest residual before, in full scale, and the adjusted parts). A residual
    larger than rounding explains (one step of the coarser of the files' and the storage's
    bit depth per signal, the mixture's included) is a ``not-a-sum`` skip.
    """
    parts = tree.parts
    residual = codes[tree.mixture].astype(np.int64) - np.sum([codes[p] for p in parts], axis=0, dtype=np.int64)
    full = 2 ** (bits - 1)
    error = float(np.abs(residual).max()) / full
    tolerance = (len(parts) + 1) * 2.0 ** -(min(file_bits, bits) - 1)
    if error > tolerance:
        raise _Skip("not-a-sum", f"{tree.mixture} differs from {' + '.join(parts)} by up to {error:.3g} "
                                 f"(rounding explains {tolerance:.2g})")
    base, remainder = np.divmod(residual, len(parts))
    adjusted = {}
    for j, part in enumerate(parts):
        q = codes[part] + base + (remainder > j)
        if q.min() < -full or q.max() > full - 1:
            raise _Skip("clipped", f"{part} at full scale: it cannot take the mixture's rounding")
        adjusted[part] = q.astype(np.int32)
    return error, adjusted


def _active_power(x: np.ndarray) -> float:
    """Mean square from the first to the last sample above 1e-8 in magnitude (as the simulator
    measures its SIR and SNR, :func:`hubbub.simulate.sample._active_power`)."""
    loud = np.flatnonzero(np.abs(x) > 1e-8)
    if not loud.size:
        return 0.0
    active = x[loud[0]:loud[-1] + 1].astype(np.float64)
    return float(np.dot(active, active)) / active.size


def _db(power: float, reference: float) -> float | None:
    return round(10 * np.log10(power / reference), 3) if power > 0 and reference > 0 else None


def _overlap_ratio(sources: np.ndarray, sample_rate_hz: int) -> float:
    """Share of active 20 ms frames with two or more active speakers: the definition of
    :func:`hubbub.simulate.sample._overlap_ratio`, here in float64 (not imported: a private
    helper of the simulator, whose float32 version may round differently)."""
    frame = max(1, sample_rate_hz // 50)
    n = sources.shape[1] // frame
    if n == 0:
        return 0.0
    e = (sources[:, :n * frame].astype(np.float64).reshape(len(sources), n, frame) ** 2).mean(-1)
    active = e > 1e-3 * e.max(axis=1, keepdims=True)
    any_active = active.any(0).sum()
    return round(float((active.sum(0) >= 2).sum() / any_active), 4) if any_active else 0.0


_LIBRISPEECH_UTT = re.compile(r"\d+-\d+-\d+")
_WSJ0_UTT = re.compile(r"[0-9a-z]{8}")


def _utterances(layout: Layout, id_: str, num_speakers: int) -> list[str | None]:
    """The utterance of each speaker, from the mixture's id: LibriMix ``{utt1}_{utt2}``, wsj0-mix
    ``{utt1}_{gain1}_{utt2}_{gain2}``; None where the id does not read so."""
    parts = id_.split("_")
    if layout.ids == "wsj0":
        parts = parts[0::2]
    pattern = _LIBRISPEECH_UTT if layout.ids == "librispeech" else _WSJ0_UTT
    return [p if i < len(parts) and pattern.fullmatch(p := parts[i]) else None for i in range(num_speakers)]


def _speaker(layout: Layout, utterance: str | None) -> str | None:
    if utterance is None:
        return None
    return utterance.split("-")[0] if layout.ids == "librispeech" else utterance[:3]


def _data_card(tree: Tree, targets: list[str], records: list[ShardRecord], skipped: list[dict],
               by_split: dict[str, list[_Sample]]) -> dict:
    notes = f"speech: {tree.layout.speech} ({_LICENCE_NOTES[tree.layout.speech_licence]})"
    if tree.noise:
        notes += f"; noise: WHAM! noise ({_LICENCE_NOTES[WHAM_NOISE]})"
    return {
        "kind": KIND, "dataset": tree.name, "layout": tree.layout.name, "source": storage.name_of(tree.root),
        "variant": tree.variant_rel, "mixture": tree.mixture, "targets": targets,
        "speech_corpus_name": tree.layout.speech, "noise": "WHAM! noise" if tree.noise else "none",
        "licences": tree.licences(), "licence_notes": notes, "redistribution": tree.redistribution(),
        "splits_from": dict(tree.splits),
        "hours_per_split": {s: round(sum(sum(r.durations_s) for r in records if r.split == s) / 3600, 4)
                            for s in dict.fromkeys(tree.splits.values())},
        "speakers_per_split": {s: len({_speaker(tree.layout, u) for x in samples
                                       for u in _utterances(tree.layout, x.id, tree.num_speakers)} - {None})
                               for s, samples in by_split.items()},
        "skipped_samples": len(skipped),
    }
