"""Two runs into one corpus at once: one of them is refused before it writes anything, the corpus
stays one corpus, and verify catches samples of another corpus that got in anyway."""
import json
import shutil
import subprocess
import sys

import pytest

from hubbub import storage
from hubbub.shards.verify import verify_corpus
from hubbub.simulate import load_recipe, simulate
from hubbub.testing import make_speech_folder


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return make_speech_folder(tmp_path_factory.mktemp("speech"), num_speakers=6, utterances_per_speaker=2,
                              seconds=2.0)


def _start(out, speech, seed: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hubbub.cli", "simulate", "--recipe", "debug", "--num", "12",
                             "--out", str(out), "--seed", str(seed), "--workers", "0", "--quiet",
                             "--set", f"speech.corpus={speech}", "--set", "samples_per_shard=3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_runs_at_once_one_is_refused_and_the_corpus_stays_one(tmp_path, speech, where, request):
    out = tmp_path / "corpus" if where == "local" else f"{request.getfixturevalue('s3_bucket')}/corpus"
    first, second = _start(out, speech, 0), _start(out, speech, 1)
    results = [(p.wait(timeout=300), p.stderr.read()) for p in (first, second)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    # refused while the other held the corpus, or after it finished (then as another corpus)
    assert "is in use by" in refused or "holds a corpus made with different" in refused
    assert len(refused.strip().splitlines()) == 1
    winner = 0 if results[0][0] == 0 else 1
    report = verify_corpus(out)
    assert report.ok, report.format()
    assert storage.read_json(storage.join(out, "index.json"))["seed"] == winner


def test_verify_finds_a_shard_of_another_corpus(tmp_path, speech):
    recipe = load_recipe("debug", [f"speech.corpus={speech}", "samples_per_shard=3"])
    simulate(recipe, num=12, out_dir=tmp_path / "a", seed=0, workers=0, progress=False)
    simulate(recipe, num=12, out_dir=tmp_path / "b", seed=1, workers=0, progress=False)
    for name in ("train-000001.tar", "train-000001.json"):  # as a mixed-up rerun would leave them
        shutil.copy(tmp_path / "b" / name, tmp_path / "a" / name)
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    side = json.loads((tmp_path / "a" / "train-000001.json").read_text())
    for entry in index["shards"]:
        if entry["name"] == "train-000001.tar":
            entry.update(size_bytes=side["size_bytes"], sha256=side["sha256"])
    (tmp_path / "a" / "index.json").write_text(json.dumps(index))
    report = verify_corpus(tmp_path / "a")
    assert not report.ok
    assert {f.file for f in report.faults} == {"train-000001.tar"}
    assert all("drawn with seed 1, the corpus with 0" in f.message or "recipe" in f.message
               for f in report.faults if "seed" in f.message)
    assert any("drawn with seed 1, the corpus with 0" in f.message for f in report.faults)
