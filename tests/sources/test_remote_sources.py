"""Speech corpora, noise folders and recordings folders given as URLs: an S3 server on 127.0.0.1
(moto in server mode, `s3_bucket` in conftest.py) holds copies of local folders, and every
result must be the local folder's, with paths that differ only by the prefix."""
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import fsspec
import numpy as np
import pytest
import soundfile as sf

from hubbub.shards.ingest import ingest_recordings
from hubbub.simulate import load_recipe, simulate
from hubbub.sources.noise import index_noise
from hubbub.sources.speech import index_speech
from hubbub.testing import S3RequestLog, dummy_speech, make_bad_files, make_speech_folder

TRANSCRIPT = "100-10-0000 HELLO FROM THE BUCKET\n"


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """A LibriSpeech-style folder with a transcript file and make_bad_files' bad files:
    (folder, {path relative to it: reason it must be skipped})."""
    root = make_speech_folder(tmp_path_factory.mktemp("local") / "speech", num_speakers=6, utterances_per_speaker=2)
    (root / "100" / "10" / "100-10.trans.txt").write_text(TRANSCRIPT)
    bad = make_bad_files(root)
    return root, {Path(p).relative_to(root).as_posix(): reason for p, reason in bad.items()}


def _upload(local: Path, url: str) -> str:
    fsspec.filesystem("s3").put(str(local), url.split("://", 1)[1], recursive=True)
    return url


def _relative(rows, prefix: str):
    """Rows (dicts) with the prefix (the folder or URL) taken off their ``path``."""
    out = []
    for row in rows:
        assert row["path"].startswith(prefix + "/"), row["path"]
        out.append({**row, "path": row["path"][len(prefix) + 1:]})
    return out


def _utterances(idx, prefix: str):
    return _relative([vars(u) for u in idx.utterances], prefix)


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def test_a_corpus_in_a_store_indexes_as_its_local_copy(speech, s3_bucket, tmp_path):
    local, bad = speech
    url = _upload(local, f"{s3_bucket}/speech")
    here = index_speech(local, cache_dir=tmp_path / "a")
    there = index_speech(url + "/", cache_dir=tmp_path / "b")  # a trailing slash names the same corpus
    assert there.corpus == here.corpus == "speech" and there.speakers == here.speakers
    assert _utterances(there, url) == _utterances(here, str(local)) and len(here.utterances) == 6 * 2 + 1
    assert there.utterances[0].path == f"{url}/100/10/100-10-0000.flac"
    assert there.utterances[0].transcript == "HELLO FROM THE BUCKET"
    assert ({s["path"]: s["reason"] for s in _relative(there.skipped, url)}
            == {s["path"]: s["reason"] for s in _relative(here.skipped, str(local))} == bad)


def test_a_rerun_reads_no_audio_and_a_changed_object_is_read_again(speech, s3_bucket, tmp_path):
    local, _ = speech
    url = _upload(local, f"{s3_bucket}/speech")
    audio = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.suffix in (".flac", ".wav")}
    with S3RequestLog() as first:
        before = index_speech(url, cache_dir=tmp_path)
    read = Counter(e["url"].split("?")[0].split("/speech/", 1)[1] for e in first.gets("/speech/"))
    assert read == Counter({rel: 1 for rel in audio} | {"100/10/100-10.trans.txt": 1})  # each file once, whole
    listings = [e for e in first.gets() if "list-type" in e["url"]]
    # One listing of the whole tree (and s3fs's one-key listings that tell a folder from a file),
    # where a walk would list each of its 15 folders.
    assert 1 <= len(listings) <= 3

    with S3RequestLog() as second:
        again = index_speech(url, cache_dir=tmp_path)
    assert not [e for e in second.gets() if e["url"].split("?")[0].endswith((".flac", ".wav"))]
    assert again == before

    changed = "101/11/101-11-0001.flac"
    sf.write(tmp_path / "changed.flac", dummy_speech(np.random.default_rng(5), 3.0), 16000)
    fsspec.filesystem("s3").put_file(str(tmp_path / "changed.flac"), f"{url}/{changed}".split("://", 1)[1])
    with S3RequestLog() as third:
        after = index_speech(url, cache_dir=tmp_path)
    assert [e["url"].split("?")[0].rsplit("/", 1)[1] for e in third.gets() if ".flac" in e["url"]] == [
        changed.rsplit("/", 1)[1]]
    assert next(u.duration_s for u in after.utterances if u.path.endswith(changed)) == pytest.approx(3.0)


