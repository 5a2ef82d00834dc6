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

import hashlib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyloudnorm
from scipy import fft as sp_fft

from hubbub import storage
from hubbub.audio import load_audio_cached
from hubbub.shards.format import (encode_audio, encode_json, encode_npy, encode_npy_zst, lips_member_name, quantize,
                                  sample_key, storage_of)
from hubbub.simulate.recipe import Recipe
from hubbub.simulate.rir import compute_rirs, measure_rt60_s, rt60_to_absorption
from hubbub.sources.lips import draw_lips, render_source_lips
from hubbub.sources.noise import NoiseFile, coloured_noise, diffuse_mixing
from hubbub.sources.speech import Utterance


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


def sources_fingerprint(pools: dict[str, "SplitPool"], bank: str | None = None) -> str:
    """What the sources hold, independent of where they are: per split, each utterance's speaker,
    path relative to the corpus root and duration, the noise files, and the RIR bank's identity."""
    paths = [u.path for p in pools.values() for us in p.utterances_by_speaker.values() for u in us]
    paths += [f.path for p in pools.values() for f in p.noise_files]
    root = os.path.commonpath(paths) if len(paths) > 1 else (os.path.dirname(paths[0]) if paths else "")
    rows = []
    for split in sorted(pools):
        pool = pools[split]
        rows += [(split, u.speaker, os.path.relpath(u.path, root), round(u.duration_s, 3))
                 for spk in sorted(pool.utterances_by_speaker) for u in pool.utterances_by_speaker[spk]]
        rows += [(split, "noise", os.path.relpath(f.path, root), round(f.duration_s, 3)) for f in pool.noise_files]
    if bank:
        from hubbub.shards.writer import load_index

        index = load_index(bank)
        rows.append(("bank", index.get("recipe_hash"), index.get("seed"), index.get("positions")))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def sample_seed(recipe_hash: str, seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The only source of a sample's randomness: its identity, never the worker or the clock."""
    split_code = int(hashlib.sha256(split.encode()).hexdigest()[:8], 16)
    return np.random.SeedSequence([int(recipe_hash, 16) & 0xFFFFFFFF, int(recipe_hash, 16) >> 32, seed,
                                   split_code, index])


def _uniform(rng: np.random.Generator, r) -> float:
    return float(rng.uniform(r[0], r[1])) if r[1] > r[0] else float(r[0])


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
        self.seed_key = hashlib.sha256(f"{self.recipe_hash}:{self.sources_hash}".encode()).hexdigest()[:16]
        self.bank_rooms = None
        if recipe.room.rir_bank:
            from hubbub.simulate.bank import bank_rooms_per_split

            self.bank_rooms = bank_rooms_per_split(recipe.room.rir_bank)

    def members(self, split: str, index: int) -> tuple[dict, float]:
        """Shard members of one sample and its duration (the shard runner's job interface)."""
        rendered = render(self.draw(split, index))
        return to_members(rendered), rendered.meta["duration_s"]

    # -- drawing ---------------------------------------------------------------------------------
    def draw(self, split: str, index: int) -> dict:
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
        params: dict[str, Any] = {
            "key": sample_key(split, index), "split": split, "index": index, "seed": self.seed,
            "recipe": r.name, "recipe_hash": self.recipe_hash, "sources_hash": self.sources_hash,
            "sample_rate_hz": fs,
            "num_samples": num_samples, "duration_s": num_samples / fs, "num_speakers": n_spk,
            "num_mics": r.mics.count, "targets": list(r.targets), "room": room, "mics": mics,
            "sources": sources, "storage": {"codec": r.storage.codec, "bits": r.storage.bits},
            "mixing": {"loudness_lufs_target": _uniform(rng, r.mixing.loudness_lufs),
                       "max_peak": r.mixing.max_peak},
        }
        for k, s in enumerate(sources):
            s["sir_db"] = 0.0 if k == 0 else _uniform(rng, r.mixing.sir_db)
        params["noise"] = self._draw_noise(rng, pool, chosen, num_samples)
        if "lips" in r.targets:
            # Drawn last, and only for lips: recipes without them keep their samples bit for bit.
            for s, u in zip(sources, utts):
                s["lips"] = draw_lips(u, s, fs, num_samples, seed=int(rng.integers(2**31)))
        return params

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
        rc, mc = self.recipe.room, self.recipe.mics
        for _ in range(50):
            dim = [_uniform(rng, rc.length_m), _uniform(rng, rc.width_m), _uniform(rng, rc.height_m)]
            rt60 = None if rc.rir_mode == "anechoic" else _uniform(rng, rc.rt60_s)
            if rt60 is not None:
                try:
                    rt60_to_absorption(rt60, dim)
                except ValueError:
                    continue
            placed = self._place_in_room(rng, dim, n_spk)
            if placed is not None:
                mic_pos, center, src_pos = placed
                break
        else:
            raise SampleError("no room within the recipe's ranges fits its RT60 and distance constraints; "
                              "widen room.* ranges or lower room.min_*_distance_m")
        for s, p in zip(sources, src_pos):
            s["position_m"] = [round(float(v), 4) for v in p]
            s["distance_m"] = round(float(np.linalg.norm(np.asarray(p) - center)), 4)
        room = {"dim_m": [round(v, 4) for v in dim], "rt60_s_target": None if rt60 is None else round(rt60, 4),
                "rir_mode": rc.rir_mode, "early_ms": rc.early_ms, "rir_seed": int(rng.integers(2**31))}
        mics = {"array": mc.array, "reference": mc.reference, "center_m": [round(float(v), 4) for v in center],
                "positions_m": [[round(float(v), 5) for v in p] for p in mic_pos]}
        return room, mics

    def _draw_bank_room(self, rng: np.random.Generator, split: str, n_spk: int, sources: list[dict]):
        from hubbub.simulate.bank import bank_meta

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

    def _place_in_room(self, rng, dim, n_spk):
        rc, mc = self.recipe.room, self.recipe.mics
        wall = rc.min_wall_distance_m
        radius = {"single": 0.0, "pair": mc.spacing_m[1] / 2, "circular": mc.radius_m}[mc.array]
        margin = wall + radius
        if 2 * margin >= min(dim[0], dim[1]):
            return None
        center = np.array([rng.uniform(margin, dim[0] - margin), rng.uniform(margin, dim[1] - margin),
                           min(_uniform(rng, mc.height_m), dim[2] - wall)])
        azimuth = rng.uniform(0, 2 * np.pi)
        if mc.array == "single":
            mic_pos = center[None]
        elif mc.array == "pair":
            half = _uniform(rng, mc.spacing_m) / 2
            d = np.array([np.cos(azimuth), np.sin(azimuth), 0.0]) * half
            mic_pos = np.stack([center - d, center + d])
        else:
            ang = azimuth + 2 * np.pi * np.arange(mc.count) / mc.count
            mic_pos = center + mc.radius_m * np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], axis=1)
        src = []
        for _ in range(n_spk):
            for _ in range(200):
                p = np.array([rng.uniform(wall, dim[0] - wall), rng.uniform(wall, dim[1] - wall),
                              np.clip(_uniform(rng, rc.source_height_m), wall, dim[2] - wall)])
                if np.linalg.norm(p - center) < rc.min_mic_distance_m:
                    continue
                if any(np.linalg.norm(p - q) < rc.min_source_distance_m for q in src):
                    continue
                src.append(p)
                break
            else:
                return None
        return mic_pos, center, src

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


