"""The built-in voices corpus: determinism, speakers, phoneme timings, resume, failures, families."""
from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import math
import os
import re

import numpy as np
import pytest
import soundfile as sf

from hubbub.simulate import load_recipe
from hubbub.simulate.recipe import preset_names
from hubbub.simulate.runner import prepare_sources
from hubbub.sources.speech import assign_splits, index_speech
from hubbub.voices import (
    PAUSE,
    SYNTHESIZERS,
    SynthesisError,
    VoiceSpec,
    available_synthesizers,
    list_voices,
    make_sentence,
    make_voices,
    synthesize,
)
from hubbub.voices import synth as synth_module
from hubbub.voices.pitch import median_f0_hz, semitones

INSTALLED = available_synthesizers()
EVERY_FESTIVAL_VOICE = synth_module.festival_voices() == tuple(v[0] for v in synth_module._FESTIVAL_VOICES)
needs_espeak = pytest.mark.skipif("espeak-ng" not in INSTALLED,
                                  reason="espeak-ng not installed (apt-get install espeak-ng)")
needs_flite = pytest.mark.skipif("flite" not in INSTALLED,
                                 reason="flite not installed (apt-get install flite)")
needs_festival = pytest.mark.skipif(not EVERY_FESTIVAL_VOICE, reason=(
    "festival or a festvox voice not installed (scripts/setup.sh installs them)"))
EVERYTHING = len(INSTALLED) == len(SYNTHESIZERS) and EVERY_FESTIVAL_VOICE
needs_all = pytest.mark.skipif(not EVERYTHING, reason=f"needs every synthesizer ({synth_module.INSTALL_HINT})")
# Four speakers per family: Festival's are kal, slt (HTS), ked and kal again, so one voice has two.
SMALL = {"num_speakers": 12, "utterances_per_speaker": 2, "seed": 3}
TINY = {"num_speakers": 3, "utterances_per_speaker": 1, "seed": 3}  # one speaker per family
TEXT = "The quiet farmer carried a heavy basket across the bridge before the storm."


def read_manifest(path) -> list[dict]:
    path = path / "manifest.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not EVERYTHING:
        pytest.skip(f"needs every synthesizer ({synth_module.INSTALL_HINT})")
    out_dir = tmp_path_factory.mktemp("voices")
    make_voices(out_dir, **SMALL)
    return out_dir


def designed_f0_st(voice: VoiceSpec) -> float:
    """The mean F0 a flite or Festival speaker is set to, in semitones from its voice's own."""
    own = {name: f0 for name, _, f0, *_ in (*synth_module._FLITE_VOICES,
                                             *synth_module._FESTIVAL_VOICES)}[voice.name]
    pitch = voice.pitch or own or 1.0
    return semitones(pitch * voice.warp_pct / 100, own or 1.0)


# --- catalogue and sentences (no synthesizer needed) -------------------------------------------


def test_catalogue_is_fixed_unique_and_filesystem_safe():
    voices = list_voices()
    assert voices == list_voices()
    ids = [v.speaker for v in voices]
    assert len(set(ids)) == len(ids)
    assert len({(v.synthesizer, v.name, v.variant, v.pitch, v.rate, v.warp_pct) for v in voices}) == len(ids)
    assert all(re.fullmatch(r"(esp|fli|fes)_[a-z0-9_-]+", i) for i in ids)
    sizes = {s: len(list_voices((s,))) for s in SYNTHESIZERS}
    assert sizes == {"espeak-ng": 312, "flite": 110, "festival": 75}
    assert {v.name for v in list_voices(("flite",))[:4]} == {"kal16", "awb", "rms", "slt"}
    assert {v.name for v in list_voices(("festival",))[:3]} == {
        "kal_diphone", "ked_diphone", "cmu_us_slt_arctic_hts"}
    with pytest.raises(ValueError, match="unknown"):
        list_voices(("mbrola",))


def test_catalogue_prefix_changes_every_parameter():
    espeak = list_voices(("espeak-ng",))[:12]
    for a, b in zip(espeak, espeak[1:]):
        assert a.variant != b.variant and a.name != b.name and a.pitch != b.pitch
        assert a.rate != b.rate
    for family in ("flite", "festival"):
        by_voice: dict[str, list[VoiceSpec]] = {}
        for v in list_voices((family,))[:24]:
            by_voice.setdefault(v.name, []).append(v)
        for speakers in by_voice.values():
            for a, b in zip(speakers, speakers[1:]):
                assert a.warp_pct != b.warp_pct and a.rate != b.rate


