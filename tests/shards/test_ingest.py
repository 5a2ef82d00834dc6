import json
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from webdataset.tariterators import group_by_keys, tar_file_expander

import hubbub.shards.ingest as ingest_module
from hubbub.audio import resample
from hubbub.shards.format import audio_member, decode_audio
from hubbub.shards.ingest import ingest_recordings
from hubbub.shards.reader import ShardDataset, ShardLoader
from hubbub.shards.stats import corpus_stats, format_stats
from hubbub.shards.verify import verify_corpus
from hubbub.testing import dummy_speech, make_bad_files, stale_temporary

FS = 16000
SETTINGS = dict(segment_s=2.0, min_segment_s=1.0, sample_rate_hz=FS, splits={"train": 0.7, "valid": 0.3},
                samples_per_shard=3)
# File -> planned segments as (offset_s, seconds): 2 s segments, a last piece kept from 1 s on.
EXPECTED = {
    "a/long.wav": [(0.0, 2.0), (2.0, 2.0), (4.0, 2.0), (6.0, 2.0), (8.0, 1.5)],  # 9.5 s at 16 kHz
    "a/tail_dropped.flac": [(0.0, 2.0), (2.0, 2.0)],                              # 4.5 s at 22.05 kHz
    "b/stereo.wav": [(0.0, 2.0), (2.0, 1.0)],                                     # 3 s at 44.1 kHz, 2 ch
    "b/gap.wav": [(0.0, 2.0), (4.0, 2.0)],                                        # 2-4 s are digital silence
    "c/narrowband.wav": [(0.0, 2.0)],                                             # 2.5 s at 8 kHz
    "c/exact.flac": [(0.0, 2.0), (2.0, 2.0)],                                     # 4 s at 16 kHz
    "bad/999/1/999-1-0005.wav": [(0.0, 2.0)],                 # make_bad_files' 44.1 kHz stereo, kept
}


def make_recordings(folder: Path) -> dict[str, str]:
    """Recordings of various lengths, rates and channel counts, plus make_bad_files' bad ones;
    returns {path relative to folder: reason} of the files that must be skipped."""
    rng = np.random.default_rng(0)

    def write(rel, seconds, rate, channels=1, subtype=None):
        x = np.stack([dummy_speech(rng, seconds, rate) for _ in range(channels)], axis=1)
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x, rate, subtype=subtype)
        return x

    write("a/long.wav", 9.5, 16000)
    write("a/tail_dropped.flac", 4.5, 22050)
    write("b/stereo.wav", 3.0, 44100, channels=2, subtype="FLOAT")
    gap = write("b/gap.wav", 6.0, 16000)
    gap[2 * 16000:4 * 16000] = 0
    sf.write(folder / "b/gap.wav", gap, 16000)
    write("c/narrowband.wav", 2.5, 8000)
    write("c/exact.flac", 4.0, 16000)
    (folder / "notes.txt").write_text("not audio, not looked at\n")
    bad = make_bad_files(folder / "bad")
    return {Path(p).relative_to(folder).as_posix(): reason for p, reason in bad.items()}


def read_corpus(corpus: Path) -> dict[str, list[dict]]:
    """Every sample of a corpus by split, read independently of hubbub's reader."""
    out = defaultdict(list)
    for path in sorted(corpus.glob("*.tar")):
        with open(path, "rb") as f:
            for raw in group_by_keys(tar_file_expander([{"url": str(path), "stream": f}])):
                meta = json.loads(raw["json"])
                mix = raw[audio_member(raw, "mix")]
                out[meta["split"]].append({"meta": meta, "mix": decode_audio(mix)[0],
                                           "shard": path.name,
                                           "members": sorted(k for k in raw if not k.startswith("__"))})
    return out


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recordings")
    return folder, make_recordings(folder)


@pytest.fixture(scope="module")
def corpus(recordings, tmp_path_factory):
    folder, _ = recordings
    out = tmp_path_factory.mktemp("ingested") / "corpus"
    return out, ingest_recordings(folder, out, **SETTINGS)


def test_segments_cut_in_order_with_the_expected_lengths(corpus, recordings):
    out, result = corpus
    by_file = defaultdict(list)
    for split, samples in read_corpus(out).items():
        for s in samples:
            m = s["meta"]
            assert s["members"] == ["json", "mix.flac"]
            assert (m["labelled"], m["num_speakers"], m["num_mics"]) == (False, 0, 1)
            assert m["targets"] == m["sources"] == []
            assert m["sample_rate_hz"] == FS and m["split"] == split
            assert m["num_samples"] == s["mix"].shape[-1] == round(m["duration_s"] * FS)
            by_file[m["source_file"]].append((m["offset_s"], m["duration_s"]))
    assert {f: sorted(v) for f, v in by_file.items()} == EXPECTED
    index = result.index
    assert index["recipe"] == {"kind": "recordings", "sample_rate_hz": FS, "segment_s": 2.0, "min_segment_s": 1.0,
                               "source": recordings[0].name}
    assert sum(s["num_samples"] for s in index["splits"].values()) == sum(map(len, EXPECTED.values()))
    card = index["data_card"]
    assert card["licence"] == "unknown (user recordings)" and card["files"] == len(EXPECTED)
    assert card["skipped_files"] == len(result.skipped_files)
    hours = sum(t for v in EXPECTED.values() for _, t in v) / 3600
    assert sum(card["hours_per_split"].values()) == pytest.approx(hours, abs=1e-4)


