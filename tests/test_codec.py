import json

import numpy as np
import pytest
import torch

from hubbub.codec import frame_count, load_codec, token_span
from hubbub.testing import dummy_speech, make_random_codec


@pytest.fixture(scope="module")
def codec_dir(tmp_path_factory):
    return make_random_codec(tmp_path_factory.mktemp("codec") / "random-encodec")


@pytest.fixture(scope="module")
def codec(codec_dir):
    return load_codec(codec_dir, bandwidth_kbps=1.8)  # Q = 4


def speech(n, seconds=1.0, sample_rate_hz=24000, seed=0):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([dummy_speech(rng, seconds, sample_rate_hz) for _ in range(n)]))


def test_loads_with_its_identity(codec, codec_dir):
    info = codec.info()
    assert info["name"] == str(codec_dir)
    assert (info["sample_rate_hz"], info["frame_rate_hz"], info["hop_length"]) == (24000, 75.0, 320)
    assert (info["num_codebooks"], info["codebook_size"], info["bandwidth_kbps"]) == (4, 64, 1.8)
    json.dumps(info)
    again = load_codec(codec_dir, bandwidth_kbps=1.8)
    assert again.info() == info
    default = load_codec(codec_dir)  # no 6 kbps here: the smallest bandwidth
    assert (default.bandwidth_kbps, default.num_codebooks) == (0.9, 2)
    other = load_codec(make_random_codec(codec_dir.parent / "seed1", seed=1), bandwidth_kbps=1.8)
    assert other.info()["model_sha256"] != info["model_sha256"]


def test_load_errors_are_clear(codec_dir, tmp_path):
    with pytest.raises(ValueError, match=r"no bandwidth 6\.0 kbps.*\[0\.9, 1\.8, 3\.6\]"):
        load_codec(codec_dir, bandwidth_kbps=6.0)
    with pytest.raises(FileNotFoundError, match="no such codec directory"):
        load_codec(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        load_codec("./not/a/codec")


@pytest.mark.parametrize("num_samples", [1, 319, 320, 321, 24000, 24001])
def test_encode_shapes_match_num_frames(codec, num_samples):
    codes = codec.encode(torch.randn(2, num_samples) * 0.1, 24000)
    assert codes.shape == (2, 4, codec.num_frames(num_samples, 24000))
    assert codes.shape[-1] == -(-num_samples // 320)
    assert codes.dtype == torch.int64


def test_encode_single_and_batch(codec):
    x = speech(4)
    codes = codec.encode(x, 24000)
    assert torch.equal(codes, codec.encode(x, 24000))  # deterministic
    single = torch.cat([codec.encode(x[i:i + 1], 24000) for i in range(4)])
    assert single.shape == codes.shape == (4, 4, 75)
    # Batched convolutions round differently; frames at a near-tie may flip, rarely on codebook 0.
    assert (single[:, 0] == codes[:, 0]).float().mean() > 0.97
    assert (single == codes).float().mean() > 0.9


def test_tokens_are_varied(codec):
    codes = codec.encode(speech(8, seed=1), 24000)
    for q in range(codes.shape[1]):
        used = torch.unique(codes[:, q])
        assert len(used) >= 16, f"codebook {q} uses only {len(used)} of 64 codes"
        assert int(torch.bincount(codes[:, q].reshape(-1)).max()) < 0.25 * codes[:, q].numel()
    assert codes.min() >= 0 and codes.max() < 64
    a, b = codes[0], codes[1]
    assert (a != b).float().mean() > 0.5  # different audio, different codes


def test_resampling_path(codec):
    x16 = speech(3, sample_rate_hz=16000, seed=2)
    codes = codec.encode(x16, 16000)
    assert codes.shape == (3, 4, codec.num_frames(16000, 16000)) == (3, 4, 75)
    assert codec.num_frames(16001, 16000) == 76  # ceil(16001 * 75 / 16000)
    # what encode does: polyphase resampling to 24 kHz, then the codec
    from hubbub.audio import resample

    direct = codec.encode(torch.from_numpy(resample(x16.numpy(), 16000, 24000)), 24000)
    assert torch.equal(direct, codes)


def test_rejects_bad_input(codec):
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        codec.encode(torch.zeros(16000), 16000)
    with pytest.raises(ValueError, match="empty"):
        codec.encode(torch.zeros(1, 0), 16000)


def test_token_span_tiles_frame_aligned_crops():
    sr, rate = 16000, 75.0
    total = frame_count(16000 + 100, sr, rate)  # 76 frames
    crop = 640  # three frames at 16 kHz
    spans = [token_span(start, crop, sr, rate, total) for start in range(0, 16100, crop)]
    assert all(count == 3 for _, count in spans[:-1])
    covered = [f for first, count in spans for f in range(first, first + count)]
    assert covered == list(range(total))


def test_token_span_rounding_and_clamping():
    sr, rate = 16000, 75.0
    for start in range(0, 4000, 37):
        first, count = token_span(start, 8000, sr, rate)
        assert abs(first - start * rate / sr) <= 0.5  # nearest frame start
        assert count == frame_count(8000, sr, rate) == 38  # equal crops, equal counts
    assert token_span(106, 10, sr, rate) == (0, 1)  # 0.497 frames: rounds to frame 0
    assert token_span(107, 10, sr, rate) == (1, 1)  # 0.502 frames: frame 1
    assert token_span(15000, 4000, sr, rate, total_frames=75) == (70, 5)  # runs past the end: clamped
    assert token_span(20000, 4000, sr, rate, total_frames=75) == (75, 0)
    with pytest.raises(ValueError):
        token_span(-1, 10, sr, rate)
