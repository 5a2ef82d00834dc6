"""Lip streams stored compressed (``s{k}.lips.npy.zst``): lossless, read and verified as the raw
``s{k}.lips.npy`` members of corpora written before are, a damaged member a fault of verify."""
import tarfile

import numpy as np
import pytest
import torch

from hubbub.cli import main
from hubbub.schema import member_name
from hubbub.shards.format import array_member, decode_array, decode_sample, encode_npy, encode_npy_zst
from hubbub.shards.reader import ShardDataset
from hubbub.shards.verify import verify_corpus
from hubbub.simulate import load_recipe, simulate
from hubbub.simulate.sample import render
from hubbub.testing import make_av_folder, make_corpus_from_samples, make_dummy_sample
from hubbub.sources.mouths import mouth_shapes, render_lips
from hubbub.video import load_roi

FRAMES = 75  # 3 s at 25 fps


@pytest.fixture(scope="module")
def lrs(tmp_path_factory):
    return make_av_folder(tmp_path_factory.mktemp("lrs"), num_speakers=3, utterances_per_speaker=2, seconds=3.0)


@pytest.fixture(scope="module")
def av_corpus(tmp_path_factory, lrs):
    """An AV corpus written now: 3 s two-speaker mixtures whose lips come from ROI files."""
    r = load_recipe("av_debug", [f"speech.corpus={lrs}", "splits={train: 1.0}", "duration.fixed_s=3.0",
                                 "samples_per_shard=2"])
    out = tmp_path_factory.mktemp("av") / "corpus"
    simulate(r, num=4, out_dir=out, workers=0, progress=False)
    return out


def raw_samples(corpus):
    """Every sample of the corpus as member name -> bytes (with ``__key__``), in order."""
    samples = {}
    for path in sorted(corpus.glob("*.tar")):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                key, _, name = m.name.partition(".")
                samples.setdefault(key, {"__key__": key})[name] = tar.extractfile(m).read()
    return list(samples.values())


def as_npy(sample):
    """The sample as a corpus written before lips were compressed stores it."""
    out = {}
    for name, data in sample.items():
        if name.endswith(".lips.npy.zst"):
            out[name[:-len(".zst")]] = encode_npy(decode_array(name, data))
        else:
            out[name] = data
    return out


def read(corpus, **kwargs):
    return list(ShardDataset(corpus, "train", targets=("dry", "lips"), shuffle=False, **kwargs))


STREAMS = {
    "uniform noise": lambda: np.random.default_rng(0).integers(0, 256, (FRAMES, 96, 96), dtype=np.uint8),
    "constant": lambda: np.full((FRAMES, 96, 96), 255, np.uint8),
    "one frame": lambda: np.random.default_rng(1).integers(0, 256, (1, 96, 96), dtype=np.uint8),
    "no frames": lambda: np.zeros((0, 96, 96), np.uint8),
    "rendered mouth": lambda: render_lips(mouth_shapes([["aa", 0.2, 1.0], ["m", 1.0, 1.4], ["iy", 1.4, 2.5]], "cmu",
                                                       FRAMES), "spk1", seed=3),
}


@pytest.mark.parametrize("make", STREAMS.values(), ids=STREAMS.keys())
def test_lip_streams_round_trip_exactly(make):
    frames = make()
    out = decode_array(member_name("lips", 0), encode_npy_zst(frames))
    assert out.dtype == np.uint8 and out.shape == frames.shape
    np.testing.assert_array_equal(out, frames)


def test_roi_file_streams_round_trip_exactly_at_about_half_the_bytes(lrs):
    rois = [load_roi(p) for p in sorted(lrs.rglob("*.npy"))]
    assert len(rois) == 6
    for frames in rois:
        data = encode_npy_zst(frames)
        np.testing.assert_array_equal(decode_array("s0.lips.npy.zst", data), frames)
        assert len(data) < 0.6 * frames.nbytes


def test_an_av_corpus_written_now_stores_compressed_lips_verifies_and_reads_as_the_raw_frames(av_corpus):
    samples = raw_samples(av_corpus)
    lips = sorted(n for s in samples for n in s if ".lips." in n)
    assert lips == sorted(member_name("lips", k) for _ in samples for k in range(2))
    for s in samples:  # about half the raw frames' bytes (the rendered sensor noise bounds the ratio)
        assert all(len(s[member_name("lips", k)]) < 0.6 * FRAMES * 96 * 96 for k in range(2))
    report = verify_corpus(av_corpus)
    assert report.ok, report.format()
    items = read(av_corpus, roi_crop=None)
    assert len(items) == 4
    for item in items:
        raw_frames = np.stack(render(item["meta"]).lips)   # re-rendered from the ROI files
        assert raw_frames.shape == (2, FRAMES, 96, 96)
        assert torch.equal(item["sources"]["lips"], torch.from_numpy(raw_frames))


