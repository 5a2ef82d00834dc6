"""The built-in voices corpus: determinism, speakers, phoneme timings, resume, failures."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf

from hubbub.voices import (
    PAUSE,
    SynthesisError,
    VoiceSpec,
    available_synthesizers,
    list_voices,
    make_sentence,
    make_voices,
    synthesize,
)
from hubbub.voices import synth as synth_module

needs_espeak = pytest.mark.skipif("espeak-ng" not in available_synthesizers(),
                                  reason="espeak-ng not installed (apt-get install espeak-ng)")
needs_flite = pytest.mark.skipif("flite" not in available_synthesizers(),
                                 reason="flite not installed (apt-get install flite)")
needs_both = pytest.mark.skipif(len(available_synthesizers()) < 2,
                                reason="needs both (apt-get install espeak-ng flite)")
SMALL = {"num_speakers": 4, "utterances_per_speaker": 2, "seed": 3}


def read_manifest(out_dir) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("voices")
    make_voices(out_dir, **SMALL)
    return out_dir


# --- catalogue and sentences (no synthesizer needed) -------------------------------------------


def test_catalogue_is_fixed_unique_and_filesystem_safe():
    voices = list_voices()
    assert voices == list_voices()
    ids = [v.speaker for v in voices]
    assert len(set(ids)) == len(ids)
    assert len(set((v.synthesizer, v.name, v.variant, v.pitch, v.rate) for v in voices)) == len(ids)
    assert all(re.fullmatch(r"(esp|fli)_[a-z0-9_-]+", i) for i in ids)
    flite = list_voices(("flite",))
    assert {v.name for v in flite[:4]} == {"kal16", "awb", "rms", "slt"}
    with pytest.raises(ValueError, match="unknown"):
        list_voices(("festival",))


def test_catalogue_prefix_changes_every_parameter():
    espeak = list_voices(("espeak-ng",))[:12]
    for a, b in zip(espeak, espeak[1:]):
        assert a.variant != b.variant and a.name != b.name and a.pitch != b.pitch
        assert a.rate != b.rate


def test_sentences_are_deterministic_and_sized():
    a = [make_sentence(np.random.default_rng(7), 5, 9) for _ in range(3)]
    assert len(set(a)) == 1
    rng = np.random.default_rng(0)
    sentences = [make_sentence(rng, 5, 9) for _ in range(200)]
    assert all(5 <= len(s.split()) <= 9 and s[0].isupper() and s[-1] in ".?" for s in sentences)
    assert len(set(sentences)) > 190
    with pytest.raises(ValueError):
        make_sentence(rng, 9, 5)


def test_no_synthesizer_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(synth_module, "available_synthesizers", lambda: [])
    with pytest.raises(RuntimeError, match=r"apt-get install espeak-ng flite"):
        make_voices(tmp_path)


# --- synthesis ---------------------------------------------------------------------------------


@pytest.mark.parametrize("voice", [
    pytest.param(VoiceSpec("espeak-ng", "en-us", "en-us", "f2", 50, 175), marks=needs_espeak),
    pytest.param(VoiceSpec("flite", "kal16", "en-us", "", 0, 100), marks=needs_flite),
    pytest.param(VoiceSpec("flite", "slt", "en-us", "", 150, 85), marks=needs_flite),
])
def test_synthesizer_timings_reach_the_end_of_its_audio(voice):
    syn = synthesize(voice, "The quiet farmer carried a heavy basket across the bridge.")
    duration_s = len(syn.audio) / syn.sample_rate_hz
    assert syn.sample_rate_hz in (16000, 22050)
    assert all(a <= b for _, a, b in syn.phonemes)
    assert all(p[2] == q[1] for p, q in zip(syn.phonemes, syn.phonemes[1:]))  # contiguous
    assert syn.phonemes[-1][2] == pytest.approx(duration_s, abs=0.25)
    assert sum(p[0] != PAUSE for p in syn.phonemes) >= 25  # ~35 phonemes in the sentence


@needs_espeak
def test_espeak_ng_is_deterministic_across_calls():
    # libespeak-ng keeps state between utterances in one process; the child process avoids it.
    voice = list_voices(("espeak-ng",))[0]
    first = synthesize(voice, "Hello there, this is a test.")
    synthesize(voice, "Something else entirely, and longer than the first one.")
    again = synthesize(voice, "Hello there, this is a test.")
    assert np.array_equal(first.audio, again.audio) and first.phonemes == again.phonemes


# --- the corpus --------------------------------------------------------------------------------


@needs_both
def test_corpus_is_deterministic(corpus, tmp_path):
    make_voices(tmp_path, **SMALL)
    assert (tmp_path / "manifest.jsonl").read_bytes() == (corpus / "manifest.jsonl").read_bytes()
    for entry in read_manifest(corpus):
        assert (tmp_path / entry["path"]).read_bytes() == (corpus / entry["path"]).read_bytes()


@needs_both
def test_speakers_are_distinct_and_split_between_synthesizers(corpus):
    entries = read_manifest(corpus)
    assert len(entries) == SMALL["num_speakers"] * SMALL["utterances_per_speaker"]
    speakers = {e["speaker"]: (e["synthesizer"], json.dumps(e["voice"])) for e in entries}
    assert len(speakers) == SMALL["num_speakers"]
    assert len(set(speakers.values())) == SMALL["num_speakers"]
    by_synth = [s for s, _ in speakers.values()]
    assert by_synth.count("espeak-ng") == by_synth.count("flite") == 2
    assert len({e["transcript"] for e in entries}) == len(entries)


@needs_both
def test_audio_files_match_the_manifest(corpus):
    for entry in read_manifest(corpus):
        assert entry["licence"] == "CC0-1.0"
        speaker = entry["speaker"]
        assert entry["path"] == f"{speaker}/{speaker}_{entry['utterance']:03d}.flac"
        info = sf.info(corpus / entry["path"])
        assert (info.format, info.subtype, info.channels) == ("FLAC", "PCM_16", 1)
        assert info.samplerate == entry["sample_rate_hz"] == 16000
        assert info.frames / info.samplerate == pytest.approx(entry["duration_s"], abs=1e-4)
        x, _ = sf.read(corpus / entry["path"])
        assert np.isfinite(x).all()
        assert np.abs(x).max() == pytest.approx(10 ** (-1 / 20), abs=1e-3)  # -1 dBFS peak
        assert 1.0 < entry["duration_s"] < 7.0


@needs_both
def test_phonemes_cover_the_audio_in_order(corpus):
    for entry in read_manifest(corpus):
        phonemes, duration_s = entry["phonemes"], entry["duration_s"]
        assert phonemes[0][1] == 0.0 and phonemes[-1][2] == pytest.approx(duration_s, abs=1e-4)
        assert all(a <= b for _, a, b in phonemes)
        assert all(p[2] == q[1] for p, q in zip(phonemes, phonemes[1:]))
        speech = [p for p in phonemes if p[0] != PAUSE]
        assert sum(b - a for _, a, b in speech) > 0.5 * duration_s
        assert entry["phoneme_set"] == {"espeak-ng": "ipa", "flite": "cmu"}[entry["synthesizer"]]


@needs_both
def test_phoneme_timings_line_up_with_the_audio(corpus):
    # Nearly all energy lies between the first and the last spoken phoneme: timings shifted or
    # scaled against the audio (a resampling or trimming slip) would leave speech outside.
    for entry in read_manifest(corpus):
        x, sr = sf.read(corpus / entry["path"])
        speech = [p for p in entry["phonemes"] if p[0] != PAUSE]
        inside = x[round(speech[0][1] * sr):round(speech[-1][2] * sr)]
        assert np.sum(inside**2) > 0.99 * np.sum(x**2)


@needs_both
def test_8khz_keeps_the_timings_in_seconds(corpus, tmp_path):
    make_voices(tmp_path, **SMALL, sample_rate_hz=8000)
    for wide, narrow in zip(read_manifest(corpus), read_manifest(tmp_path)):
        assert sf.info(tmp_path / narrow["path"]).samplerate == narrow["sample_rate_hz"] == 8000
        assert narrow["transcript"] == wide["transcript"]
        assert narrow["duration_s"] == pytest.approx(wide["duration_s"], abs=2e-4)
        assert [p[0] for p in narrow["phonemes"]] == [p[0] for p in wide["phonemes"]]
        times = np.array([p[1:] for p in narrow["phonemes"]])
        assert times == pytest.approx(np.array([p[1:] for p in wide["phonemes"]]), abs=2e-4)


@needs_both
def test_resume_returns_without_work_and_new_parameters_regenerate(tmp_path):
    params = {"num_speakers": 2, "utterances_per_speaker": 1}
    manifest = make_voices(tmp_path, **params)
    files = [manifest, *tmp_path.glob("*/*.flac")]
    mtimes = [f.stat().st_mtime_ns for f in files]
    assert make_voices(tmp_path, **params) == manifest
    assert [f.stat().st_mtime_ns for f in files] == mtimes
    assert not list(tmp_path.rglob("*.tmp"))

    before = read_manifest(tmp_path)
    make_voices(tmp_path, **params, seed=1)
    after = read_manifest(tmp_path)
    assert [e["path"] for e in after] == [e["path"] for e in before]
    assert [e["transcript"] for e in after] != [e["transcript"] for e in before]


@needs_both
def test_failed_utterances_are_retried_then_skipped(tmp_path, monkeypatch):
    real = synth_module.synthesize
    calls: dict[str, int] = {}

    def flaky(voice, text, **kwargs):
        calls[voice.speaker] = calls.get(voice.speaker, 0) + 1
        if voice.synthesizer == "flite":
            raise SynthesisError("always fails")
        if calls[voice.speaker] == 1:
            raise SynthesisError("fails once")
        return real(voice, text, **kwargs)

    monkeypatch.setattr(synth_module, "synthesize", flaky)
    with pytest.warns(UserWarning, match="skipped 1 of 2"):
        manifest = make_voices(tmp_path, num_speakers=2, utterances_per_speaker=1)
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [e["synthesizer"] for e in entries] == ["espeak-ng"]
    espeak = list_voices(("espeak-ng",))[0]
    second_try = make_sentence(synth_module._utterance_rng(0, espeak.speaker, 0, 1),
                               *synth_module._sentence_words(espeak))
    assert entries[0]["transcript"] == second_try
    skipped = json.loads((tmp_path / "voices.json").read_text())["skipped"]
    assert [(s["speaker"], len(s["errors"])) for s in skipped] == [
        (list_voices(("flite",))[0].speaker, 3)]
