"""A sample's randomness from its identity: the recipe, what the sources hold, the seed, the split
and the index; never the worker, the clock or the order work was scheduled.

Mixtures (:class:`hubbub.simulate.sample.Simulator`) and RIR bank rooms
(:class:`hubbub.simulate.bank.RirBankJob`) draw from the same seeds, so 1 worker or 100 write the
same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from hubbub.shards.writer import load_index


def sources_fingerprint(pools: dict, bank: str | None = None) -> str:
    """What the sources hold, independent of where they are: per split (``pools`` maps a split to
    its :class:`hubbub.simulate.sample.SplitPool`), each utterance's speaker, path relative to the
    corpus root and duration, the noise files, and the RIR bank's identity."""
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
        index = load_index(bank)
        rows.append(("bank", index.get("recipe_hash"), index.get("seed"), index.get("positions")))
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def seed_key(recipe_hash: str, sources_hash: str) -> str:
    """The recipe and the sources in one hex key, the first part of every sample's seed."""
    return hashlib.sha256(f"{recipe_hash}:{sources_hash}".encode()).hexdigest()[:16]


def sample_seed(recipe_hash: str, seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The only source of a sample's randomness: its identity, never the worker or the clock.

    ``recipe_hash`` is a hex key, in practice :func:`seed_key`'s."""
    split_code = int(hashlib.sha256(split.encode()).hexdigest()[:8], 16)
    return np.random.SeedSequence([int(recipe_hash, 16) & 0xFFFFFFFF, int(recipe_hash, 16) >> 32, seed,
                                   split_code, index])
