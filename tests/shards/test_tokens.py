import json
import os
import shutil
import tarfile

import numpy as np
import pytest
import torch

import hubbub.shards.tokens as tokens
from hubbub.codec import load_codec, token_span
from hubbub.shards.format import decode_audio, decode_npy, encode_npy
from hubbub.shards.reader import ShardDataset, ShardLoader
from hubbub.shards.stats import corpus_stats
from hubbub.shards.tokens import CodecMismatchError, add_codec_tokens, token_record_path
from hubbub.shards.verify import verify_corpus
from hubbub.shards.writer import (ShardWriter, atomic_write_json, load_index, read_sidecar, sha256_file,
                                  sidecar_path, write_sidecar)
from hubbub.testing import make_dummy_corpus, make_random_codec

SAMPLE_RATE_HZ, SECONDS = 8000, 0.5
NUM_SAMPLES = int(SAMPLE_RATE_HZ * SECONDS)


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    return make_random_codec(tmp_path_factory.mktemp("codec") / "random-encodec")


@pytest.fixture(scope="module")
def codec(codec_dir):
    return load_codec(codec_dir, bandwidth_kbps=1.8)  # Q = 4, 75 frames/s


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    # 4 shards of 2 samples, 1 or 2 speakers, 2 mics: tokens come from channel 0.
    return make_dummy_corpus(tmp_path_factory.mktemp("pristine"), splits={"train": 6, "valid": 2},
                             samples_per_shard=2, num_speakers=[1, 2], num_mics=2, seconds=SECONDS,
                             sample_rate_hz=SAMPLE_RATE_HZ)


@pytest.fixture
def corpus(pristine, tmp_path):
    return shutil.copytree(pristine, tmp_path / "corpus")


@pytest.fixture(scope="module")
def reference(pristine, codec, tmp_path_factory):
    """The pristine corpus tokenised in one uninterrupted run (default batch size)."""
    out = shutil.copytree(pristine, tmp_path_factory.mktemp("reference") / "corpus")
    # One thread, as the tests run (conftest): the rounding of other thread counts can flip
    # near-tie frames of this random codec, and tests compare shards byte for byte.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        add_codec_tokens(out, codec)
    finally:
        torch.set_num_threads(threads)
    return out


def members_of(corpus_dir):
    """{(shard, member name): bytes} of every tar in the corpus."""
    out = {}
    for entry in load_index(corpus_dir)["shards"]:
        with tarfile.open(corpus_dir / entry["name"]) as tar:
            for info in tar:
                out[entry["name"], info.name] = tar.extractfile(info).read()
    return out


def shard_hashes(corpus_dir):
    return {e["name"]: sha256_file(corpus_dir / e["name"]) for e in load_index(corpus_dir)["shards"]}


def test_adds_tokens_and_keeps_every_other_member(corpus, codec):
    before = members_of(corpus)
    summary = add_codec_tokens(corpus, codec, batch_size=1)
    assert (summary["shards"], summary["processed"], summary["skipped"], summary["samples"]) == (4, 4, 0, 8)
    assert summary["source_target"] == "reverberant"
    after = members_of(corpus)
    added = {k: v for k, v in after.items() if k not in before}
    assert {k: after[k] for k in before} == before  # byte-identical
    assert all(name.endswith(".codec.npy") for _, name in added)

    index = load_index(corpus)
    assert index["codec"] == {**codec.info(), "source_target": "reverberant"}
    num_frames = codec.num_frames(NUM_SAMPLES, SAMPLE_RATE_HZ)
    for (shard, name), data in after.items():
        if not name.endswith(".json") or name.count(".") != 1:
            continue
        key, meta = name.split(".")[0], json.loads(data)
        expected = {f"{key}.mix.codec.npy"} | {f"{key}.s{i}.codec.npy" for i in range(meta["num_speakers"])}
        assert {n for s, n in added if s == shard and n.startswith(key + ".")} == expected
        for member, audio in [("mix", "mix.flac")] + [(f"s{i}", f"s{i}.reverberant.flac")
                                                      for i in range(meta["num_speakers"])]:
            codes = decode_npy(added[shard, f"{key}.{member}.codec.npy"])
            assert codes.dtype == np.int16 and codes.shape == (4, num_frames)
            wave, _ = decode_audio(after[shard, f"{key}.{audio}"])
            direct = codec.encode(torch.from_numpy(np.ascontiguousarray(wave[:1])), SAMPLE_RATE_HZ)[0]
            assert np.array_equal(codes, direct.numpy())  # reference mic, same batch size: same tokens
    for entry in index["shards"]:
        sidecar = read_sidecar(sidecar_path(corpus / entry["name"]))
        assert entry["sha256"] == sidecar.sha256 == sha256_file(corpus / entry["name"])
        record = json.loads(token_record_path(corpus / entry["name"]).read_text())
        assert record["sha256"] == entry["sha256"] and record["codec"] == codec.info()
    report = verify_corpus(corpus)
    assert report.ok, report.format()


