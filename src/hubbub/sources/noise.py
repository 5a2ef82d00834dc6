"""Noise: a folder of recordings (WHAM!, DEMAND, MUSAN style) or built-in synthetic noise.

Synthetic kinds need no download: ``coloured`` (1/f^beta spectrum: white 0, pink 1, brown 2),
``babble`` (a sum of other speakers of the same split). Any mono noise is made spatially diffuse
for a microphone array by imposing the spherically isotropic coherence
``sinc(2 f d / c)`` between mics on independent noise channels (Habets & Gannot, 2007).
"""
from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import fft as sp_fft

from hubbub.sources.speech import _walk_audio, check_files, resolve_folder

SPEED_OF_SOUND_M_S = 343.0


@dataclass
class NoiseFile:
    path: str
    duration_s: float
    sample_rate_hz: int
    channels: int


def index_noise(folder: str | Path, *, min_duration_s: float = 1.0, cache_dir=None) -> tuple[list[NoiseFile], list[dict]]:
    """All usable audio files under ``folder`` (sorted by path), and the skipped ones with reasons.

    ``folder`` is a local path or a URL (``s3://bucket/wham_noise``): a store is listed once and
    each ``NoiseFile.path`` is the file's full URL. Decoding results are cached as for
    :func:`hubbub.sources.speech.index_speech`, so a rerun reads no unchanged file again.
    """
    folder = resolve_folder(folder, "noise folder")
    entries = [{"path": f.path, "stamp": f.stamp} for f in _walk_audio(folder)]
    if not entries:
        raise ValueError(f"no audio files under noise folder {folder}")
    checked, skipped = check_files(entries, min_duration_s=min_duration_s,
                                   cache_key=json.dumps(["noise", folder, min_duration_s]), cache_dir=cache_dir)
    files = [NoiseFile(e["path"], i["duration_s"], i["sample_rate_hz"], i["channels"]) for e, i in checked]
    return files, skipped


def split_noise_files(files: list[NoiseFile], fractions: dict[str, float]) -> dict[str, list[NoiseFile]]:
    """Disjoint noise files per split, by a stable hash of the file name (adding files keeps
    existing assignments); every split gets at least one file where there are enough."""
    names = [n for n, f in fractions.items() if f > 0]
    total = sum(fractions[n] for n in names)
    edges = np.cumsum([fractions[n] / total for n in names])
    out: dict[str, list[NoiseFile]] = {n: [] for n in names}
    for f in files:
        u = int(hashlib.sha1(Path(f.path).name.encode()).hexdigest()[:8], 16) / 16**8
        out[names[int(np.searchsorted(edges, u, side="right").clip(0, len(names) - 1))]].append(f)
    for n in names:  # small folders: lend files so no split is left without noise
        if not out[n] and files:
            out[n] = [files[names.index(n) % len(files)]]
    return out


