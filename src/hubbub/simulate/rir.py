"""Room impulse responses for shoebox rooms: pyroomacoustics' image-source method, and a fast twin.

Three modes share one output type, :class:`RirSet`, and one time axis (time 0 = emission):

``full``
    pyroomacoustics' own path: a :class:`~pyroomacoustics.ShoeBox` with the wall absorption and
    image order that :func:`pyroomacoustics.inverse_sabine` gives for the requested RT60, its image
    source model, and its RIR builder. The reference, and the cost we avoid: ~0.02 s per room at
    RT60 0.2 s, ~0.4 s at 0.5 s, ~1.7 s at 0.8 s (6x5x3 m, 2 sources, 2 mics, 16 kHz, one core).
``fast`` (the default)
    The same room's images up to a low order (``early_order``) from pyroomacoustics, exact, plus
    a random late tail whose time-frequency energy is what the missing higher-order images of the
    ``full`` model carry on average (see :func:`_tail_psd`). A few ms per room at any RT60.
``anechoic``
    The direct path only.

Conventions shared by all modes:

* pyroomacoustics delays every RIR by half its fractional-delay filter (``frac_delay_length // 2``
  = 40 samples); that offset is removed here, once, so the RIRs, their direct and early parts and
  a dry signal delayed by ``direct_delay_samples`` all line up.
* Amplitudes are pyroomacoustics': an image of order ``k`` at distance ``r`` has amplitude
  ``(1 - absorption) ** (k / 2) / r`` (no 1/4pi), so the direct path has gain ``1 / distance``.
* pyroomacoustics high-passes every RIR (by default at 10 Hz, ``rir_hpf_*`` in its constants):
  image-source RIRs are sums of positive pulses, whose mean grows with the image density into a
  large artificial DC offset. We keep that filter (its settings are read from
  ``pra.constants``) but apply it to the reflections only: the direct path is a single pulse with
  no such offset, and leaving it unfiltered keeps it short and exactly ``rirs`` in anechoic mode.
  Above ~30 Hz the result equals pyroomacoustics' fully filtered RIR. In ``fast`` mode only the
  low-order images carry the offset; the filter runs over them plus its settling time, and the
  tail is synthesised without its DC bin.
* pyroomacoustics runs single-threaded here (set at import): simulation scales over processes.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyroomacoustics as pra
from pyroomacoustics.simulation.ism import compute_ism_rir
from pyroomacoustics.utilities import design_highpass_filter_sos
from scipy.signal import sosfiltfilt

# Many single-threaded worker processes run side by side; pra's threads would only contend.
pra.constants.set("num_threads", 1)

MODES = ("full", "fast", "anechoic")

#: Default image order of ``fast`` mode; capped by the order ``full`` would use.
DEFAULT_EARLY_ORDER = 4

# Calibration gain of the tail's energy, fitted against ``full`` over random rooms (see
# ``_tail_psd``); it absorbs the energy the fractional-delay filters lose and the continuum
# approximation of the image lattice.
_TAIL_GAIN = 10.0 ** (-0.7 / 10.0)

# The high-pass filter's impulse response has decayed far below audibility after this many of
# its cut-off periods (10 Hz, 2nd order Butterworth run forward and backward: 0.2 s).
_HPF_SETTLE_PERIODS = 2.0


@dataclass
class RirSet:
    """Room impulse responses from every source to every microphone of one room.

    Attributes:
        rirs: float32 (S, M, L), the full RIR from source ``s`` to mic ``m``; sample ``n`` is
            time ``n / sample_rate_hz`` after emission. ``L`` is common to all pairs: each RIR is
            kept until its Schroeder energy decay curve has fallen ``truncate_db`` below its
            total, and the longest of those lengths is used.
        direct: float32 (S, M, Ld), the direct path only (the order-0 image, a fractional-delay
            pulse of amplitude 1/distance), on the same time axis; ``Ld`` is short.
        direct_delay_samples: float64 (S, M), direct-path arrival, ``distance / c * fs``.
        max_order: image-source order computed by pyroomacoustics (``full``: the inverse-Sabine
            order; ``fast``: the early order; ``anechoic``: 0).
        full_order: the order ``full`` mode uses for this room; ``fast`` mode's tail reproduces
            the images up to it (0 in anechoic mode).
        absorption: wall energy absorption coefficient (inverse Sabine; 1.0 in anechoic mode).
        mode: "full", "fast" or "anechoic".
        sample_rate_hz: sampling rate of all arrays.

    Example::

        rs = compute_rirs([6, 5, 3], 0.5, [[1, 1, 1.5]], [[3, 2, 1.5], [3.1, 2, 1.5]], 16000,
                          rng=np.random.default_rng(0))
        wet = scipy.signal.fftconvolve(dry[None], rs.rirs[0])   # (M, T + L - 1)
    """

    rirs: np.ndarray
    direct: np.ndarray
    direct_delay_samples: np.ndarray
    max_order: int
    full_order: int
    absorption: float
    mode: str
    sample_rate_hz: int

    def early(self, early_ms: float = 50.0, fade_ms: float = 5.0) -> np.ndarray:
        """The early part of each RIR: float32 (S, M, Le), all of it up to the direct arrival.

        Each RIR is kept as is until ``direct arrival + early_ms - fade_ms``, then faded out with a
        half raised cosine that reaches zero at ``direct arrival + early_ms`` (a hard step would
        add a click to the early target); ``Le`` ends there for the latest direct arrival.
        """
        if early_ms <= 0 or not 0 <= fade_ms <= early_ms:
            raise ValueError(f"need early_ms > 0 and 0 <= fade_ms <= early_ms, got {early_ms}, {fade_ms}")
        fs = self.sample_rate_hz
        end = self.direct_delay_samples + early_ms * 1e-3 * fs                      # (S, M)
        length = min(self.rirs.shape[-1], int(math.ceil(end.max())) + 1)
        n = np.arange(length)
        fade = max(fade_ms * 1e-3 * fs, 1e-9)
        # 1 before the fade, cos^2 down to 0 across it, 0 after.
        phase = np.clip((n - (end[..., None] - fade)) / fade, 0.0, 1.0)
        window = np.cos(0.5 * np.pi * phase) ** 2
        return (self.rirs[..., :length] * window).astype(np.float32)


def rt60_to_absorption(rt60_s: float, room_dim_m, c: float = 343.0) -> tuple[float, int]:
    """Wall energy absorption and image order for an RT60 in a shoebox, by inverse Sabine.

    Returns ``(absorption, max_order)`` from :func:`pyroomacoustics.inverse_sabine`: the uniform
    absorption coefficient whose Sabine RT60 is ``rt60_s``, and the image order that covers
    ``c * rt60_s`` metres of travel. Raises ValueError if the RT60 is not positive, or is shorter
    than fully absorbing walls give by Sabine's formula (``24 ln(10) V / (c S)``).
    """
    dims = _room_dims(room_dim_m)
    if not rt60_s > 0:
        raise ValueError(f"RT60 must be > 0 s, got {rt60_s}")
    volume = float(np.prod(dims))
    surface = 2.0 * float(dims[0] * dims[1] + dims[1] * dims[2] + dims[0] * dims[2])
    shortest = 24.0 * math.log(10.0) * volume / (c * surface)
    if rt60_s < shortest:
        raise ValueError(f"RT60 {rt60_s:.3f} s is impossible in a {' x '.join(f'{d:g}' for d in dims)} m room: "
                         f"even fully absorbing walls give {shortest:.3f} s (Sabine); "
                         f"ask for a longer RT60 or a smaller room")
    absorption, max_order = pra.inverse_sabine(rt60_s, dims, c=c)
    return float(absorption), int(max_order)


def compute_rirs(room_dim_m, rt60_s: float, source_positions_m, mic_positions_m, sample_rate_hz: int, *,
                 mode: str = "fast", rng: np.random.Generator, early_order: int | None = None,
                 truncate_db: float = 80.0) -> RirSet:
    """RIRs from every source to every mic of a shoebox room with the given RT60.

    Args:
        room_dim_m: (3,) room length, width, height in metres.
        rt60_s: target RT60 in seconds; turned into wall absorption by inverse Sabine (ignored in
            anechoic mode, where 0 is fine).
        source_positions_m: (S, 3) source positions, strictly inside the room.
        mic_positions_m: (M, 3) microphone positions, strictly inside the room.
        sample_rate_hz: sampling rate of the RIRs.
        mode: "fast" (default), "full" or "anechoic"; see the module docstring.
        rng: the only randomness (the fast tail): the same generator state gives the same RIRs.
        early_order: image order computed exactly in fast mode (default
            :data:`DEFAULT_EARLY_ORDER`, capped by the full order). Higher is slower and makes a
            longer stretch of each RIR exact.
        truncate_db: each RIR is cut where its Schroeder energy decay curve has fallen this far
            below its total energy (80 dB keeps all but 1e-8 of the energy).

    Returns:
        a :class:`RirSet`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    dims = _room_dims(room_dim_m)
    sources = _positions("source_positions_m", source_positions_m, dims)
    mics = _positions("mic_positions_m", mic_positions_m, dims)
    fs = int(sample_rate_hz)
    if fs <= 0:
        raise ValueError(f"sample_rate_hz must be > 0, got {sample_rate_hz}")
    c = float(pra.constants.get("c"))

    if mode == "anechoic":
        absorption, full_order, order = 1.0, 0, 0
    else:
        absorption, full_order = rt60_to_absorption(rt60_s, dims, c=c)
        order = full_order if mode == "full" else min(full_order, _early_order(early_order))

    room = pra.ShoeBox(dims, fs=fs, materials=pra.Material(absorption), max_order=order, air_absorption=False)
    for position in sources:
        room.add_source(position)
    room.add_microphone(mics.T)
    room.image_source_model()

    direct = _stack([[_ism_part(room, s, m, lambda orders: orders == 0) for m in range(len(mics))]
                     for s in range(len(sources))])
    delays = np.linalg.norm(sources[:, None, :] - mics[None, :, :], axis=-1) / c * fs
    if mode == "anechoic":
        return RirSet(rirs=direct.copy(), direct=direct, direct_delay_samples=delays, max_order=0, full_order=0,
                      absorption=absorption, mode=mode, sample_rate_hz=fs)

    reflections = _stack([[_ism_part(room, s, m, lambda orders: orders > 0) for m in range(len(mics))]
                          for s in range(len(sources))])
    if mode == "full":
        reverb = _highpass(reflections, fs)
    else:
        tail = _tail(dims, absorption, order, full_order, sources, mics, fs, c, rng,
                     direct, reflections, truncate_db)
        settle = int(_HPF_SETTLE_PERIODS * fs / pra.constants.get("rir_hpf_fc"))
        reverb = _pad(tail, max(tail.shape[-1], reflections.shape[-1]))
        n_hp = min(reverb.shape[-1], reflections.shape[-1] + settle)
        reverb[..., :n_hp] += _highpass(_pad(reflections, n_hp), fs)
    rirs = _pad(reverb, max(reverb.shape[-1], direct.shape[-1]))
    rirs[..., : direct.shape[-1]] += direct
    rirs = _truncate(rirs, truncate_db)
    return RirSet(rirs=rirs.astype(np.float32), direct=direct, direct_delay_samples=delays, max_order=order,
                  full_order=full_order, absorption=absorption, mode=mode, sample_rate_hz=fs)