def test_multichannel_keeps_channel_0_resampled(corpus, recordings):
    out, _ = corpus
    folder, _ = recordings
    x, rate = sf.read(folder / "b/stereo.wav", dtype="float32", always_2d=True)
    expected = resample(np.ascontiguousarray(x[:, 0]), rate, FS)
    for s in (s for samples in read_corpus(out).values() for s in samples):
        if s["meta"]["source_file"] == "b/stereo.wav":
            start = s["meta"]["offset_samples"]
            assert s["meta"]["source_channels"] == 2 and s["meta"]["channel"] == 0
            np.testing.assert_allclose(s["mix"], expected[start:start + s["mix"].size], atol=2**-22)


def test_splits_are_per_file(corpus):
    out, _ = corpus
    splits_of = defaultdict(set)
    for split, samples in read_corpus(out).items():
        for s in samples:
            splits_of[s["meta"]["source_file"]].add(split)
            assert s["shard"].startswith(f"{split}-")
    assert all(len(v) == 1 for v in splits_of.values())
    assert {s for v in splits_of.values() for s in v} == {"train", "valid"}


def test_two_ingests_write_identical_shards(corpus, recordings, tmp_path):
    out, _ = corpus
    again = ingest_recordings(recordings[0], tmp_path / "again", **SETTINGS)
    names = sorted(p.name for p in out.glob("*-*.*"))
    assert names == sorted(p.name for p in again.out_dir.glob("*-*.*")) and names
    for name in names:
        assert (out / name).read_bytes() == (again.out_dir / name).read_bytes(), name


def test_bad_files_and_segments_are_reported_not_fatal(corpus, recordings):
    out, result = corpus
    _, bad = recordings
    assert {s["path"]: s["reason"] for s in result.skipped_files} == bad
    segments = [(s["path"], s["offset_s"], s["reason"]) for s in result.skipped_segments]
    assert segments == [("b/gap.wav", 2.0, "silent")]
    report = json.loads((out / "report.json").read_text())
    assert {s["path"]: s["reason"] for s in report["skipped_files"]} == bad
    assert report["summary"]["skipped_segments"] == 1 and report["summary"]["empty_splits"] == []


def test_verify_and_stats_pass(corpus):
    out, _ = corpus
    report = verify_corpus(out)
    assert report.ok, report.format()
    assert report.num_samples == sum(map(len, EXPECTED.values()))
    stats = corpus_stats(out)
    for split, s in stats["splits"].items():
        assert s["num_speakers"] == {"0": s["num_samples"]} and s["distinct_speakers"] == 0
        assert s["metrics"]["rt60_s_measured"]["count"] == s["metrics"]["sir_db"]["count"] == 0
        assert s["metrics"]["duration_s"]["count"] == s["num_samples"]
    assert "0 spk" in format_stats(stats)


def test_reader_yields_mixtures_without_sources(corpus):
    out, result = corpus
    loader = ShardLoader(ShardDataset(out, "train", targets=(), crop_s=1.0, batch_size=4))
    batches = list(loader)
    assert batches and len(batches) == len(loader)
    for b in batches:
        assert b["mix"].shape == (4, 1, FS)
        assert b["num_sources"].tolist() == [0] * 4 and b["source_mask"].shape == (4, 0) and b["sources"] == {}
    # A crop longer than the segments zero-pads the shorter ones at their end.
    for item in ShardDataset(out, "train", targets=(), crop_s=2.5, shuffle=False):
        n = item["meta"]["num_samples"]
        assert item["mix"].shape == (1, int(2.5 * FS)) and item["mix"][0, :n].abs().max() > 0
        assert not item["mix"][0, n:].any()


def test_rerun_resumes_and_decodes_only_what_is_missing(corpus, tmp_path, recordings, monkeypatch):
    original, _ = corpus
    out = shutil.copytree(original, tmp_path / "corpus")
    before = {p.name: p.read_bytes() for p in out.glob("*-*.*")}
    shards = sorted(p.name for p in out.glob("*.tar"))
    decoded = []
    stream = ingest_module._stream_channel
    monkeypatch.setattr(ingest_module, "_stream_channel",
                        lambda path, *a: decoded.append(path) or stream(path, *a))

    again = ingest_recordings(recordings[0], out, **SETTINGS)
    assert (again.written, again.skipped_complete, decoded) == (0, len(shards), [])
    assert again.skipped_files == corpus[1].skipped_files  # found again from the sidecars, not decoded

    (out / "train-000001.tar").unlink()
    (out / "train-000000.tar").write_bytes(b"truncated by a crash")
    stale_temporary(out / "valid-000000.tar")
    resumed = ingest_recordings(recordings[0], out, **SETTINGS)
    assert (resumed.written, resumed.skipped_complete) == (2, len(shards) - 2)
    rewritten = [json.loads((out / f"train-00000{i}.json").read_text()) for i in (0, 1)]
    touching = {e["source_file"] for side in rewritten for e in side["failed"]} | {
        s["meta"]["source_file"] for s in read_corpus(out)["train"] if s["meta"]["key"] in
        {k for side in rewritten for k in side["keys"]}}
    relative = [Path(p).relative_to(recordings[0].resolve()).as_posix() for p in decoded]
    assert sorted(relative) == sorted(touching)  # each once, and only those
    assert {p.name: p.read_bytes() for p in out.glob("*-*.*")} == before
    assert not list(out.glob("*.tmp")) and verify_corpus(out).ok