def test_speakers_of_one_voice_are_spaced_apart():
    # The distinctness rule of docs/voices.md: two speakers of one base voice differ by >= 1.5
    # semitones in the F0 they are set to, or by >= 1.5 semitones (9%) in warp (formant scale),
    # less the rounding of pitches to whole Hz (0.2 semitones at 60 Hz) and warps to whole percent.
    # espeak-ng speakers of one accent and variant differ by 15 pitch steps (2-3 semitones).
    for family in SYNTHESIZERS:
        by_voice: dict[tuple, list[VoiceSpec]] = {}
        for v in list_voices((family,)):
            by_voice.setdefault(v.base_voice, []).append(v)
        for a, b in itertools.chain.from_iterable(itertools.combinations(g, 2) for g in by_voice.values()):
            if family == "espeak-ng":
                assert abs(a.pitch - b.pitch) >= 15, (a, b)
                continue
            warp_st = abs(semitones(a.warp_pct, b.warp_pct))
            f0_st = abs(designed_f0_st(a) - designed_f0_st(b))
            assert f0_st >= 1.3 or warp_st >= 1.4, (a.speaker, b.speaker, f0_st, warp_st)


@pytest.mark.parametrize("name", preset_names())
def test_the_default_corpus_gives_every_preset_20_valid_and_test_speakers(name):
    num = inspect.signature(make_voices).parameters["num_speakers"].default
    catalogues = {s: list_voices((s,)) for s in SYNTHESIZERS}
    speakers = [v.speaker for v in synth_module._choose_speakers(num, catalogues)]
    assert len(speakers) == num >= 200
    recipe = load_recipe(name)
    splits = assign_splits(speakers, recipe.splits, seed=0, min_per_split=recipe.speakers.max_count)
    assert len(splits["valid"]) >= 20 and len(splits["test"]) >= 20
    # Without Festival the other two families make up the number.
    del catalogues["festival"]
    assert len(synth_module._choose_speakers(num, catalogues)) == num


def test_families_share_the_speakers_evenly_and_make_up_for_a_small_one():
    catalogues = {s: list_voices((s,)) for s in SYNTHESIZERS}
    count = lambda n: {s: sum(v.family == s for v in synth_module._choose_speakers(n, catalogues))  # noqa: E731
                       for s in SYNTHESIZERS}
    assert count(12) == {"espeak-ng": 4, "flite": 4, "festival": 4}
    assert count(7) == {"espeak-ng": 3, "flite": 2, "festival": 2}
    assert count(240) == {"espeak-ng": 83, "flite": 82, "festival": 75}  # Festival has 75
    assert synth_module._choose_speakers(12, catalogues)[:4] == list_voices(("espeak-ng",))[:4]
    with pytest.raises(ValueError, match="install the others"):
        synth_module._choose_speakers(200, {"festival": catalogues["festival"]})


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
    with pytest.raises(RuntimeError, match=r"apt-get install espeak-ng flite festival festvox-"):
        make_voices(tmp_path)


def test_f0_estimate_finds_the_fundamental_of_a_harmonic_tone():
    t = np.arange(16000) / 16000
    for f0 in (70.0, 110.0, 180.0, 260.0):
        tone = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in (1, 2, 3, 4))
        assert median_f0_hz(tone, 16000) == pytest.approx(f0, rel=0.01)
    assert math.isnan(median_f0_hz(np.zeros(16000), 16000))


# --- synthesis ---------------------------------------------------------------------------------


@pytest.mark.parametrize("voice", [
    pytest.param(VoiceSpec("espeak-ng", "en-us", "en-us", "f2", 50, 175), marks=needs_espeak),
    pytest.param(VoiceSpec("flite", "kal16", "en-us", "", 0, 100), marks=needs_flite),
    pytest.param(VoiceSpec("flite", "slt", "en-us", "", 150, 85, 92), marks=needs_flite),
    pytest.param(VoiceSpec("festival", "kal_diphone", "en-us", "", 120, 115), marks=needs_festival),
    pytest.param(VoiceSpec("festival", "cmu_us_slt_arctic_hts", "en-us", "", 0, 85, 109),
                 marks=needs_festival),
    pytest.param(VoiceSpec("festival", "ked_diphone", "en-us", "", 0, 100, 84), marks=needs_festival),
])
def test_synthesizer_timings_reach_the_end_of_its_audio(voice):
    syn = synthesize(voice, "The quiet farmer carried a heavy basket across the bridge.")
    duration_s = len(syn.audio) / syn.sample_rate_hz
    assert syn.sample_rate_hz >= 8000
    assert all(a <= b for _, a, b in syn.phonemes)
    assert all(p[2] == q[1] for p, q in zip(syn.phonemes, syn.phonemes[1:]))  # contiguous
    assert syn.phonemes[-1][2] == pytest.approx(duration_s, abs=0.25)
    assert sum(p[0] != PAUSE for p in syn.phonemes) >= 25  # ~35 phonemes in the sentence