def measure_rt60_s(rir, sample_rate_hz: float, **kwargs) -> float:
    """RT60 in seconds of one RIR, by :func:`pyroomacoustics.experimental.measure_rt60`.

    Schroeder backward integration, a line fit from -5 dB down ``decay_db`` (default 60, less if
    the RIR does not decay that far), extrapolated to -60 dB; ``kwargs`` go to pyroomacoustics.
    Returns nan instead of raising or returning nonsense (an all-zero or non-decaying RIR).
    """
    h = np.asarray(rir, dtype=np.float64).ravel()
    if h.size < 2 or not np.any(h):
        return float("nan")
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            rt60 = float(pra.experimental.measure_rt60(h, fs=sample_rate_hz, **kwargs))
    except (ValueError, FloatingPointError, RuntimeError, np.linalg.LinAlgError):
        return float("nan")
    return rt60 if np.isfinite(rt60) and rt60 > 0 else float("nan")


def direct_to_reverberant_db(rir, direct_delay_samples: float, sample_rate_hz: float, window_ms: float = 2.5) -> float:
    """Direct-to-reverberant energy ratio (dB) of one RIR.

    Direct energy: the samples within ``window_ms`` either side of the direct arrival
    (``direct_delay_samples``, on the RIR's own time axis); reverberant energy: every other
    sample. ``inf`` for an anechoic RIR, nan for an all-zero one.
    """
    h = np.asarray(rir, dtype=np.float64).ravel()
    half = window_ms * 1e-3 * sample_rate_hz
    n = np.arange(h.size)
    inside = np.abs(n - direct_delay_samples) <= half
    direct_energy = float(np.sum(h[inside] ** 2))
    reverberant_energy = float(np.sum(h[~inside] ** 2))
    if direct_energy == 0.0:
        return float("nan")
    if reverberant_energy == 0.0:
        return float("inf")
    return 10.0 * math.log10(direct_energy / reverberant_energy)


