"""A plain autocorrelation F0 estimate: enough to check that two built-in speakers differ in pitch.

Not a pitch tracker for analysis: no voicing model beyond an energy gate and a correlation
threshold, no smoothing. Octave errors are rare in clean synthetic speech and the median over an
utterance's voiced frames drops them; on harmonic test tones it finds the fundamental to 1%
(``tests/voices``), and its medians of the built-in voices agree with their F0 settings
(``docs/voices.md``).

>>> import numpy as np
>>> t = np.arange(16000) / 16000
>>> round(median_f0_hz(np.sin(2 * np.pi * 120 * t) + 0.3 * np.sin(2 * np.pi * 240 * t), 16000))
120
"""
from __future__ import annotations

import math

import numpy as np

_FRAME_S = 0.04
_HOP_S = 0.01
_GATE = 0.05            # a frame's RMS must reach this share of the loudest frame's
_MIN_CORRELATION = 0.5  # normalised autocorrelation at the chosen lag, else unvoiced
_NEAR_BEST = 0.85       # take the shortest lag that comes this close to the best: no subharmonics


def frame_f0_hz(audio, sample_rate_hz: int, *, fmin_hz: float = 50.0,
                fmax_hz: float = 450.0) -> np.ndarray:
    """F0 in Hz of each voiced 40 ms frame (10 ms hop) of a mono signal; unvoiced frames left out."""
    x = np.asarray(audio, dtype=np.float64).reshape(-1)
    n, hop = round(_FRAME_S * sample_rate_hz), round(_HOP_S * sample_rate_hz)
    if len(x) < n:
        return np.zeros(0)
    frames = np.lib.stride_tricks.sliding_window_view(x, n)[::hop]
    frames = frames - frames.mean(axis=1, keepdims=True)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    frames = frames[rms >= _GATE * rms.max(initial=0.0)]
    if not len(frames):
        return np.zeros(0)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = np.fft.rfft(frames * np.hanning(n), size)
    ac = np.fft.irfft(np.abs(spectrum) ** 2, size)[:, :n]
    ac /= np.maximum(ac[:, :1], 1e-12)
    # The Hann window's own autocorrelation tapers every peak; dividing by it unbiases the lags.
    ac /= np.maximum(np.correlate(np.hanning(n), np.hanning(n), "full")[n - 1:] /
                     np.sum(np.hanning(n) ** 2), 1e-3)
    lo, hi = max(2, math.floor(sample_rate_hz / fmax_hz)), min(n - 2, math.ceil(sample_rate_hz / fmin_hz))
    window = ac[:, lo:hi + 1]
    best = window.max(axis=1)
    # Shortest lag within _NEAR_BEST of the best that is also a local maximum.
    peaks = (window[:, 1:-1] >= window[:, :-2]) & (window[:, 1:-1] >= window[:, 2:])
    near = peaks & (window[:, 1:-1] >= _NEAR_BEST * best[:, None])
    voiced = near.any(axis=1) & (best >= _MIN_CORRELATION)
    lag = np.argmax(near, axis=1) + 1 + lo  # the index into ac
    rows = np.flatnonzero(voiced)
    k = lag[rows]
    a, b, c = ac[rows, k - 1], ac[rows, k], ac[rows, k + 1]
    shift = 0.5 * (a - c) / np.where(np.abs(a - 2 * b + c) > 1e-12, a - 2 * b + c, 1e-12)
    return sample_rate_hz / (k + np.clip(shift, -0.5, 0.5))


def median_f0_hz(audio, sample_rate_hz: int, **kwargs) -> float:
    """Median F0 in Hz over the voiced frames (NaN if none): a speaker's pitch in one number."""
    f0 = frame_f0_hz(audio, sample_rate_hz, **kwargs)
    return float(np.median(f0)) if len(f0) else math.nan


def semitones(f_hz: float, ref_hz: float) -> float:
    """The interval from ``ref_hz`` to ``f_hz`` in semitones (12 per octave)."""
    return 12.0 * math.log2(f_hz / ref_hz)
