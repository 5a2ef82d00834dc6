"""Separation metrics for evaluation (numpy, float64): SI-SNR(i), BSS-eval SDR(i), PESQ, STOI.

:func:`evaluate_separation` is the entry point for one separated mixture::

    scores = evaluate_separation(est, ref, mix, sample_rate_hz=8000)    # est, ref (S, T); mix (T,)
    scores["mean"]["si_snri"], scores["per_source"]["pesq"], scores["per_source"]["pesq_mix"]

The training losses (torch, differentiable) are in :mod:`hubbub.losses`; :func:`si_snr` here is
the same quantity in float64 for reporting, with the same floor for silence: a silent estimate
reads :data:`SI_SNR_FLOOR_DB` (-100 dB) under SI-SNR as under SDR (:data:`SDR_LIMIT_DB`), so an
evaluation never rewards a model for outputting silence.

PESQ and STOI are defined only for speech of some length: rather than raising in the middle of an
evaluation run, :func:`pesq_score` and :func:`stoi_score` return a :class:`Score` whose value is
nan and whose ``reason`` says why (too short, silent, no utterance detected, ...).
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Sequence

import fast_bss_eval
import numpy as np
import pesq as pesq_lib
from pystoi import stoi as pystoi_stoi
from scipy.optimize import linear_sum_assignment
from scipy.signal import resample_poly

from hubbub.losses.ratios import SI_SNR_FLOOR_DB

METRICS = ("si_snri", "sdri", "pesq", "stoi")

# BSS-eval's coherence tends to 1 for a perfect estimate, where SDR = 10 log10(coh / (1 - coh))
# diverges (or turns NaN from rounding past 1): clip it to this many dB either way. The lower clip
# is SI-SNR's floor, so a silent estimate reads the same under both.
SDR_LIMIT_DB = -SI_SNR_FLOOR_DB

# PESQ (ITU-T P.862) refuses less than 1/4 s.
PESQ_MIN_DURATION_S = 0.25

# pystoi resamples to 10 kHz and needs 30 frames of 256 samples, hop 128, after dropping silent
# frames: 29 * 128 + 256 samples at 10 kHz.
STOI_MIN_DURATION_S = (29 * 128 + 256) / 10000


class Score(NamedTuple):
    """A perceptual score, or nan with the reason it could not be computed."""

    value: float
    reason: str | None = None


def _float64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def si_snr(est, ref, zero_mean: bool = True, eps: float = 1e-8) -> np.ndarray:
    """Scale-invariant SNR in dB over the last axis, broadcasting the others.

    Args:
        est, ref: (..., T) arrays, broadcastable.
        zero_mean: remove each signal's mean first (the usual definition).
        eps: absolute energy that keeps silent signals finite (a perfect estimate of a reference
            of energy E reads ``10 log10(E / eps)``), and below which a signal counts as silent.

    Returns:
        (...) float64 SI-SNR in dB, never below :data:`SI_SNR_FLOOR_DB` (-100 dB), which a silent
        estimate (all zero, or constant with ``zero_mean``) reads exactly, as does any estimate
        against a silent reference: the definition of :func:`hubbub.losses.si_snr`, fading to
        the floor as either energy drops to ``eps``.

    Example: ``si_snr(ref + 0.1 * noise, ref)`` for unit-power, uncorrelated ref and noise is
    about 20 dB, and the same for ``3 * (ref + 0.1 * noise)``; ``si_snr(0 * ref, ref)`` is -100 dB,
    as is ``sdr(0 * ref, ref)``.
    """
    est, ref = _float64(est), _float64(ref)
    if zero_mean:
        est = est - est.mean(-1, keepdims=True)
        ref = ref - ref.mean(-1, keepdims=True)
    est_energy, ref_energy = np.sum(est**2, -1), np.sum(ref**2, -1)
    scale = np.sum(est * ref, -1, keepdims=True) / (ref_energy[..., None] + eps)
    target = scale * ref
    ratio_db = 10 * np.log10((np.sum(target**2, -1) + eps) / (np.sum((est - target) ** 2, -1) + eps))
    # eps alone would make a silent estimate read 0 dB: above any real estimate below 0 dB.
    audible = est_energy / (est_energy + eps) * (ref_energy / (ref_energy + eps))
    return np.maximum(SI_SNR_FLOOR_DB + audible * (ratio_db - SI_SNR_FLOOR_DB), SI_SNR_FLOOR_DB)


def si_snr_improvement(est, ref, mix) -> np.ndarray:
    """SI-SNR of the estimates minus that of the mixture, against the same references, in dB.

    Args:
        est: (S, T) estimates, in reference order (see :func:`best_permutation`).
        ref: (S, T) references.
        mix: (T,) the mixture that was separated.

    Returns:
        (S,) float64, dB; a silent estimate gets ``SI_SNR_FLOOR_DB`` minus the mixture's SI-SNR.
    """
    return si_snr(est, ref) - si_snr(_float64(mix)[None], ref)


def sdr(est, ref, filter_length: int = 512) -> np.ndarray:
    """BSS-eval signal-to-distortion ratio in dB (BSSEval v4 definition, computed by fast_bss_eval).

    The estimate is projected on the span of the reference delayed by 0 … ``filter_length - 1``
    samples (the allowed distortion filter); SDR is the energy of that projection over the energy
    of the rest. Only the matching reference enters, so the value does not depend on the other
    sources.

    Args:
        est: (..., T) estimates.
        ref: (..., T) references, broadcastable against ``est``.
        filter_length: taps of the distortion filter (512 is the standard; 1 gives a
            scale-invariant SNR without mean removal).

    Returns:
        (...) float64 SDR in dB, within ±:data:`SDR_LIMIT_DB` (a perfect or a silent estimate
        reads the limit; so does one of norm below 1e-6, fast_bss_eval's floor); nan where the
        reference is silent (undefined).

    Cost: one (filter_length × filter_length) solve per signal, a few ms at 512 taps.

    Example: ``sdr(np.convolve(ref, short_filter)[:T], ref)`` is high (a filter is not
    distortion), where the SI-SNR of the same estimate may be low.
    """
    est, ref = np.broadcast_arrays(_float64(est), _float64(ref))
    silent_ref = ~ref.any(-1)
    if silent_ref.any():  # a singular system: solve a placeholder (an impulse), report nan
        ref = ref.copy()
        ref[silent_ref, 0] = 1.0
    # Each pair on a channel axis of one: fast_bss_eval 0.1.4's NumPy path for pairwise=False
    # hands np.linalg.solve a stack of vectors, which NumPy 2 reads as one matrix.
    out = -fast_bss_eval.sdr_loss(est[..., None, :], ref[..., None, :], filter_length=filter_length,
                                  clamp_db=SDR_LIMIT_DB, pairwise=True)[..., 0, 0]
    return np.where(silent_ref, np.nan, out)


def sdr_improvement(est, ref, mix, filter_length: int = 512) -> np.ndarray:
    """SDR of the estimates minus that of the mixture, against the same references, in dB.

    Args:
        est: (S, T) estimates, in reference order; ref: (S, T); mix: (T,).

    Returns:
        (S,) float64, dB.
    """
    mix = np.broadcast_to(_float64(mix), np.shape(ref))
    return sdr(est, ref, filter_length) - sdr(mix, ref, filter_length)


def _check_pair(est, ref) -> tuple[np.ndarray, np.ndarray]:
    est, ref = _float64(est), _float64(ref)
    if est.ndim != 1 or est.shape != ref.shape:
        raise ValueError(f"expected est and ref of the same shape (T,), got {est.shape} and {ref.shape}")
    return est, ref


def _unscorable(est: np.ndarray, ref: np.ndarray, sample_rate_hz: int, min_duration_s: float) -> str | None:
    """Why a pair cannot be scored by a perceptual metric, or None."""
    duration_s = len(ref) / sample_rate_hz
    if duration_s < min_duration_s:
        return f"too short: {duration_s:.3f} s < {min_duration_s:.3f} s"
    if not (np.isfinite(est).all() and np.isfinite(ref).all()):
        return "non-finite samples"
    if not ref.any():
        return "silent reference"
    return None


def pesq_score(est, ref, sample_rate_hz: int) -> Score:
    """PESQ (ITU-T P.862, via the ``pesq`` package): narrowband at 8 kHz, wideband at 16 kHz.

    Other rates are resampled: to 16 kHz (wideband) from above 16 kHz, to 8 kHz (narrowband)
    from between 8 and 16 kHz.

    Args:
        est: (T,) estimate.
        ref: (T,) clean reference.
        sample_rate_hz: rate of both, at least 8000.

    Returns:
        :class:`Score`: MOS-LQO, about 1 (bad) to 4.5 (nb) / 4.64 (wb); or nan and the reason
        for input shorter than 0.25 s, silent (reference or estimate), non-finite, or with no
        utterance detected.

    Example: ``pesq_score(ref, ref, 16000).value`` is 4.64; ``pesq_score(ref[:100], ref[:100],
    16000)`` is ``Score(nan, "too short: 0.006 s < 0.250 s")``.
    """
    est, ref = _check_pair(est, ref)
    if sample_rate_hz < 8000:
        return Score(math.nan, f"sample rate {sample_rate_hz} Hz below PESQ's 8000 Hz")
    reason = _unscorable(est, ref, sample_rate_hz, PESQ_MIN_DURATION_S)
    if reason is None and not est.any():
        # The pesq package divides by the estimate's level and fails on silence.
        reason = "silent estimate"
    if reason is not None:
        return Score(math.nan, reason)

    rate_hz = 16000 if sample_rate_hz >= 16000 else 8000
    if rate_hz != sample_rate_hz:
        g = math.gcd(rate_hz, sample_rate_hz)
        est, ref = (resample_poly(x, rate_hz // g, sample_rate_hz // g) for x in (est, ref))
    try:
        return Score(float(pesq_lib.pesq(rate_hz, ref, est, "wb" if rate_hz == 16000 else "nb")))
    except pesq_lib.NoUtterancesError:
        return Score(math.nan, "no utterance detected")
    except (pesq_lib.PesqError, ValueError) as e:
        # ValueError: the C code's NaN level estimate for near-silent input, after our checks.
        return Score(math.nan, f"pesq failed: {e}")


def stoi_score(est, ref, sample_rate_hz: int, extended: bool = False) -> Score:
    """STOI (Taal et al. 2011, via ``pystoi``), or ESTOI with ``extended=True``.

    Args:
        est: (T,) estimate.
        ref: (T,) clean reference.
        sample_rate_hz: rate of both (pystoi resamples to 10 kHz).
        extended: ESTOI (Jensen & Taal 2016) instead of STOI.

    Returns:
        :class:`Score`: intelligibility in [0, 1] (ESTOI can dip below 0); nan and the reason
        for input shorter than ~0.4 s, silent reference, non-finite samples, or fewer than 30
        non-silent frames (where pystoi itself would return 1e-5 with a warning, which would
        silently drag averages down).

    Example: ``stoi_score(ref, ref, 16000).value`` is 1.0.
    """
    est, ref = _check_pair(est, ref)
    reason = _unscorable(est, ref, sample_rate_hz, STOI_MIN_DURATION_S)
    if reason is not None:
        return Score(math.nan, reason)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Not enough STFT frames")
        try:
            return Score(float(pystoi_stoi(ref, est, sample_rate_hz, extended=extended)))
        except RuntimeWarning:
            return Score(math.nan, "fewer than 30 non-silent frames")


def best_permutation(est, ref) -> np.ndarray:
    """The assignment of estimates to references that maximises the total SI-SNR.

    Silent estimates score the floor (:func:`si_snr`), so with surplus estimates a silent one is
    never picked over a real estimate above the floor, however poor.

    Args:
        est: (S_est, T) estimates, S_est ≥ S_ref (surplus estimates are left out).
        ref: (S_ref, T) references.

    Returns:
        (S_ref,) int, ``perm[j]`` the estimate assigned to reference j: ``est[perm]`` is in
        reference order.
    """
    est, ref = _float64(est), _float64(ref)
    if est.ndim != 2 or ref.ndim != 2 or est.shape[0] < ref.shape[0] or est.shape[1] != ref.shape[1]:
        raise ValueError(f"expected est (S_est, T) and ref (S_ref, T) with S_est >= S_ref, "
                         f"got {est.shape} and {ref.shape}")
    pairwise = si_snr(est[None, :, :], ref[:, None, :])  # (S_ref, S_est)
    return linear_sum_assignment(pairwise, maximize=True)[1]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def evaluate_separation(est, ref, mix, sample_rate_hz: int,
                        metrics: Sequence[str] = METRICS, assign: bool = True) -> dict:
    """Score one separated mixture: best permutation by SI-SNR, then per-source and mean metrics.

    Args:
        est: (S_est, T) estimates in any order, S_est ≥ S (surplus estimates are left out).
        ref: (S, T) references (present sources only).
        mix: (T,) the mixture that was separated (the reference microphone).
        sample_rate_hz: rate of all signals.
        metrics: any of "si_snri", "sdri", "pesq", "stoi".
        assign: find the best permutation (separators); False scores ``est[j]`` against
            ``ref[j]`` (target-speaker extraction, where the cue fixes the order).

    Returns:
        A dict of plain Python values (lists, floats, str)::

            perm        [S] estimate index assigned to each reference
            per_source  {name: [S] floats} for each requested metric:
                          si_snri -> "si_snr", "si_snri"      (dB)
                          sdri    -> "sdr", "sdri"            (dB, BSS-eval, 512 taps)
                          pesq    -> "pesq", "pesq_mix"       (estimate / mixture vs. reference)
                          stoi    -> "stoi", "stoi_mix"
            mean        {name: float} mean over the sources, skipping nan (nan if all are)
            nan_reasons {name: [S] reason or None}, only for entries that are nan

    Example::

        s = evaluate_separation(est, ref, mix, 8000, metrics=("si_snri", "pesq"))
        s["perm"]                                         # [1, 0]: est[1] matched ref[0]
        s["mean"]["pesq"] - s["mean"]["pesq_mix"]         # PESQ improvement over the mixture
    """
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {METRICS}")
    ref, mix = _float64(ref), _float64(mix)
    if mix.shape != ref.shape[1:]:
        raise ValueError(f"expected mix (T,) with T = {ref.shape[1]}, got {mix.shape}")
    perm = best_permutation(est, ref) if assign else np.arange(len(ref))
    est = _float64(est)[perm]

    per_source: dict[str, list[float]] = {}
    reasons: dict[str, list[str | None]] = {}
    if "si_snri" in metrics:
        per_source["si_snr"] = si_snr(est, ref).tolist()
        per_source["si_snri"] = si_snr_improvement(est, ref, mix).tolist()
    if "sdri" in metrics:
        est_sdr, mix_sdr = sdr(est, ref), sdr(np.broadcast_to(mix, ref.shape), ref)
        per_source["sdr"] = est_sdr.tolist()
        per_source["sdri"] = (est_sdr - mix_sdr).tolist()
    for name, score_fn in (("pesq", pesq_score), ("stoi", stoi_score)):
        if name not in metrics:
            continue
        for key, signals in ((name, est), (f"{name}_mix", [mix] * len(ref))):
            scores = [score_fn(x, r, sample_rate_hz) for x, r in zip(signals, ref)]
            per_source[key] = [s.value for s in scores]
            if any(s.reason for s in scores):
                reasons[key] = [s.reason for s in scores]
    return {
        "perm": perm.tolist(),
        "per_source": per_source,
        "mean": {k: _mean(v) for k, v in per_source.items()},
        "nan_reasons": reasons,
    }
