"""What the experiment scripts (pretrain_experiment.py, real_gap.py) share: the codec a codec-token
run uses, and the grid of runs over seeds with one JSON line printed per finished run."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def pick_codec(codec: str | None, out: Path, needed: bool) -> tuple[str | None, str]:
    """(the EnCodec to use, a note for the table): ``codec`` as given, else, where a codec run is
    asked for, a small randomly initialised EnCodec in ``out`` (no pretrained weights offline)."""
    if codec is not None:
        return codec, f"codec tokens from {codec}"
    if not needed:
        return None, "no codec run"
    from hubbub.testing import make_random_codec

    return (str(make_random_codec(out / "random-encodec", seed=0)),
            "codec tokens from a small randomly initialised EnCodec (no pretrained weights offline)")


def run_grid(seeds: list[int], runs: list[str], run_one: Callable[[str, int], dict]) -> list[dict]:
    """``run_one(name, seed)`` for every seed and run, in that order; each row printed as it ends."""
    rows = []
    for seed in seeds:
        for name in runs:
            row = run_one(name, seed)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows
