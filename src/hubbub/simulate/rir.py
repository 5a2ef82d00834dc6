"""Room impulse responses of shoebox rooms: pyroomacoustics' image-source method, and a fast twin.

Three modes share one output type, :class:`RirSet`, and one time axis (time 0 = emission):

``full``
    pyroomacoustics' own path: a :class:`~pyroomacoustics.ShoeBox` with the wall absorption and
    image order that :func:`pyroomacoustics.inverse_sabine` gives for the requested RT60, its image
    source model and its RIR builder. The reference, and the cost to avoid: ~25 ms per room at
    RT60 0.2 s, ~0.4 s at 0.5 s, ~1.7 s at 0.8 s (6x5x3 m, 2 sources x 2 mics, 16 kHz, one core).
``fast`` (the default)
    The same room's images up to a low order (``early_order``), exact and built with
    pyroomacoustics' fractional-delay filters, plus a random late tail carrying what the missing
    higher-order images of ``full`` carry on average, per frequency and time (:class:`_TailModel`).
    A few ms per room at any RT60; RT60 and direct-to-reverberant ratio match ``full``.
``anechoic``
    The direct path only; the RT60 is ignored.

Conventions shared by all modes:

* pyroomacoustics delays every RIR by half its fractional-delay filter (``frac_delay_length // 2``
  = 40 samples); that offset is removed here, once, so the RIRs, their direct and early parts and
  a dry signal delayed by ``direct_delay_samples`` all share one time axis. (A source closer than
  40 samples loses the leading taps of its pulse's sinc, a negligible part of its energy.)
* Amplitudes are pyroomacoustics': an image of order ``k`` at distance ``r`` has amplitude
  ``(1 - absorption) ** (k / 2) / r`` (no 1/4pi), so the direct path has gain ``1 / distance``.
* pyroomacoustics high-passes every RIR at 10 Hz by default (``rir_hpf_*`` in its constants): an
  image-source RIR is a sum of positive pulses whose mean, growing with the image density, is a
  large artificial DC offset (tens of dB above the in-band gain in a reverberant room). We keep
  that filter, with pyroomacoustics' settings, in every mode, but apply it to the reflections
  only: the direct path has no such offset, and leaving it alone keeps it a short pulse that is
  exactly ``rirs`` in anechoic mode; above ~30 Hz nothing differs. In ``fast`` mode it runs over
  the low-order images plus its settling time (0.2 s) only, not over the tail, which is
  synthesised without a DC component: a quarter of the cost at RT60 0.8 s.
* pyroomacoustics runs single-threaded (set at import): simulation scales over processes, and
  its thread pools cost more than they save on RIRs this size.
"""
from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyroomacoustics as pra
import scipy.fft
from pyroomacoustics import libroom
from pyroomacoustics.simulation.ism import compute_ism_rir
from pyroomacoustics.utilities import design_highpass_filter_sos
from scipy.signal import sosfiltfilt

from hubbub.sources.noise import diffuse_coherence_root

pra.constants.set("num_threads", 1)

MODES = ("full", "fast", "anechoic")

#: Image order computed exactly in ``fast`` mode unless asked otherwise (capped by the full order).
DEFAULT_EARLY_ORDER = 4

# Level of the tail relative to _TailModel's image count, fitted: pra's full RIRs carry 0.7 dB
# less late energy than the count predicts (median fast/full energy ratio over 40 random rooms x
# 2 sources, in 50 ms windows from 0.1 to 0.8 s: 0.64 dB at 16 kHz, 0.79 dB at 8 kHz, no trend in
# time). pra's fractional-delay filters lose only 0.06 dB of it; the rest is not pinned down.
_TAIL_GAIN = 10.0 ** (-0.7 / 10.0)

# The 10 Hz high-pass (2nd order, forward-backward) has settled after two of its periods.
_HPF_SETTLE_PERIODS = 2.0

# STFT window of the tail synthesis: short enough to follow the onset of the tail, long enough to
# resolve its frequency dependence (~60 Hz bins).
_STFT_MS = 16.0


@dataclass
class RirSet:
    """Room impulse responses from every source to every microphone of one room.

    Attributes:
        rirs: float32 (S, M, L), the RIR from source ``s`` to mic ``m``; sample ``n`` is time
            ``n / sample_rate_hz`` after emission. ``L`` is common to all pairs: each RIR is kept
            until its Schroeder energy decay curve has fallen ``truncate_db`` below its total
            energy, and the longest of those lengths is used.
        direct: float32 (S, M, Ld), the direct path alone (the order-0 image: a fractional-delay
            pulse of amplitude 1/distance), on the same time axis; ``Ld`` is short.
        direct_delay_samples: float64 (S, M), direct-path arrival, ``distance / c * fs``.
        max_order: image order computed by pyroomacoustics (``full``: the inverse-Sabine order;
            ``fast``: the early order; ``anechoic``: 0).
        full_order: image order of ``full`` mode for this room, which ``fast`` mode's tail stands
            in for above ``max_order`` (0 in anechoic mode).
        absorption: wall energy absorption coefficient (inverse Sabine; 1.0 in anechoic mode).
        mode: "full", "fast" or "anechoic".
        sample_rate_hz: sampling rate of every array.

    Example::

        rs = compute_rirs([6, 5, 3], 0.5, [[1, 1, 1.5]], [[3, 2, 1.5], [3.1, 2, 1.5]], 16000,
                          rng=np.random.default_rng(0))
        wet = scipy.signal.fftconvolve(dry[None], rs.rirs[0])        # (M, T + L - 1)
        early = scipy.signal.fftconvolve(dry[None], rs.early(50.0)[0])
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
        """The early part of each RIR: float32 (S, M, Le), everything up to the direct arrival
        plus ``early_ms``.

        Each RIR is kept unchanged until ``direct arrival + early_ms - fade_ms``, then faded out by
        a half raised cosine that reaches 0 at ``direct arrival + early_ms`` (a hard cut would put
        a click into the early target). ``Le`` ends there for the latest direct arrival.
        """
        if early_ms <= 0 or not 0 <= fade_ms <= early_ms:
            raise ValueError(f"need early_ms > 0 and 0 <= fade_ms <= early_ms, got {early_ms}, {fade_ms}")
        fs = self.sample_rate_hz
        end = self.direct_delay_samples + early_ms * 1e-3 * fs                      # (S, M)
        length = min(self.rirs.shape[-1], int(math.ceil(end.max())) + 1)
        fade = max(fade_ms * 1e-3 * fs, 1e-9)
        phase = np.clip((np.arange(length) - (end[..., None] - fade)) / fade, 0.0, 1.0)
        window = 0.5 + 0.5 * np.cos(np.pi * phase)              # exactly 0 from the end on
        return (self.rirs[..., :length] * window).astype(np.float32)


def rt60_to_absorption(rt60_s: float, room_dim_m, c: float = 343.0) -> tuple[float, int]:
    """Wall energy absorption and image order for an RT60 in a shoebox, by inverse Sabine.

    Returns ``(absorption, max_order)`` from :func:`pyroomacoustics.inverse_sabine`: the uniform
    absorption coefficient whose Sabine RT60 is ``rt60_s``, and the image order that covers
    ``c * rt60_s`` metres of travel. Raises ValueError if the RT60 is not positive, or shorter
    than fully absorbing walls give by Sabine's formula, ``24 ln(10) V / (c S)``.

    Example: ``rt60_to_absorption(0.5, [6, 5, 3])`` -> ``(0.230..., 66)``.
    """
    dims = _room_dims(room_dim_m)
    if not rt60_s > 0:
        raise ValueError(f"RT60 must be > 0 s, got {rt60_s}")
    volume = float(np.prod(dims))
    surface = 2.0 * float(dims[0] * dims[1] + dims[1] * dims[2] + dims[0] * dims[2])
    shortest_s = 24.0 * math.log(10.0) * volume / (c * surface)
    if rt60_s < shortest_s:
        raise ValueError(f"RT60 {rt60_s:.3f} s is impossible in a {' x '.join(f'{d:g}' for d in dims)} m room: "
                         f"even fully absorbing walls give {shortest_s:.3f} s by Sabine's formula; "
                         f"ask for a longer RT60 or a smaller room")
    absorption, max_order = pra.inverse_sabine(rt60_s, dims, c=c)
    return float(absorption), int(max_order)


def compute_rirs(room_dim_m, rt60_s: float, source_positions_m, mic_positions_m, sample_rate_hz: int, *,
                 mode: str = "fast", rng: np.random.Generator, early_order: int | None = None,
                 truncate_db: float = 80.0) -> RirSet:
    """RIRs from every source to every mic of a shoebox room with the given RT60.

    Args:
        room_dim_m: (3,) room length, width and height in metres.
        rt60_s: target RT60 in seconds, turned into wall absorption by inverse Sabine (unused in
            anechoic mode, where 0 is fine). pra's full model decays more slowly than Sabine's
            formula: the RT60 measured on its RIRs is typically ~1.6x this target.
        source_positions_m: (S, 3) source positions, strictly inside the room.
        mic_positions_m: (M, 3) microphone positions, strictly inside the room.
        sample_rate_hz: sampling rate of the RIRs.
        mode: "fast" (default), "full" or "anechoic"; see the module docstring.
        rng: the only randomness (the fast tail): the same generator state gives the same RIRs.
        early_order: image order computed exactly in fast mode (default
            :data:`DEFAULT_EARLY_ORDER`; capped by the full order, and with no tail once it
            reaches it). Higher makes a longer stretch of each RIR exact and costs ~K^3 images;
            below 3 the strongest discrete reflections are left to the statistical tail, which
            underestimates them (DRR 1-4 dB too high at orders 0-1, ~0.2 dB at 4).
        truncate_db: each RIR is cut where its Schroeder energy decay curve has fallen this far
            below its total energy (80 dB keeps all but 1e-8 of it).

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
    delays = np.linalg.norm(sources[:, None, :] - mics[None, :, :], axis=-1) / c * fs

    if mode == "full":
        direct = _stack([[_pra_rir(room, s, m, order_0=True) for m in range(len(mics))] for s in range(len(sources))])
        reflections = _stack([[_pra_rir(room, s, m, order_0=False) for m in range(len(mics))]
                              for s in range(len(sources))])
        reverb = [_highpass(reflections, fs)]
    else:
        direct, reflections = _image_rirs(room, mics, fs, c)
        if mode == "anechoic":
            direct = direct.astype(np.float32)
            return RirSet(rirs=direct.copy(), direct=direct, direct_delay_samples=delays, max_order=0,
                          full_order=0, absorption=absorption, mode=mode, sample_rate_hz=fs)
        settle = int(_HPF_SETTLE_PERIODS * fs / pra.constants.get("rir_hpf_fc"))
        reverb = [_highpass(_pad(reflections, reflections.shape[-1] + settle), fs)]
        if order < full_order:
            exact_energy = (direct ** 2).sum(-1) + (reverb[0] ** 2).sum(-1)
            reverb.append(_tail(dims, absorption, order, full_order, mics, len(sources), fs, c, rng,
                                exact_energy, truncate_db))

    rirs = _truncate(_overlay([direct, *reverb]), truncate_db)
    return RirSet(rirs=rirs, direct=direct.astype(np.float32), direct_delay_samples=delays,
                  max_order=order, full_order=full_order, absorption=absorption, mode=mode, sample_rate_hz=fs)


