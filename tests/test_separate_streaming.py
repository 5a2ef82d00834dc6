"""hubbub separate streams: a file is read, resampled, separated and written a block at a time, with
the in-memory result, in memory that does not grow with the recording, and no partial output left
behind by bad input or a full disk."""
import errno
import json
import resource
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from hubbub import separate
from hubbub.audio import AudioError, load_audio, resample
from hubbub.cli import main
from hubbub.models import build_model, model_config, save_model
from hubbub.separate import separate_file, separate_stream, separate_waveform
from hubbub.testing import dummy_speech

SR = 8000


def make_run(path, name: str = "convtasnet", num_sources: int = 2):
    torch.manual_seed(0)
    model = build_model(name, num_sources=num_sources, **model_config(name, "debug"))
    save_model(model, path / "model")
    (path / "run.json").write_text(json.dumps({"sample_rate_hz": SR}))
    return path, model


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("sep") / "run")


def write_mixture(path, seconds: float, rate: int, channels: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = np.stack([dummy_speech(rng, seconds, rate) + dummy_speech(rng, seconds, rate) for _ in range(channels)], 1)
    sf.write(path, x.astype(np.float32), rate, subtype="FLOAT")
    return path


def read_outputs(paths) -> np.ndarray:
    return np.stack([sf.read(p, dtype="float32")[0] for p in paths])


@pytest.mark.parametrize("rate, channels, block_frames", [
    (SR, 1, 1000),         # at the model's rate: blocks shorter than a chunk
    (SR, 2, 20000),        # stereo, blocks longer than a chunk
    (16000, 1, 777),       # resampled down, blocks that cut the chunks anywhere
    (44100, 2, 4096),      # 80/441: a long filter, stereo
    (6000, 1, 1 << 16),    # resampled up, the whole file in one block
])
def test_streamed_file_equals_separating_the_whole_file_in_memory(run, tmp_path, monkeypatch, rate, channels,
                                                                   block_frames):
    run_dir, model = run
    monkeypatch.setattr(separate, "READ_BLOCK_FRAMES", block_frames)
    wav = write_mixture(tmp_path / "talk.wav", 5.3, rate, channels)
    paths = separate_file(run_dir, wav, tmp_path / "out", chunk_s=1.0, overlap_s=0.25, device="cpu")
    expected = separate_waveform(model, load_audio(wav, SR), sample_rate_hz=SR, chunk_s=1.0, overlap_s=0.25)
    assert [p.name for p in paths] == ["talk_s0.wav", "talk_s1.wav"]
    assert all(sf.info(p).subtype == "FLOAT" and sf.info(p).samplerate == SR for p in paths)
    np.testing.assert_allclose(read_outputs(paths), expected, rtol=0, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["talk_s0.wav", "talk_s1.wav"]


@pytest.mark.parametrize("from_hz, to_hz", [(16000, 8000), (44100, 16000), (8000, 22050), (48000, 44100)])
def test_block_resampling_equals_resampling_the_whole_signal(from_hz, to_hz):
    rng = np.random.default_rng(from_hz + to_hz)
    for n in (1, 13, 441, 5000, 23456):
        x = rng.standard_normal(n).astype(np.float32)
        blocks = np.split(x, np.sort(rng.integers(0, n + 1, rng.integers(0, 12))))  # empty blocks too
        streamed = np.concatenate(list(separate._resampled_blocks(iter(blocks), from_hz, to_hz)))
        whole = resample(x, from_hz, to_hz)
        assert streamed.shape == whole.shape
        np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)


def test_separate_stream_does_not_depend_on_how_the_mixture_is_cut():
    torch.manual_seed(0)
    model = build_model("convtasnet", num_sources=3, **model_config("convtasnet", "debug"))
    rng = np.random.default_rng(0)
    for n in (100, 8000, 8001, 9999, 10000, 10001, 26789):
        x = rng.standard_normal(n).astype(np.float32)
        whole = separate_waveform(model, x, sample_rate_hz=SR, chunk_s=1.0, overlap_s=0.25)
        blocks = np.split(x, np.sort(rng.integers(0, n + 1, 9)))
        pieces = list(separate_stream(model, blocks, sample_rate_hz=SR, chunk_s=1.0, overlap_s=0.25))
        assert all(p.shape[1] == 6000 for p in pieces[:-1])  # one chunk's hop at a time
        np.testing.assert_array_equal(np.concatenate(pieces, axis=1), whole)


def test_audio_visual_file_streams_with_its_lips(tmp_path):
    run_dir, model = make_run(tmp_path / "av", "avextractor", num_sources=1)
    wav = write_mixture(tmp_path / "meeting.wav", 3.3, 16000, channels=2)
    lips = tmp_path / "mouth.npy"
    np.save(lips, np.random.default_rng(0).integers(0, 256, (83, 96, 96), dtype=np.uint8))
    (path,) = separate_file(run_dir, wav, tmp_path / "out", chunk_s=1.2, overlap_s=0.4, lips=lips, device="cpu")
    mix = load_audio(wav, SR)
    expected = separate_waveform(model, mix, sample_rate_hz=SR, chunk_s=1.2, overlap_s=0.4,
                                 video=separate.load_lips(lips, len(mix), SR))
    np.testing.assert_allclose(read_outputs([path]), expected, rtol=0, atol=1e-6)


def _peak_traced_bytes(run_dir, wav, out) -> int:
    tracemalloc.start()
    try:
        separate_file(run_dir, wav, out, chunk_s=1.0, overlap_s=0.25, device="cpu")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_recording(run, tmp_path):
    """numpy's allocations are traced: the whole mixture (240 s: 7.7 MB as float32) or a whole
    output would show at once. The model's activations (torch's allocator, untraced) are one
    chunk's, as test_separate checks for separate_waveform."""
    run_dir, _ = run
    rng = np.random.default_rng(0)
    for seconds in (2, 60, 240):
        sf.write(tmp_path / f"{seconds}s.wav", 0.1 * rng.standard_normal(seconds * SR), SR)
    _peak_traced_bytes(run_dir, tmp_path / "2s.wav", tmp_path / "warm-up")  # first use: imports, caches
    peak_short = _peak_traced_bytes(run_dir, tmp_path / "60s.wav", tmp_path / "short")
    peak_long = _peak_traced_bytes(run_dir, tmp_path / "240s.wav", tmp_path / "long")
    assert peak_long <= 1.1 * peak_short + (64 << 10), (peak_short, peak_long)
    assert peak_long < 240 * SR * 4 / 4, "a quarter of the mixture alone would be more"
    assert sf.info(tmp_path / "long" / "240s_s0.wav").frames == 240 * SR


def earlier_outputs(out):
    """Outputs of an earlier run, which a failed run must leave as they were."""
    out.mkdir()
    for k in range(2):
        sf.write(out / f"talk_s{k}.wav", np.full(100, k + 1, np.float32), SR, subtype="FLOAT")
    return {p.name: p.read_bytes() for p in out.iterdir()}


@pytest.mark.parametrize("bad, reason", [("nan", "non-finite"), ("silent", "silent"), ("empty", "empty"),
                                         ("text", "unreadable")])
def test_bad_input_leaves_nothing_written(run, tmp_path, monkeypatch, bad, reason):
    monkeypatch.setattr(separate, "READ_BLOCK_FRAMES", 4000)
    x = dummy_speech(np.random.default_rng(0), 3.0, SR)
    wav = tmp_path / "talk.wav"
    if bad == "nan":
        x[-10] = np.nan  # in the last block: the model has run on the others, and outputs were begun
    if bad == "text":
        wav.write_text("not audio\n")
    else:
        sf.write(wav, {"nan": x, "silent": np.zeros_like(x), "empty": x[:0]}[bad], SR, subtype="FLOAT")
    before = earlier_outputs(tmp_path / "out")
    with pytest.raises(AudioError) as caught:
        separate_file(run[0], wav, tmp_path / "out", chunk_s=1.0, overlap_s=0.25, device="cpu")
    assert caught.value.reason == reason
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_a_full_disk_ends_in_one_line_and_leaves_no_temporaries(run, tmp_path, monkeypatch, capsys):
    wav = write_mixture(tmp_path / "talk.wav", 6.0, SR)
    before = earlier_outputs(tmp_path / "out")
    calls = []
    real_write = sf.SoundFile.write

    def write(self, data):
        calls.append(len(data))
        if len(calls) == 5:  # the third block of source 0: both temporaries hold samples
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(sf.SoundFile, "write", write)
    with pytest.raises(OSError) as caught:
        separate_file(run[0], wav, tmp_path / "out", chunk_s=1.0, overlap_s=0.25, device="cpu")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "out" / "talk_s0.wav")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before

    calls.clear()
    assert main(["separate", str(run[0]), str(wav), "--out", str(tmp_path / "out"), "--chunk-s", "1",
                 "--overlap-s", "0.25"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no space left" in err and str(tmp_path / "out") in err, err
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_a_failed_write_inside_libsndfile_keeps_its_errno(run, tmp_path):
    """libsndfile says only 'System error' when write(2) fails; the errno is recovered. A file-size
    limit stands in for a full disk (Python ignores SIGXFSZ, so write(2) fails with EFBIG)."""
    wav = write_mixture(tmp_path / "talk.wav", 6.0, SR)
    out = tmp_path / "out"
    out.mkdir()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))  # outputs are 192 kB each
    try:
        with pytest.raises(OSError) as caught:
            separate_file(run[0], wav, out, chunk_s=1.0, overlap_s=0.25, device="cpu")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert caught.value.errno == errno.EFBIG and caught.value.filename == str(out / "talk_s0.wav")
    assert list(out.iterdir()) == []


def test_paths_a_user_gets_wrong_are_named_in_one_line(run, tmp_path, capsys):
    wav = write_mixture(tmp_path / "talk.wav", 1.0, SR)
    (tmp_path / "a_file").write_text("")
    cases = {
        (str(run[0]), str(tmp_path / "nonexistent.wav"), str(tmp_path / "out")): "input file does not exist",
        (str(tmp_path / "no_run"), str(wav), str(tmp_path / "out")): "no such run or model directory",
        (str(tmp_path / "no_run"), str(tmp_path / "nonexistent.wav"), str(tmp_path / "out")): "input file",
        (str(run[0]), str(wav), str(tmp_path / "a_file")): "is a file",
        (str(run[0]), str(wav), str(tmp_path / "a_file" / "below")): "is a file",
    }
    for (run_dir, wav_path, out), message in cases.items():
        assert main(["separate", run_dir, wav_path, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
        named = wav_path if "input" in message else run_dir if "run" in message else out
        assert named in err
    assert not (tmp_path / "out").exists()