def coloured_noise(rng: np.random.Generator, shape: tuple[int, ...], exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1/f^exponent along the last axis, unit variance."""
    n = shape[-1]
    white = rng.standard_normal(shape)
    if exponent == 0:
        return white.astype(np.float32)
    spec = np.fft.rfft(white, axis=-1)
    f = np.fft.rfftfreq(n)
    f[0] = f[1] if n > 1 else 1.0
    spec *= f ** (-exponent / 2.0)
    x = np.fft.irfft(spec, n=n, axis=-1)
    x /= x.std(axis=-1, keepdims=True) + 1e-12
    return x.astype(np.float32)


def diffuse_coherence_root(freqs_hz: np.ndarray, mic_positions_m: np.ndarray,
                           c: float = SPEED_OF_SOUND_M_S) -> np.ndarray:
    """(F, M, M) mixing matrices that make M independent unit-power channels spherically diffuse.

    ``A(f)`` is the symmetric square root ``V √Λ Vᵀ`` of the diffuse field's coherence
    ``Γ_ij(f) = sinc(2 f d_ij / c)``, so ``A Aᵀ = Γ``. Unlike ``V √Λ`` alone, it does not depend
    on how the eigenvectors are ordered and signed, which jumps wherever eigenvalues cross (for
    two mics, wherever Γ_01 changes sign): it is continuous in f, so the filters it makes are
    short in time. Mixing frame by frame (an STFT) with a jumping matrix spreads each frame beyond
    its window and loses power at the overlap-add: 2% at 15 cm, 15% at 1 m, 35% at 3 m.
    """
    pos = np.asarray(mic_positions_m, dtype=np.float64)
    d = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    gamma = np.sinc(2.0 * np.asarray(freqs_hz, dtype=np.float64)[:, None, None] * d[None] / c)   # (F, M, M)
    value, vector = np.linalg.eigh(gamma)
    return (vector * np.sqrt(np.clip(value, 0.0, None))[:, None, :]) @ np.swapaxes(vector, -1, -2)


def diffuse_mixing(signals: np.ndarray, mic_positions_m: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """Make M mutually independent channels (M, T) spherically diffuse for the given mics (M, 3).

    Per frequency, the channels are mixed by :func:`diffuse_coherence_root` of the target
    coherence. Cost: one rfft/irfft of the M channels and one matrix square root per point of a
    coarse frequency grid (the coherence is smooth in f).

    The forward transform runs on the channels padded with zero rows to a multiple of 4: pocketfft
    transforms float32 rows four at a time with SIMD and the rest one by one, ~3x slower each, so
    two channels cost more than four.
    """
    m, n = signals.shape
    if m == 1:
        return signals
    padded = np.zeros((-(-m // 4) * 4, n), dtype=np.float32)
    padded[:m] = signals
    spec = sp_fft.rfft(padded, axis=-1)                                        # (rows, F)
    del padded
    grid = np.linspace(0, sample_rate_hz / 2, _GRID_POINTS)
    mix_grid = diffuse_coherence_root(grid, mic_positions_m).astype(np.float32)   # (G, M, M)
    # Each bin takes its grid point's mixing matrix. The matrices are real, so the complex spectra
    # are mixed as interleaved (re, im) float32 (a complex product with a real factor gives the
    # same values at twice the cost): each matrix entry is repeated over the 2 x (bins it serves)
    # floats, and mixed[i] = sum_j mixing[i, j] * spec[j] runs as flat products, in place.
    mixing = np.repeat(mix_grid.reshape(len(grid), m * m).T, _grid_runs(n, sample_rate_hz), axis=1)
    floats = spec.view(np.float32)                                             # (rows, 2F)
    mixed = np.empty((m, spec.shape[1]), dtype=spec.dtype)
    mixed_floats = mixed.view(np.float32)
    term = np.empty_like(floats[0])
    for i in range(m):
        np.multiply(mixing[i * m], floats[0], out=mixed_floats[i])
        for j in range(1, m):
            mixed_floats[i] += np.multiply(mixing[i * m + j], floats[j], out=term)
    return sp_fft.irfft(mixed, n=n, axis=-1, overwrite_x=True)


# Frequencies (0 to Nyquist) at which diffuse_mixing factorises the coherence.
_GRID_POINTS = 257


@functools.lru_cache(maxsize=8)
def _grid_runs(n: int, sample_rate_hz: int) -> np.ndarray:
    """How many interleaved (re, im) floats of the rfft of ``n`` samples each point of
    diffuse_mixing's grid serves: each bin goes to the first grid point at or above its frequency
    (cached: the same few lengths recur, and the search costs nearly as much as the mixing)."""
    grid = np.linspace(0, sample_rate_hz / 2, _GRID_POINTS)
    index = np.clip(np.searchsorted(grid, sp_fft.rfftfreq(n, 1.0 / sample_rate_hz)), 0, len(grid) - 1)
    runs = 2 * np.bincount(index, minlength=len(grid))
    runs.flags.writeable = False
    return runs
