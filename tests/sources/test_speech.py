import json

import numpy as np
import pytest

from hubbub.audio import AudioError, load_audio
from hubbub.sources.noise import coloured_noise, diffuse_mixing, split_noise_files, NoiseFile
from hubbub.sources.speech import assign_splits, index_speech
from hubbub.testing import make_bad_files, make_speech_folder


@pytest.mark.parametrize("layout, first_speaker", [("librispeech", "100"), ("vctk", "p225")])
def test_folder_layouts_are_detected(tmp_path, layout, first_speaker):
    root = make_speech_folder(tmp_path / layout, layout=layout, num_speakers=3, utterances_per_speaker=2)
    idx = index_speech(root)
    assert len(idx.utterances) == 6 and idx.skipped == []
    assert idx.speakers[0] == first_speaker and len(idx.speakers) == 3


def test_regex_layout_and_unmatched_files_are_reported(tmp_path):
    root = make_speech_folder(tmp_path / "c", layout="vctk", num_speakers=2, utterances_per_speaker=2)
    idx = index_speech(root, layout="regex", regex=r"(?P<speaker>p\d+)_00[1]")
    assert len(idx.utterances) == 2
    assert {s["reason"] for s in idx.skipped} == {"no-speaker"} and len(idx.skipped) == 2


def test_manifest_paths_are_relative_to_it(tmp_path):
    root = make_speech_folder(tmp_path / "c", num_speakers=2, utterances_per_speaker=1)
    files = sorted(root.rglob("*.flac"))
    with open(tmp_path / "m.jsonl", "w") as f:
        for i, p in enumerate(files):
            f.write(json.dumps({"path": str(p.relative_to(tmp_path)), "speaker": f"s{i}", "licence": "CC-BY-4.0",
                                "transcript": "hello", "phonemes": [["h", 0.0, 0.1]]}) + "\n")
        f.write("{not json\n")
    idx = index_speech(tmp_path / "m.jsonl")
    assert [u.speaker for u in idx.utterances] == ["s0", "s1"]
    assert idx.utterances[0].licence == "CC-BY-4.0" and idx.utterances[0].extra["phonemes"]
    assert [s["reason"] for s in idx.skipped] == ["bad-manifest-line"]


def test_every_bad_file_is_reported_with_its_reason_and_others_kept(tmp_path):
    root = make_speech_folder(tmp_path / "c", num_speakers=2, utterances_per_speaker=1)
    bad = make_bad_files(root)
    idx = index_speech(root)
    reasons = {s["path"]: s["reason"] for s in idx.skipped}
    assert reasons == bad
    kept = {u.path for u in idx.utterances}
    stereo = [p for p in kept if p.endswith("999-1-0005.wav")]
    assert stereo, "a 44.1 kHz stereo file is resampled and downmixed, not skipped"
    x = load_audio(stereo[0], 16000)
    assert x.ndim == 1 and abs(len(x) - 32000) <= 1


def test_index_is_cached_and_refreshed_when_a_file_changes(tmp_path):
    root = make_speech_folder(tmp_path / "c", num_speakers=2, utterances_per_speaker=1)
    first = index_speech(root)
    path = first.utterances[0].path
    import soundfile as sf
    sf.write(path, np.zeros(10, np.float32), 16000)  # now too short
    second = index_speech(root)
    assert path in {s["path"] for s in second.skipped}


def test_load_audio_errors_have_reasons(tmp_path):
    p = tmp_path / "x.wav"
    p.write_bytes(b"RIFF....garbage")
    with pytest.raises(AudioError) as exc:
        load_audio(p, 16000)
    assert exc.value.reason == "unreadable"


def test_splits_are_disjoint_deterministic_and_filled():
    spk = [f"s{i}" for i in range(20)]
    a = assign_splits(spk, {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0, min_per_split=2)
    assert a == assign_splits(spk, {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0, min_per_split=2)
    assert sum(map(len, a.values())) == 20 and min(map(len, a.values())) >= 2
    assert not (set(a["train"]) & set(a["valid"])) and not (set(a["valid"]) & set(a["test"]))
    with pytest.raises(ValueError, match="speakers"):
        assign_splits(spk[:3], {"train": 0.8, "valid": 0.1, "test": 0.1}, seed=0, min_per_split=2)


def test_coloured_noise_slope():
    rng = np.random.default_rng(0)
    x = coloured_noise(rng, (1, 1 << 16), 2.0)[0]
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x))
    lo, hi = spec[(f > 0.01) & (f < 0.02)].mean(), spec[(f > 0.1) & (f < 0.2)].mean()
    assert 10 * np.log10(lo / hi) > 15  # brown noise: ~6 dB/octave, >3 octaves apart


def test_diffuse_noise_has_the_sinc_coherence():
    fs, d = 16000, 0.2
    mics = np.array([[0, 0, 0], [d, 0, 0]], float)
    x = diffuse_mixing(np.random.default_rng(0).standard_normal((2, fs * 8)), mics, fs)
    from scipy.signal import csd, welch
    f, pxy = csd(x[0], x[1], fs, nperseg=512)
    _, pxx = welch(x[0], fs, nperseg=512)
    _, pyy = welch(x[1], fs, nperseg=512)
    real_coh = np.real(pxy) / np.sqrt(pxx * pyy)
    target = np.sinc(2 * f * d / 343.0)
    assert np.median(np.abs(real_coh - target)) < 0.1


def test_noise_files_split_disjointly():
    files = [NoiseFile(f"/n/{i}.wav", 10.0, 16000, 1) for i in range(30)]
    parts = split_noise_files(files, {"train": 0.8, "valid": 0.1, "test": 0.1})
    assert all(parts[s] for s in parts)
    names = [f.path for s in parts for f in parts[s]]
    assert len(names) == len(set(names)) == 30
