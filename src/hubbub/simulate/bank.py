"""RIR banks: simulate rooms once into their own shards, then let many mixtures reuse them.

A bank room is one shoebox room with one microphone array and ``positions`` candidate source
positions (pairwise at least ``room.min_source_distance_m`` apart), and the RIRs from every
position to every mic. Mixing with ``room.rir_bank=BANK`` draws a room of the sample's split and
as many of its positions as the sample has speakers, so the acoustics are paid once per room
while sources, levels and noise stay new for every mixture.

Bank shards are ``{split}-%06d.tar`` like a corpus; a room's members are ``json`` (geometry,
RT60 asked for and measured, absorption, orders, direct-path delays), ``rirs.npy`` (K, M, L) and
``direct.npy`` (K, M, Ld), float32. Rooms of different splits are disjoint.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np

from hubbub import storage
from hubbub.shards.format import decode_npy, encode_json, encode_npy, sample_key
from hubbub.shards.writer import load_index, member_ranges, record_from_json, sidecar_path
from hubbub.simulate.recipe import Recipe
from hubbub.simulate.rir import RirSet, compute_rirs, measure_rt60_s
from hubbub.simulate.rooms import draw_room
from hubbub.simulate.seeds import sample_seed, seed_key, sources_fingerprint

BANK_KIND = "rir_bank"


class RirBankJob:
    """Draws and renders bank rooms; the shard runner calls :meth:`members` per room."""

    def __init__(self, recipe: Recipe, seed: int, positions: int):
        if positions < recipe.speakers.max_count:
            raise ValueError(f"a bank room needs at least as many positions ({positions}) as the most "
                             f"speakers a mixture may have ({recipe.speakers.max_count})")
        self.recipe = recipe
        self.seed = seed
        self.positions = positions
        # Seeded as a mixture simulator without speech pools would be: the rooms of existing banks.
        self.recipe_hash = recipe.content_hash()
        self.seed_key = seed_key(self.recipe_hash, sources_fingerprint({}, recipe.room.rir_bank))

    def members(self, split: str, index: int) -> tuple[dict, float]:
        rng = np.random.default_rng(sample_seed(self.seed_key, self.seed, split, index))
        room, mics, sources = draw_room(rng, self.recipe.room, self.recipe.mics, self.positions)
        fs = self.recipe.sample_rate_hz
        rs = compute_rirs(room["dim_m"], room["rt60_s_target"] or 0.0, [s["position_m"] for s in sources],
                          mics["positions_m"], fs, mode=room["rir_mode"], rng=np.random.default_rng(room["rir_seed"]))
        ref = mics["reference"]
        meta = {
            "key": sample_key(split, index), "split": split, "index": index, "kind": BANK_KIND,
            "sample_rate_hz": fs, "room": {**room, "rt60_s_measured": None if rs.mode == "anechoic" else
                                          round(measure_rt60_s(rs.rirs[0, ref], fs), 4),
                                          "max_order": rs.max_order, "full_order": rs.full_order,
                                          "absorption": rs.absorption},
            "mics": mics, "positions_m": [s["position_m"] for s in sources],
            "direct_delay_samples": rs.direct_delay_samples.round(4).tolist(),
            "rir_length": int(rs.rirs.shape[-1]),
        }
        members = {"__key__": meta["key"], "json": encode_json(meta), "rirs.npy": encode_npy(rs.rirs),
                   "direct.npy": encode_npy(rs.direct)}
        return members, rs.rirs.shape[-1] / fs


def bank_rooms_per_split(bank_dir: str | Path) -> dict[str, int]:
    index = load_index(bank_dir)
    if index.get("kind") != BANK_KIND:
        raise ValueError(f"{bank_dir} is not a RIR bank (made by `hubbub rirs`)")
    return {split: info["num_samples"] for split, info in index["splits"].items()}


@lru_cache(maxsize=64)
def _shard_members(url: str) -> dict[str, tuple[int, int]]:
    """Member name -> (data offset, size) of a bank shard: from its sidecar (format 2) or, for a
    bank written before sidecars recorded them, from its tar headers alone."""
    side = storage.read_json(sidecar_path(url))
    if side.get("members") is not None:
        return {f"{key}.{m}": tuple(r) for key, members in side["members"].items() for m, r in members.items()}
    return {f"{key}.{m}": tuple(r) for key, members in member_ranges(url).items() for m, r in members.items()}


def _read_member(url: str, name: str) -> bytes:
    offset, size = _shard_members(url)[name]
    return storage.read_range(url, offset, offset + size)


@lru_cache(maxsize=8)
def _bank_keys(bank_dir: str, split: str) -> list[tuple[str, str]]:
    """(shard URL, room key) for every room of a split, in order; from the shard sidecars."""
    index = load_index(bank_dir)
    urls = [storage.join(bank_dir, s["name"]) for s in index["shards"] if s["split"] == split]
    sidecars = storage.read_many([sidecar_path(u) for u in urls])
    out = []
    for url in urls:
        sidecar = sidecar_path(url)
        if sidecar not in sidecars:
            raise FileNotFoundError(f"{sidecar}: the sidecar of a RIR bank shard is missing: run "
                                    f"`hubbub shards verify {bank_dir}`")
        out += [(url, key) for key in record_from_json(sidecars[sidecar], sidecar).keys]
    return out


# Rooms are read one at a time, by seeking to their members: a mixture touches one room, and a
# bank of thousands of rooms is never held whole. Metadata (~1 kB a room) is kept for every
# room drawn; RIR arrays (~1 MB a room at 16 kHz) for the most recently used ones.
@lru_cache(maxsize=1 << 16)
def bank_meta(bank_dir: str, split: str, room_index: int) -> dict:
    """The JSON of a bank room (geometry, positions, RT60, delays)."""
    path, key = _bank_keys(bank_dir, split)[room_index]
    return json.loads(_read_member(path, f"{key}.json"))


@lru_cache(maxsize=64)
def bank_room(bank_dir: str, split: str, room_index: int) -> dict:
    """The room's meta and arrays (``rirs`` (K, M, L), ``direct`` (K, M, Ld))."""
    path, key = _bank_keys(bank_dir, split)[room_index]
    return {"meta": bank_meta(bank_dir, split, room_index),
            "rirs": decode_npy(_read_member(path, f"{key}.rirs.npy")),
            "direct": decode_npy(_read_member(path, f"{key}.direct.npy"))}


def rirs_from_bank(room: dict, positions: list[int]) -> RirSet:
    """A :class:`RirSet` for the chosen positions of a bank room (positions become sources)."""
    m = room["meta"]
    return RirSet(rirs=room["rirs"][positions], direct=room["direct"][positions],
                  direct_delay_samples=np.asarray(m["direct_delay_samples"])[positions],
                  max_order=m["room"]["max_order"], full_order=m["room"]["full_order"],
                  absorption=m["room"]["absorption"], mode=m["room"]["rir_mode"], sample_rate_hz=m["sample_rate_hz"])