def _noise_base(params: dict, fs: int, n: int) -> np.ndarray:
    nz = params["noise"]
    rng = np.random.default_rng(nz["seed"])
    if nz["kind"] == "coloured":
        return coloured_noise(rng, (n,), nz["colour_exponent"])
    if nz["kind"] == "folder":
        f = nz["files"][0]
        x = load_audio_cached(f["path"], fs)[int(round(f["start_s"] * fs)):]
        return np.resize(x[:n], n)  # loops a file shorter than the mixture (np.resize copies all it gets)
    out = np.zeros(n, np.float32)
    for f in nz["files"]:  # babble: each talker looped to n samples, normalised, circularly shifted
        x = load_audio_cached(f["path"], fs)
        looped = np.resize(x[:n], n)    # a new array, normalised in place (np.resize copies all it gets)
        looped /= math.sqrt(_active_power(x)) + 1e-9
        # np.roll(looped, offset), added in two slices instead of through a rolled copy
        shift = f["offset_samples"] % n
        out[shift:] += looped[: n - shift]
        out[:shift] += looped[n - shift:]
    return out


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


@dataclass
class Rendered:
    meta: dict
    mix_q: np.ndarray                 # (M, T) int32 codes
    noise_q: np.ndarray | None        # (M, T)
    targets_q: dict[str, list[np.ndarray]]   # per-source target -> codes per source
    rirs: list[np.ndarray]            # per source (M, L) float32
    lips: list[np.ndarray] | None = None     # per source (F, 96, 96) uint8, target "lips"


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


