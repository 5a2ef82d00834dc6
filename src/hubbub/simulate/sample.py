"""One mixture: draw every parameter from the sample's identity, then render from them alone.

:meth:`Simulator.draw` turns ``(recipe, seed, split, index)`` into a JSON-able parameter dict;
:func:`render` turns that dict (and the audio files it names) into signals. The sample's JSON in
the shard is those parameters plus what was measured while rendering, so ``render(meta)``
re-renders a stored sample exactly: the metadata is the sample's full description.

Conventions (all targets share the mixture's time axis, time 0 = emission):

* ``reverberant[s]`` (M, T): source ``s`` through its full RIR; ``mix = sum_s reverberant[s] + noise``.
* ``direct[s]``: through the direct path only; ``early[s]``: direct path + ``room.early_ms``.
* ``dry[s]`` (T,): the scaled source signal delayed by its direct-path delay at the reference mic
  (``sources[s].dry_delay_samples``), so it lines up with ``direct[s]`` there.
* ``lips[s]`` (F, 96, 96) uint8 [target "lips"]: the source's mouth at 25 fps, ``F =
  ceil(T * 25 / sr)``, frame ``j`` covering samples ``[j * sr / 25, (j + 1) * sr / 25)``. Like
  the placed source, it is on the emission axis: the dry target lags it by ``dry_delay_samples``
  (sound travels, light is instant). Outside the source's excerpt the mouth is at rest (drawn
  from phonemes) or holds the excerpt's first/last frame (ROI files).
  ``sources[s]["lips"]`` says how it was made (:func:`hubbub.sources.lips.draw_lips`).
* SIR: each further speaker's reverberant image vs the first one's, at the reference mic.
  SNR: all reverberant speech vs noise at the reference mic. The whole sample is then scaled to
  a loudness (LUFS) and lowered if any stored signal would peak above ``mixing.max_peak``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyloudnorm
from scipy import fft as sp_fft

from hubbub import storage
from hubbub.audio import load_audio_cached
from hubbub.schema import Mics, Mixing, Noise, Room, SampleMeta, Source, Storage, member_name
from hubbub.shards.format import encode_audio, encode_npy, encode_npy_zst, quantize, sample_key, storage_of
from hubbub.simulate.bank import bank_meta, bank_room, bank_rooms_per_split, rirs_from_bank
from hubbub.simulate.recipe import Recipe
from hubbub.simulate.rir import RirSet, compute_rirs, measure_rt60_s
from hubbub.simulate.rooms import RoomError, draw_room
from hubbub.simulate.rooms import uniform as _uniform
from hubbub.simulate.seeds import sample_seed, seed_key, sources_fingerprint
from hubbub.sources.lips import draw_lips, render_source_lips
from hubbub.sources.noise import NoiseFile, coloured_noise, diffuse_mixing
from hubbub.sources.utterance import Utterance


class SampleError(RuntimeError):
    """A sample cannot be drawn or rendered (e.g. no room fits the recipe's constraints)."""


@dataclass
class SplitPool:
    """What one split may draw from: its own speakers' utterances and its own noise files."""

    utterances_by_speaker: dict[str, list[Utterance]]
    noise_files: list[NoiseFile]

    @property
    def speakers(self) -> list[str]:
        return sorted(self.utterances_by_speaker)


def _utt_ref(u: Utterance) -> dict:
    return {"speaker": u.speaker, "path": u.path, "corpus": u.corpus, "licence": u.licence,
            "transcript": u.transcript, "utterance_duration_s": round(u.duration_s, 6)}


class Simulator:
    """Draws sample parameters for one recipe and seed. Cheap to build; safe to ship to workers."""

    def __init__(self, recipe: Recipe, pools: dict[str, SplitPool], seed: int):
        self.recipe = recipe
        self.pools = pools
        self.seed = seed
        self.recipe_hash = recipe.content_hash()
        self.sources_hash = sources_fingerprint(pools, recipe.room.rir_bank)
        self.seed_key = seed_key(self.recipe_hash, self.sources_hash)
        self.bank_rooms = bank_rooms_per_split(recipe.room.rir_bank) if recipe.room.rir_bank else None

    def members(self, split: str, index: int) -> tuple[dict, float]:
        """Shard members of one sample and its duration (the shard runner's job interface)."""
        rendered = render(self.draw(split, index))
        return to_members(rendered), SampleMeta.from_dict(rendered.meta).duration_s

    # -- drawing ---------------------------------------------------------------------------------
    def draw(self, split: str, index: int) -> dict:
        """The sample's parameters (:class:`hubbub.schema.SampleMeta` as a dict, without what
        rendering measures), drawn from its identity alone."""
        r = self.recipe
        rng = np.random.default_rng(sample_seed(self.seed_key, self.seed, split, index))
        pool = self.pools[split]
        fs = r.sample_rate_hz
        if r.speakers.distribution:
            counts = sorted(r.speakers.distribution)
            probs = np.array([r.speakers.distribution[c] for c in counts], dtype=float)
            n_spk = int(rng.choice(counts, p=probs / probs.sum()))
        else:
            n_spk = r.speakers.count
        speakers = pool.speakers
        if len(speakers) < n_spk:
            raise SampleError(f"split {split!r} has {len(speakers)} speakers, a sample needs {n_spk}")
        chosen = [speakers[i] for i in rng.choice(len(speakers), size=n_spk, replace=False)]
        utts = [pool.utterances_by_speaker[s][int(rng.integers(len(pool.utterances_by_speaker[s])))]
                for s in chosen]
        sources, num_samples = self._place(rng, utts)
        if self.bank_rooms is not None:
            room, mics = self._draw_bank_room(rng, split, n_spk, sources)
        else:
            room, mics = self._draw_room(rng, n_spk, sources)
        # The order of the draws is the samples' identity: loudness, SIRs, noise, then lips.
        mixing = Mixing(loudness_lufs_target=_uniform(rng, r.mixing.loudness_lufs), max_peak=r.mixing.max_peak)
        for k, s in enumerate(sources):
            s["sir_db"] = 0.0 if k == 0 else _uniform(rng, r.mixing.sir_db)
        noise = self._draw_noise(rng, pool, chosen, num_samples)
        if "lips" in r.targets:
            # Drawn last, and only for lips: recipes without them keep their samples bit for bit.
            for s, u in zip(sources, utts):
                s["lips"] = draw_lips(u, s, fs, num_samples, seed=int(rng.integers(2**31)))
        return SampleMeta(
            key=sample_key(split, index), split=split, index=index, seed=self.seed, recipe=r.name,
            recipe_hash=self.recipe_hash, sources_hash=self.sources_hash, sample_rate_hz=fs,
            num_samples=num_samples, num_speakers=n_spk, num_mics=r.mics.count,
            # what the sample stores: no noise member where the recipe adds no noise
            targets=tuple(t for t in r.targets if t != "noise" or noise["kind"] != "none"),
            room=Room.from_dict(room), mics=Mics.from_dict(mics), sources=[Source.from_dict(s) for s in sources],
            noise=Noise.from_dict(noise), mixing=mixing, storage=Storage(codec=r.storage.codec, bits=r.storage.bits),
        ).to_dict()

    def _place(self, rng: np.random.Generator, utts: list[Utterance]) -> tuple[list[dict], int]:
        """Where each utterance excerpt lands in the mixture (samples), per duration/overlap mode."""
        r, fs = self.recipe, self.recipe.sample_rate_hz
        lengths = [min(int(u.duration_s * fs), int(r.duration.max_s * fs)) for u in utts]
        fixed = int(round(r.duration.fixed_s * fs))
        if r.overlap.mode == "full":
            if r.duration.mode == "min":
                total = min(lengths)
            elif r.duration.mode == "max":
                total = max(lengths)
            else:
                total = fixed
            lengths = [min(n, total) for n in lengths]
            starts = [int(rng.integers(0, total - n + 1)) if r.duration.mode == "fixed" else 0 for n in lengths]
        else:
            ratios = [_uniform(rng, r.overlap.ratio) for _ in utts[1:]]

            def chain(ls):
                st = [0]
                for k in range(1, len(ls)):
                    st.append(max(0, st[-1] + ls[k - 1] - int(ratios[k - 1] * min(ls[k - 1], ls[k]))))
                return st, max(s + n for s, n in zip(st, ls))

            starts, end = chain(lengths)
            cap = fixed if r.duration.mode == "fixed" else int(r.duration.max_s * fs)
            if end > cap:  # shrink every excerpt by the same factor: the chain end scales with it
                lengths = [max(1, int(n * cap / end)) for n in lengths]
                starts, end = chain(lengths)
            total = fixed if r.duration.mode == "fixed" else min(end, cap)
            shift = int(rng.integers(0, total - end + 1)) if total > end else 0
            starts = [s + shift for s in starts]
            lengths = [min(n, total - s) for s, n in zip(starts, lengths)]
        sources = []
        for u, n, st in zip(utts, lengths, starts):
            avail = int(u.duration_s * fs) - n
            first = int(rng.integers(0, avail + 1)) if (avail > 0 and r.duration.mode == "fixed") else 0
            sources.append({**_utt_ref(u), "utterance_start_s": first / fs, "utterance_stop_s": (first + n) / fs,
                            "start_sample": int(st), "num_samples": int(n)})
        return sources, int(total)

    def _draw_room(self, rng: np.random.Generator, n_spk: int, sources: list[dict]) -> tuple[dict, dict]:
        """A simulated room and array (:func:`hubbub.simulate.rooms.draw_room`); sets each source's
        ``position_m`` and ``distance_m``."""
        try:
            room, mics, positions = draw_room(rng, self.recipe.room, self.recipe.mics, n_spk)
        except RoomError as exc:
            raise SampleError(str(exc)) from None
        for s, p in zip(sources, positions):
            s.update(p)
        return room, mics

    def _draw_bank_room(self, rng: np.random.Generator, split: str, n_spk: int, sources: list[dict]):
        bank = storage.normalize(self.recipe.room.rir_bank)
        if not self.bank_rooms.get(split):
            raise SampleError(f"the RIR bank {bank} has no rooms for split {split!r}")
        room_index = int(rng.integers(self.bank_rooms[split]))
        meta = bank_meta(bank, split, room_index)
        k = len(meta["positions_m"])
        if k < n_spk:
            raise SampleError(f"bank rooms have {k} source positions, this sample needs {n_spk}")
        if meta["sample_rate_hz"] != self.recipe.sample_rate_hz:
            raise SampleError(f"the RIR bank is at {meta['sample_rate_hz']} Hz, the recipe at "
                              f"{self.recipe.sample_rate_hz} Hz")
        positions = sorted(int(i) for i in rng.choice(k, size=n_spk, replace=False))
        center = np.asarray(meta["mics"]["center_m"])
        for s, i in zip(sources, positions):
            s["position_m"] = meta["positions_m"][i]
            s["distance_m"] = round(float(np.linalg.norm(np.asarray(s["position_m"]) - center)), 4)
        room = {**meta["room"], "rir_mode": "bank", "bank": bank, "bank_split": split, "bank_room": room_index,
                "bank_room_mode": meta["room"]["rir_mode"], "bank_positions": positions,
                "early_ms": self.recipe.room.early_ms}
        return room, meta["mics"]

    def _draw_noise(self, rng, pool: SplitPool, chosen: list[str], num_samples: int) -> dict:
        nc = self.recipe.noise
        if nc.kind == "none":
            return {"kind": "none", "snr_db": None}
        out: dict[str, Any] = {"kind": nc.kind, "snr_db": _uniform(rng, self.recipe.mixing.snr_db),
                               "spatial": nc.spatial, "seed": int(rng.integers(2**31))}
        # Channel m is the noise circularly shifted by shifts[m]: shifts far beyond the noise's
        # correlation length decorrelate the channels before the diffuse coherence is imposed.
        out["shifts"] = [0] + [int(rng.integers(num_samples // 4, 3 * num_samples // 4 + 1))
                               for _ in range(self.recipe.mics.count - 1)]
        if nc.kind == "coloured":
            out["colour_exponent"] = _uniform(rng, nc.colour_exponent)
        elif nc.kind == "folder":
            if not pool.noise_files:
                raise SampleError("no usable noise files for this split")
            f = pool.noise_files[int(rng.integers(len(pool.noise_files)))]
            length_s = num_samples / self.recipe.sample_rate_hz
            out["files"] = [{"path": f.path, "start_s": round(_uniform(rng, (0.0, max(0.0, f.duration_s - length_s))), 4)}]
        elif nc.kind == "babble":
            others = [s for s in pool.speakers if s not in chosen] or pool.speakers
            k = int(rng.integers(nc.babble_speakers[0], nc.babble_speakers[1] + 1))
            picks = rng.choice(len(others), size=min(k, len(others)), replace=False)
            files = []
            for i in picks:
                utts = pool.utterances_by_speaker[others[i]]
                u = utts[int(rng.integers(len(utts)))]
                files.append({"path": u.path, "speaker": u.speaker, "licence": u.licence,
                              "offset_samples": int(rng.integers(0, max(1, num_samples)))})
            out["files"] = files
        return out


# -- rendering ---------------------------------------------------------------------------------------
# render() is a pipeline of the steps below, each a function of arrays and parameters that a test
# can run alone. Their floating-point operations are the pinned presets' (tests/simulate/
# test_preset_bytes.py): reordering one moves the corpus bytes.
@dataclass
class Rendered:
    meta: dict
    mix_q: np.ndarray                 # (M, T) int32 codes
    noise_q: np.ndarray | None        # (M, T)
    targets_q: dict[str, list[np.ndarray]]   # per-source target -> codes per source
    rirs: list[np.ndarray]            # per source (M, L) float32
    lips: list[np.ndarray] | None = None     # per source (F, 96, 96) uint8, target "lips"


def render(params: dict) -> Rendered:
    """Signals for a parameter dict from :meth:`Simulator.draw` (or a stored sample's JSON).

    The steps: place the sources, their room impulse responses, convolve, SIR gains, the dry
    target, noise at the SNR, one loudness scale under the peak limit, the measured metadata,
    quantisation, lips.
    """
    fs, n = params["sample_rate_hz"], params["num_samples"]
    mics = np.asarray(params["mics"]["positions_m"], dtype=float)
    ref = params["mics"]["reference"]
    srcs, room, mixing = params["sources"], params["room"], params["mixing"]
    targets = set(params["targets"])

    placed = place_sources(srcs, fs, n)                                                  # (S, T)
    rir_set = room_impulse_responses(room, srcs, mics, fs)
    filters = {"reverberant": rir_set.rirs, "direct": rir_set.direct}
    if "early" in targets:
        filters["early"] = rir_set.early(room["early_ms"])
    kinds = [kind for kind in filters if kind == "reverberant" or kind in targets]
    signals = dict(zip(kinds, convolve_sources(placed, [filters[k] for k in kinds], n)))  # kind -> (S, M, T)
    rev = signals["reverberant"]
    gains = sir_gains(rev[:, ref], [s["sir_db"] for s in srcs])
    for image in signals.values():
        image *= gains[:, None, None].astype(np.float32)
    speech = rev.sum(0)
    delays = direct_delays(rir_set, ref)
    if "dry" in targets:
        signals["dry"] = dry_target(placed, gains, delays)
    noise, noise_gain = noise_at_snr(params["noise"], speech[ref], mics, ref, fs)
    mix = speech + (noise if noise is not None else 0.0)
    stored = [mix, *signals.values()] + ([noise] if noise is not None else [])
    loudness, scale, limited = loudness_scale(mix[ref], stored, fs, mixing["loudness_lufs_target"], mixing["max_peak"])
    meta = measured_meta(params, rir_set, placed=placed, gains=gains, delays=delays, noise_gain=noise_gain,
                         loudness=loudness, scale=scale, limited=limited)
    mix_q, noise_q, targets_q = quantise(signals, noise, storage_of(params)["bits"], scale)
    lips = [render_source_lips(s["lips"], s, fs) for s in srcs] if "lips" in targets else None
    return Rendered(meta=meta, mix_q=mix_q, noise_q=noise_q, targets_q=targets_q,
                    rirs=[rir_set.rirs[k] for k in range(len(srcs))], lips=lips)


def _active_power(x: np.ndarray) -> float:
    """Mean square of ``x`` from its first to its last sample above 1e-8 in magnitude (0 if none).

    The ends come from argmax on the mask from either side (no index array), the sum of squares
    from one dot product (no squared copy).
    """
    loud = np.abs(x) > 1e-8
    if not loud.any():
        return 0.0
    active = x[int(np.argmax(loud)): x.size - int(np.argmax(loud[::-1]))]     # argmax: the first True
    return float(np.dot(active, active)) / active.size


def place_sources(sources: list[dict], sample_rate_hz: int, num_samples: int) -> np.ndarray:
    """Each source's excerpt at unit active power, placed at its ``start_sample``: (S, T) float32.

    Reads ``path``, ``utterance_start_s``, ``num_samples`` and ``start_sample`` of each source
    entry; the rest of the mixture is zeros (time 0 = emission).
    """
    placed = np.zeros((len(sources), num_samples), dtype=np.float32)
    for k, s in enumerate(sources):
        first = int(round(s["utterance_start_s"] * sample_rate_hz))
        x = load_audio_cached(s["path"], sample_rate_hz)[first: first + s["num_samples"]]
        x = x / (math.sqrt(_active_power(x)) + 1e-9)
        placed[k, s["start_sample"]: s["start_sample"] + len(x)] = x
    return placed


def room_impulse_responses(room: dict, sources: list[dict], mic_positions_m: np.ndarray,
                           sample_rate_hz: int) -> RirSet:
    """The RIRs of a sample's room: read from its RIR bank (``rir_mode`` "bank"), or simulated
    from the room's parameters and the sources' ``position_m`` (seeded by ``rir_seed``)."""
    if room["rir_mode"] == "bank":
        return rirs_from_bank(bank_room(room["bank"], room["bank_split"], room["bank_room"]), room["bank_positions"])
    return compute_rirs(room["dim_m"], room["rt60_s_target"] or 0.0, [s["position_m"] for s in sources],
                        mic_positions_m, sample_rate_hz, mode=room["rir_mode"],
                        rng=np.random.default_rng(room["rir_seed"]))


def convolve_sources(placed: np.ndarray, filter_sets: list[np.ndarray], n: int) -> list[np.ndarray]:
    """Convolve each source (S, T) with several filter sets (each (S, M, L)), truncated to ``n``.

    One FFT of each source serves all its filters (full RIR, direct path, early part): the cost
    is one forward transform per source and per filter, one inverse per output. Only the first
    ``n`` samples of each source matter for the first ``n`` outputs.

    The sources are transformed as rows padded with zeros to a multiple of 4: pocketfft transforms
    float32 rows four at a time with SIMD and the rest one at a time, ~3x slower each (two sources
    alone would cost as much as eight rows). Each filter set then runs on its own, (S x M) rows at
    a time: as fast as one batch of all the filters (measured on WHAMR!-style rooms), with the
    same results to the bit.
    """
    n_sources = len(placed)
    nfft = sp_fft.next_fast_len(n + max(f.shape[-1] for f in filter_sets) - 1, real=True)
    rows = np.zeros((-(-n_sources // 4) * 4, nfft), dtype=np.float32)
    rows[:n_sources, : min(n, placed.shape[-1])] = placed[:, :n]
    sources = sp_fft.rfft(rows, axis=-1)[:n_sources, None]                   # (S, 1, F)
    images = []
    for f in filter_sets:
        spectra = sp_fft.rfft(f, nfft, axis=-1)                               # (S, M, F)
        spectra *= sources
        images.append(sp_fft.irfft(spectra, nfft, axis=-1, overwrite_x=True)[..., :n])
    return images


def sir_gains(reverberant_ref: np.ndarray, sir_db: list[float]) -> np.ndarray:
    """Gain of each source (S,) that puts source ``k``'s reverberant image ``sir_db[k]`` dB above
    source 0's at the reference mic (``reverberant_ref`` (S, T)); source 0 keeps gain 1 and a
    silent source gets 0."""
    gains = np.ones(len(reverberant_ref))
    p0 = _active_power(reverberant_ref[0])
    for k in range(1, len(reverberant_ref)):
        pk = _active_power(reverberant_ref[k])
        gains[k] = math.sqrt(p0 * 10 ** (sir_db[k] / 10) / pk) if pk > 0 else 0.0
    return gains


def direct_delays(rir_set: RirSet, ref: int) -> list[int]:
    """Each source's direct-path delay at the reference mic, in whole samples."""
    return [int(round(float(rir_set.direct_delay_samples[k, ref]))) for k in range(len(rir_set.rirs))]


def dry_target(placed: np.ndarray, gains: np.ndarray, delays: list[int]) -> np.ndarray:
    """The ``dry`` target (S, T): each placed source times its gain, delayed by its direct-path
    delay so that it lines up with the direct path at the reference mic."""
    n = placed.shape[-1]
    dry = np.zeros((len(placed), n), np.float32)
    for k, d in enumerate(delays):
        dry[k, d:] = placed[k, : n - d] * gains[k]
    return dry


def _noise_base(noise: dict, fs: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(noise["seed"])
    if noise["kind"] == "coloured":
        return coloured_noise(rng, (n,), noise["colour_exponent"])
    if noise["kind"] == "folder":
        f = noise["files"][0]
        x = load_audio_cached(f["path"], fs)[int(round(f["start_s"] * fs)):]
        return np.resize(x[:n], n)  # loops a file shorter than the mixture (np.resize copies all it gets)
    out = np.zeros(n, np.float32)
    for f in noise["files"]:  # babble: each talker looped to n samples, normalised, circularly shifted
        x = load_audio_cached(f["path"], fs)
        looped = np.resize(x[:n], n)    # a new array, normalised in place (np.resize copies all it gets)
        looped /= math.sqrt(_active_power(x)) + 1e-9
        # np.roll(looped, offset), added in two slices instead of through a rolled copy
        shift = f["offset_samples"] % n
        out[shift:] += looped[: n - shift]
        out[:shift] += looped[n - shift:]
    return out


def noise_at_snr(noise: dict, speech_ref: np.ndarray, mic_positions_m: np.ndarray, ref: int,
                 sample_rate_hz: int) -> tuple[np.ndarray | None, float | None]:
    """The noise (M, T) float32 at ``noise["snr_db"]`` below ``speech_ref`` (all speech at the
    reference mic, (T,)), and its gain; ``(None, None)`` for ``kind`` "none".

    Channel ``m`` is the noise shifted circularly by ``noise["shifts"][m]``; a ``diffuse`` noise
    then gets the spherically diffuse coherence of the array.
    """
    if noise["kind"] == "none":
        return None, None
    base = _noise_base(noise, sample_rate_hz, len(speech_ref))
    chans = np.stack([np.roll(base, s) for s in noise["shifts"]])
    if noise["spatial"] == "diffuse":
        chans = diffuse_mixing(chans, mic_positions_m, sample_rate_hz)
    pn = _active_power(chans[ref])
    gain = math.sqrt(_active_power(speech_ref) / (pn * 10 ** (noise["snr_db"] / 10))) if pn > 0 else 0.0
    return chans.astype(np.float32) * np.float32(gain), gain


def loudness_scale(mix_ref: np.ndarray, signals: list[np.ndarray], sample_rate_hz: int, loudness_lufs: float,
                   max_peak: float) -> tuple[float, float, bool]:
    """``(loudness, scale, limited)``: the integrated loudness of ``mix_ref`` (LUFS, -inf for
    silence) and the one scale for every stored signal that brings it to ``loudness_lufs``,
    lowered (``limited``) where any of ``signals`` would then peak above ``max_peak``.

    Raises :class:`SampleError` when a signal holds NaN or inf.
    """
    meter = pyloudnorm.Meter(sample_rate_hz, block_size=min(0.4, len(mix_ref) / sample_rate_hz))
    # float64 in: scipy's lfilter runs the K-weighting in the input's precision, and is faster so
    loudness = meter.integrated_loudness(mix_ref.astype(np.float64))
    scale = 10 ** ((loudness_lufs - loudness) / 20) if np.isfinite(loudness) else 1.0
    # NaN and inf propagate into the peak, so this one pass also checks every signal is finite.
    peak = max(max(float(a.max()), -float(a.min())) for a in signals) * scale
    limited = peak > max_peak
    if limited:
        scale *= max_peak / peak
    if not (np.isfinite(peak) and np.isfinite(scale)):
        raise SampleError("rendering produced NaN or inf (check the source audio and room parameters)")
    return loudness, scale, bool(limited)


def _overlap_ratio(placed: np.ndarray, fs: int) -> float:
    """Fraction of active time (20 ms frames) during which two or more speakers are active."""
    frame = max(1, fs // 50)
    n = placed.shape[1] // frame
    if n == 0:
        return 0.0
    e = (placed[:, : n * frame].reshape(len(placed), n, frame) ** 2).mean(-1)
    active = e > 1e-3 * e.max(axis=1, keepdims=True)
    any_active = active.any(0).sum()
    return float((active.sum(0) >= 2).sum() / any_active) if any_active else 0.0


def measured_meta(params: dict, rir_set: RirSet, *, placed: np.ndarray, gains: np.ndarray, delays: list[int],
                  noise_gain: float | None, loudness: float, scale: float, limited: bool) -> dict:
    """The sample's JSON: its parameters and what rendering measured (the room's RT60 and image
    order, each source's gain and delay, the overlap, the loudness reached, the noise's gain)."""
    fs, room, ref = params["sample_rate_hz"], params["room"], params["mics"]["reference"]
    meta = {**params}
    if room["rir_mode"] == "bank":
        meta["room"] = room  # measured when the bank was made
    else:
        meta["room"] = {**room, "rt60_s_measured": (None if room["rir_mode"] == "anechoic"
                                                    else round(measure_rt60_s(rir_set.rirs[0, ref], fs), 4)),
                        "max_order": rir_set.max_order, "absorption": rir_set.absorption}
    meta["sources"] = [{**s, "gain_db": round(20 * math.log10(max(gains[k] * scale, 1e-12)), 3),
                        "dry_delay_samples": delays[k]} for k, s in enumerate(params["sources"])]
    reached = round(float(loudness + 20 * math.log10(scale)), 3) if np.isfinite(loudness) else None
    meta["mixing"] = {**params["mixing"], "overlap_ratio": round(_overlap_ratio(placed, fs), 4), "loudness_lufs": reached,
                      "gain_db": round(20 * math.log10(scale), 3), "peak_limited": limited}
    if noise_gain is not None:
        meta["noise"] = {**params["noise"], "gain_db": round(20 * math.log10(max(noise_gain * scale, 1e-12)), 3)}
    return meta


def quantise(signals: dict[str, np.ndarray], noise: np.ndarray | None, bits: int,
             scale: float) -> tuple[np.ndarray, np.ndarray | None, dict[str, list[np.ndarray]]]:
    """``signals`` (kind -> (S, M, T) or (S, T)) and ``noise`` (M, T) times ``scale`` as ``bits``-bit
    codes: ``(mix, noise, {kind: [codes per source]})``. The mix is the sum of the reverberant
    sources' and the noise's codes, so the stored parts add up to the stored mix exactly."""
    rev_q = [quantize(r, bits, scale) for r in signals["reverberant"]]
    noise_q = quantize(noise, bits, scale) if noise is not None else None
    mix_q = sum(rev_q) + (noise_q if noise_q is not None else 0)
    targets_q = {"reverberant": rev_q}
    for name in ("direct", "early", "dry"):
        if name in signals:
            targets_q[name] = [quantize(x, bits, scale) for x in signals[name]]
    return np.asarray(mix_q, np.int32), noise_q, targets_q


def to_members(rendered: Rendered) -> dict:
    """Rendered signals -> shard members (see :mod:`hubbub.shards.format`), the JSON checked
    against the schema on the way (:class:`hubbub.schema.SampleMeta`)."""
    meta = SampleMeta.from_dict(rendered.meta)
    codec, bits = meta.stored_as.codec, meta.stored_as.bits

    def encode(q):
        return encode_audio(q, meta.sample_rate_hz, codec=codec, bits=bits)

    members = {"__key__": meta.key, "json": meta.to_json(), member_name("mix", codec=codec): encode(rendered.mix_q)}
    if "noise" in meta.targets and rendered.noise_q is not None:
        members[member_name("noise", codec=codec)] = encode(rendered.noise_q)
    for name, per_source in rendered.targets_q.items():
        if name in meta.targets:
            for k, q in enumerate(per_source):
                members[member_name(name, k, codec)] = encode(q)
    if "rir" in meta.targets:
        for k, h in enumerate(rendered.rirs):
            members[member_name("rir", k)] = encode_npy(h.astype(np.float32))
    if "lips" in meta.targets and rendered.lips is not None:
        for k, frames in enumerate(rendered.lips):
            members[member_name("lips", k)] = encode_npy_zst(frames)
    return members