def test_a_manifest_in_a_store_names_its_files_relative_to_it(speech, s3_bucket, tmp_path):
    local, _ = speech
    folder = tmp_path / "voices"
    rows = []
    for i, p in enumerate(sorted(local.glob("10[0-3]/*/*.flac"))):
        rel = f"audio/{i}.flac"
        (folder / "audio").mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(p.read_bytes())
        rows.append({"path": f"./{rel}" if i % 2 else rel, "speaker": p.name.split("-")[0], "licence": "CC0",
                     "mood": "calm"})
    rows.append({"path": "audio/missing.flac", "speaker": "x"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    url = _upload(folder, f"{s3_bucket}/voices")
    here, there = index_speech(folder, cache_dir=tmp_path / "a"), index_speech(url, cache_dir=tmp_path / "b")
    assert _utterances(there, url) == _utterances(here, str(folder)) and len(here.utterances) == 8
    assert there.utterances[0].path == f"{url}/audio/0.flac" and there.utterances[0].extra == {"mood": "calm"}
    assert [s["reason"] for s in there.skipped] == [s["reason"] for s in here.skipped] == ["bad-manifest-line",
                                                                                          "missing"]
    assert index_speech(f"{url}/manifest.jsonl", cache_dir=tmp_path / "b").utterances == there.utterances


def test_a_noise_folder_in_a_store_indexes_as_its_local_copy(s3_bucket, tmp_path):
    local = tmp_path / "noise"
    rng = np.random.default_rng(0)
    for name in ("cafe/a.wav", "street/b.flac", "street/c.wav"):
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(local / name, dummy_speech(rng, 2.0), 16000)
    bad = {Path(p).relative_to(local).as_posix(): r for p, r in make_bad_files(local).items()}
    url = _upload(local, f"{s3_bucket}/noise")
    here, skipped_here = index_noise(local, cache_dir=tmp_path / "a")
    there, skipped_there = index_noise(url, cache_dir=tmp_path / "b")
    assert _relative([vars(f) for f in there], url) == _relative([vars(f) for f in here], str(local))
    assert len(here) == 4 and there[0].path == f"{url}/999/1/999-1-0005.wav"
    assert ({s["path"]: s["reason"] for s in _relative(skipped_there, url)}
            == {s["path"]: s["reason"] for s in _relative(skipped_here, str(local))} == bad)
    with S3RequestLog() as log:
        assert index_noise(url, cache_dir=tmp_path / "b") == (there, skipped_there)
    assert not [e for e in log.gets() if e["url"].split("?")[0].endswith((".flac", ".wav"))]


def test_simulate_from_a_corpus_in_a_store_gives_the_local_mixtures(speech, s3_bucket, tmp_path):
    """The same mixtures, sample for sample and byte for byte; only the source paths recorded in
    each sample's JSON name the store instead of the folder."""
    local, _ = speech
    url = _upload(local, f"{s3_bucket}/speech")
    for name, corpus in (("local", local), ("store", url)):
        simulate(load_recipe("debug", [f"speech.corpus={corpus}", "samples_per_shard=4"]), num=8,
                 out_dir=tmp_path / name, seed=0, workers=0, progress=False)
    here = {p.name: _tar_members(p) for p in sorted((tmp_path / "local").glob("*.tar"))}
    there = {p.name: _tar_members(p) for p in sorted((tmp_path / "store").glob("*.tar"))}
    assert sorted(here) == sorted(there) and len(here) == 4  # train 4+1, valid 1, test 1
    for shard, members in here.items():
        assert sorted(members) == sorted(there[shard])
        for name, data in members.items():
            if name.endswith(".json"):
                data = data.replace(str(local).encode(), url.encode())
            assert there[shard][name] == data, (shard, name)
    a, b = (json.loads((tmp_path / n / "index.json").read_text()) for n in ("local", "store"))
    assert a["sources_hash"] == b["sources_hash"] and a["recipe_hash"] == b["recipe_hash"]


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("local") / "meetings"
    rng = np.random.default_rng(2)
    for rel, seconds, rate, channels in (("day1/a.wav", 5.5, 16000, 1), ("day1/b.flac", 3.0, 22050, 2),
                                         ("day2/c.wav", 4.0, 44100, 1), ("day2/d.wav", 2.5, 8000, 1)):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(folder / rel, np.stack([dummy_speech(rng, seconds, rate) for _ in range(channels)], 1), rate)
    make_bad_files(folder / "bad")
    return folder


SETTINGS = dict(segment_s=2.0, splits={"train": 0.6, "valid": 0.4}, samples_per_shard=2)


def _corpus_files(d: Path) -> dict[str, bytes]:
    """Shards and sidecars; report.json names the folder, recipe.json/index.json are checked apart."""
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name[0] != "." and "-0" in p.name}


def test_ingesting_recordings_from_a_store_writes_the_local_corpus(recordings, s3_bucket, tmp_path):
    url = _upload(recordings, f"{s3_bucket}/meetings")
    here = ingest_recordings(recordings, tmp_path / "here", **SETTINGS)
    there = ingest_recordings(url, tmp_path / "there", **SETTINGS)
    files = _corpus_files(tmp_path / "here")
    assert files == _corpus_files(tmp_path / "there") and any(n.endswith(".tar") for n in files)
    assert ((tmp_path / "here" / "recipe.json").read_bytes() == (tmp_path / "there" / "recipe.json").read_bytes())
    # (libsndfile's details name what it read: the file, or the bytes fetched from the store)
    assert [(s["path"], s["reason"]) for s in here.skipped_files] == [
        (s["path"], s["reason"]) for s in there.skipped_files] and len(here.skipped_files) == 5
    assert here.index["data_card"] == there.index["data_card"]

    # Into the store too, and a rerun keeps every shard: headers read, nothing decoded again.
    out = f"{s3_bucket}/corpus"
    ingest_recordings(url, out, **SETTINGS)
    s3 = fsspec.filesystem("s3")
    stored = {p.rsplit("/", 1)[1]: s3.cat_file(p) for p in s3.find(out.split("://", 1)[1])}
    assert {n: stored[n] for n in files} == files
    again = ingest_recordings(url, out, **SETTINGS)
    assert (again.written, again.skipped_complete) == (0, len([n for n in files if n.endswith(".tar")]))


def test_mixit_recordings_may_be_a_url(recordings, s3_bucket, tmp_path):
    from hubbub.pretrain.mixit import prepare_recordings
    from hubbub.train import load_train_config

    url = _upload(recordings, f"{s3_bucket}/meetings")
    cfg = prepare_recordings(load_train_config("mixit_debug", [f"mixit.recordings={url}"]), tmp_path / "run")
    assert cfg.data.shards == str(tmp_path / "run" / "recordings")
    local = ingest_recordings(recordings, tmp_path / "local", segment_s=cfg.mixit.segment_s,
                              sample_rate_hz=cfg.mixit.sample_rate_hz, seed=cfg.seed,
                              splits={cfg.data.train_split: 0.95, cfg.data.valid_split: 0.05})
    assert _corpus_files(tmp_path / "run" / "recordings") == _corpus_files(Path(local.out_dir))


@pytest.mark.parametrize("call", [index_speech, index_noise, lambda url: ingest_recordings(url, "unused")])
def test_a_url_with_nothing_under_it_is_a_missing_folder(s3_bucket, call):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        call(f"{s3_bucket}/nothing-here")
