"""Audio storage (recipe ``storage``): FLAC or WAV, 24 or 16 bits, the same mixtures in each."""
import io

import numpy as np
import pytest
import soundfile as sf

from hubbub.shards.format import audio_member, decode_audio, encode_audio, quantize
from hubbub.shards.reader import ShardDataset
from hubbub.shards.verify import verify_corpus
from hubbub.simulate import load_recipe, simulate
from hubbub.simulate.sample import render
from hubbub.testing import make_simulator, make_speech_folder, simulate_one

_PAIR = ("mics.array=pair", "mics.count=2", "speakers.distribution={2: 1.0}", "noise.kind=babble")


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return make_speech_folder(tmp_path_factory.mktemp("speech"), num_speakers=8, utterances_per_speaker=2,
                              seconds=2.0)


@pytest.mark.parametrize("codec", ["flac", "wav"])
@pytest.mark.parametrize("bits", [16, 24])
def test_codes_round_trip_exactly(codec, bits):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 4000)) * 0.2).clip(-1, 0.99).astype(np.float32)
    q = quantize(x, bits)
    assert q.min() >= -2 ** (bits - 1) and q.max() < 2 ** (bits - 1)
    data = encode_audio(q, 16000, codec, bits)
    assert sf.info(io.BytesIO(data)).format == codec.upper()
    assert sf.info(io.BytesIO(data)).subtype == f"PCM_{bits}"
    y, sr = decode_audio(data)
    assert sr == 16000 and y.shape == x.shape
    np.testing.assert_array_equal(y, q.astype(np.float32) / 2 ** (bits - 1))
    assert np.abs(y - x).max() <= 2.0 ** -bits + 1e-9   # half a step of rounding


def test_unknown_codec_or_bits_are_refused():
    with pytest.raises(ValueError, match="codec"):
        encode_audio(np.zeros(10, np.int32), 16000, "mp3", 24)
    with pytest.raises(ValueError, match="bits"):
        quantize(np.zeros(10), 8)
    with pytest.raises(Exception, match="storage.bits"):
        load_recipe("debug", ["storage.bits=8"])


@pytest.mark.parametrize("codec,bits", [("wav", 24), ("flac", 16), ("wav", 16)])
def test_every_storage_holds_the_same_mixture(tmp_path, speech, codec, bits):
    base = simulate_one(make_simulator(speech, "debug", *_PAIR), tmp_path / "base")
    other = simulate_one(make_simulator(speech, "debug", *_PAIR, f"storage.codec={codec}", f"storage.bits={bits}"),
                         tmp_path / "other")
    # storage is not part of the content: same draws, same seed, only the bytes differ
    assert {k: v for k, v in other["meta"].items() if k != "storage"} == \
        {k: v for k, v in base["meta"].items() if k != "storage"}
    assert other["meta"]["storage"] == {"codec": codec, "bits": bits}
    step = 2.0 ** (1 - bits)
    # each target within a rounding step of the 24-bit one; the mix, an integer sum of three
    # rounded signals (2 sources + noise), within 1.5 steps
    np.testing.assert_allclose(other["mix"], base["mix"], atol=1.5 * step + 2.0 ** -23)
    for target in ("dry", "direct", "early", "reverberant"):
        for a, b in zip(other["sources"][target], base["sources"][target]):
            np.testing.assert_allclose(a, b, atol=step)
    # the integer sum holds at every depth
    np.testing.assert_array_equal(other["mix"], sum(other["sources"]["reverberant"]) + other["noise"])
    # and the metadata alone re-renders the stored codes
    again = render(other["meta"])
    np.testing.assert_array_equal(again.mix_q.astype(np.float32) / 2 ** (bits - 1), other["mix"])


def test_a_wav_corpus_verifies_and_reads_like_a_flac_one(tmp_path, speech):
    common = [f"speech.corpus={speech}", *_PAIR, "samples_per_shard=3"]
    flac = tmp_path / "flac"
    wav = tmp_path / "wav"
    simulate(load_recipe("debug", common), num=6, out_dir=flac, seed=1, workers=0, progress=False)
    simulate(load_recipe("debug", [*common, "storage.codec=wav"]), num=6, out_dir=wav, seed=1, workers=0,
             progress=False)
    report = verify_corpus(wav, check_audio=True)
    assert report.ok, report.faults
    kwargs = dict(targets=("reverberant", "dry"), extras=("noise.flac",), shuffle=False, mic=None)
    for a, b in zip(ShardDataset(flac, "train", **kwargs), ShardDataset(wav, "train", **kwargs), strict=True):
        assert a["key"] == b["key"]
        assert np.array_equal(a["mix"], b["mix"])            # 24-bit either way: identical samples
        assert np.array_equal(a["sources"]["reverberant"], b["sources"]["reverberant"])
        assert np.array_equal(a["extras"]["noise.flac"], b["extras"]["noise.flac"])   # found as noise.wav


def test_verify_catches_a_member_of_the_wrong_depth_or_codec(speech):
    from hubbub.shards.verify import _check_sample

    members, _ = make_simulator(speech, "debug", *_PAIR).members("train", 0)
    assert _check_sample(members, "train", None, check_audio=True) == []
    mix, sr = decode_audio(members["mix.flac"])
    bad = {**members, "mix.flac": encode_audio(quantize(mix, 16), sr, "flac", 16)}
    assert any("PCM_16, json says 24-bit" in f for f in _check_sample(bad, "train", None, check_audio=True))
    renamed = {k: v for k, v in members.items() if k != "mix.flac"}
    renamed["mix.wav"] = members["mix.flac"]
    assert "member mix.flac missing" in _check_sample(renamed, "train", None, check_audio=False)
    assert audio_member(renamed, "mix") == "mix.wav"


def test_resuming_into_a_corpus_of_another_storage_is_refused(tmp_path, speech):
    common = [f"speech.corpus={speech}", "samples_per_shard=2"]
    simulate(load_recipe("debug", common), num=4, out_dir=tmp_path / "c", seed=0, workers=0, progress=False,
             splits=["train"])
    with pytest.raises(ValueError, match="different storage"):
        simulate(load_recipe("debug", [*common, "storage.bits=16"]), num=4, out_dir=tmp_path / "c", seed=0,
                 workers=0, progress=False, splits=["train"])