def render(params: dict) -> Rendered:
    """Signals for a parameter dict from :meth:`Simulator.draw` (or a stored sample's JSON)."""
    fs, n = params["sample_rate_hz"], params["num_samples"]
    mics = np.asarray(params["mics"]["positions_m"], dtype=float)
    ref = params["mics"]["reference"]
    srcs = params["sources"]
    room = params["room"]
    targets = set(params["targets"])

    placed = np.zeros((len(srcs), n), dtype=np.float32)
    for k, s in enumerate(srcs):
        first = int(round(s["utterance_start_s"] * fs))
        x = load_audio_cached(s["path"], fs)[first: first + s["num_samples"]]
        x = x / (math.sqrt(_active_power(x)) + 1e-9)
        placed[k, s["start_sample"]: s["start_sample"] + len(x)] = x

    if room["rir_mode"] == "bank":
        from hubbub.simulate.bank import bank_room, rirs_from_bank

        rir_set = rirs_from_bank(bank_room(room["bank"], room["bank_split"], room["bank_room"]),
                                 room["bank_positions"])
    else:
        rir_set = compute_rirs(room["dim_m"], room["rt60_s_target"] or 0.0, [s["position_m"] for s in srcs], mics,
                               fs, mode=room["rir_mode"], rng=np.random.default_rng(room["rir_seed"]))
    early = rir_set.early(room["early_ms"]) if "early" in targets else None

    wanted = ["reverberant"] + [t for t in ("direct", "early") if t in targets]
    filters = {"reverberant": rir_set.rirs, "direct": rir_set.direct, "early": early}
    images = convolve_sources(placed, [filters[t] for t in wanted], n)                   # per kind (S, M, T)
    rev = images[0]
    gains = np.ones(len(srcs))
    p0 = _active_power(rev[0, ref])
    for k in range(1, len(srcs)):
        pk = _active_power(rev[k, ref])
        gains[k] = math.sqrt(p0 * 10 ** (srcs[k]["sir_db"] / 10) / pk) if pk > 0 else 0.0
    signals: dict[str, Any] = {}
    for name, img in zip(wanted, images):
        img *= gains[:, None, None].astype(np.float32)
        signals[name] = img
    speech = rev.sum(0)
    delays = [int(round(float(rir_set.direct_delay_samples[k, ref]))) for k in range(len(srcs))]
    if "dry" in targets:
        dry = np.zeros((len(srcs), n), np.float32)
        for k, d in enumerate(delays):
            dry[k, d:] = placed[k, : n - d] * gains[k]
        signals["dry"] = dry

    noise = None
    if params["noise"]["kind"] != "none":
        base = _noise_base(params, fs, n)
        chans = np.stack([np.roll(base, s) for s in params["noise"]["shifts"]])
        if params["noise"]["spatial"] == "diffuse":
            chans = diffuse_mixing(chans, mics, fs)
        pn = _active_power(chans[ref])
        g = math.sqrt(_active_power(speech[ref]) / (pn * 10 ** (params["noise"]["snr_db"] / 10))) if pn > 0 else 0.0
        noise = chans.astype(np.float32) * np.float32(g)
    mix = speech + (noise if noise is not None else 0.0)

    meter = pyloudnorm.Meter(fs, block_size=min(0.4, n / fs))
    # float64 in: scipy's lfilter runs the K-weighting in the input's precision, and is faster so
    loudness = meter.integrated_loudness(mix[ref].astype(np.float64))
    scale = 10 ** ((params["mixing"]["loudness_lufs_target"] - loudness) / 20) if np.isfinite(loudness) else 1.0
    everything = [mix] + list(signals.values()) + ([noise] if noise is not None else [])
    # NaN and inf propagate into the peak, so this one pass also checks every signal is finite.
    peak = max(max(float(a.max()), -float(a.min())) for a in everything) * scale
    limited = peak > params["mixing"]["max_peak"]
    if limited:
        scale *= params["mixing"]["max_peak"] / peak

    meta = {**params}
    if room["rir_mode"] == "bank":
        meta["room"] = room  # measured when the bank was made
    else:
        meta["room"] = {**room, "rt60_s_measured": (None if room["rir_mode"] == "anechoic"
                                                    else round(measure_rt60_s(rir_set.rirs[0, ref], fs), 4)),
                        "max_order": rir_set.max_order, "absorption": rir_set.absorption}
    meta["sources"] = [{**s, "gain_db": round(20 * math.log10(max(gains[k] * scale, 1e-12)), 3),
                        "dry_delay_samples": delays[k]} for k, s in enumerate(srcs)]
    meta["mixing"] = {**params["mixing"], "overlap_ratio": round(_overlap_ratio(placed, fs), 4),
                      "loudness_lufs": round(float(loudness + 20 * math.log10(scale)), 3) if np.isfinite(loudness) else None,
                      "gain_db": round(20 * math.log10(scale), 3), "peak_limited": bool(limited)}
    if noise is not None:
        meta["noise"] = {**params["noise"], "gain_db": round(20 * math.log10(max(g * scale, 1e-12)), 3)}

    if not (np.isfinite(peak) and np.isfinite(scale)):
        raise SampleError("rendering produced NaN or inf (check the source audio and room parameters)")
    bits = storage_of(params)["bits"]
    rev_q = [quantize(r, bits, scale) for r in rev]
    noise_q = quantize(noise, bits, scale) if noise is not None else None
    mix_q = sum(rev_q) + (noise_q if noise_q is not None else 0)
    targets_q = {"reverberant": rev_q}
    for name in ("direct", "early", "dry"):
        if name in signals:
            targets_q[name] = [quantize(x, bits, scale) for x in signals[name]]
    lips = [render_source_lips(s["lips"], s, fs) for s in srcs] if "lips" in targets else None
    return Rendered(meta=meta, mix_q=np.asarray(mix_q, np.int32), noise_q=noise_q, targets_q=targets_q,
                    rirs=[rir_set.rirs[k] for k in range(len(srcs))], lips=lips)


def to_members(rendered: Rendered) -> dict:
    """Rendered signals -> shard members (see :mod:`hubbub.shards.format`)."""
    meta = rendered.meta
    fs = meta["sample_rate_hz"]
    targets = set(meta["targets"])
    storage = storage_of(meta)
    ext = storage["codec"]

    def encode(q):
        return encode_audio(q, fs, **storage)

    members = {"__key__": meta["key"], "json": encode_json(meta), f"mix.{ext}": encode(rendered.mix_q)}
    if "noise" in targets and rendered.noise_q is not None:
        members[f"noise.{ext}"] = encode(rendered.noise_q)
    for name, per_source in rendered.targets_q.items():
        if name in targets:
            for k, q in enumerate(per_source):
                members[f"s{k}.{name}.{ext}"] = encode(q)
    if "rir" in targets:
        for k, h in enumerate(rendered.rirs):
            members[f"s{k}.rir.npy"] = encode_npy(h.astype(np.float32))
    if "lips" in targets and rendered.lips is not None:
        for k, frames in enumerate(rendered.lips):
            members[lips_member_name(k)] = encode_npy_zst(frames)
    return members