def measure_rt60_s(rir, sample_rate_hz: float, **kwargs) -> float:
    """RT60 in seconds of one RIR by :func:`pyroomacoustics.experimental.measure_rt60`.

    Schroeder backward integration, a line fitted from -5 dB down ``decay_db`` more (default 60,
    less if the curve does not fall that far), extrapolated to -60 dB; ``kwargs`` go to
    pyroomacoustics. Returns nan where pyroomacoustics would raise or return nonsense (an empty or
    all-zero RIR, one that never falls 5 dB).
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
    return rt60 if math.isfinite(rt60) and rt60 > 0 else float("nan")


def direct_to_reverberant_db(rir, direct_delay_samples: float, sample_rate_hz: float, window_ms: float = 2.5) -> float:
    """Direct-to-reverberant energy ratio of one RIR, in dB.

    Direct energy: the samples within ``window_ms`` either side of the direct arrival
    (``direct_delay_samples``, on the RIR's own time axis); reverberant energy: all the others.
    ``inf`` for an anechoic RIR, nan if there is nothing at the direct arrival.
    """
    h = np.asarray(rir, dtype=np.float64).ravel()
    inside = np.abs(np.arange(h.size) - direct_delay_samples) <= window_ms * 1e-3 * sample_rate_hz
    direct_energy = float(np.sum(h[inside] ** 2))
    reverberant_energy = float(np.sum(h[~inside] ** 2))
    if direct_energy == 0.0:
        return float("nan")
    if reverberant_energy == 0.0:
        return float("inf")
    return 10.0 * math.log10(direct_energy / reverberant_energy)


# --------------------------------------------------------------------------------------------
# Image sources, filtering, truncation


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


def _pra_rir(room: pra.ShoeBox, s: int, m: int, order_0: bool) -> np.ndarray:
    """pra's own RIR (``compute_ism_rir``, as ``room.compute_rir`` calls it, before its high-pass)
    from the direct path alone or from all reflections, with pra's offset removed."""
    src = room.sources[s]
    visible = room.visibility[s][m, :].astype(bool) & ((src.orders == 0) if order_0 else (src.orders > 0))
    if not visible.any():
        return np.zeros(0)
    fdl = pra.constants.get("frac_delay_length")
    h = compute_ism_rir(src, room.mic_array.R[:, m], None, src.directions[m], visible, fdl, room.c, room.fs,
                        room.octave_bands, min_phase=room.min_phase)
    return h[fdl // 2:]


def _image_rirs(room: pra.ShoeBox, mics: np.ndarray, fs: int, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(S, M, Ld) direct paths and (S, M, Lr) reflections from the room's images, offset removed.

    The same pulses as pra's ``rir_builder`` (its LUT-interpolated, Hann-windowed sinc, from
    ``libroom.fractional_delay``), but for all pairs at once and summed with ``bincount``: each
    libroom call starts a thread pool (~0.15 ms), which would dominate at low orders.
    """
    fdl = pra.constants.get("frac_delay_length")
    half = fdl // 2
    # a shoebox gives every source the same images (all visible from inside), so they stack
    images = np.stack([src.images.T for src in room.sources])                          # (S, I, 3)
    distance = np.linalg.norm(images[:, None] - mics[None, :, None], axis=-1)          # (S, M, I)
    amplitude = np.stack([vis * src.damping[0] for src, vis in zip(room.sources, room.visibility)]) / distance
    is_direct = np.broadcast_to(np.stack([src.orders == 0 for src in room.sources])[:, None], distance.shape)
    n_pairs = distance.shape[0] * distance.shape[1]
    # one output row per (part, source, mic); part 0 holds the direct paths, part 1 the reflections
    row = np.arange(n_pairs).reshape(distance.shape[:2] + (1,)) + np.where(is_direct, 0, n_pairs)
    samples = (distance / c * fs).ravel()
    whole = np.floor(samples)
    # pra's convention: tap k of an image at t samples lands on floor(t) + k, `half` samples late
    width = int(whole.max()) + fdl
    start = row.ravel() * width + whole.astype(np.int64)
    out = np.zeros(2 * n_pairs * width)
    for chunk in np.array_split(np.arange(samples.size), max(1, samples.size // _IMAGES_PER_CHUNK)):
        taps = np.zeros((chunk.size, fdl), dtype=np.float32)
        libroom.fractional_delay(taps, (samples[chunk] - whole[chunk]).astype(np.float32),
                                 pra.constants.get("sinc_lut_granularity"), 1)
        taps *= amplitude.ravel()[chunk, None].astype(np.float32)
        out += np.bincount((start[chunk, None] + np.arange(fdl)).ravel(), weights=taps.ravel(), minlength=out.size)
    out = out.reshape((2,) + distance.shape[:2] + (width,))[..., half:]
    direct_length = int(whole[is_direct.ravel()].max()) + fdl - half
    return out[0, ..., :direct_length], out[1]


# Bounds the (images x taps) scratch arrays of _image_rirs (~60 MB) when early_order is high.
_IMAGES_PER_CHUNK = 50_000


def _stack(parts: list[list[np.ndarray]]) -> np.ndarray:
    """(S, M, L) from per-pair 1-D arrays of different lengths, zero-padded."""
    out = np.zeros((len(parts), len(parts[0]), max(p.size for row in parts for p in row)))
    for s, row in enumerate(parts):
        for m, p in enumerate(row):
            out[s, m, : p.size] = p
    return out


def _pad(x: np.ndarray, length: int) -> np.ndarray:
    """``x`` zero-padded to ``length`` along the last axis."""
    return np.concatenate([x, np.zeros(x.shape[:-1] + (length - x.shape[-1],))], axis=-1)


def _overlay(parts: list[np.ndarray]) -> np.ndarray:
    """Sum of (S, M, L_i) arrays that all start at sample 0, as long as the longest, float32."""
    out = np.zeros(parts[0].shape[:-1] + (max(p.shape[-1] for p in parts),), dtype=np.float32)
    for p in parts:
        out[..., : p.shape[-1]] += p
    return out


def _highpass(x: np.ndarray, fs: int) -> np.ndarray:
    """pra's RIR high-pass (settings from ``pra.constants``), zero-phase, along the last axis."""
    if not pra.constants.get("rir_hpf_enable") or x.shape[-1] == 0:
        return x
    kwargs = pra.constants.get("rir_hpf_kwargs")
    return sosfiltfilt(_highpass_sos(fs, pra.constants.get("rir_hpf_fc"), tuple(sorted(kwargs.items()))), x, axis=-1)


@functools.lru_cache(maxsize=16)
def _highpass_sos(fs: int, cutoff_hz: float, kwargs: tuple) -> np.ndarray:
    # designing it costs more (0.3 ms) than running it over a fast-mode RIR
    return design_highpass_filter_sos(fs, cutoff_hz, **dict(kwargs))


def _truncate(rirs: np.ndarray, truncate_db: float) -> np.ndarray:
    """Cut (S, M, L) where the last pair's Schroeder curve falls ``truncate_db`` below its total:
    each pair keeps the samples that hold all but ``10 ** (-truncate_db / 10)`` of its energy."""
    length = rirs.shape[-1]
    energy = np.square(rirs.reshape(-1, length))
    floors = energy.sum(-1) * 10.0 ** (-truncate_db / 10.0)
    # Schroeder's integral from the end; summing the small values first keeps float32 exact enough.
    # Only the cut matters, and it lies near the end (a few % of the RIR): the integral runs over
    # the last `span` samples, a span 4x longer whenever no pair's cut falls inside it. (A pair
    # whose integral stays under its floor all along the span has its cut further back, so the
    # earliest cut, the one that counts, is known once a pair's falls inside.)
    span = 2048
    while True:
        span = min(span, length)
        from_end = np.cumsum(energy[:, length - span:][:, ::-1], axis=-1)
        dropped = min(int(np.searchsorted(e, f, side="right")) for e, f in zip(from_end, floors))
        if dropped < span or span == length:
            break
        span *= 4
    return rirs[..., : max(1, length - dropped)].copy()     # a copy, not a view pinning it all


# --------------------------------------------------------------------------------------------
# The late tail of fast mode


def _tail(dims, absorption, early_order, full_order, mics, n_sources, fs, c, rng, pair_energy, truncate_db):
    """(S, M, Lt) random tail standing in for the images of orders ``early_order + 1 .. full_order``.

    ``pair_energy`` (S, M): energy of each pair's exact part, to bound the synthesis length.
    """
    n_fft = 2 ** round(math.log2(_STFT_MS * 1e-3 * fs))
    hop = n_fft // 2
    freqs = np.arange(n_fft // 2 + 1) * fs / n_fft
    model = _TailModel(dims, absorption, early_order, full_order, fs, c)

    # Length: where the model's remaining energy falls truncate_db below the weakest pair's total,
    # on a coarse grid, plus a grid step of margin. _truncate makes the final cut on the RIRs.
    coarse_s = np.linspace(0.0, model.end_s, 65)
    power = model.psd(freqs, coarse_s)
    power = (2.0 * power[1:-1].sum(0) + power[0] + power[-1]) / n_fft          # per sample, (T,)
    step = (power[1:] + power[:-1]) / 2.0 * (coarse_s[1] - coarse_s[0]) * fs
    remaining = np.concatenate([np.cumsum(step[::-1])[::-1], [0.0]])
    floor = (pair_energy.min() + remaining[0]) * 10.0 ** (-truncate_db / 10.0)
    end_s = coarse_s[min(int(np.argmax(remaining < floor)) + 1, len(coarse_s) - 1)]
    n_frames = max(1, math.ceil(end_s * fs / hop))

    centres_s = (np.arange(n_frames) + 1) * hop / fs             # frame k's window peaks here
    return _synthesize(model.psd(freqs, centres_s), mics, n_sources, n_fft, c, fs, rng)


class _TailModel:
    r"""Expected time-frequency energy of the image sources of orders ``lo + 1 .. hi`` in a shoebox.

    **Rays.** Images fill space with density :math:`1/V`. The image at distance :math:`r = ct` in
    direction :math:`u` lies about :math:`x = ct\,g(u)` rooms away, :math:`g(u) = \sum_i |u_i|/L_i`
    (walls crossed per metre), so it has been reflected about :math:`x` times and carries energy
    :math:`e^{-\varepsilon x}/r^2`, :math:`\varepsilon = -\ln(1-\alpha)`. Counting the images in a
    shell of one sample gives an expected energy per sample of
    :math:`\frac{4\pi c}{V f_s}\langle e^{-\varepsilon x}\rangle_u`: a mean over directions of
    per-direction exponentials (here over the positive octant, by symmetry). Directions close to
    the walls' planes bounce least and dominate late, so the decay is slower than Sabine's and
    than Eyring's (Jensen's inequality on the same mean reflection count :math:`ctS/4V`) and keeps
    slowing down: the RT60 measured on pra's full RIRs is ~1.6x the inverse-Sabine target.

    **Modes.** That mean is the high-frequency limit. An image-source RIR is a sum of room modes,
    all equally excited on average, on the lattice :math:`c\,(n_x/2L_x, n_y/2L_y, n_z/2L_z)`, each
    decaying like a ray along its own direction. Weyl's expansion of their number adds to the
    octant continuum the modes in the three wall planes (tangential, one index 0), weight
    :math:`c/(4 L_k f)` relative to it, and on the three axes (axial), weight
    :math:`L_i c^2/(8\pi V f^2)`. Those decay only on the walls they hit, so below ~1 kHz they
    dominate late: pra's full model has +10 dB at 200 Hz after 1 s in a 0.7 s room. The power at
    :math:`f` is thus the octant mean plus the plane and axis means with these weights. (The
    exact lattice sum grows the plane terms with time, up to twice Weyl's weight; pra's RIRs
    follow the fixed Weyl weights instead: octave bands 80 Hz - 5 kHz within ~1.5 dB of this
    model from 0.1 to 1.2 s, median over 24 random rooms.)

    **Orders.** The reflection count along :math:`u` is an integer near :math:`x`, so the images
    of orders :math:`\le K` reach about :math:`x = K + 1/2`. Each direction counts with weight
    :math:`P(lo < k \le hi) = \mathrm{ramp}(hi + 1 - x) - \mathrm{ramp}(lo + 1 - x)`, ramps
    clipped to [0, 1]: the tail starts exactly as the exact low-order images thin out, direction
    by direction (a crossfade that keeps the summed energy continuous, derived rather than tuned)
    and ends where pra's full model runs out of images.

    Directions are averaged with fixed fine quadratures whose ``g`` are binned per room, finest
    near the slowest direction, which rules the late decay (within 0.1 dB of the exact mean).
    """

    def __init__(self, dims: np.ndarray, absorption: float, lo: int, hi: int, fs: int, c: float):
        self.dims, self.lo, self.hi, self.c = dims, lo, hi, c
        # walls absorbing everything have no finite attenuation per reflection: clip
        self.eps = -math.log(max(1.0 - absorption, 1e-12))
        self._g, self._members = _binned_directions(dims)
        # every direction has run out of images (weight 0) once x = hi + 1 along the slowest
        self.end_s = (hi + 1) / (c * self._g.min())
        self._scale = _TAIL_GAIN * 4.0 * math.pi * c / (float(np.prod(dims)) * fs)

    def class_decays(self, t_s: np.ndarray) -> np.ndarray:
        """(T, 7) weighted mean of ``exp(-eps x)``: octant, planes normal to x/y/z, x/y/z axes."""
        x = self.c * np.asarray(t_s)[:, None] * self._g[None, :]
        weight = np.clip(self.hi + 1.0 - x, 0.0, 1.0) - np.clip(self.lo + 1.0 - x, 0.0, 1.0)
        return (np.exp(-self.eps * x) * weight) @ self._members

    def class_weights(self, freqs_hz: np.ndarray) -> np.ndarray:
        """(F, 7) Weyl's mode density of each class relative to the octant's (0 at DC)."""
        f = np.maximum(np.asarray(freqs_hz, dtype=np.float64), 1e-9)[:, None]
        L, c = self.dims, self.c
        planes = c / (4.0 * L * f)
        axes = L * c ** 2 / (8.0 * math.pi * float(np.prod(L)) * f ** 2)
        weights = np.concatenate([np.ones_like(f), planes, axes], axis=1)
        weights[np.asarray(freqs_hz) <= 0] = 0.0
        return weights

    def psd(self, freqs_hz: np.ndarray, t_s: np.ndarray) -> np.ndarray:
        """(F, T) expected energy per sample as a spectral density (white noise of variance ``p``
        has ``p`` at every frequency)."""
        return self._scale * self.class_weights(freqs_hz) @ self.class_decays(t_s).T


def _quadrature(n_octant: int = 6000, n_plane: int = 512) -> tuple[np.ndarray, list[np.ndarray]]:
    """Fixed directions: equal-area points of the positive octant, and per wall plane (normal to
    x, y, z) equal-angle points of its quarter circle."""
    i = np.arange(n_octant) + 0.5
    z = i / n_octant                                    # uniform in z is uniform in area
    azimuth = math.pi * (1.0 + math.sqrt(5.0)) * i      # golden-angle spiral
    radius = np.sqrt(1.0 - z ** 2)
    octant = np.abs(np.stack([radius * np.cos(azimuth), radius * np.sin(azimuth), z], axis=-1))
    angle = (np.arange(n_plane) + 0.5) / n_plane * (math.pi / 2)
    planes = []
    for axis in range(3):
        j, k = (a for a in range(3) if a != axis)
        d = np.zeros((n_plane, 3))
        d[:, j], d[:, k] = np.cos(angle), np.sin(angle)
        planes.append(d)
    return octant, planes


_OCTANT, _PLANES = _quadrature()


def _binned_directions(dims: np.ndarray, n_bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Walls crossed per metre ``g`` (D,) of representative directions, and their class-averaging
    weights (D, 7): each class's quadrature binned by ``g``, bins narrowing quadratically towards
    the smallest ``g``, each represented by its mean ``g``; the axes as themselves."""
    inverse = 1.0 / dims
    values, weights, classes = [], [], []
    for k, directions in enumerate([_OCTANT, *_PLANES]):
        g = directions @ inverse
        lo, hi = g.min(), g.max()
        index = np.minimum((n_bins * np.sqrt((g - lo) / max(hi - lo, 1e-12))).astype(int), n_bins - 1)
        count = np.bincount(index, minlength=n_bins)
        keep = count > 0
        values.append(np.bincount(index, weights=g, minlength=n_bins)[keep] / count[keep])
        weights.append(count[keep] / len(g))
        classes.append(np.full(int(keep.sum()), k))
    values.append(inverse)
    weights.append(np.ones(3))
    classes.append(4 + np.arange(3))
    classes = np.concatenate(classes)
    members = np.zeros((len(classes), 7))
    members[np.arange(len(classes)), classes] = np.concatenate(weights)
    return np.concatenate(values), members


def _synthesize(psd: np.ndarray, mics: np.ndarray, n_sources: int, n_fft: int, c: float, fs: int,
                rng: np.random.Generator) -> np.ndarray:
    """(S, M, L) Gaussian noise shaped to ``psd`` (F, frames), diffuse across the mics.

    White Gaussian noise per (source, mic) through an STFT with a sqrt-Hann window at 50 % overlap
    (which reconstructs perfectly), each frame's spectrum multiplied by sqrt(psd) and mixed across
    mics so that their coherence is the diffuse field's ``sinc(2 f d / c)``: late reverberation at
    nearby mics is strongly coherent below ``c / 2d``, and independent tails would destroy the
    spatial cues that multichannel separation relies on.
    """
    n_bins, n_frames = psd.shape
    hop = n_fft // 2
    n_mics = len(mics)
    noise = rng.standard_normal((n_sources, n_mics, (n_frames + 1) * hop), dtype=np.float32)
    window = np.sin(np.pi * (np.arange(n_fft) + 0.5) / n_fft).astype(np.float32)
    # frame k is blocks k and k + 1 of the noise, windowed: written in one pass, no concatenation
    blocks = noise.reshape(n_sources, n_mics, n_frames + 1, hop)
    frames = np.empty((n_sources, n_mics, n_frames, n_fft), dtype=np.float32)
    np.multiply(blocks[:, :, :-1], window[:hop], out=frames[..., :hop])
    np.multiply(blocks[:, :, 1:], window[hop:], out=frames[..., hop:])
    spectra = scipy.fft.rfft(frames, axis=-1)                                          # (S, M, K, F)
    # The PSD gains and the mic mixing are real: they act on the spectra's interleaved (re, im)
    # float32 pairs, (S, M, K, 2F), each factor repeated for both halves of its bin. That gives the
    # complex products' values at a fraction of the cost, in place and without transposes.
    floats = spectra.view(np.float32)
    floats *= np.repeat(np.sqrt(psd.T).astype(np.float32), 2, axis=-1)
    if n_mics > 1:
        mixing = diffuse_coherence_root(np.arange(n_bins) * fs / n_fft, mics, c).astype(np.float32)
        mixing = np.repeat(mixing.transpose(1, 2, 0), 2, axis=-1)                      # (M, M, 2F)
        # mic i of every source and frame: sum over mics j of mixing[i, j] * spectrum j
        mixed = np.empty_like(floats)
        term = np.empty_like(floats[:, 0])
        for i in range(n_mics):
            np.multiply(floats[:, 0], mixing[i, 0], out=mixed[:, i])
            for j in range(1, n_mics):
                mixed[:, i] += np.multiply(floats[:, j], mixing[i, j], out=term)
        spectra = mixed.view(np.complex64)
    frames = scipy.fft.irfft(spectra, n=n_fft, axis=-1)
    # overlap-add of the windowed frames: block k gets the first half of frame k and the second
    # half of frame k - 1
    out = np.zeros((n_sources, n_mics, n_frames + 1, hop), dtype=np.float32)
    np.multiply(frames[..., :hop], window[:hop], out=out[:, :, :-1])
    out[:, :, 1:] += frames[..., hop:] * window[hop:]
    return out.reshape(n_sources, n_mics, -1)