def _f0_hz(voice: VoiceSpec) -> float:
    audio, _ = synth_module._postprocess(synthesize(voice, TEXT), 16000)
    return median_f0_hz(audio, 16000)


@pytest.mark.parametrize("base, changed, expected_st", [
    # Each synthesizer's pitch setting moves the measured median F0 by what it was set to.
    pytest.param(VoiceSpec("espeak-ng", "en-us", "en-us", "m3", 50, 175),
                 VoiceSpec("espeak-ng", "en-us", "en-us", "m3", 65, 175), 2.5, marks=needs_espeak),
    pytest.param(VoiceSpec("flite", "slt", "en-us", "", 175, 100),
                 VoiceSpec("flite", "slt", "en-us", "", 156, 100), -2.0, marks=needs_flite),
    pytest.param(VoiceSpec("festival", "kal_diphone", "en-us", "", 105, 100),
                 VoiceSpec("festival", "kal_diphone", "en-us", "", 88, 100), -3.0, marks=needs_festival),
    pytest.param(VoiceSpec("festival", "ked_diphone", "en-us", "", 105, 100),
                 VoiceSpec("festival", "ked_diphone", "en-us", "", 118, 115), 2.0, marks=needs_festival),
    # The warp moves it too (with the formants), also for the voices whose F0 cannot be set.
    pytest.param(VoiceSpec("festival", "cmu_us_slt_arctic_hts", "en-us", "", 0, 100),
                 VoiceSpec("festival", "cmu_us_slt_arctic_hts", "en-us", "", 0, 100, 109), 1.5,
                 marks=needs_festival),
    pytest.param(VoiceSpec("flite", "rms", "en-us", "", 0, 100),
                 VoiceSpec("flite", "rms", "en-us", "", 0, 85, 92), -1.5, marks=needs_flite),
])
def test_pitch_and_warp_settings_move_the_measured_f0(base, changed, expected_st):
    assert semitones(_f0_hz(changed), _f0_hz(base)) == pytest.approx(expected_st, abs=0.6)


@pytest.mark.parametrize("voice", [
    pytest.param(VoiceSpec("flite", "kal16", "en-us", "", 0, 85, 109), marks=needs_flite),
    pytest.param(VoiceSpec("festival", "kal_diphone", "en-us", "", 0, 115, 92), marks=needs_festival),
    pytest.param(VoiceSpec("festival", "cmu_us_slt_arctic_hts", "en-us", "", 0, 85, 84),
                 marks=needs_festival),
])
def test_rate_is_kept_through_the_warp(voice):
    # The warp lengthens or shortens the audio; the synthesizer's duration setting makes up for it.
    def seconds(v: VoiceSpec) -> float:
        syn = synthesize(v, TEXT)
        return len(syn.audio) / syn.sample_rate_hz

    plain = dataclasses.replace(voice, rate=100, warp_pct=100)
    assert seconds(voice) / seconds(plain) == pytest.approx(100 / voice.rate, rel=0.08)


@needs_espeak
def test_espeak_ng_is_deterministic_across_calls():
    # libespeak-ng keeps state between utterances in one process; the child process avoids it.
    voice = list_voices(("espeak-ng",))[0]
    first = synthesize(voice, "Hello there, this is a test.")
    synthesize(voice, "Something else entirely, and longer than the first one.")
    again = synthesize(voice, "Hello there, this is a test.")
    assert np.array_equal(first.audio, again.audio) and first.phonemes == again.phonemes


# --- the corpus --------------------------------------------------------------------------------


@needs_all
def test_corpus_is_deterministic(tmp_path):
    make_voices(tmp_path / "a", **TINY)
    make_voices(tmp_path / "b", **TINY)
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    for entry in read_manifest(a):
        assert (a / entry["path"]).read_bytes() == (b / entry["path"]).read_bytes()


