"""Every CLI error path is one line naming the field or file (issue: misleading messages)."""
import json
import re

import pytest

from hubbub.cli import main
from hubbub.testing import make_corpus_from_samples, make_dummy_run, make_dummy_sample


def _one_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hubbub:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("text, expected", [
    ("room:\n  rt60_s: [0.2, 0.3\n", r"bad\.yaml, line 3, column 1: expected ',' or ']'"),
    ('room: !!python/object/apply:os.system ["touch pwned"]\n',
     r"bad\.yaml, line 1, column 7: the tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed"),
    ("- a list\n", r"bad\.yaml must hold a mapping at the top level"),
])
def test_a_broken_recipe_file_is_one_line_naming_file_and_line(tmp_path, capsys, monkeypatch, text, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    assert main(["simulate", "--recipe", "bad.yaml", "--num", "2", "--out", "c", "--workers", "0"]) == 2
    assert re.search(expected, _one_line(capsys))
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "c").exists()


def test_training_arguments_that_cannot_work_are_one_line(tmp_path, capsys, monkeypatch):
    from hubbub.testing import make_dummy_corpus

    corpus = make_dummy_corpus(tmp_path / "corpus", splits={"train": 4, "valid": 2}, seconds=0.5)
    monkeypatch.chdir(tmp_path)
    base = ["finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--set", "steps=1"]
    assert main([*base, "--out", "r1", "--set", "model.kwargs.nosuch=3"]) == 2
    assert _one_line(capsys).startswith("hubbub: bad recipe/config: model.kwargs: convtasnet takes no argument "
                                        "'nosuch' (it takes: num_filters, ")
    (tmp_path / "runs").mkdir()  # a mistyped local run is a missing folder, never a Hub lookup
    assert main([*base, "--out", "r2", "--init", "runs/mixit"]) == 2
    assert _one_line(capsys) == "hubbub: runs/mixit: no such model directory"
    (tmp_path / "notes.txt").write_text("mine")
    assert main([*base, "--out", "notes.txt"]) == 2
    assert _one_line(capsys) == "hubbub: notes.txt is a file, not a run folder: choose another --out"
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert main([*base, "--out", "r3", "--set", "data.crop_s=inf"]) == 2
    assert _one_line(capsys) == "hubbub: bad recipe/config: data.crop_s: must be a finite number, got inf"


def test_evaluate_refuses_a_bad_count_and_reports_a_sample_whose_json_lies(tmp_path, capsys):
    samples = [make_dummy_sample("test", i) for i in range(3)]
    meta = json.loads(samples[1]["json"])
    meta["num_speakers"] = 3  # its members hold two
    samples[1]["json"] = json.dumps(meta).encode()
    corpus = make_corpus_from_samples(tmp_path / "liar", samples)
    run = make_dummy_run(tmp_path / "run", corpus)
    assert main(["evaluate", str(run), "--shards", str(corpus), "--max-samples", "-1"]) == 2
    assert _one_line(capsys) == "hubbub: max_samples must be at least 1, got -1"
    assert main(["evaluate", str(run), "--shards", str(corpus), "--json", "--max-samples", "3"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["overall"]["count"] == 2
    assert [s["key"] for s in results["skipped"]] == ["test_00000001"]
    assert "its JSON says 3 speakers: the JSON and the members disagree" in results["skipped"][0]["reason"]


def test_simulate_never_adds_to_a_corpus_it_cannot_identify(tmp_path, capsys):
    from hubbub.testing import make_dummy_corpus

    theirs = make_dummy_corpus(tmp_path / "theirs", splits={"train": 4}, seconds=0.5)  # no recipe.json
    before = {p.name: p.read_bytes() for p in theirs.iterdir()}
    assert main(["simulate", "--recipe", "debug", "--num", "2", "--out", str(theirs), "--workers", "0"]) == 2
    assert _one_line(capsys) == (f"hubbub: {theirs} holds a corpus without recipe.json (index.json, train-000000.tar)"
                                 ", made by something else: use another output folder")
    assert {p.name: p.read_bytes() for p in theirs.iterdir() if p.name != ".hubbub.lock"} == before


def test_no_usable_speech_says_why_without_pointing_at_a_report_it_did_not_write(tmp_path, capsys):
    (tmp_path / "speech" / "103" / "1240").mkdir(parents=True)  # LibriSpeech names, no audio inside
    (tmp_path / "speech" / "103" / "1240" / "103-1240-0000.wav").write_bytes(b"RIFF not really a wave file")
    (tmp_path / "speech" / "103" / "1240" / "103-1240-0001.flac").write_bytes(b"")
    out = tmp_path / "c"
    assert main(["simulate", "--recipe", "debug", "--num", "2", "--out", str(out), "--workers", "0",
                 "--set", f"speech.corpus={tmp_path / 'speech'}"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"hubbub: no usable speech in {tmp_path / 'speech'}: ") and "files skipped (" in line
    assert "report.json" not in line


def test_a_damaged_sidecar_is_named(tmp_path):
    from hubbub.shards.reader import ShardDataset
    from hubbub.storage import StorageError
    from hubbub.testing import make_dummy_corpus

    corpus = make_dummy_corpus(tmp_path / "c", splits={"train": 4}, seconds=0.5)
    (corpus / "train.members.npz").unlink()  # format 1: the keys come from the sidecars
    (corpus / "train-000000.json").write_text("{bad")
    with pytest.raises(StorageError, match=r"train-000000\.json is not valid JSON"):
        ShardDataset(corpus, "train")
