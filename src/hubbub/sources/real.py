"""Real recordings split by whole files into a labelled part and an unlabelled part.

A folder of real speech whose speaker is in the path (a game's dialogue, an audiobook, a
meeting archive) serves two stages at once, from disjoint files: its **labelled** part is a
speech corpus that ``hubbub simulate`` mixes by any recipe (a real-speech test set mixed exactly
as the training corpus is), its **unlabelled** part a folder of recordings for ``hubbub pretrain
mixit --recordings`` (cut into segments by :func:`hubbub.shards.ingest.ingest_recordings`).

:func:`split_real` writes, under ``out_dir``::

    labelled/<rel>             a symlink to FOLDER/<rel>, for each labelled file
    labelled/manifest.jsonl    {"path": "<rel>", "speaker", "duration_s", "licence"} per file:
                               read as the speech corpus (``speech.corpus=OUT/labelled``), so
                               speakers and the licence reach every sample and the data card
    unlabelled/<rel>           a symlink to FOLDER/<rel>, for each unlabelled file
    split.json                 the rule, the settings, every file with its speaker, duration,
                               group and part, and every file left out with its reason

Relative paths are kept, so the speaker rule reads the trees as it reads FOLDER
(``speech.layout=regex`` with the same pattern works on ``labelled/`` too).

Files go to a part by **group**: the file's relative path (``group="file"``) or its folder
(``group="folder"``: every file of a folder on one side, e.g. one level of a game or one
recording session, so no conversation is heard on both sides). The groups are put in the order
of ``sha256("{seed}/{group}")`` (:func:`group_order`) and, in that order, those whose middle
falls within the first ``labelled_fraction`` of the minutes are labelled (:func:`assign_parts`):
deterministic from the seed and the files, and the labelled minutes are the fraction asked for
to within half a group. (A threshold on each group's hash alone would keep a group's part when
others are added, but on the 80 folders of the game's lines it put 40% to 56% of the minutes on
the labelled side for seeds 0 to 3, where 50% was asked for.)

Files the speaker rule does not match, and files that do not decode, are silent or shorter than
``min_duration_s``, go to neither part (listed in ``split.json`` with the reason, as
:func:`hubbub.sources.speech.index_speech` gives it).

:func:`check_split` proves the parts disjoint: the two lists share no file and no group, the
trees hold exactly the listed files, and each corpus given draws only on one part (a simulated
corpus on the labelled files, through its samples' source paths; a corpus of recordings on the
unlabelled ones, through its segments' ``source_file``).

Presets (:data:`PRESETS`) carry the speaker rule, grouping and licence of known folders.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hubbub import storage
from hubbub.shards.stats import iter_split_json
from hubbub.shards.writer import load_index
from hubbub.sources.speech import index_speech

SPLIT_FILE = "split.json"
PARTS = ("labelled", "unlabelled")
KIND = "real-split"


@dataclass(frozen=True)
class Preset:
    speaker_regex: str
    group: str
    licence: str


PRESETS = {
    # Debian's fillets-ng-data-nl: sound/<level>/nl/*.ogg, 22.05 kHz stereo OGG Vorbis, the lines
    # of the two fish of Fish Fillets NG (Czech "malá"/"velká": small/big) named
    # <code>-m-<word>.ogg, m-<word>.ogg, <word>-m.ogg or <code>_m_<word>.ogg (v alike). The game's
    # own scripts (dialogId(..., "font_small" | "font_big")) agree with this rule on every file
    # they name. Lines named without the speaker (help*.ogg, rand-*.ogg, ...), the English files
    # of fillets-ng-data and its sound effects match no speaker and are left out.
    "fillets": Preset(
        speaker_regex=r"(?:^|/)nl/(?:[a-z0-9]+[-_])?(?P<speaker>[mv])(?:[-_][^/]*)?\.ogg$",
        group="folder",
        # /usr/share/doc/fillets-ng-data-nl/copyright: GPL version 2, no "or later". A bare SPDX id,
        # as every licence field of hubbub holds ("GPL-2.0", SPDX's older name of GPL-2.0-only), so
        # hubbub publish gives a model card the Hub's id "gpl-2.0".
        licence="GPL-2.0"),
}


@dataclass
class RealSplit:
    out_dir: Path
    split: dict                      # the content of split.json
    created: bool                    # False: out_dir already held this split

    def summary(self) -> str:
        s = self.split["summary"]
        lines = [f"{self.out_dir}" + ("" if self.created else " (already made)")]
        for p in PARTS:
            speakers = ", ".join(f"{k} {v['files']} files {v['minutes']:.1f} min" for k, v in s[p]["speakers"].items())
            lines.append(f"  {p}: {s[p]['files']} files in {s[p]['groups']} groups, {s[p]['minutes']:.1f} min, "
                         f"{len(s[p]['speakers'])} speakers ({speakers})")
        lines.append("  left out: " + (", ".join(f"{n} {r}" for r, n in s["left_out"].items()) or "none"))
        return "\n".join(lines)


def group_order(seed: int, group: str) -> str:
    """A group's place in the order the parts are cut from (sorted by this, then by name)."""
    return hashlib.sha256(f"{seed}/{group}".encode()).hexdigest()


