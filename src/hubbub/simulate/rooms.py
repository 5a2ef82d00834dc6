"""Rooms and microphone arrays drawn from a recipe: one drawing for mixtures and RIR banks.

:func:`draw_room` is what :meth:`hubbub.simulate.sample.Simulator.draw` and a RIR bank
(:mod:`hubbub.simulate.bank`) both call, so a bank room is the room a mixture of the same recipe
would have drawn. It only draws parameters; :func:`hubbub.simulate.rir.compute_rirs` turns them
into impulse responses.
"""
from __future__ import annotations

import numpy as np

from hubbub.simulate.recipe import MicsConfig, RoomConfig
from hubbub.simulate.rir import rt60_to_absorption

ROOM_TRIES = 50         # rooms drawn before giving up on the recipe's constraints
POSITION_TRIES = 200    # positions drawn per source before redrawing the room


class RoomError(RuntimeError):
    """No room within the recipe's ranges fits its RT60 and distance constraints."""


def uniform(rng: np.random.Generator, bounds) -> float:
    """A draw from ``[low, high]``; ``low`` itself, without a draw, when the range is a point."""
    return float(rng.uniform(bounds[0], bounds[1])) if bounds[1] > bounds[0] else float(bounds[0])


def draw_room(rng: np.random.Generator, room: RoomConfig, mics: MicsConfig,
              num_sources: int) -> tuple[dict, dict, list[dict]]:
    """A shoebox room, a microphone array in it and ``num_sources`` source positions.

    Redraws the room (up to :data:`ROOM_TRIES` times) while its RT60 needs an impossible wall
    absorption or the sources do not fit at the recipe's distances from the walls, the array and
    each other. Returns JSON-able ``(room, mics, positions)``::

        room = {"dim_m": [L, W, H], "rt60_s_target": s | None (anechoic), "rir_mode", "early_ms",
                "rir_seed": int}
        mics = {"array", "reference", "center_m": [x, y, z], "positions_m": [[x, y, z], ...]}
        positions = [{"position_m": [x, y, z], "distance_m": to the array centre}, ...]

    Raises :class:`RoomError` when no draw fits.
    """
    for _ in range(ROOM_TRIES):
        dim = [uniform(rng, room.length_m), uniform(rng, room.width_m), uniform(rng, room.height_m)]
        rt60 = None if room.rir_mode == "anechoic" else uniform(rng, room.rt60_s)
        if rt60 is not None:
            try:
                rt60_to_absorption(rt60, dim)
            except ValueError:
                continue
        placed = _place_in_room(rng, room, mics, dim, num_sources)
        if placed is not None:
            mic_pos, center, src_pos = placed
            break
    else:
        raise RoomError("no room within the recipe's ranges fits its RT60 and distance constraints; "
                        "widen room.* ranges or lower room.min_*_distance_m")
    positions = [{"position_m": [round(float(v), 4) for v in p],
                  "distance_m": round(float(np.linalg.norm(np.asarray(p) - center)), 4)} for p in src_pos]
    room_params = {"dim_m": [round(v, 4) for v in dim], "rt60_s_target": None if rt60 is None else round(rt60, 4),
                   "rir_mode": room.rir_mode, "early_ms": room.early_ms, "rir_seed": int(rng.integers(2**31))}
    mic_params = {"array": mics.array, "reference": mics.reference, "center_m": [round(float(v), 4) for v in center],
                  "positions_m": [[round(float(v), 5) for v in p] for p in mic_pos]}
    return room_params, mic_params, positions


def _place_in_room(rng: np.random.Generator, room: RoomConfig, mics: MicsConfig, dim: list[float],
                   num_sources: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]] | None:
    """(mic positions, array centre, source positions) in a room of size ``dim``, or None when
    the sources do not fit."""
    wall = room.min_wall_distance_m
    radius = {"single": 0.0, "pair": mics.spacing_m[1] / 2, "circular": mics.radius_m}[mics.array]
    margin = wall + radius
    if 2 * margin >= min(dim[0], dim[1]):
        return None
    center = np.array([rng.uniform(margin, dim[0] - margin), rng.uniform(margin, dim[1] - margin),
                       min(uniform(rng, mics.height_m), dim[2] - wall)])
    azimuth = rng.uniform(0, 2 * np.pi)
    if mics.array == "single":
        mic_pos = center[None]
    elif mics.array == "pair":
        half = uniform(rng, mics.spacing_m) / 2
        d = np.array([np.cos(azimuth), np.sin(azimuth), 0.0]) * half
        mic_pos = np.stack([center - d, center + d])
    else:
        ang = azimuth + 2 * np.pi * np.arange(mics.count) / mics.count
        mic_pos = center + mics.radius_m * np.stack([np.cos(ang), np.sin(ang), np.zeros_like(ang)], axis=1)
    src = []
    for _ in range(num_sources):
        for _ in range(POSITION_TRIES):
            p = np.array([rng.uniform(wall, dim[0] - wall), rng.uniform(wall, dim[1] - wall),
                          np.clip(uniform(rng, room.source_height_m), wall, dim[2] - wall)])
            if np.linalg.norm(p - center) < room.min_mic_distance_m:
                continue
            if any(np.linalg.norm(p - q) < room.min_source_distance_m for q in src):
                continue
            src.append(p)
            break
        else:
            return None
    return mic_pos, center, src