def test_speakers_are_distinct_and_split_between_families(corpus):
    entries = read_manifest(corpus)
    assert len(entries) == SMALL["num_speakers"] * SMALL["utterances_per_speaker"]
    speakers = {e["speaker"]: (e["synthesizer"], json.dumps(e["voice"])) for e in entries}
    assert len(speakers) == SMALL["num_speakers"]
    assert len(set(speakers.values())) == SMALL["num_speakers"]
    by_family = [s for s, _ in speakers.values()]
    assert {f: by_family.count(f) for f in SYNTHESIZERS} == {"espeak-ng": 4, "flite": 4, "festival": 4}
    assert all(e["family"] == e["synthesizer"] for e in entries)
    assert len({e["transcript"] for e in entries}) == len(entries)
    info = json.loads((corpus / "voices.json").read_text())
    assert info["families"] == {"espeak-ng": 4, "flite": 4, "festival": 4}


def test_speakers_of_one_voice_differ_in_measured_f0(corpus):
    f0s: dict[str, list[float]] = {}
    meta = {}
    for e in read_manifest(corpus):
        x, sr = sf.read(corpus / e["path"])
        f0s.setdefault(e["speaker"], []).append(median_f0_hz(x, sr))
        meta[e["speaker"]] = ((e["family"], e["voice"]["name"], e["voice"]["variant"]), e["voice"]["warp_pct"])
    f0 = {s: float(np.median(v)) for s, v in f0s.items()}
    assert all(50 < v < 400 for v in f0.values()), f0
    pairs = [(a, b) for a, b in itertools.combinations(f0, 2) if meta[a][0] == meta[b][0]]
    assert pairs  # Festival's kal_diphone speaks twice
    for a, b in pairs:
        warp_st = abs(semitones(meta[a][1], meta[b][1]))
        assert abs(semitones(f0[a], f0[b])) >= 1.0 or warp_st >= 1.4, (a, b, f0[a], f0[b])


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
        assert 1.0 < entry["duration_s"] < 7.5


def test_phonemes_cover_the_audio_in_order_for_every_family(corpus):
    families = set()
    for entry in read_manifest(corpus):
        phonemes, duration_s = entry["phonemes"], entry["duration_s"]
        assert phonemes[0][1] == 0.0 and phonemes[-1][2] == pytest.approx(duration_s, abs=1e-4)
        assert all(a <= b for _, a, b in phonemes)
        assert all(p[2] == q[1] for p, q in zip(phonemes, phonemes[1:]))
        speech = [p for p in phonemes if p[0] != PAUSE]
        assert sum(b - a for _, a, b in speech) > 0.5 * duration_s
        assert entry["phoneme_set"] == {"espeak-ng": "ipa", "flite": "cmu", "festival": "cmu"}[entry["family"]]
        families.add(entry["family"])
    assert families == set(SYNTHESIZERS)


def test_phoneme_timings_line_up_with_the_audio(corpus):
    # Nearly all energy lies between the first and the last spoken phoneme: timings shifted or
    # scaled against the audio (a resampling, warping or trimming slip) would leave speech outside.
    for entry in read_manifest(corpus):
        x, sr = sf.read(corpus / entry["path"])
        speech = [p for p in entry["phonemes"] if p[0] != PAUSE]
        inside = x[round(speech[0][1] * sr):round(speech[-1][2] * sr)]
        assert np.sum(inside**2) > 0.99 * np.sum(x**2), entry["speaker"]


@needs_all
def test_8khz_keeps_the_timings_in_seconds(tmp_path):
    make_voices(tmp_path / "wide", **TINY)
    make_voices(tmp_path / "narrow", **TINY, sample_rate_hz=8000)
    for wide, narrow in zip(read_manifest(tmp_path / "wide"), read_manifest(tmp_path / "narrow")):
        assert sf.info(tmp_path / "narrow" / narrow["path"]).samplerate == narrow["sample_rate_hz"] == 8000
        assert narrow["transcript"] == wide["transcript"]
        assert narrow["duration_s"] == pytest.approx(wide["duration_s"], abs=2e-4)
        assert [p[0] for p in narrow["phonemes"]] == [p[0] for p in wide["phonemes"]]
        times = np.array([p[1:] for p in narrow["phonemes"]])
        assert times == pytest.approx(np.array([p[1:] for p in wide["phonemes"]]), abs=2e-4)


# --- families: holdout, missing synthesizers ---------------------------------------------------