def assign_parts(minutes_by_group: dict[str, float], fraction: float, seed: int) -> dict[str, str]:
    """group -> "labelled" or "unlabelled": in :func:`group_order`, the groups whose middle lies
    within the first ``fraction`` of the total minutes are labelled."""
    order = sorted(minutes_by_group, key=lambda g: (group_order(seed, g), g))
    cut = fraction * sum(minutes_by_group.values())
    parts, before = {}, 0.0
    for g in order:
        parts[g] = "labelled" if before + minutes_by_group[g] / 2 < cut else "unlabelled"
        before += minutes_by_group[g]
    return parts


def _group_of(rel: str, group: str) -> str:
    return rel if group == "file" else (rel.rsplit("/", 1)[0] if "/" in rel else ".")


def _settings(folder: str, layout: str | None, speaker_regex: str | None, group: str | None,
              labelled_fraction: float, seed: int, min_duration_s: float, licence: str | None) -> dict:
    if layout is not None and layout not in PRESETS:
        raise ValueError(f"unknown layout {layout!r} (known: {', '.join(PRESETS)}); or give --speaker-regex")
    preset = PRESETS.get(layout)
    speaker_regex = speaker_regex or (preset.speaker_regex if preset else None)
    if not speaker_regex:
        raise ValueError("give a speaker rule: --layout (a preset: " + ", ".join(PRESETS) + ") or --speaker-regex "
                         "with a (?P<speaker>...) group")
    try:
        if "speaker" not in re.compile(speaker_regex).groupindex:
            raise ValueError(f"the speaker regex {speaker_regex!r} has no (?P<speaker>...) group")
    except re.error as exc:
        raise ValueError(f"the speaker regex {speaker_regex!r} is not a regular expression: {exc}") from None
    group = group or (preset.group if preset else "file")
    if group not in ("file", "folder"):
        raise ValueError(f"group must be 'file' or 'folder', got {group!r}")
    if not 0 < labelled_fraction < 1:
        raise ValueError(f"the labelled fraction must lie strictly between 0 and 1, got {labelled_fraction}")
    if not min_duration_s > 0:
        raise ValueError(f"min_duration_s must be > 0, got {min_duration_s}")
    return {"folder": folder, "layout": layout, "speaker_regex": speaker_regex, "group": group,
            "labelled_fraction": float(labelled_fraction), "seed": int(seed), "min_duration_s": float(min_duration_s),
            "licence": licence or (preset.licence if preset else None)}


