"""Lip streams: viseme coverage, alignment with the audio, mouth geometry, speakers, crops."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hubbub.sources import mouths
from hubbub.sources.mouths import VISEMES, lip_stream, mouth_shapes, render_lips, viseme_of
from hubbub.video import FPS, ROI_SIZE, crop_roi, num_video_frames
from hubbub.voices import available_synthesizers

CMU_PHONES = ("aa ae ah ao aw ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh t "
              "th uh uw v w y z zh pau ax").split()
# What espeak-ng's English voices emit (collected from a 120-utterance corpus), plus stressed,
# long, ASCII-length and diacritic spellings it may also produce.
ESPEAK_IPA = ("a a: aa aɪ aɪə aɪɚ aʊ aː b d dʒ e ei eə eɪ eː f h i iə iː j k l m n o oə oʊ oː p "
              "pau r s t tʃ t̪ uː v w z æ æʊ ð ŋ ɐ ɑə ɑː ɑːɹ ɒ ɔ ɔə ɔɪ ɔː ɔːɹ ə əl əu əɪ əʊ ɚ ɛ "
              "ɛə ɛɹ ɜ ɜː ɡ ɪ ɪɹ ɹ ɾ ʃ ʉ ʉɹ ʉː ʊ ʊə ʊɹ ʌ ʌʉ ʌʊ ʍ ʒ θ ᵻ "
              "ˈaɪ ˌɪ ˈɑː iˑ tʰ ɫ ʔ ɾ̃ n̩ l̩ ts").split()
SPEAKER = "fli_slt_p0_r100"
DARK = 50  # grey level below which a pixel is mouth interior (lips are >= 0.6 x skin >= 63)


def timeline(*segments: tuple[str, float]) -> list[list]:
    """[(phoneme, duration_s), ...] -> contiguous manifest rows from 0 s."""
    rows, t = [], 0.0
    for name, duration_s in segments:
        rows.append([name, round(t, 6), round(t + duration_s, 6)])
        t += duration_s
    return rows


def inside(start_s: float, end_s: float) -> np.ndarray:
    """Frames whose coarticulation window (the frame +- 20 ms) lies within [start_s, end_s]."""
    k = np.arange(round(end_s * FPS) + 1)
    return k[(k / FPS - 0.02 >= start_s - 1e-9) & ((k + 1) / FPS + 0.02 <= end_s + 1e-9)]


def dark_pixels(frames: np.ndarray) -> np.ndarray:
    return (frames < DARK).sum(axis=(-2, -1))


def mouth_columns(frame: np.ndarray) -> int:
    """Width in pixels of everything (lips included) clearly darker than the surrounding skin."""
    band = frame[24:84]  # below the nose shadow
    return int(((band < np.median(band) - 12).sum(axis=0) > 1).sum())


# --- phoneme -> viseme ---------------------------------------------------------------------------


def test_every_cmu_phone_and_common_espeak_symbol_maps_to_a_known_viseme():
    before = sum(mouths.UNKNOWN_PHONEMES.values())
    for phone in CMU_PHONES:
        assert viseme_of(phone, "cmu") in VISEMES, phone
    for symbol in ESPEAK_IPA:
        assert viseme_of(symbol, "ipa") in VISEMES, symbol
    assert sum(mouths.UNKNOWN_PHONEMES.values()) == before


@pytest.mark.parametrize("phoneme_set, phones, viseme", [
    ("cmu", "pau", "rest"), ("ipa", "pau _", "rest"),
    ("cmu", "p b m", "bilabial"), ("ipa", "p b m", "bilabial"),
    ("cmu", "f v", "labiodental"), ("ipa", "f v", "labiodental"),
    ("cmu", "th dh", "dental"), ("ipa", "θ ð", "dental"),
    ("cmu", "t d n s z l", "alveolar"), ("ipa", "t t̪ d n s z l ɾ", "alveolar"),
    ("cmu", "sh zh ch jh", "postalveolar"), ("ipa", "ʃ ʒ tʃ dʒ", "postalveolar"),
    ("cmu", "k g ng", "velar"), ("ipa", "k ɡ ŋ", "velar"),
    ("cmu", "aa ae aw ay", "open"), ("ipa", "ɑ ɑː ˈæ aɪ aʊ", "open"),
    ("cmu", "iy ih y", "spread"), ("ipa", "i iː ˈɪ j", "spread"),
    ("cmu", "uw uh w", "round"), ("ipa", "u uː ʊ w", "round"),
    ("cmu", "ao ow oy", "round_open"), ("ipa", "ɔː ɒ oʊ ɔɪ", "round_open"),
    ("cmu", "r er", "r"), ("ipa", "ɹ ɚ", "r"),
])
def test_phone_classes(phoneme_set, phones, viseme):
    assert {p: viseme_of(p, phoneme_set) for p in phones.split()} == dict.fromkeys(phones.split(),
                                                                                   viseme)


def test_unknown_symbols_are_neutral_and_counted():
    before = mouths.UNKNOWN_PHONEMES["ipa:☃"]
    assert viseme_of("☃", "ipa") == "mid" and viseme_of("xx9", "cmu") == "mid"
    assert mouths.UNKNOWN_PHONEMES["ipa:☃"] == before + 1
    with pytest.raises(ValueError, match="phoneme_set"):
        viseme_of("a", "sampa")


# --- shapes and alignment ----------------------------------------------------------------------


def test_a_phoneme_lands_in_the_frames_covering_its_time():
    # aa from 1.00 to 1.20 s = frames 25..29; coarticulation reaches one frame either side only.
    opening = mouth_shapes(timeline(("pau", 1.0), ("aa", 0.2), ("pau", 0.8)), "cmu", 50)[:, 0]
    assert np.all(opening[:24] == 0) and np.all(opening[31:] == 0)
    assert opening[25:30].min() > max(opening[24], opening[30])
    np.testing.assert_allclose(opening[26:29], VISEMES["open"][0], atol=1e-6)
    assert set(np.flatnonzero(dark_pixels(render_lips(
        mouth_shapes(timeline(("pau", 1.0), ("aa", 0.2), ("pau", 0.8)), "cmu", 50),
        SPEAKER)))) <= set(range(24, 31))


def test_frame_counts_follow_the_audio():
    assert num_video_frames(4 * 16000, 16000) == 100
    assert num_video_frames(4 * 16000 + 1, 16000) == 101
    assert num_video_frames(640 * 7, 16000) == 7 and num_video_frames(0, 16000) == 0
    assert num_video_frames(44100, 44100) == FPS
    row = {"speaker": SPEAKER, "phoneme_set": "cmu",
           "phonemes": timeline(("pau", 0.1), ("m", 0.2), ("aa", 1.938))}  # ends at 2.238 s
    assert lip_stream(row).shape == (56, ROI_SIZE, ROI_SIZE)
    assert lip_stream(row, 60).dtype == np.uint8 and len(lip_stream(row, 60)) == 60


@pytest.mark.parametrize("phoneme_set, vowel, closure", [("cmu", "aa", "m b p"),
                                                         ("ipa", "ɑː", "m b p")])
def test_bilabial_closures_show_less_mouth_interior_than_open_vowels(phoneme_set, vowel, closure):
    segments = [("pau", 0.3)]
    for consonant in closure.split():
        segments += [(vowel, 0.4), (consonant, 0.2)]
    phonemes = timeline(*segments, (vowel, 0.4), ("pau", 0.3))
    frames = render_lips(mouth_shapes(phonemes, phoneme_set, 70), SPEAKER)
    dark = dark_pixels(frames)
    vowel_frames = np.concatenate([inside(a, b) for name, a, b in phonemes if name == vowel])
    closure_frames = np.concatenate([inside(a, b) for name, a, b in phonemes if name in closure])
    assert len(closure_frames) >= 9 and len(vowel_frames) >= 24
    assert dark[closure_frames].max() == 0
    assert dark[vowel_frames].min() > 200
    assert dark[:5].max() == 0 and dark[-3:].max() == 0  # silence is closed


def test_rounded_vowels_are_narrower_than_spread_ones():
    for phoneme_set, rounded, spread in (("cmu", "uw", "iy"), ("ipa", "uː", "iː")):
        phonemes = timeline((rounded, 0.4), (spread, 0.4))
        shapes = mouth_shapes(phonemes, phoneme_set, 20)
        assert shapes[4, 1] < shapes[14, 1] and shapes[4, 2] > shapes[14, 2]
        frames = render_lips(shapes, SPEAKER)
        assert mouth_columns(frames[4]) < 0.8 * mouth_columns(frames[14])


def test_diphthongs_glide_from_nucleus_to_offglide():
    opening, width, rounding = mouth_shapes(timeline(("ay", 0.4)), "cmu", 10).T
    assert opening[1] > opening[8] and width[8] > width[1]  # a -> i: closes and spreads
    rounding = mouth_shapes(timeline(("aʊ", 0.4)), "ipa", 10)[:, 2]
    assert rounding[8] > rounding[1]


# --- rendering -----------------------------------------------------------------------------------


def test_rendering_is_deterministic_per_speaker_and_differs_between_speakers():
    shapes = mouth_shapes(timeline(("pau", 0.2), ("aa", 0.3), ("m", 0.2), ("iy", 0.3)), "cmu", 25)
    a = render_lips(shapes, "esp_en-us_m1_p50_r175")
    assert a.shape == (25, ROI_SIZE, ROI_SIZE) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, render_lips(shapes, "esp_en-us_m1_p50_r175"))
    other_seed = render_lips(shapes, "esp_en-us_m1_p50_r175", seed=1)
    assert not np.array_equal(a, other_seed)  # per-frame noise and jitter ...
    assert abs(float(a.mean()) - float(other_seed.mean())) < 2.0  # ... not the look
    b = render_lips(shapes, "fli_awb_p117_r85")
    assert np.abs(a - b.astype(float)).mean() > 1.5 * np.abs(a - other_seed.astype(float)).mean()
    speakers = [render_lips(shapes, f"spk{i}") for i in range(8)]
    assert np.std([f.mean() for f in speakers]) > 8.0  # skin tones vary
    assert len({int(np.argmax(dark_pixels(f) > 0)) for f in speakers}) == 1  # timing does not
    assert len({tuple(np.argwhere(f[7] < DARK).mean(0).round()) for f in speakers}) > 4  # places
    assert render_lips(shapes, SPEAKER, size=64).shape == (25, 64, 64)


def test_dark_pixels_track_the_mouth_opening_and_a_loudness_envelope():
    """Learnability: a frame statistic follows the articulation, hence the audio, frame by frame."""
    rng = np.random.default_rng(0)
    segments = [("pau", 0.3)]
    for _ in range(25):
        segments += [(str(rng.choice(CMU_PHONES[:-2])), float(rng.uniform(0.04, 0.2)))]
    phonemes = timeline(*segments, ("pau", 0.3))
    num_frames = num_video_frames(round(phonemes[-1][2] * 16000), 16000)
    shapes = mouth_shapes(phonemes, "cmu", num_frames)
    dark = dark_pixels(render_lips(shapes, SPEAKER)).astype(float)
    assert np.corrcoef(dark, shapes[:, 0])[0, 1] > 0.8
    # Noise whose loudness follows the opening, cut into 640-sample frames (16 kHz, 25 fps).
    envelope = np.repeat(shapes[:, 0], 640)
    audio = envelope * rng.standard_normal(len(envelope))
    rms = np.sqrt((audio.reshape(num_frames, 640) ** 2).mean(axis=1))
    assert np.corrcoef(dark, rms)[0, 1] > 0.5


def test_render_lips_handles_no_frames():
    assert render_lips(np.zeros((0, 3)), SPEAKER).shape == (0, ROI_SIZE, ROI_SIZE)


# --- crops -------------------------------------------------------------------------------------


def test_centre_crop_is_deterministic_and_random_crops_stay_in_bounds():
    frames = np.arange(3 * 96 * 96, dtype=np.int64).reshape(3, 96, 96)
    centre = crop_roi(frames, train=False)
    assert centre.shape == (3, 88, 88)
    np.testing.assert_array_equal(centre, frames[:, 4:92, 4:92])
    offsets = set()
    for seed in range(200):
        crop = crop_roi(frames, train=True, rng=seed)
        top, left = divmod(int(crop[0, 0, 0]), 96)
        assert crop.shape == (3, 88, 88) and 0 <= top <= 8 and 0 <= left <= 8
        np.testing.assert_array_equal(crop, frames[:, top:top + 88, left:left + 88])  # one offset
        offsets.add((top, left))
    assert {0, 8} <= {t for t, _ in offsets} and len(offsets) > 40
    np.testing.assert_array_equal(crop_roi(frames, train=True, rng=7),
                                  crop_roi(frames, train=True, rng=np.random.default_rng(7)))
    with pytest.raises(ValueError, match="rng"):
        crop_roi(frames, train=True)
    with pytest.raises(ValueError, match="smaller"):
        crop_roi(frames[:, :80], train=False)


def test_crops_work_on_batched_torch_tensors():
    batch = torch.zeros(2, 4, 5, 96, 96, dtype=torch.uint8)
    assert crop_roi(batch, train=False).shape == (2, 4, 5, 88, 88)
    crop = crop_roi(batch, 64, train=True, rng=0)
    assert isinstance(crop, torch.Tensor) and crop.shape == (2, 4, 5, 64, 64)


# --- with a real synthesizer ---------------------------------------------------------------------


@pytest.mark.skipif(not available_synthesizers(),
                    reason="needs espeak-ng, flite or festival (scripts/setup.sh installs them)")
def test_real_utterances_render_in_sync_with_their_audio(tmp_path):
    import soundfile as sf

    from hubbub.voices import make_voices

    before = sum(mouths.UNKNOWN_PHONEMES.values())
    # One speaker of each installed family: IPA from espeak-ng, CMU phones from flite and Festival.
    manifest = make_voices(tmp_path, num_speakers=3, utterances_per_speaker=1)
    for row in map(json.loads, manifest.read_text().splitlines()):
        audio, sample_rate_hz = sf.read(tmp_path / row["path"])
        num_frames = num_video_frames(len(audio), sample_rate_hz)
        assert abs(len(lip_stream(row)) - num_frames) <= 1
        frames = lip_stream(row, num_frames)
        assert frames.shape == (num_frames, ROI_SIZE, ROI_SIZE)
        hop = sample_rate_hz // FPS
        padded = np.pad(audio, (0, num_frames * hop - len(audio)))
        rms = np.sqrt((padded.reshape(num_frames, hop) ** 2).mean(axis=1))
        dark = dark_pixels(frames).astype(float)

        def corr(lag: int) -> float:  # video delayed by `lag` frames against the audio
            return np.corrcoef(dark[max(lag, 0):num_frames + min(lag, 0)],
                               rms[max(-lag, 0):num_frames + min(-lag, 0)])[0, 1]

        assert corr(0) > 0.1
        assert corr(0) > np.mean([corr(lag) for lag in (-8, -6, 6, 8)])
    assert sum(mouths.UNKNOWN_PHONEMES.values()) == before
