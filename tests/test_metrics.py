import math

import numpy as np
import pytest
import torch

from hubbub.losses import SI_SNR_FLOOR_DB, si_snr as torch_si_snr
from hubbub.metrics import (SDR_LIMIT_DB, Score, best_permutation, evaluate_separation, pesq_score, sdr,
                            sdr_improvement, si_snr, si_snr_improvement, stoi_score)
from hubbub.testing import dummy_speech


def speech(num_sources, seconds=1.5, sample_rate_hz=8000, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([dummy_speech(rng, seconds, sample_rate_hz) for _ in range(num_sources)]).astype(np.float64)


def noise_like(x, seed=1):
    return np.random.default_rng(seed).standard_normal(x.shape) * x.std(-1, keepdims=True)


def at_si_snr(ref, db, seed=3):
    """Estimates of exactly ``db`` dB SI-SNR: ref plus noise orthogonal to it, scaled."""
    ref = ref - ref.mean(-1, keepdims=True)
    noise = noise_like(ref, seed)
    noise = noise - noise.mean(-1, keepdims=True)
    noise = noise - np.sum(noise * ref, -1, keepdims=True) / np.sum(ref**2, -1, keepdims=True) * ref
    gain = np.sqrt(np.sum(ref**2, -1, keepdims=True) / np.sum(noise**2, -1, keepdims=True) / 10 ** (db / 10))
    return ref + gain * noise


def test_si_snr_matches_the_correlation_formula():
    ref = speech(3)
    est = ref + 0.3 * noise_like(ref) + 0.05
    e, r = est - est.mean(-1, keepdims=True), ref - ref.mean(-1, keepdims=True)
    rho2 = np.sum(e * r, -1) ** 2 / (np.sum(e * e, -1) * np.sum(r * r, -1))
    np.testing.assert_allclose(si_snr(est, ref), 10 * np.log10(rho2 / (1 - rho2)), atol=1e-6)


def test_si_snr_improvement_is_relative_to_the_mixture():
    ref = speech(2)
    mix = ref.sum(0)
    est = ref + 0.1 * noise_like(ref)
    np.testing.assert_allclose(si_snr_improvement(est, ref, mix), si_snr(est, ref) - si_snr(mix, ref))
    assert (si_snr_improvement(est, ref, mix) > 10).all()
    np.testing.assert_allclose(si_snr_improvement(np.stack([mix, mix]), ref, mix), 0, atol=1e-9)


def test_sdr_matches_fast_bss_eval():
    fast_bss_eval = pytest.importorskip("fast_bss_eval")
    ref = speech(3, seconds=1.0)
    rng = np.random.default_rng(2)
    est = np.stack([
        np.convolve(ref[0], rng.standard_normal(32) * np.exp(-np.arange(32) / 4))[: ref.shape[1]],
        ref[1] + 0.5 * ref[2] + 0.05 * noise_like(ref[1]),
        0.2 * ref[2] + noise_like(ref[2]),
    ])
    expected = [fast_bss_eval.sdr(ref[i:i + 1], est[i:i + 1])[0] for i in range(3)]
    np.testing.assert_allclose(sdr(est, ref), expected, atol=0.1)


def test_sdr_allows_a_distortion_filter_where_si_snr_does_not():
    ref = speech(1, seconds=1.0)[0]
    echo = ref + 0.8 * np.roll(ref, 40)  # a 41-tap filter: no distortion for BSS-eval
    assert sdr(echo, ref) > 40
    assert si_snr(echo, ref) < sdr(echo, ref) - 20
    assert sdr(ref, ref) == pytest.approx(100, abs=1e-3)  # the clip, not inf or nan
    assert math.isnan(sdr(ref, np.zeros_like(ref)))


def test_sdr_improvement_subtracts_the_mixture():
    ref = speech(2, seconds=1.0)
    mix = ref.sum(0)
    est = ref + 0.1 * noise_like(ref)
    np.testing.assert_allclose(sdr_improvement(est, ref, mix), sdr(est, ref) - sdr(np.stack([mix, mix]), ref))


@pytest.mark.parametrize("sample_rate_hz", [8000, 16000])
def test_pesq_and_stoi_rank_a_perfect_estimate_over_noise(sample_rate_hz):
    ref = speech(1, seconds=2.0, sample_rate_hz=sample_rate_hz)[0]
    perfect_pesq, perfect_stoi = pesq_score(ref, ref, sample_rate_hz), stoi_score(ref, ref, sample_rate_hz)
    assert perfect_pesq.value > 4 and perfect_pesq.reason is None
    assert perfect_stoi.value > 0.99 and perfect_stoi.reason is None
    noise = noise_like(ref)
    assert pesq_score(noise, ref, sample_rate_hz).value < 2
    assert stoi_score(noise, ref, sample_rate_hz).value < 0.6


def test_pesq_resamples_other_rates():
    ref = speech(1, seconds=1.0, sample_rate_hz=22050)[0]
    assert pesq_score(ref, ref, 22050).value > 4


def test_unscorable_inputs_give_nan_with_a_reason():
    ref = speech(1, seconds=2.0)[0]
    short = ref[:800]  # 0.1 s
    tone = np.sin(2 * np.pi * 3900 * np.arange(len(ref)) / 8000)  # outside PESQ's speech band
    cases = {
        "too short": [pesq_score(short, short, 8000), stoi_score(short, short, 8000)],
        "silent reference": [pesq_score(ref, 0 * ref, 8000), stoi_score(ref, 0 * ref, 8000)],
        "silent estimate": [pesq_score(0 * ref, ref, 8000)],
        "no utterance": [pesq_score(tone, tone, 8000)],
        "non-finite": [pesq_score(np.full_like(ref, np.nan), ref, 8000), stoi_score(ref * np.inf, ref, 8000)],
        "below": [pesq_score(ref, ref, 4000)],
        "30 non-silent frames": [stoi_score(ref[:4000], np.r_[np.zeros(3800), ref[:200]], 8000)],
    }
    for reason, scores in cases.items():
        for score in scores:
            assert isinstance(score, Score) and math.isnan(score.value) and reason in score.reason


def test_best_permutation_maximises_si_snr():
    ref = speech(3, seconds=0.5)
    est = ref[[2, 0, 1]] + 0.1 * noise_like(ref)
    assert best_permutation(est, ref).tolist() == [1, 2, 0]
    surplus = np.concatenate([noise_like(ref[:1], seed=4), est])  # 4 estimates, 3 references
    assert best_permutation(surplus, ref).tolist() == [2, 3, 1]


def test_evaluate_separation_handles_the_permutation():
    ref = speech(2, seconds=2.0)
    mix = ref.sum(0) + 0.01 * noise_like(ref[0])
    est = ref + 0.05 * noise_like(ref)
    in_order = evaluate_separation(est, ref, mix, 8000)
    swapped = evaluate_separation(est[::-1], ref, mix, 8000)
    assert in_order["perm"] == [0, 1] and swapped["perm"] == [1, 0]
    assert swapped["per_source"] == in_order["per_source"]
    assert set(in_order["per_source"]) == {"si_snr", "si_snri", "sdr", "sdri", "pesq", "pesq_mix", "stoi",
                                           "stoi_mix"}
    scores = in_order["per_source"]
    assert all(v > 10 for v in scores["si_snri"] + scores["sdri"])
    assert all(e > m for e, m in zip(scores["pesq"] + scores["stoi"], scores["pesq_mix"] + scores["stoi_mix"]))
    for name, values in scores.items():
        assert in_order["mean"][name] == pytest.approx(np.mean(values))
    assert in_order["nan_reasons"] == {}


def test_evaluate_separation_reports_short_input_without_crashing():
    ref = speech(2, seconds=0.2)
    out = evaluate_separation(ref[::-1], ref, ref.sum(0), 8000, metrics=("si_snri", "pesq"))
    assert out["perm"] == [1, 0] and set(out["per_source"]) == {"si_snr", "si_snri", "pesq", "pesq_mix"}
    assert math.isnan(out["mean"]["pesq"]) and out["nan_reasons"]["pesq"][0].startswith("too short")
    assert math.isfinite(out["mean"]["si_snri"])
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate_separation(ref, ref, ref.sum(0), 8000, metrics=("sisdr",))


def test_silence_reads_one_floor_under_si_snr_sdr_and_the_training_loss():
    ref = speech(2, seconds=1.0)
    assert SI_SNR_FLOOR_DB == -SDR_LIMIT_DB == -100
    zero = np.zeros_like(ref)
    np.testing.assert_array_equal(si_snr(zero, ref), [SI_SNR_FLOOR_DB] * 2)
    np.testing.assert_array_equal(si_snr(zero + 0.2, ref), [SI_SNR_FLOOR_DB] * 2)  # constant: silent once zero-mean
    np.testing.assert_allclose(sdr(zero, ref), [SI_SNR_FLOOR_DB] * 2, atol=1e-6)
    np.testing.assert_array_equal(si_snr(ref, zero), [SI_SNR_FLOOR_DB] * 2)  # against silence

    # The same values as the loss, from silence through the fade below eps to audible estimates.
    poor = at_si_snr(ref, -5.0)
    cases = [zero, 1e-9 * poor / np.linalg.norm(poor, axis=-1, keepdims=True), 1e-4 * poor, poor, ref]
    for est in cases:
        np.testing.assert_allclose(si_snr(est, ref), torch_si_snr(torch.from_numpy(est), torch.from_numpy(ref)).numpy(),
                                   atol=1e-9)
    np.testing.assert_allclose(si_snr(poor, ref), [-5.0, -5.0], atol=1e-6)
    assert (si_snr(cases[1], ref) < -90).all()                # energy 1e-18: as good as silent


def test_a_silent_output_is_scored_below_the_mixture():
    # The case: silence read 0 dB, so against a mixture at -6 dB it got SI-SNRi +6 dB.
    ref = speech(3, seconds=1.0)
    mix = ref.sum(0)
    assert (si_snr(np.stack([mix] * 3), ref) < -1).all()
    silent = np.zeros_like(ref)
    gain = si_snr_improvement(silent, ref, mix)
    np.testing.assert_allclose(gain, SI_SNR_FLOOR_DB - si_snr(np.stack([mix] * 3), ref))
    assert (gain < -90).all() and (sdr_improvement(silent, ref, mix) < -90).all()

    scores = evaluate_separation(np.stack([silent[0], ref[1] + 0.1 * noise_like(ref[1]), silent[2]]), ref, mix,
                                 8000, metrics=("si_snri", "sdri", "pesq"))
    per_source = scores["per_source"]
    assert per_source["si_snr"][0] == per_source["si_snr"][2] == SI_SNR_FLOOR_DB
    assert per_source["sdr"][0] == pytest.approx(SI_SNR_FLOOR_DB, abs=1e-6)
    assert per_source["si_snri"][1] > 10 > -90 > per_source["si_snri"][0]
    assert scores["nan_reasons"]["pesq"][0] == "silent estimate"


def test_best_permutation_never_picks_a_silent_estimate_over_a_real_one():
    ref = speech(2, seconds=0.5)
    good, poor = ref[0] + 0.1 * noise_like(ref[0]), at_si_snr(ref[1], -5.0)
    silent = np.zeros_like(good)
    assert best_permutation(np.stack([silent, poor, good]), ref).tolist() == [2, 1]
    assert best_permutation(np.stack([good, silent, poor]), ref).tolist() == [0, 2]
    # Silence gets a reference only when every real estimate is taken.
    assert best_permutation(np.stack([silent, good]), ref).tolist() == [1, 0]

    scores = evaluate_separation(np.stack([silent, poor, silent]), ref[1:], ref.sum(0), 8000, metrics=("si_snri",))
    assert scores["perm"] == [1]
    assert scores["per_source"]["si_snr"] == pytest.approx([-5.0], abs=1e-6)
