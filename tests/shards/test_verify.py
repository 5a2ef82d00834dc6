import json
import shutil

import numpy as np
import pytest

from hubbub.shards.format import decode_audio, encode_audio, encode_json, encode_npy, quantize
from hubbub.shards.verify import verify_corpus
from hubbub.testing import make_corpus_from_samples, make_dummy_corpus, make_dummy_sample


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return make_dummy_corpus(tmp_path_factory.mktemp("pristine"), splits={"train": 6, "valid": 2},
                             samples_per_shard=3, num_speakers=[1, 2, 3], num_mics=2, seconds=0.5)


@pytest.fixture
def corpus(pristine, tmp_path):
    """A private copy of the pristine corpus for a test to damage."""
    return shutil.copytree(pristine, tmp_path / "corpus")


def with_meta(members, **changes):
    meta = json.loads(members["json"])
    meta.update(changes)
    return {**members, "json": encode_json(meta)}


def faults_by_key(report):
    out = {}
    for f in report.faults:
        out.setdefault(f.key, []).append(f.message)
    return out


def test_dummy_corpus_verifies_clean(pristine):
    for check_audio in (True, False):
        report = verify_corpus(pristine, check_audio=check_audio)
        assert report.ok, report.format()
        assert (report.num_shards, report.num_samples, report.warnings) == (3, 8, [])
        assert "OK" in report.format()


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_byte_is_a_fault(corpus, where):
    tar = corpus / "train-000001.tar"
    data = bytearray(tar.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    tar.write_bytes(bytes(data))
    report = verify_corpus(corpus)
    assert not report.ok
    assert any(f.file == tar.name and "sha256" in f.message for f in report.faults)
    assert {f.file for f in report.faults} == {tar.name}


def test_truncated_shard_is_a_fault(corpus):
    tar = corpus / "train-000000.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    report = verify_corpus(corpus)
    messages = [f.message for f in report.faults if f.file == tar.name]
    assert any("size" in m for m in messages)
    assert any("unreadable tar" in m for m in messages)
    assert any("sidecar lists 3" in m for m in messages)  # the samples lost with the tail


def test_missing_shard_and_index_are_faults(corpus):
    (corpus / "valid-000000.tar").unlink()
    report = verify_corpus(corpus)
    assert [(f.file, f.message) for f in report.faults] == [
        ("valid-000000.tar", "shard missing (listed in index.json)")]
    (corpus / "index.json").unlink()
    report = verify_corpus(corpus)
    assert {f.file for f in report.faults} == {"index.json", "valid-000000.tar"}
    assert report.num_shards == 2  # the other shards are still checked against their sidecars


def test_a_directory_or_dangling_link_in_place_of_a_shard_is_reported_not_a_crash(corpus):
    (corpus / "valid-000000.tar").unlink()
    (corpus / "valid-000000.tar").mkdir()
    (corpus / "train-000001.tar").unlink()
    (corpus / "train-000001.tar").symlink_to(corpus / "gone.tar")
    report = verify_corpus(corpus)
    assert [(f.file, f.message) for f in report.faults] == [
        ("train-000001.tar", f"shard missing: a dangling symbolic link to {corpus / 'gone.tar'} (listed in index.json)"),
        ("valid-000000.tar", "shard missing: a directory in its place (listed in index.json)")]
    assert report.num_shards == 1


def test_stray_shard_unparseable_index_and_tmp_leftover(corpus):
    shutil.copy(corpus / "train-000000.tar", corpus / "train-000007.tar")
    report = verify_corpus(corpus)
    assert {(f.file, f.message.split(" (")[0]) for f in report.faults} >= {
        ("train-000007.tar", "not listed in index.json"), ("train-000007.json", "sidecar missing")}
    assert any("duplicate key" in f.message for f in report.faults)

    (corpus / "train-000007.tar").unlink()
    (corpus / "train-000001.tar.tmp").write_bytes(b"half a shard")
    report = verify_corpus(corpus)
    assert report.ok and [w.file for w in report.warnings] == ["train-000001.tar.tmp"]

    (corpus / "index.json").write_text("{not json")
    assert [f.file for f in verify_corpus(corpus).faults] == ["index.json"]


def test_every_bad_sample_is_reported(tmp_path):
    good = [make_dummy_sample("train", i, num_speakers=2, num_mics=2, seconds=0.25) for i in range(7)]
    mix, sr = decode_audio(good[1]["mix.flac"])
    rir_nan = np.full((2, 8), np.nan, dtype=np.float32)
    room_missing = json.loads(good[2]["json"])
    del room_missing["room"]
    bad = {
        "train_00000001": {**good[1], "mix.flac": encode_audio(quantize(mix * 0.5), sr)},
        "train_00000002": {**good[2], "json": encode_json(room_missing)},
        "train_00000003": {k: v for k, v in good[3].items() if k != "s1.reverberant.flac"},
        "train_00000004": {**good[4], "s0.rir.npy": encode_npy(rir_nan)},
        "train_00000005": with_meta(good[5], num_samples=123),
        "train_00000006": with_meta(good[6], num_speakers=1),  # yet it has s1.* members
    }
    make_corpus_from_samples(tmp_path, [bad.get(m["__key__"], m) for m in good])
    faults = faults_by_key(verify_corpus(tmp_path))
    assert "train_00000000" not in faults
    assert set(bad) <= set(faults)
    assert any("mix differs" in m for m in faults["train_00000001"])
    assert faults["train_00000002"] == ["json lacks room.rt60_s_target", "json lacks room.rt60_s_measured"]
    assert "target reverberant of source 1 missing" in faults["train_00000003"]
    assert faults["train_00000004"] == ["s0.rir.npy has non-finite values"]
    assert any("mix.flac has shape (2, 2000), expected (2, 123)" == m for m in faults["train_00000005"])
    assert any("s1.dry.flac for a mixture of 1 speaker(s)" in m for m in faults["train_00000006"])


def test_later_stage_members_verify_clean(tmp_path):
    samples = []
    for i in range(2):
        m = make_dummy_sample("train", i, num_speakers=2, seconds=0.25)
        for s in range(2):
            m[f"s{s}.lips.npy"] = encode_npy(np.zeros((6, 96, 96), dtype=np.uint8))
        m["mix.codec.npy"] = encode_npy(np.arange(40, dtype=np.int16).reshape(4, 10))
        samples.append(m)
    report = verify_corpus(make_corpus_from_samples(tmp_path, samples))
    assert report.ok, report.format()
