"""Real recordings split by files into a labelled test corpus and unlabelled recordings
(hubbub.sources.real), on a small fake folder named as Debian's fillets-ng-data-nl is: no package needed."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hubbub.cli import main
from hubbub.shards.ingest import ingest_recordings
from hubbub.shards.verify import verify_corpus
from hubbub.simulate import load_recipe, simulate
from hubbub.sources.real import PRESETS, assign_parts, check_split, load_split, split_real
from hubbub.testing import dummy_speech

RATE_HZ = 22050
LEVELS = ("airplane", "alibaba", "barrel", "cabin1", "duckie", "electromagnet")


def _ogg(path: Path, x: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.stack([x, x], axis=1), RATE_HZ, format="OGG", subtype="VORBIS")  # stereo, as the game's


def make_fillets_folder(root: Path) -> Path:
    """``root/sound/<level>/nl/<code>-<m|v>-<word>.ogg`` (two fish, three lines each), lines named
    the game's other ways (``m-<word>``, ``<word>-v``, ``<code>_v_<word>``), and what the real folder
    also holds and the rule must leave out: a line named without its speaker, English files, a sound
    effect, and a silent and a too-short line."""
    rng = np.random.default_rng(0)
    sound = root / "sound"
    for level in LEVELS:
        code = level[:3]
        for speaker in ("m", "v"):
            for word in ("oko", "vrak", "divna"):
                _ogg(sound / level / "nl" / f"{code}-{speaker}-{word}.ogg",
                     dummy_speech(rng, rng.uniform(1.3, 2.0), RATE_HZ))
    for name in ("m-bude", "agenti-v", "bar_v_fotka"):
        _ogg(sound / LEVELS[0] / "nl" / f"{name}.ogg", dummy_speech(rng, 1.5, RATE_HZ))
    _ogg(sound / "electromagnet" / "nl" / "rand-0-1.ogg", dummy_speech(rng, 1.5, RATE_HZ))
    _ogg(sound / "airplane" / "en" / "let-x-end.ogg", dummy_speech(rng, 1.5, RATE_HZ))
    _ogg(sound / "share" / "sp-bubles_00.ogg", dummy_speech(rng, 1.5, RATE_HZ))
    _ogg(sound / "alibaba" / "nl" / "kni-m-ticho.ogg", np.zeros(RATE_HZ, np.float32))
    _ogg(sound / "barrel" / "nl" / "bar-v-hm.ogg", dummy_speech(rng, 0.4, RATE_HZ))
    return sound


@pytest.fixture(scope="module")
def fillets(tmp_path_factory):
    """Read only by the tests (each writes its outputs under its own tmp_path)."""
    return make_fillets_folder(tmp_path_factory.mktemp("fillets"))


def test_split_is_disjoint_by_level_and_deterministic(fillets, tmp_path):
    res = split_real(fillets, tmp_path / "a", layout="fillets", labelled_fraction=0.5, seed=3)
    again = split_real(fillets, tmp_path / "b", layout="fillets", labelled_fraction=0.5, seed=3)
    split = res.split
    assert again.split == split
    assert (tmp_path / "a" / "split.json").read_text() == (tmp_path / "b" / "split.json").read_text()

    parts = {p: {f["path"] for f in split["files"] if f["part"] == p} for p in ("labelled", "unlabelled")}
    assert parts["labelled"] and parts["unlabelled"] and not parts["labelled"] & parts["unlabelled"]
    assert len(split["files"]) == len(LEVELS) * 6 + 3
    speaker_of = {f["path"]: f["speaker"] for f in split["files"]}
    assert [speaker_of[f"airplane/nl/{n}.ogg"] for n in ("m-bude", "agenti-v", "bar_v_fotka")] == ["m", "v", "v"]
    # A level's lines are all on one side; the labelled side holds half the minutes, to within
    # half a level.
    minutes: dict = {}
    for f in split["files"]:
        assert f["group"] == f["path"].rsplit("/", 1)[0]
        minutes[f["group"]] = minutes.get(f["group"], 0) + f["duration_s"] / 60
    by_group = assign_parts(minutes, 0.5, seed=3)
    assert all(f["part"] == by_group[f["group"]] for f in split["files"])
    labelled = sum(m for g, m in minutes.items() if by_group[g] == "labelled")
    assert abs(labelled - sum(minutes.values()) / 2) <= max(minutes.values()) / 2
    assert split["summary"]["labelled"]["minutes"] == pytest.approx(labelled, abs=1e-3)
    assert {f["speaker"] for f in split["files"]} == {"m", "v"}
    assert set(split["summary"]["labelled"]["speakers"]) == {"m", "v"}

    # What the rule and the checks leave out, each with its reason.
    left = {f["path"]: f["reason"] for f in split["left_out"]}
    assert left == {"electromagnet/nl/rand-0-1.ogg": "no-speaker", "airplane/en/let-x-end.ogg": "no-speaker",
                    "share/sp-bubles_00.ogg": "no-speaker", "alibaba/nl/kni-m-ticho.ogg": "silent",
                    "barrel/nl/bar-v-hm.ogg": "too-short"}

    # The trees hold links to the files of their part only; the labelled manifest carries the licence.
    out = tmp_path / "a"
    for part in ("labelled", "unlabelled"):
        links = {p.relative_to(out / part).as_posix(): p for p in (out / part).rglob("*.ogg")}
        assert set(links) == parts[part]
        assert all(os.readlink(p) == str(fillets / rel) for rel, p in links.items())
    rows = [json.loads(line) for line in (out / "labelled" / "manifest.jsonl").read_text().splitlines()]
    assert {r["path"] for r in rows} == parts["labelled"]
    assert {r["licence"] for r in rows} == {PRESETS["fillets"].licence}
    assert check_split(out).ok

    # Another seed gives another split.
    assert split_real(fillets, tmp_path / "c", layout="fillets", seed=4).split["files"] != split["files"]


def test_assign_parts_cuts_the_minutes_at_the_fraction():
    minutes = {f"level{i}": 1.0 + (i % 5) for i in range(200)}
    total = sum(minutes.values())
    for fraction in (0.1, 0.5, 0.8):
        for seed in (0, 1):
            parts = assign_parts(minutes, fraction, seed)
            labelled = sum(m for g, m in minutes.items() if parts[g] == "labelled")
            assert abs(labelled - fraction * total) <= max(minutes.values()) / 2
    assert assign_parts(minutes, 0.5, 0) == assign_parts(dict(reversed(minutes.items())), 0.5, 0)
    assert assign_parts(minutes, 0.5, 0) != assign_parts(minutes, 0.5, 1)


def test_rerun_keeps_the_split_and_other_settings_are_refused(fillets, tmp_path):
    out = tmp_path / "split"
    assert split_real(fillets, out, layout="fillets").created
    stamp = (out / "split.json").stat().st_mtime_ns
    assert not split_real(fillets, out, layout="fillets").created
    assert (out / "split.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="holds another split"):
        split_real(fillets, out, layout="fillets", labelled_fraction=0.3)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        split_real(fillets, tmp_path / "busy", layout="fillets")
    with pytest.raises(ValueError, match="inside the recordings folder"):
        split_real(fillets, fillets / "out", layout="fillets")
    with pytest.raises(ValueError, match="speaker rule"):
        split_real(fillets, tmp_path / "x")
    with pytest.raises(ValueError, match=r"no \(\?P<speaker>"):
        split_real(fillets, tmp_path / "x", speaker_regex=r"nl/.*\.ogg$")
    # One speaker cannot make a mixture: refused before anything is written.
    with pytest.raises(ValueError, match="1 speaker"):
        split_real(fillets, tmp_path / "x", speaker_regex=r"nl/[a-z]+-(?P<speaker>m)-[^/]+\.ogg$")
    assert not (tmp_path / "x").exists()
    assert not list(tmp_path.glob(".x.partial-*"))


def test_a_plain_speaker_regex_splits_by_file(fillets, tmp_path):
    regex = r"(?:^|/)nl/[a-z0-9_]+-(?P<speaker>[mv])-[^/]+\.ogg$"
    split = split_real(fillets, tmp_path / "s", speaker_regex=regex, labelled_fraction=0.5, seed=1).split
    assert split["group"] == "file" and split["licence"] is None
    assert all(f["group"] == f["path"] for f in split["files"])
    # By file, a level's lines fall on both sides (with 6 levels of 6 lines, at least one does).
    levels = {}
    for f in split["files"]:
        levels.setdefault(f["path"].split("/")[0], set()).add(f["part"])
    assert any(len(p) == 2 for p in levels.values())


def test_labelled_part_mixes_by_the_recipe_and_unlabelled_part_ingests(fillets, tmp_path):
    out = tmp_path / "split"
    split_real(fillets, out, layout="fillets", labelled_fraction=0.5, seed=3)
    recipe = load_recipe("librimix", [f"speech.corpus={out / 'labelled'}", "splits={test: 1.0}",
                                      "samples_per_shard=3"])
    res = simulate(recipe, num=4, out_dir=tmp_path / "test-corpus", seed=0, workers=0, progress=False)
    assert res.index["splits"]["test"]["num_samples"] == 4 and not res.failed_samples
    assert verify_corpus(tmp_path / "test-corpus").ok
    card = res.index["data_card"]
    assert card["speakers_per_split"] == {"test": 2}
    assert card["licences"] == [PRESETS["fillets"].licence]

    rec = ingest_recordings(out / "unlabelled", tmp_path / "recordings", segment_s=1.0, progress=False)
    assert sum(s["num_samples"] for s in rec.index["splits"].values()) > 0
    assert verify_corpus(tmp_path / "recordings").ok

    check = check_split(out, [tmp_path / "test-corpus", tmp_path / "recordings"])
    assert check.ok, check.format()
    # A corpus drawn from the wrong part is a fault: the labelled files ingested as recordings.
    ingest_recordings(out / "labelled", tmp_path / "wrong", segment_s=1.0, progress=False)
    bad = check_split(out, [tmp_path / "wrong"])
    assert not bad.ok and "should draw on the unlabelled part only" in bad.format()


def test_check_finds_a_tampered_split(fillets, tmp_path):
    out = tmp_path / "split"
    split_real(fillets, out, layout="fillets", seed=3)
    split = load_split(out)
    moved = next(f for f in split["files"] if f["part"] == "unlabelled")
    os.symlink(fillets / moved["path"], out / "labelled" / Path(moved["path"]).name)
    assert "labelled/ differs from split.json" in check_split(out).format()


def test_cli_split_and_check(fillets, tmp_path, capsys):
    out = tmp_path / "split"
    assert main(["real", "split", str(fillets), "--out", str(out), "--layout", "fillets",
                 "--labelled-fraction", "0.5", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "labelled:" in printed and "unlabelled:" in printed and "1 silent" in printed
    assert main(["real", "check", str(out)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["real", "split", str(fillets), "--out", str(tmp_path / "y")]) == 2
    assert "speaker rule" in capsys.readouterr().err
