"""shards verify on audio-visual samples: lip streams present, uint8 (F, 96, 96), agreeing with the
JSON, whether stored compressed (``s{k}.lips.npy.zst``, written now) or raw (``s{k}.lips.npy``,
corpora written before)."""
import io
import json

import numpy as np
import pytest
import zstandard

from hubbub.schema import member_name
from hubbub.shards.format import decode_array, encode_json, encode_npy, encode_npy_zst
from hubbub.shards.verify import verify_corpus
from hubbub.testing import make_corpus_from_samples, make_dummy_sample

ENCODERS = {"npy.zst": encode_npy_zst, "npy": encode_npy}


def av_sample(index=0, encoding="npy.zst", **changes):
    """A 1 s, 16 kHz, 2-speaker sample with lips (25 frames per source) stored as ``encoding``,
    members changed by ``changes`` (``s0__lips=...`` sets source 0's lip member; ``None`` removes it)."""
    members = make_dummy_sample("train", index, num_speakers=2, seconds=1.0, sample_rate_hz=16000, lips=True)
    for k in range(2):
        frames = decode_array(member_name("lips", k), members.pop(member_name("lips", k)))
        members[f"s{k}.lips.{encoding}"] = ENCODERS[encoding](frames)
    for name, value in changes.items():
        name = name.replace("__", ".") + f".{encoding}"
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


@pytest.mark.parametrize("encoding", ENCODERS)
def test_av_samples_verify_clean(tmp_path, encoding):
    sample = av_sample(encoding=encoding)
    assert decode_array(f"s1.lips.{encoding}", sample[f"s1.lips.{encoding}"]).shape == (25, 96, 96)
    assert messages(tmp_path, [av_sample(0, encoding), av_sample(1, encoding)]) == []
    # without lips the factory's samples are what they always were
    plain = make_dummy_sample("train", 0, num_speakers=2, seconds=1.0, sample_rate_hz=16000)
    assert {k: v for k, v in sample.items() if k != "json" and "lips" not in k} == \
           {k: v for k, v in plain.items() if k != "json"}


@pytest.mark.parametrize("encoding", ENCODERS)
@pytest.mark.parametrize("frames, fault", [
    (np.zeros((24, 96, 96), np.uint8), "has shape (24, 96, 96), expected (25, 96, 96)"),
    (np.zeros((25, 88, 88), np.uint8), "has shape (25, 88, 88), expected (25, 96, 96)"),
    (np.zeros((25, 96, 96), np.float32), "is float32, expected uint8"),
])
def test_wrong_lip_streams_are_faults(tmp_path, encoding, frames, fault):
    found = messages(tmp_path, [av_sample(encoding=encoding, s0__lips=ENCODERS[encoding](frames))])
    assert any(m.startswith(f"s0.lips.{encoding} {fault}") for m in found), found


@pytest.mark.parametrize("encoding", ENCODERS)
def test_a_pickled_lip_stream_does_not_decode(tmp_path, encoding):
    buf = io.BytesIO()
    np.save(buf, np.array([None] * 25, dtype=object), allow_pickle=True)
    pickled = buf.getvalue() if encoding == "npy" else zstandard.ZstdCompressor().compress(buf.getvalue())
    found = messages(tmp_path, [av_sample(encoding=encoding, s1__lips=pickled)])
    assert any(m.startswith(f"s1.lips.{encoding} does not decode") for m in found), found


@pytest.mark.parametrize("encoding", ENCODERS)
def test_missing_lips_and_their_metadata_are_faults_even_without_decoding(tmp_path, encoding):
    missing = av_sample(0, encoding, s1__lips=None)
    no_meta = with_lips_meta(av_sample(1, encoding), 0, None)
    wrong_count = with_lips_meta(av_sample(2, encoding), 1, {"kind": "phonemes", "fps": 25, "num_frames": 26})
    for check_audio in (False, True):
        found = messages(tmp_path / str(check_audio), [missing, no_meta, wrong_count], check_audio=check_audio)
        assert "target lips of source 1 missing (no s1.lips.npy.zst)" in found
        assert "sources[0] lacks lips.num_frames (the sample has target lips)" in found
        assert any(m.startswith("sources[1].lips.num_frames is 26, expected 25") for m in found), found
    found = messages(tmp_path / "decoded", [wrong_count])
    assert f"s1.lips.{encoding} has 25 frames, sources[1].lips.num_frames says 26" in found