def test_second_run_skips_every_shard(reference, codec):
    hashes = shard_hashes(reference)
    summary = add_codec_tokens(reference, codec)
    assert (summary["processed"], summary["skipped"]) == (0, 4)
    assert shard_hashes(reference) == hashes


def test_stats_ignore_tokens(pristine, reference):
    before, after = corpus_stats(pristine), corpus_stats(reference)
    assert before["splits"] == after["splits"]


def test_reader_returns_tokens_to_crop(reference, codec):
    crop_s = 0.25
    ds = ShardDataset(reference, "train", targets=("reverberant", "codec"), extras=("mix.codec.npy",),
                      crop_s=crop_s, shuffle=False, seed=3)
    num_frames = codec.num_frames(NUM_SAMPLES, SAMPLE_RATE_HZ)
    crop = round(crop_s * SAMPLE_RATE_HZ)
    for item in ds:
        mix_codes = item["extras"]["mix.codec.npy"]
        source_codes = item["sources"]["codec"]
        assert mix_codes.shape == (4, num_frames) and mix_codes.dtype == torch.int16
        assert source_codes.shape == (item["num_sources"], 4, num_frames)  # npy members come back whole
        assert item["sources"]["reverberant"].shape[-1] == crop
        first, count = token_span(item["start_sample"], crop, SAMPLE_RATE_HZ, codec.frame_rate_hz, num_frames)
        assert count == codec.num_frames(crop, SAMPLE_RATE_HZ)
        offset_s = first / codec.frame_rate_hz - item["start_sample"] / SAMPLE_RATE_HZ
        assert abs(offset_s) <= 0.5 / codec.frame_rate_hz  # the nearest frame
        assert mix_codes[:, first:first + count].shape == (4, count)
    loader = ShardLoader(ShardDataset(reference, "train", targets=("codec",), extras=("mix.codec.npy",),
                                      shuffle=False, batch_size=2))
    batch = next(iter(loader))
    assert batch["sources"]["codec"].shape == (2, 2, 4, num_frames)  # 1 and 2 speakers, padded
    assert batch["extras"]["mix.codec.npy"].shape == (2, 4, num_frames)


class Interrupt(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["writing", "before_rename", "before_sidecar"])
def test_interrupted_run_resumes_to_the_same_corpus(corpus, codec, reference, monkeypatch, where):
    """Fail while rewriting the 2nd shard: every shard stays whole, and a rerun finishes to exactly
    the shards of an uninterrupted run."""
    before = members_of(corpus)
    calls = {"n": 0}
    if where == "writing":
        class FailingWriter(ShardWriter):
            def write(self, members):
                calls["n"] += 1
                if calls["n"] == 3:  # the 2nd shard's first sample
                    raise Interrupt
                super().write(members)
        monkeypatch.setattr(tokens, "ShardWriter", FailingWriter)
    elif where == "before_rename":
        real_replace = os.replace

        def replace(src, dst):
            if str(src).endswith(".tar.tmp") and str(dst).endswith(".tar"):
                calls["n"] += 1
                if calls["n"] == 2:
                    raise Interrupt
            real_replace(src, dst)
        monkeypatch.setattr(tokens.os, "replace", replace)
    else:
        real_write_sidecar = tokens.write_sidecar

        def write_sidecar_once(record, out_dir, *args):
            calls["n"] += 1
            if calls["n"] == 2:
                raise Interrupt
            return real_write_sidecar(record, out_dir, *args)
        monkeypatch.setattr(tokens, "write_sidecar", write_sidecar_once)

    with pytest.raises(Interrupt):
        add_codec_tokens(corpus, codec)
    monkeypatch.undo()

    after = members_of(corpus)
    assert {k: after[k] for k in before} == before  # nothing lost, nothing changed
    assert not list(corpus.glob("*.tmp"))
    report = verify_corpus(corpus)
    if where == "before_sidecar":  # the renamed shard waits for its sidecar until the rerun
        assert {f.file for f in report.faults} == {"train-000001.tar"}, report.format()
    else:
        assert report.ok, report.format()
        assert "codec" not in load_index(corpus)  # not every shard has tokens yet

    summary = add_codec_tokens(corpus, codec)
    assert summary["skipped"] == (2 if where == "before_sidecar" else 1)
    assert summary["processed"] + summary["skipped"] == 4
    assert shard_hashes(corpus) == shard_hashes(reference)
    assert load_index(corpus) == load_index(reference)
    report = verify_corpus(corpus)
    assert report.ok, report.format()


