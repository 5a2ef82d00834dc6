"""shards verify on audio-visual samples: lip streams present, uint8 (F, 96, 96), agreeing with the JSON."""
import io
import json

import numpy as np
import pytest

from hubbub.shards.format import encode_json, encode_npy
from hubbub.shards.verify import verify_corpus
from hubbub.testing import make_corpus_from_samples, make_dummy_sample


def av_sample(index=0, **changes):
    """A 1 s, 16 kHz, 2-speaker sample with lips (25 frames per source), members changed by ``changes``
    (``None`` removes one)."""
    members = make_dummy_sample("train", index, num_speakers=2, seconds=1.0, sample_rate_hz=16000, lips=True)
    for name, value in changes.items():
        name = name.replace("__", ".")
        if value is None:
            members.pop(name)
        else:
            members[name] = value
    return members


def with_lips_meta(members, source, lips):
    meta = json.loads(members["json"])
    if lips is None:
        meta["sources"][source].pop("lips")
    else:
        meta["sources"][source]["lips"] = lips
    return {**members, "json": encode_json(meta)}


def messages(tmp_path, samples, check_audio=True):
    report = verify_corpus(make_corpus_from_samples(tmp_path / "c", samples), check_audio=check_audio)
    return [f.message for f in report.faults]


def test_av_samples_verify_clean(tmp_path):
    sample = av_sample()
    assert np.load(io.BytesIO(sample["s1.lips.npy"])).shape == (25, 96, 96)
    assert messages(tmp_path, [av_sample(0), av_sample(1)]) == []
    # without lips the factory's samples are what they always were
    plain = make_dummy_sample("train", 0, num_speakers=2, seconds=1.0, sample_rate_hz=16000)
    assert {k: v for k, v in sample.items() if k != "json" and "lips" not in k} == \
           {k: v for k, v in plain.items() if k != "json"}


@pytest.mark.parametrize("frames, fault", [
    (np.zeros((24, 96, 96), np.uint8), "s0.lips.npy has shape (24, 96, 96), expected (25, 96, 96)"),
    (np.zeros((25, 88, 88), np.uint8), "s0.lips.npy has shape (25, 88, 88), expected (25, 96, 96)"),
    (np.zeros((25, 96, 96), np.float32), "s0.lips.npy is float32, expected uint8"),
])
def test_wrong_lip_streams_are_faults(tmp_path, frames, fault):
    found = messages(tmp_path, [av_sample(s0__lips__npy=encode_npy(frames))])
    assert any(m.startswith(fault) for m in found), found


def test_a_pickled_lip_stream_does_not_decode(tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.array([None] * 25, dtype=object), allow_pickle=True)
    found = messages(tmp_path, [av_sample(s1__lips__npy=buf.getvalue())])
    assert any(m.startswith("s1.lips.npy does not decode") for m in found), found


def test_missing_lips_and_their_metadata_are_faults_even_without_decoding(tmp_path):
    missing = av_sample(0, s1__lips__npy=None)
    no_meta = with_lips_meta(av_sample(1), 0, None)
    wrong_count = with_lips_meta(av_sample(2), 1, {"kind": "phonemes", "fps": 25, "num_frames": 26})
    for check_audio in (False, True):
        found = messages(tmp_path / str(check_audio), [missing, no_meta, wrong_count], check_audio=check_audio)
        assert "member s1.lips.npy missing" in found
        assert "sources[0] lacks lips.num_frames (the sample has target lips)" in found
        assert any(m.startswith("sources[1].lips.num_frames is 26, expected 25") for m in found), found
    found = messages(tmp_path / "decoded", [wrong_count])
    assert "s1.lips.npy has 25 frames, sources[1].lips.num_frames says 26" in found