@pytest.mark.parametrize("old_samples", ["all", "every other"])
def test_an_old_npy_corpus_reads_and_verifies_as_before(av_corpus, tmp_path, old_samples):
    """Raw .npy lips throughout (a corpus written before), or in every other sample (one such corpus
    resumed now: the run's identity does not change, see the next test)."""
    samples = [as_npy(s) if old_samples == "all" or i % 2 else s for i, s in enumerate(raw_samples(av_corpus))]
    old = make_corpus_from_samples(tmp_path / "old", samples)
    assert {n for s in raw_samples(old) for n in s if n.endswith(".lips.npy")} == {"s0.lips.npy", "s1.lips.npy"}
    report = verify_corpus(old)
    assert report.ok, report.format()
    for kwargs in ({"roi_crop": None}, {"crop_s": 1.0, "roi_crop": "random", "seed": 5}):
        for a, b in zip(read(old, **kwargs), read(av_corpus, **kwargs), strict=True):
            assert a["key"] == b["key"] and a["start_sample"] == b["start_sample"]
            assert torch.equal(a["sources"]["lips"], b["sources"]["lips"])
            assert torch.equal(a["sources"]["dry"], b["sources"]["dry"])
    for s in raw_samples(old):  # and the generic decoder takes either name
        name = array_member(s, "s1.lips")
        np.testing.assert_array_equal(decode_sample(s)["sources"]["lips"][1], decode_array(name, s[name]))


def test_the_lip_member_encoding_is_storage_not_content():
    """Decoded frames are the same in either encoding, so the encoding is no part of the recipe's
    content hash: the AV presets keep the hashes their corpora with raw .npy lips were written with."""
    assert {n: load_recipe(n).content_hash() for n in ("av", "av_debug")} == {"av": "2bb240024cfd162b",
                                                                            "av_debug": "fdabf4525b0448c6"}


DAMAGES = {
    "a flipped bit": lambda d: d[:len(d) // 2] + bytes([d[len(d) // 2] ^ 0x10]) + d[len(d) // 2 + 1:],
    "a flipped checksum bit": lambda d: d[:-1] + bytes([d[-1] ^ 1]),
    "truncated": lambda d: d[:len(d) // 2],
    "trailing bytes": lambda d: d + b"\0" * 16,
    "raw npy under the zst name": lambda d: encode_npy(decode_array("s0.lips.npy.zst", d)),
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_compressed_lips_member_is_a_fault_not_a_traceback(tmp_path, capsys, damage):
    sample = make_dummy_sample("train", 0, num_speakers=2, seconds=1.0, sample_rate_hz=16000, lips=True)
    sample["s0.lips.npy.zst"] = damage(sample["s0.lips.npy.zst"])
    corpus = make_corpus_from_samples(tmp_path / "c", [sample])
    faults = [f.message for f in verify_corpus(corpus).faults]
    assert len(faults) == 1 and faults[0].startswith("s0.lips.npy.zst does not decode: ZstdError"), faults
    assert main(["shards", "verify", str(corpus)]) == 1
    assert "s0.lips.npy.zst does not decode" in capsys.readouterr().out


def test_a_stream_stored_in_both_encodings_is_a_fault(tmp_path):
    sample = make_dummy_sample("train", 0, num_speakers=2, seconds=1.0, sample_rate_hz=16000, lips=True)
    sample["s1.lips.npy"] = as_npy(sample)["s1.lips.npy"]
    faults = [f.message for f in verify_corpus(make_corpus_from_samples(tmp_path, [sample])).faults]
    assert faults == ["lips of source 1 stored twice: s1.lips.npy.zst, s1.lips.npy"]


def test_hf_datasets_rows_hold_the_lips_of_either_encoding(av_corpus, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from hubbub.shards.hf import load_hf_dataset

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    old = make_corpus_from_samples(tmp_path / "old", [as_npy(s) for s in raw_samples(av_corpus)])
    expected = {item["key"]: item["sources"]["lips"].numpy() for item in read(av_corpus, roi_crop=None)}
    for corpus, ext in ((av_corpus, "npy.zst"), (old, "npy")):
        ds = load_hf_dataset(corpus, "train", streaming=True)
        rows = list(ds)
        assert sorted(r["__key__"] for r in rows) == sorted(expected)
        for row in rows:
            for k in range(2):
                np.testing.assert_array_equal(np.asarray(row[f"s{k}.lips.{ext}"], dtype=np.uint8),
                                              expected[row["__key__"]][k])
