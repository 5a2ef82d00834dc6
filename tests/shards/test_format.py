"""Crops decoded from stored audio: the fast WAV slicing gives libsndfile's numbers exactly."""
import io

import numpy as np
import pytest
import soundfile as sf

from hubbub.shards.format import decode_audio, decode_audio_crop, encode_audio, quantize


def _libsndfile_crop(data: bytes, start: int, length: int) -> np.ndarray:
    with sf.SoundFile(io.BytesIO(data)) as f:
        f.seek(min(start, f.frames))
        q = f.read(length, dtype="int32", always_2d=False)
    x = (q >> 8).astype(np.float32) / np.float32(2**23)
    return x.T if x.ndim == 2 else x


@pytest.mark.parametrize("codec", ["wav", "flac"])
@pytest.mark.parametrize("bits", [16, 24])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_a_crop_decodes_to_the_same_numbers_as_libsndfile_and_the_whole(codec, bits, channels):
    rng = np.random.default_rng(channels * bits)
    x = rng.uniform(-1, 1, (channels, 1000)).astype(np.float32) if channels > 1 else rng.uniform(-1, 1, 1000)
    data = encode_audio(quantize(x, bits), 8000, codec=codec, bits=bits)
    whole = decode_audio(data)[0]
    for start, length in [(0, 1000), (17, 300), (990, 50), (1000, 10), (2000, 5)]:
        crop = decode_audio_crop(data, start, length)
        assert crop.dtype == np.float32 and crop.shape == whole[..., start:start + length].shape
        assert np.array_equal(crop, whole[..., start:start + length])
        assert np.array_equal(crop, _libsndfile_crop(data, start, length))


def test_wav_bytes_it_did_not_write_fall_back_to_libsndfile():
    buf = io.BytesIO()
    sf.write(buf, np.linspace(-0.5, 0.5, 400), 8000, format="WAV", subtype="FLOAT")  # float WAV
    data = buf.getvalue()
    assert np.array_equal(decode_audio_crop(data, 100, 50), decode_audio(data)[0][100:150])
    assert np.array_equal(decode_audio_crop(data, 100, 50), _libsndfile_crop(data, 100, 50))