def _minutes_by_group(files: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for f in files:
        out[f["group"]] = out.get(f["group"], 0.0) + f["duration_s"] / 60
    return out


def _summary(files: list[dict], left_out: list[dict]) -> dict:
    out = {}
    for part in PARTS:
        fs = [f for f in files if f["part"] == part]
        speakers: dict[str, dict] = {}
        for f in fs:
            s = speakers.setdefault(f["speaker"], {"files": 0, "minutes": 0.0})
            s["files"] += 1
            s["minutes"] += f["duration_s"] / 60
        out[part] = {"files": len(fs), "groups": len({f["group"] for f in fs}),
                     "minutes": round(sum(f["duration_s"] for f in fs) / 60, 3),
                     "speakers": {k: {"files": v["files"], "minutes": round(v["minutes"], 3)}
                                  for k, v in sorted(speakers.items())}}
    out["left_out"] = dict(sorted(Counter(s["reason"] for s in left_out).items()))
    return out


def split_real(folder: str | Path, out_dir: str | Path, *, layout: str | None = None,
               speaker_regex: str | None = None, group: str | None = None, labelled_fraction: float = 0.5,
               seed: int = 0, min_duration_s: float = 1.0, licence: str | None = None) -> RealSplit:
    """Split the recordings under ``folder`` by whole files into ``out_dir/labelled`` and
    ``out_dir/unlabelled`` (symlink trees) and record it in ``out_dir/split.json`` (see the module).

    Args:
        folder: a local folder, searched recursively for audio files (OGG Vorbis, FLAC, WAV, ...).
        out_dir: a local folder that does not exist yet, is empty, or holds this same split
            (then nothing is rewritten: a rerun is a no-op). Another split there is refused.
        layout: a preset of :data:`PRESETS` (``"fillets"``): speaker rule, grouping, licence.
        speaker_regex: the speaker rule, searched in each path relative to ``folder``, with a
            ``(?P<speaker>...)`` group (overrides the preset's).
        group: ``"file"`` (default) or ``"folder"`` (files of a folder stay together).
        labelled_fraction: the share of the usable minutes in the labelled part, in (0, 1)
            (to within half a group).
        seed: picks the parts (with the groups' names, nothing else).
        min_duration_s: shorter files are left out (the ``speech.min_duration_s`` of the recipe
            that will mix the labelled part, and ingest's ``min_segment_s``, both default 1.0).
        licence: written into every labelled manifest row (so into the data card of every
            corpus mixed from it) and ``split.json``; default the preset's.

    Raises ValueError, with nothing written, where the labelled part would hold fewer than two
    speakers (no mixture can be made) or a part would be empty.

    Example::

        res = split_real("/usr/share/games/fillets-ng/sound", "real/fillets", layout="fillets")
        res.split["summary"]["labelled"]["speakers"]   # {"m": {"files": ..., "minutes": ...}, "v": ...}
        # then: hubbub simulate --recipe librimix --set speech.corpus=real/fillets/labelled \\
        #           --set 'splits={test: 1.0}' ...;  hubbub pretrain mixit --recordings real/fillets/unlabelled
    """
    for what, path in (("the recordings folder", folder), ("--out", out_dir)):
        if not storage.is_local(path):
            raise ValueError(f"{what} must be on a local disk (the parts are trees of symlinks), got {path}")
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise FileNotFoundError(f"the recordings folder {folder} does not exist or is not a folder")
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.resolve() == folder or folder in out_dir.resolve().parents:
        raise ValueError(f"--out {out_dir} lies inside the recordings folder {folder}: choose a folder outside it")
    settings = _settings(str(folder), layout, speaker_regex, group, labelled_fraction, seed, min_duration_s, licence)

    idx = index_speech(folder, layout="regex", regex=settings["speaker_regex"], min_duration_s=min_duration_s)
    files = []
    for u in idx.utterances:
        rel = Path(u.path).relative_to(folder).as_posix()
        files.append({"path": rel, "speaker": u.speaker, "duration_s": round(u.duration_s, 4),
                      "sample_rate_hz": u.sample_rate_hz, "group": _group_of(rel, settings["group"])})
    parts = assign_parts(_minutes_by_group(files), labelled_fraction, seed)
    for f in files:
        f["part"] = parts[f["group"]]
    left_out = sorted(({"path": os.path.relpath(s["path"], folder), "reason": s["reason"],
                        "detail": s.get("detail", "")} for s in idx.skipped), key=lambda s: s["path"])
    summary = _summary(files, left_out)
    if not files:
        raise ValueError(f"no usable file under {folder} matches the speaker rule {settings['speaker_regex']!r} "
                         f"(left out: {summary['left_out'] or 'nothing found'}); nothing written")
    if len(summary["labelled"]["speakers"]) < 2:
        raise ValueError(f"the labelled part would hold {len(summary['labelled']['speakers'])} speaker(s) "
                         f"({summary['labelled']['files']} files), too few for a mixture: raise the labelled "
                         f"fraction or change the seed; nothing written")
    if not summary["unlabelled"]["files"]:
        raise ValueError("the unlabelled part would be empty: lower the labelled fraction or change the seed; "
                         "nothing written")
    split = {"kind": KIND, "version": 1, **settings, "summary": summary, "files": files, "left_out": left_out}
    return RealSplit(out_dir, split, _write(out_dir, folder, split))


def _write(out_dir: Path, folder: Path, split: dict) -> bool:
    """Write the trees and split.json in a temporary sibling, then rename it to ``out_dir``;
    False where ``out_dir`` already holds this same split."""
    record = out_dir / SPLIT_FILE
    if record.exists():
        if json.loads(record.read_text()) == split:
            return False
        raise ValueError(f"{out_dir} holds another split ({SPLIT_FILE} differs: other settings or other files): "
                         f"remove it or choose another --out")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ValueError(f"{out_dir} exists and is not an empty folder: choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.partial-*"):  # of killed runs: links only
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        for f in split["files"]:
            link = tmp / f["part"] / f["path"]
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(folder / f["path"], link)
        rows = [{"path": f["path"], "speaker": f["speaker"], "duration_s": f["duration_s"],
                 "licence": split["licence"]} for f in split["files"] if f["part"] == "labelled"]
        (tmp / "labelled" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp / SPLIT_FILE).write_text(json.dumps(split, indent=1) + "\n")
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


@dataclass
class SplitCheck:
    faults: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.faults

    def format(self) -> str:
        return "\n".join(self.lines + [f"FAULT {f}" for f in self.faults] + ["ok" if self.ok else
                                                                           f"{len(self.faults)} fault(s)"])


def load_split(split_dir: str | Path) -> dict:
    path = Path(split_dir) / SPLIT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{split_dir} holds no {SPLIT_FILE} (made by hubbub real split)")
    split = json.loads(path.read_text())
    if split.get("kind") != KIND:
        raise ValueError(f"{path} is not a split made by hubbub real split")
    return split


def check_split(split_dir: str | Path, corpora: list[str | Path] = ()) -> SplitCheck:
    """Check that the split in ``split_dir`` is disjoint and that each of ``corpora`` (corpus
    folders or URLs) draws on one part only; see the module. Reads the samples' JSON only."""
    split_dir = Path(split_dir)
    split = load_split(split_dir)
    report = SplitCheck()
    rels = {p: {f["path"] for f in split["files"] if f["part"] == p} for p in PARTS}
    groups = {p: {f["group"] for f in split["files"] if f["part"] == p} for p in PARTS}
    for what, sets in (("file", rels), ("group", groups)):
        both = sorted(sets["labelled"] & sets["unlabelled"])
        if both:
            report.faults.append(f"{len(both)} {what}(s) in both parts, e.g. {both[0]}")
    parts = assign_parts(_minutes_by_group(split["files"]), split["labelled_fraction"], split["seed"])
    wrong = [f["path"] for f in split["files"] if f["part"] != parts[f["group"]]]
    if wrong:
        report.faults.append(f"{len(wrong)} file(s) listed in a part their group, seed and fraction do not give, "
                             f"e.g. {wrong[0]}")
    for part in PARTS:
        on_disk = {p.relative_to(split_dir / part).as_posix() for p in (split_dir / part).rglob("*")
                   if p.is_symlink()}
        if on_disk != rels[part]:
            extra, missing = sorted(on_disk - rels[part]), sorted(rels[part] - on_disk)
            report.faults.append(f"{part}/ differs from {SPLIT_FILE}: {len(extra)} unlisted link(s) "
                                 f"{extra[:2]}, {len(missing)} listed file(s) missing {missing[:2]}")
    s = split["summary"]
    report.lines.append(f"{split_dir}: labelled {len(rels['labelled'])} files ({s['labelled']['groups']} groups), "
                        f"unlabelled {len(rels['unlabelled'])} files ({s['unlabelled']['groups']} groups); "
                        f"no file and no group in both" if not report.faults else f"{split_dir}: see the faults")
    for corpus in corpora:
        _check_corpus(str(corpus), split_dir, split, rels, report)
    return report


def _check_corpus(corpus: str, split_dir: Path, split: dict, rels: dict, report: SplitCheck) -> None:
    index = load_index(corpus)
    recordings = index.get("kind") == "recordings"
    source = Path(split["folder"])
    used: Counter = Counter()
    samples = 0
    for split_name in index["splits"]:
        shards = [s["name"] for s in index["shards"] if s["split"] == split_name]
        for meta in iter_split_json(corpus, split_name, shards):
            samples += 1
            paths = [meta["source_file"]] if recordings else [s["path"] for s in meta.get("sources", [])]
            for p in paths:
                used[_part_of(p, split_dir, source, rels)] += 1
    expected = "unlabelled" if recordings else "labelled"
    what = "segments" if recordings else "samples"
    report.lines.append(f"{corpus}: {samples} {what}, source files used {sum(used.values())} times: "
                        + ", ".join(f"{n} {p}" for p, n in sorted(used.items())))
    wrong = {p: n for p, n in used.items() if p != expected}
    if wrong:
        report.faults.append(f"{corpus} ({'recordings' if recordings else 'mixtures'}) should draw on the "
                             f"{expected} part only, but uses " + ", ".join(f"{n} {p}" for p, n in wrong.items()))


def _part_of(path: str, split_dir: Path, source: Path, rels: dict) -> str:
    """"labelled", "unlabelled" or "outside the split" for a source path of a sample: a path in
    one of the trees, in the source folder, or (a recordings segment's) relative to a tree."""
    p = Path(path)
    for part in PARTS:
        for root in (split_dir / part, source):
            try:
                rel = p.relative_to(root).as_posix() if p.is_absolute() else p.as_posix()
            except ValueError:
                continue
            if rel in rels[part]:
                return part
    return "outside the split"
