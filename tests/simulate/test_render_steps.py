"""Each step of :func:`hubbub.simulate.sample.render` alone, by the property it promises: placement
at unit power, a unit impulse's convolution is a delay, the SIR and SNR asked for, loudness and
peak, quantisation within one LSB, one lip frame per 40 ms."""
import math

import numpy as np
import pyloudnorm
import pyroomacoustics as pra
import pytest
import soundfile as sf

from hubbub.shards.format import dequantize
from hubbub.simulate.sample import (SampleError, _active_power, convolve_sources, direct_delays, dry_target,
                                    loudness_scale, noise_at_snr, place_sources, quantise, room_impulse_responses,
                                    sir_gains)
from hubbub.sources.lips import draw_lips, render_source_lips
from hubbub.sources.utterance import Utterance
from hubbub.testing import dummy_speech
from hubbub.video import FPS, ROI_SIZE, num_video_frames

SEEDS = range(5)
RATE_HZ = 8000


def _db(a: float, b: float) -> float:
    return 10 * math.log10(a / b)


@pytest.mark.parametrize("seed", SEEDS)
def test_placed_sources_have_unit_active_power_and_silence_outside_their_excerpt(tmp_path, seed):
    rng = np.random.default_rng(seed)
    n = 2 * RATE_HZ
    sources = []
    for k in range(3):
        path = tmp_path / f"u{k}.wav"
        sf.write(path, dummy_speech(rng, 1.5, RATE_HZ), RATE_HZ, subtype="FLOAT")
        length = int(rng.integers(RATE_HZ // 2, RATE_HZ))
        sources.append({"path": str(path), "utterance_start_s": int(rng.integers(0, RATE_HZ // 4)) / RATE_HZ,
                        "num_samples": length, "start_sample": int(rng.integers(0, n - length))})
    placed = place_sources(sources, RATE_HZ, n)
    assert placed.shape == (3, n) and placed.dtype == np.float32
    for row, s in zip(placed, sources):
        inside = row[s["start_sample"]: s["start_sample"] + s["num_samples"]]
        assert _active_power(inside) == pytest.approx(1.0, rel=1e-4)
        assert not row[: s["start_sample"]].any() and not row[s["start_sample"] + s["num_samples"]:].any()
        excerpt = sf.read(s["path"], dtype="float32")[0][round(s["utterance_start_s"] * RATE_HZ):][: s["num_samples"]]
        np.testing.assert_allclose(inside / inside.max(), excerpt / excerpt.max(), atol=1e-5)


@pytest.mark.parametrize("seed", SEEDS)
def test_convolving_with_a_unit_impulse_is_a_delay(seed):
    rng = np.random.default_rng(seed)
    num_sources, num_mics, n = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(100, 3000))
    placed = rng.standard_normal((num_sources, n)).astype(np.float32)
    delays = rng.integers(0, 60, (num_sources, num_mics))
    impulses = np.zeros((num_sources, num_mics, 64), np.float32)
    for (k, m), d in np.ndenumerate(delays):
        impulses[k, m, d] = 1.0
    (images,) = convolve_sources(placed, [impulses], n)
    assert images.shape == (num_sources, num_mics, n)
    for (k, m), d in np.ndenumerate(delays):
        np.testing.assert_allclose(images[k, m, d:], placed[k, : n - d], atol=1e-5)
        np.testing.assert_allclose(images[k, m, :d], 0.0, atol=1e-5)


def test_each_filter_set_is_a_full_convolution_truncated_to_the_mixture():
    rng = np.random.default_rng(0)
    placed = rng.standard_normal((2, 500)).astype(np.float32)
    sets = [rng.standard_normal((2, 3, length)).astype(np.float32) for length in (40, 300)]
    for got, filters in zip(convolve_sources(placed, sets, 500), sets):
        want = [[np.convolve(placed[k], filters[k, m])[:500] for m in range(3)] for k in range(2)]
        np.testing.assert_allclose(got, want, atol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_sir_gains_give_the_sir_asked_for(seed):
    rng = np.random.default_rng(seed)
    num_sources = int(rng.integers(2, 5))
    rev = rng.standard_normal((num_sources, 4000)) * rng.uniform(0.01, 10, (num_sources, 1))
    sir_db = [0.0] + list(rng.uniform(-10, 10, num_sources - 1))
    gains = sir_gains(rev, sir_db)
    assert gains[0] == 1.0
    for k in range(1, num_sources):
        assert _db(_active_power(gains[k] * rev[k]), _active_power(rev[0])) == pytest.approx(sir_db[k], abs=1e-6)


def test_a_silent_source_gets_gain_zero():
    rev = np.stack([np.ones(100), np.zeros(100)])
    np.testing.assert_array_equal(sir_gains(rev, [0.0, 3.0]), [1.0, 0.0])


@pytest.mark.parametrize("seed", SEEDS)
def test_dry_target_is_the_scaled_source_delayed_to_its_direct_path(seed):
    rng = np.random.default_rng(seed)
    placed = rng.standard_normal((3, 1000)).astype(np.float32)
    gains, delays = rng.uniform(0.1, 3, 3), [int(d) for d in rng.integers(0, 200, 3)]
    dry = dry_target(placed, gains, delays)
    assert dry.shape == placed.shape and dry.dtype == np.float32
    for k, d in enumerate(delays):
        assert not dry[k, :d].any()
        np.testing.assert_allclose(dry[k, d:], placed[k, : 1000 - d] * gains[k], rtol=1e-6)


def test_direct_delays_are_the_distance_over_the_speed_of_sound():
    room = {"dim_m": [6.0, 5.0, 3.0], "rt60_s_target": 0.3, "rir_mode": "fast", "rir_seed": 1}
    sources = [{"position_m": [1.0, 1.0, 1.5]}, {"position_m": [4.5, 3.2, 1.7]}]
    mics = np.array([[3.0, 2.5, 1.4], [3.2, 2.5, 1.4]])
    rir_set = room_impulse_responses(room, sources, mics, 16000)
    assert rir_set.rirs.shape[:2] == (2, 2)
    for ref in (0, 1):
        distances = [np.linalg.norm(np.subtract(s["position_m"], mics[ref])) for s in sources]
        want = [round(d / pra.constants.get("c") * 16000) for d in distances]
        assert direct_delays(rir_set, ref) == want


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("spatial", ["diffuse", "independent"])
def test_noise_lands_at_the_snr_asked_for(seed, spatial):
    rng = np.random.default_rng(seed)
    n, snr_db = 4000, float(rng.uniform(-5, 20))
    speech = dummy_speech(rng, n / RATE_HZ, RATE_HZ) * rng.uniform(0.1, 10)
    mics = np.array([[2.0, 2.0, 1.5], [2.1, 2.0, 1.5], [2.0, 2.1, 1.5]])
    ref = int(rng.integers(3))
    params = {"kind": "coloured", "snr_db": snr_db, "spatial": spatial, "seed": seed,
              "shifts": [0, 1000, 2500], "colour_exponent": float(rng.uniform(0, 2))}
    noise, gain = noise_at_snr(params, speech, mics, ref, RATE_HZ)
    assert noise.shape == (3, n) and noise.dtype == np.float32 and gain > 0
    assert _db(_active_power(speech), _active_power(noise[ref])) == pytest.approx(snr_db, abs=1e-3)


def test_no_noise_is_none():
    assert noise_at_snr({"kind": "none", "snr_db": None}, np.ones(10), np.zeros((1, 3)), 0, RATE_HZ) == (None, None)


@pytest.mark.parametrize("seed", SEEDS)
def test_normalising_hits_the_loudness_target_and_never_exceeds_the_peak(seed):
    rng = np.random.default_rng(seed)
    n = 2 * RATE_HZ
    mix = np.stack([dummy_speech(rng, n / RATE_HZ, RATE_HZ) for _ in range(2)]) * rng.uniform(0.01, 10)
    others = [rng.standard_normal((2, n)).astype(np.float32) * rng.uniform(0.01, 3) for _ in range(2)]
    target_lufs, max_peak = float(rng.uniform(-40, -15)), float(rng.uniform(0.3, 0.99))
    loudness, scale, limited = loudness_scale(mix[0], [mix, *others], RATE_HZ, target_lufs, max_peak)
    peak = max(np.abs(a).max() for a in [mix, *others]) * scale
    assert peak <= max_peak * (1 + 1e-9)
    reached = pyloudnorm.Meter(RATE_HZ, block_size=0.4).integrated_loudness((mix[0] * scale).astype(np.float64))
    if limited:
        assert peak == pytest.approx(max_peak) and reached < target_lufs
    else:
        assert reached == pytest.approx(target_lufs, abs=0.01)
    assert loudness + 20 * math.log10(scale) == pytest.approx(reached, abs=0.01)


def test_a_signal_with_nan_is_refused():
    x = np.ones((1, 800), np.float32)
    x[0, 3] = np.nan
    with pytest.raises(SampleError, match="NaN or inf"):
        loudness_scale(np.ones(800, np.float32) * 0.1, [x], RATE_HZ, -25.0, 0.9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("bits", [16, 24])
def test_quantising_round_trips_within_one_lsb_and_the_parts_sum_to_the_mix(seed, bits):
    rng = np.random.default_rng(seed)
    scale = float(rng.uniform(0.1, 2))
    signals = {"reverberant": rng.uniform(-0.2, 0.2, (2, 3, 500)).astype(np.float32),
               "dry": rng.uniform(-0.4, 0.4, (2, 500)).astype(np.float32)}
    noise = rng.uniform(-0.1, 0.1, (3, 500)).astype(np.float32)
    mix_q, noise_q, targets_q = quantise(signals, noise, bits, scale)
    lsb = 2.0 ** -(bits - 1)
    for kind, x in signals.items():
        for k in range(len(x)):
            assert np.abs(dequantize(targets_q[kind][k], bits) - x[k] * scale).max() <= lsb
    assert np.abs(dequantize(noise_q, bits) - noise * scale).max() <= lsb
    assert mix_q.dtype == np.int32
    np.testing.assert_array_equal(mix_q, sum(targets_q["reverberant"]) + noise_q)
    assert "direct" not in targets_q


@pytest.mark.parametrize("sample_rate_hz", [8000, 16000, 44100])
@pytest.mark.parametrize("num_samples", [1, 319, 320, 321, 12345])
def test_lips_have_one_frame_per_40_ms_begun(tmp_path, sample_rate_hz, num_samples):
    phonemes = [["pau", 0.0, 0.1], ["m", 0.1, 0.2], ["aa", 0.2, 0.5]]
    roi = tmp_path / "u.npy"
    np.save(roi, np.zeros((13, ROI_SIZE, ROI_SIZE), np.uint8))
    source = {"speaker": "s", "utterance_start_s": 0.0, "utterance_stop_s": 0.5, "start_sample": 0,
              "num_samples": min(num_samples, sample_rate_hz // 2)}
    for lips in ({"kind": "phonemes", "phoneme_set": "cmu", "phonemes": phonemes},
                 {"kind": "file", "path": str(roi), "num_frames": 13}):
        u = Utterance(path="u.wav", speaker="s", duration_s=0.5, sample_rate_hz=sample_rate_hz, corpus="c", lips=lips)
        entry = draw_lips(u, source, sample_rate_hz, num_samples, seed=0)
        frames = render_source_lips(entry, source, sample_rate_hz)
        assert frames.shape == (math.ceil(num_samples * FPS / sample_rate_hz), ROI_SIZE, ROI_SIZE)
        assert len(frames) == num_video_frames(num_samples, sample_rate_hz) == entry["num_frames"]