def test_another_codec_raises_unless_overwrite(reference, codec_dir, tmp_path):
    corpus = shutil.copytree(reference, tmp_path / "corpus")
    hashes = shard_hashes(corpus)
    smaller = load_codec(codec_dir)  # 0.9 kbps: Q = 2
    with pytest.raises(CodecMismatchError, match="overwrite=True"):
        add_codec_tokens(corpus, smaller)
    with pytest.raises(CodecMismatchError):
        add_codec_tokens(corpus, load_codec(codec_dir, bandwidth_kbps=1.8), source_target="dry")
    assert shard_hashes(corpus) == hashes

    summary = add_codec_tokens(corpus, smaller, overwrite=True)
    assert summary["processed"] == 4
    assert load_index(corpus)["codec"]["num_codebooks"] == 2
    report = verify_corpus(corpus)
    assert report.ok, report.format()


def test_the_same_codec_elsewhere_is_the_same_codec(reference, codec_dir, tmp_path):
    moved = shutil.copytree(codec_dir, tmp_path / "moved")
    summary = add_codec_tokens(reference, load_codec(moved, bandwidth_kbps=1.8))
    assert summary["skipped"] == 4


def test_unrecorded_tokens_are_not_trusted(reference, codec, tmp_path):
    corpus = shutil.copytree(reference, tmp_path / "corpus")
    for record in corpus.glob("*.codec.json"):
        record.unlink()
    index = load_index(corpus)
    del index["codec"]
    atomic_write_json(corpus / "index.json", index)
    with pytest.raises(CodecMismatchError, match="no token record"):
        add_codec_tokens(corpus, codec)


def test_damaged_shard_is_left_alone(corpus, codec):
    with open(corpus / "train-000001.tar", "r+b") as f:
        f.seek(600)
        f.write(b"\xff")
    with pytest.raises(RuntimeError, match="matches neither its sidecar"):
        add_codec_tokens(corpus, codec)


def test_unlabelled_corpus_gets_mixture_tokens(codec, tmp_path):
    corpus = make_dummy_corpus(tmp_path / "unlabelled", splits={"train": 3}, samples_per_shard=2,
                               num_speakers=0, seconds=SECONDS, sample_rate_hz=SAMPLE_RATE_HZ)
    summary = add_codec_tokens(corpus, codec)
    assert summary["source_target"] is None
    added = {name.split(".", 1)[1] for (_, name) in members_of(corpus) if name.endswith(".codec.npy")}
    assert added == {"mix.codec.npy"}
    report = verify_corpus(corpus)
    assert report.ok, report.format()


def rewrite_sample(corpus_dir, shard, key, change):
    """Apply ``change(members)`` to one sample and re-record the shard, so only content checks see it."""
    samples = list(tokens._read_samples(corpus_dir / shard))
    for members in samples:
        if members["__key__"] == key:
            change(members)
    with ShardWriter(corpus_dir / shard) as w:
        for members in samples:
            w.write(members)
    record = read_sidecar(sidecar_path(corpus_dir / shard))
    write_sidecar(record, corpus_dir)
    index = load_index(corpus_dir)
    for entry in index["shards"]:
        if entry["name"] == shard:
            entry["size_bytes"], entry["sha256"] = record.size_bytes, record.sha256
    atomic_write_json(corpus_dir / "index.json", index)


def test_verify_checks_tokens(reference, tmp_path):
    corpus = shutil.copytree(reference, tmp_path / "corpus")
    codes = decode_npy(members_of(corpus)["train-000000.tar", "train_00000001.mix.codec.npy"])

    def damage(members):  # train_00000001 has 2 speakers
        members["mix.codec.npy"] = encode_npy(codes[:, :-1])  # one frame short
        members["s0.codec.npy"] = encode_npy(np.full_like(codes, 64))  # outside the codebook
        members["s1.codec.npy"] = encode_npy(codes.astype(np.float32))
    rewrite_sample(corpus, "train-000000.tar", "train_00000001", damage)
    rewrite_sample(corpus, "train-000000.tar", "train_00000000", lambda m: m.pop("s0.codec.npy"))
    report = verify_corpus(corpus)
    assert sorted(f"{f.key}: {f.message}" for f in report.faults) == [
        "train_00000000: member s0.codec.npy missing",
        "train_00000001: mix.codec.npy has shape (4, 37), expected (4, 38) (Q, frames) for 4000 samples "
        "at 75.0 frames/s",
        "train_00000001: s0.codec.npy has codes in [64, 64], outside [0, 64)",
        "train_00000001: s1.codec.npy is float32 of shape (4, 38), expected 2-D integer (Q, L) codes",
    ], report.format()