# --------------------------------------------------------------------------------------------
# Image-source parts, filtering, truncation


def _room_dims(room_dim_m) -> np.ndarray:
    dims = np.asarray(room_dim_m, dtype=np.float64)
    if dims.shape != (3,) or not np.all(dims > 0):
        raise ValueError(f"room_dim_m must be 3 positive lengths in metres, got {room_dim_m}")
    return dims


def _positions(name: str, positions, dims: np.ndarray) -> np.ndarray:
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3 or len(p) == 0:
        raise ValueError(f"{name} must be (N, 3) positions in metres, got shape {p.shape}")
    if not np.all((p > 0) & (p < dims)):
        raise ValueError(f"{name} must lie strictly inside the {dims.tolist()} m room, got {p.tolist()}")
    return p


def _early_order(early_order: int | None) -> int:
    order = DEFAULT_EARLY_ORDER if early_order is None else int(early_order)
    if order < 0:
        raise ValueError(f"early_order must be >= 0, got {early_order}")
    return order


def _ism_part(room: pra.ShoeBox, s: int, m: int, select) -> np.ndarray:
    """pra's RIR from the images of source ``s`` whose orders pass ``select``, offset removed."""
    src = room.sources[s]
    visible = room.visibility[s][m, :].astype(bool) & select(src.orders)
    if not visible.any():
        return np.zeros(0, dtype=np.float32)
    fdl = pra.constants.get("frac_delay_length")
    h = compute_ism_rir(src, room.mic_array.R[:, m], None, src.directions[m], visible, fdl, room.c, room.fs,
                        room.octave_bands, min_phase=room.min_phase)
    return h[fdl // 2:]


def _stack(parts: list[list[np.ndarray]]) -> np.ndarray:
    """(S, M, L) float64 from per-pair 1-D arrays of different lengths, zero-padded."""
    length = max(p.size for row in parts for p in row)
    out = np.zeros((len(parts), len(parts[0]), length))
    for s, row in enumerate(parts):
        for m, p in enumerate(row):
            out[s, m, : p.size] = p
    return out


def _pad(x: np.ndarray, length: int) -> np.ndarray:
    out = np.zeros(x.shape[:-1] + (length,))
    n = min(length, x.shape[-1])
    out[..., :n] = x[..., :n]
    return out


def _highpass(x: np.ndarray, fs: int) -> np.ndarray:
    """pra's RIR high-pass (settings from ``pra.constants``), zero-phase, along the last axis."""
    if not pra.constants.get("rir_hpf_enable") or x.shape[-1] == 0:
        return x
    sos = design_highpass_filter_sos(fs, pra.constants.get("rir_hpf_fc"), **pra.constants.get("rir_hpf_kwargs"))
    return sosfiltfilt(sos, x, axis=-1)


def _truncate(rirs: np.ndarray, truncate_db: float) -> np.ndarray:
    """Cut (S, M, L) where the latest pair's Schroeder curve has fallen ``truncate_db`` below its total."""
    energy = rirs.reshape(-1, rirs.shape[-1]) ** 2
    remaining = np.cumsum(energy[:, ::-1], axis=-1)[:, ::-1]          # Schroeder backward integral
    floor = remaining[:, :1] * 10.0 ** (-truncate_db / 10.0)
    above = remaining > floor
    # first sample at which the remaining energy is below the floor, per pair
    ends = np.where(above.any(-1), above.shape[-1] - np.argmax(above[:, ::-1], axis=-1), 1)
    return rirs[..., : int(ends.max())]


# --------------------------------------------------------------------------------------------
# The fast late tail


def _tail(dims, absorption, early_order, full_order, sources, mics, fs, c, rng, direct, reflections, truncate_db):
    """(S, M, Lt) random late tail standing in for the images of orders ``early_order + 1 .. full_order``."""
    n_fft = 2 ** round(math.log2(_STFT_MS * 1e-3 * fs))
    hop = n_fft // 2
    freqs = np.arange(n_fft // 2 + 1) * fs / n_fft
    model = _TailModel(dims, absorption, early_order, full_order, fs, c)

    # Synthesis length: where the model's remaining energy falls truncate_db below the weakest
    # pair's total, on a coarse grid, plus a step of margin (the cut itself is _truncate's).
    coarse_s = np.linspace(0.0, model.end_s, 65)
    power = model.psd(freqs, coarse_s)
    power = (2.0 * power[1:-1].sum(0) + power[0] + power[-1]) / n_fft      # per sample, (T,)
    step = (power[1:] + power[:-1]) / 2.0 * (coarse_s[1] - coarse_s[0]) * fs
    remaining = np.concatenate([np.cumsum(step[::-1])[::-1], [0.0]])
    pair_energy = (direct ** 2).sum(-1) + (reflections ** 2).sum(-1)
    floor = (pair_energy.min() + remaining[0]) * 10.0 ** (-truncate_db / 10.0)
    last = min(int(np.argmax(remaining < floor)) + 1, len(coarse_s) - 1)
    n_frames = max(1, int(math.ceil(coarse_s[last] * fs / hop)))

    centres_s = (np.arange(n_frames) + 1) * hop / fs            # frame k's window peaks here
    return _synthesize(model.psd(freqs, centres_s), mics, len(sources), n_fft, c, fs, rng)


# STFT window of the tail synthesis: short enough to follow the envelope's onset, long enough
# to resolve the low-frequency decays.
_STFT_MS = 16.0


class _TailModel:
    r"""Expected time-frequency energy of the image sources of orders ``lo + 1 .. hi`` in a shoebox.

    **Rays.** Images fill space with density :math:`1/V`. The image at distance :math:`r = ct` in
    direction :math:`u` lies about :math:`x = ct\,g(u)` rooms away, :math:`g(u) = \sum_i |u_i|/L_i`
    (walls crossed per metre), so it has been reflected about :math:`x` times and carries energy
    :math:`e^{-\varepsilon x}/r^2`, :math:`\varepsilon = -\ln(1-\alpha)`. Counting images in a
    shell of width :math:`c/f_s` gives the expected energy per sample
    :math:`\frac{4\pi c}{V f_s}\langle e^{-\varepsilon x}\rangle_u`: the mean over directions of
    per-direction exponentials. Directions near a wall's plane bounce less and dominate late, so
    the decay is slower than Sabine's and than Eyring's (Jensen's inequality on the same mean
    reflection count :math:`ctS/4V`) and keeps slowing down: pra's measured RT60 is typically
    ~1.5x the inverse-Sabine target.

    **Modes.** That mean over directions is the high-frequency limit. An image-source RIR is a
    sum of room modes, all equally excited on average, lying at frequency :math:`f` on the lattice
    :math:`c\,(n_x/2L_x, n_y/2L_y, n_z/2L_z)`; each decays like a ray along its lattice direction.
    The lattice has layers of spacing :math:`\delta_k = c/(2 L_k f)` in the sine of the angle to
    each wall plane. If the decay falls off away from the plane as :math:`e^{-\kappa s}`,
    :math:`\kappa = \varepsilon c t / L_k`, the layer sum exceeds the continuum by the in-plane
    mean times :math:`\delta_k\,\omega(\kappa\delta_k)`, with
    :math:`\omega(y) = 1/(1-e^{-y}) - 1/y` rising from 1/2 (the Euler-Maclaurin end term, Weyl's
    surface term) to 1 (the plane's own modes alone survive). Axes are corners of two planes:
    weight :math:`\frac{2}{\pi}\delta_j\omega_j\,\delta_k\omega_k`. So the power at :math:`f` is
    the octant mean plus the three plane means and the three axis terms with these weights. Below
    a few hundred Hz these tangential and axial modes decay much more slowly than the rest (pra's
    full model: +10 dB at 200 Hz after 1 s in a 0.7 s room), which shifts the broadband RT60.
    Against the exact lattice sum this is within 0.5 dB from 50 Hz to 2.5 kHz over 2 s.

    **Orders.** The reflection count along :math:`u` is an integer near :math:`x`, so the images
    of orders :math:`\le K` reach :math:`x \approx K + 1/2`. Each direction contributes through a
    linear ramp from 0 at :math:`x = lo` to 1 at :math:`lo + 1`, and back to 0 across
    :math:`hi .. hi + 1` where pra's full model (orders :math:`\le hi`) runs out of images. The
    tail therefore starts where the exact low-order images thin out, direction by direction: a
    crossfade that keeps the summed energy continuous, derived rather than tuned.

    Directions are averaged with a fine fixed quadrature whose values of :math:`g` are binned
    per room (finest near the slowest direction, which rules the late decay).
    """

    def __init__(self, dims: np.ndarray, absorption: float, lo: int, hi: int, fs: int, c: float):
        self.dims, self.lo, self.hi, self.c = dims, lo, hi, c
        # energy absorption 1 (anechoic walls) has no finite attenuation; clip instead of inf
        self.eps = -math.log(max(1.0 - absorption, 1e-12))
        self._g, self._members = _binned_directions(dims)
        # every direction has run out of images (ramp at 0) once x = hi + 1 along the slowest
        self.end_s = (hi + 1) / (c * self._g.min())
        self._scale = _TAIL_GAIN * 4.0 * math.pi * c / (float(np.prod(dims)) * fs)

    def class_decays(self, t_s: np.ndarray) -> np.ndarray:
        """(T, 7) mean of ``exp(-eps x)`` times the order ramps: octant, 3 planes, 3 axes."""
        x = self.c * np.asarray(t_s)[:, None] * self._g[None, :]
        ramps = np.clip(x - self.lo, 0.0, 1.0) * np.clip(self.hi + 1.0 - x, 0.0, 1.0)
        return (np.exp(-self.eps * x) * ramps) @ self._members

    def class_weights(self, freqs_hz: np.ndarray) -> np.ndarray:
        """(F, 7) Weyl's mode density of each class relative to the octant's (0 at DC)."""
        f = np.maximum(np.asarray(freqs_hz, dtype=np.float64), 1e-9)[:, None]
        L, c = self.dims, self.c
        planes = c / (4.0 * L * f)                                     # plane normal to axis k
        axes = L * c ** 2 / (8.0 * math.pi * float(np.prod(L)) * f ** 2)
        weights = np.concatenate([np.ones_like(f), planes, axes], axis=1)
        weights[np.asarray(freqs_hz) <= 0] = 0.0
        return weights

    def psd(self, freqs_hz: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """(F, T) expected energy per sample as a spectral density (white noise of variance ``p``
        has ``p`` at every frequency)."""
        return self._scale * self.class_weights(freqs_hz) @ self.class_decays(t_s).T


def _quadrature() -> tuple[np.ndarray, list[np.ndarray]]:
    """Fixed direction sets: equal-area points in the positive octant, and per wall plane (normal
    to x, y, z) equal-angle points on its quarter circle."""
    n = 20000
    i = np.arange(n) + 0.5
    z = i / n                                           # uniform in z: equal area (Archimedes)
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * i      # golden-angle spiral
    radius = np.sqrt(1.0 - z ** 2)
    octant = np.abs(np.stack([radius * np.cos(azimuth), radius * np.sin(azimuth), z], axis=-1))
    angle = (np.arange(2048) + 0.5) / 2048 * (math.pi / 2)
    planes = []
    for axis in range(3):
        j, k = (a for a in range(3) if a != axis)
        d = np.zeros((len(angle), 3))
        d[:, j], d[:, k] = np.cos(angle), np.sin(angle)
        planes.append(d)
    return octant, planes


_OCTANT, _PLANES = _quadrature()


def _binned_directions(dims: np.ndarray, n_bins: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Walls crossed per metre ``g`` (D,) for a few representative directions of each class, and
    their class-averaging weights (D, 7).

    Each class's fine quadrature is binned by ``g`` with bins that narrow quadratically towards
    the smallest ``g`` (the late decay lives there); a bin is represented by its mean ``g``.
    """
    inverse = 1.0 / dims
    values, weights, classes = [], [], []
    for k, dirs in enumerate([_OCTANT, *_PLANES]):
        g = dirs @ inverse
        lo, hi = g.min(), g.max()
        index = np.minimum((n_bins * np.sqrt((g - lo) / (hi - lo))).astype(int), n_bins - 1)
        count = np.bincount(index, minlength=n_bins)
        keep = count > 0
        values.append(np.bincount(index, weights=g, minlength=n_bins)[keep] / count[keep])
        weights.append(count[keep] / len(g))
        classes.append(np.full(keep.sum(), k))
    values += [inverse]
    weights += [np.ones(3)]
    classes += [4 + np.arange(3)]
    classes = np.concatenate(classes)
    members = np.zeros((len(classes), 7))
    members[np.arange(len(classes)), classes] = np.concatenate(weights)
    return np.concatenate(values), members


def _synthesize(psd: np.ndarray, mics: np.ndarray, n_sources: int, n_fft: int, c: float, fs: int,
                rng: np.random.Generator) -> np.ndarray:
    """(S, M, L) Gaussian noise with power ``psd`` (F, T) per STFT frame, diffuse across mics.

    Independent complex Gaussian STFT coefficients, shaped by the PSD, mixed across mics so that
    their coherence is the diffuse field's ``sinc(2 f d / c)`` (late reverberation at nearby
    mics is strongly coherent below ``c / 2d``), and overlap-added with a sqrt-Hann window at
    50 % overlap (squared windows sum to 1, so the output power is the PSD's mean).
    """
    n_bins, n_frames = psd.shape
    hop = n_fft // 2
    n_mics = len(mics)
    z = rng.standard_normal((n_sources, n_mics, n_frames, n_bins, 2), dtype=np.float32)
    z = (z[..., 0] + 1j * z[..., 1]) * np.float32(math.sqrt(0.5))
    if n_mics > 1:
        freqs = np.arange(n_bins) * fs / n_fft
        dist = np.linalg.norm(mics[:, None] - mics[None], axis=-1)
        coherence = np.sinc(2.0 * freqs[:, None, None] * dist[None] / c)          # (F, M, M)
        eigval, eigvec = np.linalg.eigh(coherence)
        mixing = (eigvec * np.sqrt(np.maximum(eigval, 0.0))[:, None, :]).astype(np.float32)
        z = np.einsum("fmn,snkf->smkf", mixing, z)
    z *= np.sqrt(n_fft * psd.T).astype(np.float32)
    frames = np.fft.irfft(z, n=n_fft, axis=-1) * np.sin(np.pi * np.arange(n_fft) / n_fft)
    out = np.zeros((n_sources, n_mics, (n_frames + 1) * hop))
    out[..., : n_frames * hop] += frames[..., :hop].reshape(n_sources, n_mics, -1)
    out[..., hop:] += frames[..., hop:].reshape(n_sources, n_mics, -1)
    return out