def test_rerun_with_other_settings_or_files_is_refused(corpus, tmp_path, recordings):
    original, _ = corpus
    out = shutil.copytree(original, tmp_path / "corpus")
    with pytest.raises(ValueError, match="different recipe_hash"):
        ingest_recordings(recordings[0], out, **{**SETTINGS, "segment_s": 3.0})
    with pytest.raises(ValueError, match="different seed"):
        ingest_recordings(recordings[0], out, **SETTINGS, seed=1)
    with pytest.raises(ValueError, match="different storage"):
        ingest_recordings(recordings[0], out, **SETTINGS, codec="wav", bits=16)
    folder = shutil.copytree(recordings[0], tmp_path / "more")
    sf.write(folder / "new.wav", dummy_speech(np.random.default_rng(5), 2.0), FS)
    with pytest.raises(ValueError, match="different recordings"):
        ingest_recordings(folder, out, **SETTINGS)


def test_nothing_written_without_usable_audio(tmp_path):
    folder = tmp_path / "recs"
    folder.mkdir()
    with pytest.raises(ValueError, match="no usable audio"):
        ingest_recordings(folder, tmp_path / "out0", **SETTINGS)
    (folder / "broken.wav").write_text("not audio")
    sf.write(folder / "blip.wav", dummy_speech(np.random.default_rng(0), 0.5), FS)
    with pytest.raises(ValueError, match="1 too-short, 1 unreadable"):
        ingest_recordings(folder, tmp_path / "out1", **SETTINGS)
    # Readable headers, unusable content: found only when decoding, still nothing left behind.
    sf.write(folder / "zeros.wav", np.zeros(3 * FS, np.float32), FS)
    sf.write(folder / "nan.wav", np.full(3 * FS, np.nan, np.float32), FS, subtype="FLOAT")
    with pytest.raises(ValueError, match="every segment"):
        ingest_recordings(folder, tmp_path / "out2", **SETTINGS)
    assert not any((tmp_path / f"out{i}").exists() for i in range(3))


def test_too_few_files_for_the_splits(tmp_path):
    folder = tmp_path / "recs"
    folder.mkdir()
    sf.write(folder / "only.wav", dummy_speech(np.random.default_rng(0), 3.0), FS)
    with pytest.raises(ValueError, match="1 usable recording.*2 splits"):
        ingest_recordings(folder, tmp_path / "out", **SETTINGS)
    assert not (tmp_path / "out").exists()
    result = ingest_recordings(folder, tmp_path / "out", **{**SETTINGS, "splits": {"train": 1.0, "valid": 0.0}})
    assert list(result.index["splits"]) == ["train"] and verify_corpus(result.out_dir).ok


def test_cli_ingest_verify_and_stats(tmp_path, capsys):
    from hubbub.cli import main
    from hubbub.testing import make_speech_folder

    folder = make_speech_folder(tmp_path / "rec", num_speakers=3, utterances_per_speaker=2)
    assert main(["shards", "ingest", str(folder), "--out", str(tmp_path / "corpus"), "--segment-s", "1.0",
                 "--quiet"]) == 0
    assert "shards written" in capsys.readouterr().out
    assert main(["shards", "verify", str(tmp_path / "corpus")]) == 0
    assert main(["shards", "stats", str(tmp_path / "corpus"), "--json"]) == 0


def test_wav_16_bit_storage_holds_the_same_segments(corpus, recordings, tmp_path):
    out, _ = corpus
    wav = ingest_recordings(recordings[0], tmp_path / "wav", **SETTINGS, codec="wav", bits=16).out_dir
    report = verify_corpus(wav)  # also checks each member's bit depth against the JSON
    assert report.ok, report.format()
    flac, pcm = read_corpus(out), read_corpus(wav)
    assert pcm.keys() == flac.keys()
    for split in flac:
        assert [s["meta"]["key"] for s in pcm[split]] == [s["meta"]["key"] for s in flac[split]]
        for a, b in zip(flac[split], pcm[split]):
            assert b["members"] == ["json", "mix.wav"] and b["meta"]["storage"] == {"codec": "wav", "bits": 16}
            np.testing.assert_allclose(b["mix"], a["mix"], atol=2 ** -15)   # within a 16-bit step
    with pytest.raises(ValueError, match="codec"):
        ingest_recordings(recordings[0], tmp_path / "bad", **SETTINGS, codec="mp3")
