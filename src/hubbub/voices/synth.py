"""The built-in voices corpus: espeak-ng, flite and Festival speakers saying generated sentences.

Nothing is downloaded: the text comes from :mod:`hubbub.voices.sentences` and the audio from three
synthesizer families installed from Debian packages (``apt-get install espeak-ng flite festival
festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts``): espeak-ng (formant synthesis), flite
(diphone and statistical parametric voices) and Festival (diphone voices and an HTS voice, built
from recordings of real speakers). Every utterance keeps the phoneme timings its synthesizer
reports, so later stages can render mouth shapes that move with the audio. How speakers are made
distinct, and the spacing between them, is in ``docs/voices.md``.

On disk (``out_dir``)::

    voices.json                          the generation parameters, speakers and skipped utterances
    only-{family}.jsonl                  the manifest's lines of one family (with two or more)
    without-{family}.jsonl               the other families' lines: train on these, test on only-*
    manifest.jsonl                       one JSON object per utterance (below); written last
    {speaker}/{speaker}_{k:03d}.flac     16-bit mono FLAC at ``sample_rate_hz``

A manifest line::

    {"path": "fli_slt_p158_r100/fli_slt_p158_r100_000.flac", "speaker": "fli_slt_p158_r100",
     "utterance": 0, "duration_s": 2.653, "sample_rate_hz": 16000, "licence": "CC0-1.0",
     "transcript": "Hugo fell around my neighbour without a word.", "synthesizer": "flite",
     "family": "flite",
     "voice": {"name": "slt", "language": "en-us", "variant": "", "pitch": 158, "rate": 100,
               "warp_pct": 100},
     "phoneme_set": "cmu", "phonemes": [["pau", 0.0, 0.1], ["hh", 0.1, 0.175], ...]}

``family`` is the synthesizer family (the same as ``synthesizer``; the name the holdout manifests
use). ``phonemes`` are ``[phoneme, start_s, end_s]`` on the FLAC file's time axis: contiguous, in
order, covering [0, duration_s] (the 0.1 s margins are pauses), as reported by the synthesizer
(espeak-ng to the millisecond, flite and Festival to 1 us as printed; Festival's HTS voice in
5 ms frames). ``"pau"`` marks a pause for every synthesizer. espeak-ng names phonemes in IPA
(``phoneme_set: "ipa"``); it sometimes reports a zero-length phoneme (it folds a liquid into the
preceding vowel's transition: ``["l", 0.871, 0.871]``), and its short word-boundary pauses
(< 70 ms) can still hold the neighbouring vowels' transitions. flite names phonemes in its CMU
phone set (ARPAbet, lower case), Festival in its ``radio`` phone set, the same ARPAbet names;
both are ``phoneme_set: "cmu"``.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly
from tqdm import tqdm

from hubbub.sources.mouths import PAUSE
from hubbub.voices.sentences import make_sentence

SYNTHESIZERS = ("espeak-ng", "flite", "festival")
LICENCE = "CC0-1.0"  # generated text, synthesized by us: no third-party rights in the output
PHONEME_SETS = {"espeak-ng": "ipa", "flite": "cmu", "festival": "cmu"}
# Bump when the output for the same parameters changes, so existing corpora are regenerated.
FORMAT_VERSION = 2
# (festival voice, language, the voice's own mean F0 target in Hz or None where Festival cannot
# set it, the Debian package). Debian's other festvox voices speak other languages (or are the
# same speakers at 8 kHz: festvox-kallpc8k, festvox-kdlpc8k).
_FESTIVAL_VOICES = (
    ("kal_diphone", "en-us", 105, "festvox-kallpc16k"),
    ("cmu_us_slt_arctic_hts", "en-us", None, "festvox-us-slt-hts"),
    ("ked_diphone", "en-us", 105, "festvox-kdlpc16k"),
)
PACKAGES = {"espeak-ng": ("espeak-ng",), "flite": ("flite",),
            "festival": ("festival", *sorted(v[3] for v in _FESTIVAL_VOICES))}
INSTALL_HINT = "apt-get install " + " ".join(p for s in SYNTHESIZERS for p in PACKAGES[s])

_TIMEOUT_S = 30.0
_ATTEMPTS = 3
_PEAK = 10 ** (-1 / 20)  # normalise every utterance to -1 dBFS peak
_MARGIN_S = 0.1  # silence kept (or padded) on each side of the speech
_SPEECH_S = (1.5, 5.0)  # the range of speech durations sentences are sized for
# Seconds per word of generated sentences = this / rate (pauses included), measured over the
# default corpus; espeak-ng's rate is in words per minute, flite's and Festival's in percent.
_WORD_SECONDS_X_RATE = {"espeak-ng": 56.0, "flite": 36.0, "festival": 38.0}
# Reported timings and the waveform may end apart: flite's diphone voice (kal16) stops half-way
# through its final pause (~0.11 s); a larger gap means the timings cannot be trusted.
_MAX_TIMING_OVERRUN_S = 0.25
# Festival's default Lisp heap (10M cells) costs ~0.3 s of page faults per process; 2M is ample
# for one sentence and makes a Festival utterance as cheap as a flite one (~0.1 s of CPU).
_FESTIVAL_ARGS = ("--heap", "2000000", "--batch")


@dataclasses.dataclass(frozen=True)
class VoiceSpec:
    """One speaker: a synthesizer voice with fixed pitch, rate and frequency warp.

    ``name`` is the synthesizer's voice (espeak-ng: an English accent such as ``"en-gb-scotland"``;
    flite: ``"kal16"``, ``"awb"``, ``"rms"``, ``"slt"``; Festival: ``"kal_diphone"``,
    ``"ked_diphone"``, ``"cmu_us_slt_arctic_hts"``). ``variant`` is an espeak-ng voice variant
    (``"m3"``, ``"f2"``, ``"klatt"``), empty otherwise. ``pitch`` is espeak-ng's ``-p`` (0..99,
    50 = the variant's own) or, for flite and Festival, the target mean F0 in Hz before the warp
    (0 = the voice's own; flite's rms and Festival's HTS voice ignore it). ``rate`` is espeak-ng's
    ``-s`` in words per minute, or the speed in percent (100 = the voice's own) for flite and
    Festival, as heard after the warp.

    ``warp_pct`` scales every frequency of the output, formants and F0 together, by
    ``warp_pct / 100``: the audio is resampled as if played back faster or slower (the way Kaldi's
    speed perturbation makes new speakers), with the synthesizer's duration setting compensating
    so the speaking rate stays ``rate``. A warp above 100 sounds like a shorter vocal tract, below
    like a longer one; it is how voices without an F0 setting get several pitches.
    """

    synthesizer: str
    name: str
    language: str
    variant: str
    pitch: int
    rate: int
    warp_pct: int = 100

    @property
    def speaker(self) -> str:
        """Filesystem-safe speaker id, e.g. ``esp_en-us_m3_p50_r175``, ``fli_slt_p0_r100`` or
        ``fes_kal_diphone_p94_r85_w109`` (``_w`` only where the warp is not 100)."""
        warp = f"_w{self.warp_pct}" if self.warp_pct != 100 else ""
        if self.synthesizer == "espeak-ng":
            return f"esp_{self.name}_{self.variant.lower()}_p{self.pitch}_r{self.rate}{warp}"
        prefix = {"flite": "fli", "festival": "fes"}[self.synthesizer]
        return f"{prefix}_{self.name}_p{self.pitch}_r{self.rate}{warp}"

    @property
    def family(self) -> str:
        """The synthesizer family, the unit a family holdout leaves out."""
        return self.synthesizer

    @property
    def base_voice(self) -> tuple[str, str, str]:
        """What the synthesizer itself calls a voice: (synthesizer, name, variant). Speakers of
        one base voice differ in pitch and warp by the spacing in ``docs/voices.md``."""
        return (self.synthesizer, self.name, self.variant)

    def as_dict(self) -> dict:
        return {"name": self.name, "language": self.language, "variant": self.variant,
                "pitch": self.pitch, "rate": self.rate, "warp_pct": self.warp_pct}


# The espeak-ng catalogue walks each axis with a period coprime to the others' (13, 8, 3, 5), so
# speaker i is (variant[i % 13], accent[i % 8], pitch[i % 3], rate[i % 5]): by the Chinese
# remainder theorem the first 13 * 8 * 3 = 312 speakers are distinct (variant, accent, pitch)
# triples, and any prefix changes every axis from one speaker to the next, which keeps the first
# few speakers as different as possible. Speakers of one (accent, variant) differ by 15 pitch
# steps, 2-3 semitones; the catalogue stops at 312 because later speakers would differ in rate
# alone.
_ESPEAK_ACCENTS = (  # (espeak-ng voice, language)
    ("en-us", "en-us"), ("en", "en-gb"), ("en-gb-scotland", "en-gb-scotland"),
    ("en-gb-x-rp", "en-gb-x-rp"), ("en-029", "en-029"), ("en-gb-x-gbclan", "en-gb-x-gbclan"),
    ("en-gb-x-gbcwmd", "en-gb-x-gbcwmd"), ("en-us-nyc", "en-us-nyc"),
)
# Alternating male/female formant sets; whisper and the novelty variants are left out.
_ESPEAK_VARIANTS = (
    "m1", "f1", "m3", "f2", "m2", "f3", "m4", "f4", "m6", "f5", "m7", "Annie", "klatt",
)
_ESPEAK_PITCHES = (50, 35, 65)
_ESPEAK_RATES_WPM = (175, 150, 200, 160, 190)
# (flite voice, language, the voice's mean F0 in Hz or None where flite ignores the F0 target).
# kal is left out for kal16 (the same speaker at 8 kHz), awb_time because it only speaks times.
_FLITE_VOICES = (
    ("kal16", "en-us", 95), ("slt", "en-us", 175), ("awb", "en-gb-scotland", 130),
    ("rms", "en-us", None),
)
# A voice's own duration_stretch, which --setf replaces rather than multiplies (others: 1).
_FLITE_DURATION_STRETCH = {"kal16": 1.1}
_RATES_PCT = (100, 85, 115)
# flite and Festival have few voices, so each gives many speakers: a grid of mean F0 (relative to
# the voice's own) by warp, both 1.5 semitones apart. The F0 axis is the pitch heard, after the
# warp: the synthesizer is asked for F0 - warp. A 1.5-semitone step in the F0 asked for comes out
# as 1.1-1.9 semitones in the median F0 measured over a speaker's utterances (the rate and the
# text move it a little), and a 1.5-semitone warp moves every formant by 9%. Walked like the
# espeak-ng axes (periods 7 and 5), so the first 35 speakers of a voice are the 35 cells and
# consecutive ones differ in both.
_F0_STEPS_ST = (0.0, -3.0, 3.0, -1.5, 1.5, -4.5, 4.5)
_WARPS_PCT = (100, 92, 109, 84, 119)  # 2 ** (k * 1.5 / 12), k = 0, -1, 1, -2, 2
# A voice whose F0 cannot be set (flite's rms, Festival's HTS slt) gets the warps alone: 5 speakers.


def _espeak_catalogue() -> list[VoiceSpec]:
    axes = (_ESPEAK_VARIANTS, _ESPEAK_ACCENTS, _ESPEAK_PITCHES, _ESPEAK_RATES_WPM)
    out = []
    for i in range(math.prod(len(a) for a in axes[:3])):
        variant, (name, language), pitch, rate = (a[i % len(a)] for a in axes)
        out.append(VoiceSpec("espeak-ng", name, language, variant, pitch, rate))
    return out


def _voice_speakers(synthesizer: str, name: str, language: str,
                    f0_hz: int | None) -> list[VoiceSpec]:
    """One flite or Festival voice's speakers, in catalogue order (see _F0_STEPS_ST)."""
    if f0_hz is None:
        return [VoiceSpec(synthesizer, name, language, "", 0, _RATES_PCT[i % len(_RATES_PCT)], w)
                for i, w in enumerate(_WARPS_PCT)]
    out = []
    for i in range(len(_F0_STEPS_ST) * len(_WARPS_PCT)):
        step, warp = _F0_STEPS_ST[i % len(_F0_STEPS_ST)], _WARPS_PCT[i % len(_WARPS_PCT)]
        pitch = 0 if step == 0 and warp == 100 else round(f0_hz * 2 ** (step / 12) * 100 / warp)
        out.append(VoiceSpec(synthesizer, name, language, "", pitch,
                             _RATES_PCT[i % len(_RATES_PCT)], warp))
    return out


def _interleave(per_voice: list[list[VoiceSpec]]) -> list[VoiceSpec]:
    """Round-robin over the voices, so any prefix spreads over all of them."""
    out = []
    for k in range(max(map(len, per_voice), default=0)):
        out += [speakers[k] for speakers in per_voice if k < len(speakers)]
    return out


def _flite_catalogue() -> list[VoiceSpec]:
    return _interleave([_voice_speakers("flite", *v) for v in _FLITE_VOICES])


def _festival_catalogue(voices: tuple[str, ...] | None = None) -> list[VoiceSpec]:
    return _interleave([_voice_speakers("festival", name, language, f0_hz)
                        for name, language, f0_hz, _ in _FESTIVAL_VOICES
                        if voices is None or name in voices])


def list_voices(synthesizers: tuple[str, ...] = SYNTHESIZERS) -> list[VoiceSpec]:
    """The speaker catalogue of the given synthesizers, in a fixed order (installed or not).

    Per synthesizer the order spreads the speakers out: consecutive speakers differ in voice (or
    variant and accent) and in pitch, so ``make_voices`` takes a prefix. There are 312 espeak-ng
    speakers (13 variants x 8 accents x 3 pitches), 110 flite speakers (35 per voice whose F0
    can be set, 5 for rms) and 75 Festival speakers (35 each for kal and ked, 5 for the HTS slt
    voice).

    >>> [v.speaker for v in list_voices(("flite",))[:4]]
    ['fli_kal16_p0_r100', 'fli_slt_p0_r100', 'fli_awb_p0_r100', 'fli_rms_p0_r100']
    >>> [v.speaker for v in list_voices(("festival",))[3:5]]
    ['fes_kal_diphone_p96_r85_w92', 'fes_cmu_us_slt_arctic_hts_p0_r85_w92']
    """
    _check_names(synthesizers)
    catalogues = {"espeak-ng": _espeak_catalogue, "flite": _flite_catalogue,
                  "festival": _festival_catalogue}
    return [v for s in synthesizers for v in catalogues[s]()]


def _check_names(synthesizers: tuple[str, ...]) -> None:
    unknown = [s for s in synthesizers if s not in SYNTHESIZERS]
    if unknown:
        raise ValueError(f"unknown synthesizers {unknown}; choose from {SYNTHESIZERS}")


@functools.lru_cache(maxsize=None)
def _espeak_library() -> str | None:
    return ctypes.util.find_library("espeak-ng")


@functools.lru_cache(maxsize=None)
def _festival_probe(executable: str) -> tuple[str, tuple[str, ...]]:
    """(release, the catalogue's voices it can load) of one festival executable."""
    try:
        out = subprocess.run([executable, *_FESTIVAL_ARGS, "(print festival_version)",
                              "(print (voice.list))"], capture_output=True, text=True,
                             timeout=_TIMEOUT_S, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return "", ()
    release = out.split('"')[1] if out.count('"') >= 2 else ""
    listed = set(re.findall(r"[\w-]+", out.rpartition('"')[2]))
    return release, tuple(v[0] for v in _FESTIVAL_VOICES if v[0] in listed)


def festival_voices() -> tuple[str, ...]:
    """The catalogue's Festival voices installed here (none without ``festival`` on PATH)."""
    executable = shutil.which("festival")
    return _festival_probe(executable)[1] if executable else ()


def available_synthesizers() -> list[str]:
    """The synthesizers installed here, in ``SYNTHESIZERS`` order.

    espeak-ng counts when its library (libespeak-ng) is found, since timings come from the
    library; flite when the ``flite`` binary is on PATH; Festival when ``festival`` is on PATH
    and can load at least one of the catalogue's voices (:func:`festival_voices`).
    """
    found = {"espeak-ng": _espeak_library() is not None, "flite": shutil.which("flite") is not None,
             "festival": bool(festival_voices())}
    return [s for s in SYNTHESIZERS if found[s]]


def _synthesizer_version(synthesizer: str) -> str:
    """Stored with the parameters: another synthesizer version (or set of Festival voices)
    gives other audio."""
    if synthesizer == "espeak-ng":
        lib = ctypes.CDLL(_espeak_library())
        lib.espeak_Info.restype = ctypes.c_char_p
        return lib.espeak_Info(None).decode()
    if synthesizer == "festival":
        release, voices = _festival_probe(shutil.which("festival") or "festival")
        return f"festival-{release.split(':')[0]} ({', '.join(voices)})"
    return _flite_version()


@functools.lru_cache(maxsize=None)
def _flite_version() -> str:
    out = subprocess.run(["flite", "--version"], capture_output=True, text=True, timeout=_TIMEOUT_S)
    match = re.search(r"flite-\S+", out.stdout)
    return match.group(0) if match else out.stdout.strip()


# --- back ends ---------------------------------------------------------------------------------


class SynthesisError(RuntimeError):
    """One utterance could not be synthesized (or its timings did not match its audio)."""


@dataclasses.dataclass
class Synthesis:
    """A synthesizer's raw output: audio (T,) float64 in [-1, 1] at its native rate, and its
    reported phonemes as contiguous (name, start_s, end_s) on the same time axis."""

    audio: np.ndarray
    sample_rate_hz: int
    phonemes: list[tuple[str, float, float]]


# libespeak-ng keeps state between utterances in one process: the first utterance after
# espeak_Initialize is spoken ~3% faster than the same text later, pause lengths depend on the
# previous text, and espeak_Terminate cannot be followed by a new espeak_Initialize. So each
# utterance runs in a fresh interpreter (-I -S: no site packages, ~50 ms of CPU) that needs only
# ctypes, which makes the audio a function of (voice, text) alone. The child prints one JSON line
# (sample rate, events as [type, audio_position_ms, phoneme]) and then the raw int16 samples.
_ESPEAK_CHILD = r"""
import ctypes, json, sys

lib_name, voice, rate_wpm, pitch, text = sys.argv[1:]

class Id(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]

class Event(ctypes.Structure):  # espeak_EVENT, speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
                ("text_position", ctypes.c_int), ("length", ctypes.c_int),
                ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", Id)]

LIST_TERMINATED, PHONEME = 0, 7
pcm, events = [], []

@ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(Event))
def on_audio(wav, n_samples, event):
    if n_samples > 0:
        pcm.append(ctypes.string_at(wav, 2 * n_samples))
    i = 0
    while event[i].type != LIST_TERMINATED:
        e = event[i]
        # IPA names longer than 8 bytes arrive truncated, without a NUL: drop the partial char.
        name = e.id.string.decode("utf-8", "ignore") if e.type == PHONEME else ""
        events.append([e.type, e.audio_position, name])
        i += 1
    return 0

lib = ctypes.CDLL(lib_name)
# AUDIO_OUTPUT_SYNCHRONOUS; INITIALIZE_PHONEME_EVENTS | _PHONEME_IPA | _DONT_EXIT
sample_rate_hz = lib.espeak_Initialize(2, 200, None, 0x8003)
if sample_rate_hz <= 0:
    sys.exit("espeak_Initialize failed")
lib.espeak_SetSynthCallback(on_audio)
if lib.espeak_SetVoiceByName(voice.encode()) != 0:
    sys.exit(f"espeak-ng has no voice {voice!r}")
lib.espeak_SetParameter(1, int(rate_wpm), 0)  # espeakRATE, absolute
lib.espeak_SetParameter(3, int(pitch), 0)  # espeakPITCH, absolute
data = text.encode() + b"\0"
if lib.espeak_Synth(data, len(data), 0, 1, 0, 1, None, None) or lib.espeak_Synchronize():
    sys.exit("espeak_Synth failed")  # POS_CHARACTER, espeakCHARS_UTF8 above
sys.stdout.buffer.write(json.dumps({"sample_rate_hz": sample_rate_hz, "events": events}).encode())
sys.stdout.buffer.write(b"\n" + b"".join(pcm))
"""
_ESPEAK_PHONEME_EVENT = 7


def _run(argv: list[str], timeout_s: float) -> bytes:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SynthesisError(f"{argv[0]}: {e}") from e
    if done.returncode != 0:
        raise SynthesisError(f"{argv[0]} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return done.stdout


def _synthesize_espeak(voice: VoiceSpec, text: str, timeout_s: float) -> Synthesis:
    """Phoneme starts are espeak's PHONEME events (audio_position, ms since the start of the
    audio); a phoneme ends where the next starts, the last one at the final event (END)."""
    library = _espeak_library()
    if library is None:
        raise SynthesisError(f"libespeak-ng not found; install it with: {INSTALL_HINT}")
    name = f"{voice.name}+{voice.variant}" if voice.variant else voice.name
    rate_wpm = round(voice.rate * 100 / voice.warp_pct)  # the warp shortens by warp_pct / 100
    out = _run([sys.executable, "-I", "-S", "-c", _ESPEAK_CHILD, library, name, str(rate_wpm),
                str(voice.pitch), text], timeout_s)
    header, _, pcm = out.partition(b"\n")
    info = json.loads(header)
    events = info["events"]
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float64) / 32768.0
    starts = [(e[2] or PAUSE, e[1] / 1000.0) for e in events if e[0] == _ESPEAK_PHONEME_EVENT]
    if not starts:
        raise SynthesisError(f"espeak-ng reported no phonemes for {text!r}")
    end_s = max(e[1] for e in events) / 1000.0
    ends = [s for _, s in starts[1:]] + [end_s]
    return Synthesis(audio, info["sample_rate_hz"],
                     [(n, s, e) for (n, s), e in zip(starts, ends)])


def _synthesize_flite(voice: VoiceSpec, text: str, timeout_s: float) -> Synthesis:
    """``-psdur`` prints ``phoneme:end_s`` for every segment of the utterance; a segment starts
    where the previous one ends (the first at 0)."""
    features = []
    if voice.pitch:
        features += ["--setf", f"int_f0_target_mean={voice.pitch}"]
    if voice.rate != voice.warp_pct:
        stretch = _FLITE_DURATION_STRETCH.get(voice.name, 1.0) * voice.warp_pct / voice.rate
        features += ["--setf", f"duration_stretch={stretch:.6g}"]
    with tempfile.TemporaryDirectory(prefix="hubbub-flite-") as tmp:
        wav = os.path.join(tmp, "out.wav")
        out = _run(["flite", "-voice", voice.name, *features, "-psdur", "-o", wav, "-t", text],
                   timeout_s)
        try:
            audio, sample_rate_hz = sf.read(wav, dtype="float64", always_2d=False)
        except (OSError, RuntimeError) as e:  # soundfile raises LibsndfileError(RuntimeError)
            raise SynthesisError(f"flite wrote no readable audio: {e}") from e
    phonemes, start_s = [], 0.0
    for token in out.decode().split():
        phoneme, _, end = token.rpartition(":")
        try:
            phonemes.append((phoneme, start_s, float(end)))
        except ValueError as e:
            raise SynthesisError(f"flite printed {token!r} among its segments") from e
        start_s = float(end)
    if not phonemes:
        raise SynthesisError(f"flite reported no phonemes for {text!r}")
    return Synthesis(audio, sample_rate_hz, phonemes)


def _festival_program(voice: VoiceSpec, text: str, wav: str) -> list[str]:
    """Festival expressions (argv items starting with "(" are evaluated in order) that speak
    ``text`` into ``wav`` and print each segment as ``seg NAME END_S``."""
    f0_hz = {v[0]: v[2] for v in _FESTIVAL_VOICES}.get(voice.name)
    program = [f"(voice_{voice.name})"]
    if voice.name.endswith("_hts"):
        # Festival's HTS module reads only -m and -r (speed) from hts_engine_params; the first
        # "-r" wins. Duration_Stretch does not reach it.
        program.append(f'(set! hts_engine_params (cons (list "-r" {voice.rate / voice.warp_pct:.6g})'
                       f" hts_engine_params))")
    else:
        program.append(f"(Parameter.set 'Duration_Stretch (* (Parameter.get 'Duration_Stretch) "
                       f"{voice.warp_pct / voice.rate:.6g}))")
    if voice.pitch and f0_hz is not None:
        # The diphone voices' Int_Targets_LR maps its model's F0 onto target_f0_mean/std: move
        # the mean to the pitch and keep the spread proportional, a semitone shift of the contour.
        program.append(
            "(let ((mean (car (cdr (assoc 'target_f0_mean int_lr_params)))) "
            "(std (car (cdr (assoc 'target_f0_std int_lr_params))))) "
            f"(set! int_lr_params (list (list 'target_f0_mean {voice.pitch}) "
            f"(list 'target_f0_std (* std (/ {voice.pitch} mean))) "
            "(assoc 'model_f0_mean int_lr_params) (assoc 'model_f0_std int_lr_params))))")
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    wav_quoted = wav.replace("\\", "\\\\").replace('"', '\\"')
    program += [
        f'(set! utt (utt.synth (Utterance Text "{quoted}")))',
        f"(utt.save.wave utt \"{wav_quoted}\" 'riff)",
        "(mapcar (lambda (s) (format t \"seg %s %f\\n\" (item.name s) (item.feat s \"end\"))) "
        "(utt.relation.items utt 'Segment))",
    ]
    return program


def _synthesize_festival(voice: VoiceSpec, text: str, timeout_s: float) -> Synthesis:
    """Segments are Festival's Segment relation with their end times (the HTS voice's come back
    from the engine's alignment); a segment starts where the previous one ends (the first at 0).
    """
    with tempfile.TemporaryDirectory(prefix="hubbub-festival-") as tmp:
        wav = os.path.join(tmp, "out.wav")
        try:
            done = subprocess.run(["festival", *_FESTIVAL_ARGS, *_festival_program(voice, text, wav)],
                                  capture_output=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SynthesisError(f"festival: {e}") from e
        stderr = done.stderr.decode(errors="replace")
        if done.returncode != 0 or "mismatch" in stderr:  # HTS: "Output segment mismatch"
            raise SynthesisError(f"festival exited {done.returncode}: {stderr[-500:]}")
        try:
            audio, sample_rate_hz = sf.read(wav, dtype="float64", always_2d=False)
        except (OSError, RuntimeError) as e:
            raise SynthesisError(f"festival wrote no readable audio: {e}; {stderr[-300:]}") from e
    phonemes, start_s = [], 0.0
    for line in done.stdout.decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] != "seg":
            continue
        try:
            end_s = float(parts[2])
        except ValueError as e:
            raise SynthesisError(f"festival printed {line!r} among its segments") from e
        phonemes.append((PAUSE if parts[1] in ("h#", "#") else parts[1], start_s, end_s))
        start_s = end_s
    if not phonemes:
        raise SynthesisError(f"festival reported no segments for {text!r}")
    return Synthesis(audio, sample_rate_hz, phonemes)


def _warp(syn: Synthesis, warp_pct: int) -> Synthesis:
    """Every frequency times warp_pct / 100, the duration divided by it: the same samples read
    at a higher (lower) rate, which _postprocess then resamples. The rate is rounded to 10 Hz so
    the resampling ratio stays small (warp_pct / 100 to within 0.06%)."""
    if warp_pct == 100:
        return syn
    rate_hz = round(syn.sample_rate_hz * warp_pct / 1000) * 10
    scale = syn.sample_rate_hz / rate_hz
    return Synthesis(syn.audio, rate_hz, [(n, a * scale, b * scale) for n, a, b in syn.phonemes])


def synthesize(voice: VoiceSpec, text: str, timeout_s: float = _TIMEOUT_S) -> Synthesis:
    """Speak ``text`` with ``voice``; raises :class:`SynthesisError` on any failure, including
    timings that do not match the audio. Deterministic: a fresh process per call. The result is
    at the (warped) rate its samples are to be read at; see :class:`VoiceSpec` ``warp_pct``."""
    backend = {"espeak-ng": _synthesize_espeak, "flite": _synthesize_flite,
               "festival": _synthesize_festival}[voice.synthesizer]
    syn = backend(voice, text, timeout_s)
    duration_s = len(syn.audio) / syn.sample_rate_hz
    if not np.isfinite(syn.audio).all() or np.abs(syn.audio).max(initial=0.0) < 1e-3:
        raise SynthesisError(f"{voice.speaker}: silent or non-finite audio for {text!r}")
    if all(p[0] == PAUSE for p in syn.phonemes):
        raise SynthesisError(f"{voice.speaker}: only pauses reported for {text!r}")
    if abs(syn.phonemes[-1][2] - duration_s) > _MAX_TIMING_OVERRUN_S:
        raise SynthesisError(f"{voice.speaker}: phonemes end at {syn.phonemes[-1][2]:.3f} s, "
                             f"audio at {duration_s:.3f} s, for {text!r}")
    return _warp(syn, voice.warp_pct)


# --- post-processing ---------------------------------------------------------------------------


def _postprocess(syn: Synthesis, sample_rate_hz: int) -> tuple[np.ndarray, list[list]]:
    """Resample, cut to the speech plus margins, peak-normalise -> (int16 audio, phonemes).

    The cut is placed by the synthesizer's own timings (first to last non-pause phoneme, plus
    _MARGIN_S each side, zero-padded where the synthesizer left less), not by an energy
    threshold: flite's kal16 pauses hold noise at -30 dB from its peak, espeak-ng starts speaking
    at 0 s, and either way both synthesizers would leave their own silence signature. Afterwards
    the phonemes cover [0, duration_s] exactly, the margins labelled as pauses. resample_poly is
    zero-phase, so a time in seconds names the same instant before and after resampling.
    """
    x = syn.audio
    if syn.sample_rate_hz != sample_rate_hz:
        g = math.gcd(sample_rate_hz, syn.sample_rate_hz)
        x = resample_poly(x, sample_rate_hz // g, syn.sample_rate_hz // g)
    speech = [p for p in syn.phonemes if p[0] != PAUSE]
    start = round((speech[0][1] - _MARGIN_S) * sample_rate_hz)
    stop = round((speech[-1][2] + _MARGIN_S) * sample_rate_hz)
    x = np.pad(x[max(start, 0):stop], (max(-start, 0), max(stop - len(x), 0)))
    offset_s, duration_s = start / sample_rate_hz, round(len(x) / sample_rate_hz, 5)

    def clip(t: float) -> float:
        return round(min(max(t - offset_s, 0.0), duration_s), 5)

    # Synthesis.phonemes are contiguous, so boundaries suffice; pauses wrap the margins.
    edges = [0.0, clip(syn.phonemes[0][1]), *(clip(e) for _, _, e in syn.phonemes), duration_s]
    phonemes: list[list] = []
    for name, a, b in zip([PAUSE, *(p[0] for p in syn.phonemes), PAUSE], edges, edges[1:]):
        if name == PAUSE and phonemes and phonemes[-1][0] == PAUSE:
            phonemes[-1][2] = b  # one pause for a margin and the synthesizer's pause runs
        else:
            phonemes.append([name, a, b])
    peak = np.abs(x).max()
    if peak < 1e-3:
        raise SynthesisError("silence under the reported phonemes: timings do not fit the audio")
    q = np.rint(x * (_PEAK / peak) * 32767).astype(np.int16)
    # Zero-length pauses are cut-off remnants; espeak-ng's zero-length phonemes are kept.
    return q, [p for p in phonemes if p[2] > p[1] or p[0] != PAUSE]


def _atomic_write(path: pathlib.Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _utterance_rng(seed: int, speaker: str, index: int, attempt: int) -> np.random.Generator:
    # crc32, not hash(): str hashes are salted per process.
    return np.random.default_rng([seed, zlib.crc32(speaker.encode()), index, attempt])


def _sentence_words(voice: VoiceSpec) -> tuple[int, int]:
    """The word counts that take ~_SPEECH_S seconds at this voice's rate."""
    words_per_s = voice.rate / _WORD_SECONDS_X_RATE[voice.synthesizer]
    low, high = (round(t * words_per_s) for t in _SPEECH_S)
    return max(3, low), max(3, high)


def _make_utterance(job: tuple[VoiceSpec, int], *, out_dir: pathlib.Path, seed: int,
                    sample_rate_hz: int) -> tuple[dict | None, list[str]]:
    """Synthesize and write one utterance -> (manifest entry or None, errors of failed tries).

    A failed try is retried with the next sentence of the utterance's own generator stream, so
    the outcome depends only on (seed, speaker, index), never on scheduling.
    """
    voice, index = job
    errors = []
    for attempt in range(_ATTEMPTS):
        text = make_sentence(_utterance_rng(seed, voice.speaker, index, attempt),
                             *_sentence_words(voice))
        try:
            audio, phonemes = _postprocess(synthesize(voice, text), sample_rate_hz)
        except SynthesisError as e:
            errors.append(str(e))
            continue
        rel = f"{voice.speaker}/{voice.speaker}_{index:03d}.flac"
        buf = io.BytesIO()
        sf.write(buf, audio, sample_rate_hz, format="FLAC", subtype="PCM_16")
        _atomic_write(out_dir / rel, buf.getvalue())
        return {
            "path": rel, "speaker": voice.speaker, "utterance": index,
            "duration_s": round(len(audio) / sample_rate_hz, 5), "sample_rate_hz": sample_rate_hz,
            "licence": LICENCE, "transcript": text, "synthesizer": voice.synthesizer,
            "family": voice.family, "voice": voice.as_dict(),
            "phoneme_set": PHONEME_SETS[voice.synthesizer], "phonemes": phonemes,
        }, errors
    return None, errors


def _choose_speakers(num_speakers: int, catalogues: dict[str, list[VoiceSpec]]) -> list[VoiceSpec]:
    """Split num_speakers as evenly as possible between the catalogues, earlier ones taking the
    remainder; one with fewer speakers than its share leaves the rest to the others."""
    shares = dict.fromkeys(catalogues, 0)
    left, open_ = num_speakers, [s for s, c in catalogues.items() if c]
    while left and open_:
        each, extra = divmod(left, len(open_))
        for i, s in enumerate(open_):
            give = min(each + (i < extra), len(catalogues[s]) - shares[s])
            shares[s] += give
            left -= give
        open_ = [s for s in open_ if shares[s] < len(catalogues[s])]
    if left:
        have = ", ".join(f"{s}: {len(c)}" for s, c in catalogues.items())
        raise ValueError(f"{num_speakers} speakers asked for, the installed synthesizers have "
                         f"{num_speakers - left} ({have}); install the others ({INSTALL_HINT})")
    return [v for s, c in catalogues.items() for v in c[:shares[s]]]


def _num_workers() -> int:
    # Workers mostly wait on synthesizer subprocesses; the output does not depend on their number.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cores or 1))


def make_voices(out_dir, *, num_speakers: int = 240, utterances_per_speaker: int = 6,
                seed: int = 0, sample_rate_hz: int = 16000,
                synthesizers: tuple[str, ...] = SYNTHESIZERS,
                progress: bool = False) -> pathlib.Path:
    """Synthesize the built-in voices corpus into ``out_dir``; returns ``out_dir/manifest.jsonl``.

    ``num_speakers`` is split evenly between the requested synthesizer families that are
    installed (the first speakers of each one's :func:`list_voices` catalogue, so a smaller
    corpus's speakers are a subset of a larger one's; a family with fewer speakers than its share
    leaves the rest to the others); each speaker says ``utterances_per_speaker`` generated
    sentences of about 1.5..5 s. Audio is resampled to ``sample_rate_hz``, cut to the spoken
    phonemes plus 0.1 s of silence each side and peak-normalised to -1 dBFS; phoneme timings
    follow (see the module docstring for the manifest format). The default corpus (240 speakers:
    83 espeak-ng, 82 flite, 75 Festival; 1440 utterances, 1.3 hours, 100 MB) takes about 90 s of
    CPU, mostly in synthesizer processes: 1-3 minutes on 2 cores, depending on what else runs.

    A family that is not installed is left out with a warning naming the Debian packages to
    install, and the corpus is built from the others (a Festival voice that is missing, likewise);
    RuntimeError when none of ``synthesizers`` is installed.

    With two or more families, ``only-{family}.jsonl`` and ``without-{family}.jsonl`` beside the
    manifest split it by family: a corpus made from ``without-festival.jsonl`` trains on
    espeak-ng and flite speakers, one from ``only-festival.jsonl`` tests on Festival's.

    Deterministic: the same parameters and synthesizer versions give the same manifest and the
    same audio bytes; sentences come from generators seeded by (seed, speaker, utterance).
    Resumable: files are written under temporary names and renamed, the manifest last; if a
    manifest with the same parameters (stored in ``voices.json``, with the synthesizer versions
    and the Festival voices found) exists, it is returned at once. An utterance that fails three
    times (three sentences) is skipped with a warning and listed in ``voices.json``.

    >>> manifest = make_voices("data/voices", num_speakers=6)  # doctest: +SKIP
    >>> first = json.loads(manifest.read_text().splitlines()[0])  # doctest: +SKIP
    >>> first["speaker"], first["transcript"], first["phonemes"][:3]  # doctest: +SKIP
    ('esp_en-us_m1_p50_r175', 'A lazy horse brought that empty teacher.',
     [['pau', 0.0, 0.1], ['ɐ', 0.1, 0.174], ['l', 0.174, 0.241]])
    """
    _check_names(tuple(synthesizers))
    if num_speakers < 1 or utterances_per_speaker < 1 or seed < 0 or sample_rate_hz < 8000:
        raise ValueError("need num_speakers >= 1, utterances_per_speaker >= 1, seed >= 0 and "
                         f"sample_rate_hz >= 8000, got {num_speakers}, {utterances_per_speaker}, "
                         f"{seed}, {sample_rate_hz}")
    installed = available_synthesizers()
    used = [s for s in synthesizers if s in installed]
    if not used:
        raise RuntimeError(f"none of the speech synthesizers {list(synthesizers)} is installed; "
                           f"install them with: {INSTALL_HINT}")
    missing = [s for s in synthesizers if s not in used]
    if missing:
        packages = " ".join(p for s in missing for p in PACKAGES[s])
        warnings.warn(f"{', '.join(missing)} not installed: building from {', '.join(used)} only "
                      f"(install it with: apt-get install {packages})", stacklevel=2)
    catalogues = {s: list_voices((s,)) for s in used}
    if "festival" in used:
        here = festival_voices()
        absent = [v for v in _FESTIVAL_VOICES if v[0] not in here]
        if absent:
            warnings.warn(f"Festival voices not installed, left out: "
                          f"{', '.join(v[0] for v in absent)} (install them with: apt-get "
                          f"install {' '.join(v[3] for v in absent)})", stacklevel=2)
        catalogues["festival"] = _festival_catalogue(here)

    out_dir = pathlib.Path(out_dir)
    manifest, info_path = out_dir / "manifest.jsonl", out_dir / "voices.json"
    params = {
        "format_version": FORMAT_VERSION, "num_speakers": num_speakers,
        "utterances_per_speaker": utterances_per_speaker, "seed": seed,
        "sample_rate_hz": sample_rate_hz, "synthesizers": used,
        "synthesizer_versions": {s: _synthesizer_version(s) for s in used},
    }
    if manifest.exists() and info_path.exists():
        if json.loads(info_path.read_text()).get("params") == params:
            return manifest
    voices = _choose_speakers(num_speakers, catalogues)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A manifest of other parameters must not survive next to a half-rewritten corpus.
    for stale in [manifest, *out_dir.glob("only-*.jsonl"), *out_dir.glob("without-*.jsonl")]:
        stale.unlink(missing_ok=True)

    for voice in voices:
        (out_dir / voice.speaker).mkdir(exist_ok=True)
    jobs = [(v, k) for v in voices for k in range(utterances_per_speaker)]
    work = functools.partial(_make_utterance, out_dir=out_dir, seed=seed,
                             sample_rate_hz=sample_rate_hz)
    with ThreadPoolExecutor(_num_workers()) as pool:
        results = list(tqdm(pool.map(work, jobs), total=len(jobs), disable=not progress,
                            desc="voices", unit="utt"))

    entries = [entry for entry, _ in results if entry is not None]
    skipped = [{"speaker": v.speaker, "utterance": k, "errors": errors}
               for (v, k), (entry, errors) in zip(jobs, results) if entry is None]
    if not entries:
        raise RuntimeError(f"every utterance failed; first errors: {skipped[0]['errors']}")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} of {len(jobs)} utterances after {_ATTEMPTS} tries "
                      f"each (listed in {info_path}); first: {skipped[0]}", stacklevel=2)
    info = {"params": params, "speakers": [v.speaker for v in voices], "skipped": skipped,
            "families": {s: sum(v.family == s for v in voices) for s in used}}
    _atomic_write(info_path, (json.dumps(info, indent=1, sort_keys=True) + "\n").encode())
    lines = [(e["family"], json.dumps(e, sort_keys=True, ensure_ascii=False) + "\n")
             for e in entries]
    families = [s for s in used if any(f == s for f, _ in lines)]
    if len(families) > 1:
        for family in families:
            _atomic_write(out_dir / f"only-{family}.jsonl",
                          "".join(line for f, line in lines if f == family).encode())
            _atomic_write(out_dir / f"without-{family}.jsonl",
                          "".join(line for f, line in lines if f != family).encode())
    _atomic_write(manifest, "".join(line for _, line in lines).encode())
    return manifest