def test_family_manifests_partition_the_corpus(corpus):
    everything = sorted(line for line in (corpus / "manifest.jsonl").read_text().splitlines())
    for family in SYNTHESIZERS:
        only = read_manifest(corpus / f"only-{family}.jsonl")
        without = read_manifest(corpus / f"without-{family}.jsonl")
        assert {e["family"] for e in only} == {family}
        assert family not in {e["family"] for e in without}
        lines = (corpus / f"only-{family}.jsonl").read_text().splitlines()
        lines += (corpus / f"without-{family}.jsonl").read_text().splitlines()
        assert sorted(lines) == everything
    # The family travels with each utterance into the speech index.
    assert {u.extra["family"] for u in index_speech(corpus).utterances} == set(SYNTHESIZERS)


def test_family_holdout_puts_every_held_out_speaker_in_test_only(corpus):
    # docs/voices.md: train and validate on two families, test on the third.
    train = load_recipe("debug", [f"speech.corpus={corpus / 'without-festival.jsonl'}",
                                  "splits={train: 0.9, valid: 0.1}"])
    test = load_recipe("debug", [f"speech.corpus={corpus / 'only-festival.jsonl'}", "splits={test: 1}"])
    train_pools, _, _ = prepare_sources(train, seed=0)
    test_pools, _, _ = prepare_sources(test, seed=0)
    assert set(train_pools) == {"train", "valid"} and set(test_pools) == {"test"}
    festival = {e["speaker"] for e in read_manifest(corpus) if e["family"] == "festival"}
    assert set(test_pools["test"].speakers) == festival
    seen_in_training = set(train_pools["train"].speakers) | set(train_pools["valid"].speakers)
    assert seen_in_training and not seen_in_training & festival
    families = {u.extra["family"] for p in train_pools.values() for us in p.utterances_by_speaker.values()
                for u in us}
    assert families == {"espeak-ng", "flite"}


@needs_all
def test_without_festival_on_path_the_others_build_with_a_warning(tmp_path, monkeypatch):
    # A PATH with flite (and nothing else): espeak-ng is found as a library, Festival not at all.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(synth_module.shutil.which("flite"), bin_dir / "flite")
    monkeypatch.setenv("PATH", str(bin_dir))
    assert synth_module.festival_voices() == ()
    with pytest.warns(UserWarning, match=r"festival not installed: building from espeak-ng, flite only "
                                         r"\(install it with: apt-get install festival festvox-kallpc16k"):
        manifest = make_voices(tmp_path / "voices", num_speakers=3, utterances_per_speaker=1)
    entries = read_manifest(manifest)
    assert sorted(e["family"] for e in entries) == ["espeak-ng", "espeak-ng", "flite"]
    params = json.loads((tmp_path / "voices" / "voices.json").read_text())["params"]
    assert params["synthesizers"] == ["espeak-ng", "flite"]
    assert sorted(p.name for p in (tmp_path / "voices").glob("*.jsonl")) == [
        "manifest.jsonl", "only-espeak-ng.jsonl", "only-flite.jsonl", "without-espeak-ng.jsonl",
        "without-flite.jsonl"]


@needs_all
def test_a_missing_festival_voice_is_named_and_left_out(tmp_path, monkeypatch):
    real = synth_module._festival_probe

    def without_hts(executable):
        release, voices = real(executable)
        return release, tuple(v for v in voices if not v.endswith("_hts"))

    monkeypatch.setattr(synth_module, "_festival_probe", without_hts)
    with pytest.warns(UserWarning, match=r"Festival voices not installed, left out: cmu_us_slt_arctic_hts "
                                         r"\(install them with: apt-get install festvox-us-slt-hts\)"):
        manifest = make_voices(tmp_path, num_speakers=6, utterances_per_speaker=1, synthesizers=("festival",))
    names = [e["voice"]["name"] for e in read_manifest(manifest)]
    assert names == ["kal_diphone", "ked_diphone"] * 3
    assert "cmu_us_slt_arctic_hts" not in json.loads((tmp_path / "voices.json").read_text())[
        "params"]["synthesizer_versions"]["festival"]


# --- resume and failures -----------------------------------------------------------------------


@needs_all
def test_resume_returns_without_work_and_new_parameters_regenerate(tmp_path):
    params = {"num_speakers": 3, "utterances_per_speaker": 1}
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

    # A corpus of an older format (the 24-speaker espeak-ng + flite one) is never taken as is.
    info_path = tmp_path / "voices.json"
    info = json.loads(info_path.read_text())
    info["params"]["format_version"] = 1
    info_path.write_text(json.dumps(info))
    make_voices(tmp_path, **params, seed=1)
    assert json.loads(info_path.read_text())["params"]["format_version"] == synth_module.FORMAT_VERSION
    assert manifest.stat().st_mtime_ns != mtimes[0]


@needs_espeak
@needs_flite
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
