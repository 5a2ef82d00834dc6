"""Simulation speed: hubbub's path against the plain pyroomacoustics path, and Ray scaling, in one run.

    python benchmarks/simulate.py [--json] [--recipe whamr] [--num-hubbub 60] [--num-plain 12]
                                  [--ray-num 200] [--workers N] [--bank-rooms 24]
                                  [--mixtures-per-room 10] [--set KEY=VALUE ...]

The plain path is what WHAMR!- or SonicSim-style generator scripts do per mixture: a ShoeBox with
the full image-source order from inverse Sabine, ``room.simulate()`` for the reverberant images,
a second, order-0 room for the direct path, the early image by convolving with the truncated RIR,
mixing in Python and one file per target. Both paths render the *same* drawn samples (rooms,
positions, utterances, levels), so only the work differs.

The plain path is timed first, with the memory allocator's defaults as a plain script runs, and
again after hubbub's worker set up the process (:func:`hubbub.simulate.runner.keep_freed_memory`,
which speeds the plain path up too): the headline ratio is against the first, both are reported.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from unittest import mock

import numpy as np
import pyroomacoustics as pra
import ray
import soundfile as sf
from scipy.signal import fftconvolve

from hubbub.audio import load_audio
from hubbub.config import to_dict
from hubbub.shards.writer import ShardPlan
from hubbub.simulate import load_recipe, simulate, simulate_rir_bank
from hubbub.simulate.runner import (SINGLE_THREAD_ENV, init_local_ray, keep_freed_memory, plan_shards,
                                    prepare_sources, write_shard)
from hubbub.simulate.sample import Simulator, render, to_members


def _plain_mixture(params: dict, out_dir: Path) -> None:
    """One mixture the plain way, every target written to its own file in the recipe's storage
    (codec and bit depth, as hubbub writes them)."""
    fs, n = params["sample_rate_hz"], params["num_samples"]
    mics = np.asarray(params["mics"]["positions_m"]).T
    room_p = params["room"]
    e_abs, order = pra.inverse_sabine(room_p["rt60_s_target"], room_p["dim_m"])
    signals = []
    for s in params["sources"]:
        x = load_audio(s["path"], fs, start_s=s["utterance_start_s"], stop_s=s["utterance_stop_s"])
        placed = np.zeros(n, np.float32)
        placed[s["start_sample"]: s["start_sample"] + len(x[: s["num_samples"]])] = x[: s["num_samples"]]
        signals.append(placed)
    room = pra.ShoeBox(room_p["dim_m"], fs=fs, materials=pra.Material(e_abs), max_order=order)
    anechoic = pra.ShoeBox(room_p["dim_m"], fs=fs, materials=pra.Material(e_abs), max_order=0)
    for r in (room, anechoic):
        for s, x in zip(params["sources"], signals):
            r.add_source(s["position_m"], signal=x)
        r.add_microphone_array(mics)
    images = room.simulate(return_premix=True)[..., :n]          # (S, M, T)
    direct = anechoic.simulate(return_premix=True)[..., :n]
    early_len = int(0.05 * fs) + 40
    early = np.stack([np.stack([fftconvolve(x, room.rir[m][k][:early_len])[:n] for m in range(mics.shape[1])])
                      for k, x in enumerate(signals)])
    gains = [1.0] + [10 ** (s["sir_db"] / 20) for s in params["sources"][1:]]
    speech = sum(g * im for g, im in zip(gains, images))
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(speech.shape) * np.sqrt(np.mean(speech**2)) * 10 ** (-(params["noise"]["snr_db"] or 30) / 20)
    mix = speech + noise
    scale = 0.9 / max(np.abs(mix).max(), 1e-9)
    files = {"mix": mix, "noise": noise}
    for k, g in enumerate(gains):
        files[f"s{k}_dry"] = signals[k] * g
        files[f"s{k}_direct"] = direct[k] * g
        files[f"s{k}_early"] = early[k] * g
        files[f"s{k}_reverberant"] = images[k] * g
    codec, bits = params["storage"]["codec"], params["storage"]["bits"]
    for name, x in files.items():
        sf.write(out_dir / f"{params['key']}_{name}.{codec}", (np.atleast_2d(x).T * scale).clip(-1, 1), fs,
                 subtype=f"PCM_{bits}")
    for m in range(mics.shape[1]):
        for k in range(len(signals)):
            np.save(out_dir / f"{params['key']}_s{k}_rir{m}.npy", room.rir[m][k].astype(np.float32))


def _plain_speed(draws: list[dict], out_dir: Path) -> float:
    """Mixtures/s of the plain path over ``draws``, one pass. Its files are not synced to disk
    (a plain script does not); ``os.sync`` after the timing keeps their writeback out of the next
    path's timing."""
    out_dir.mkdir()
    start = time.perf_counter()
    for params in draws:
        _plain_mixture(params, out_dir)
    rate = len(draws) / (time.perf_counter() - start)
    os.sync()
    return rate


# Storage variants measured beside the recipe's own: (name, codec, bits).
STORAGES = (("flac24", "flac", 24), ("flac16", "flac", 16), ("wav24", "wav", 24), ("wav16", "wav", 16))


class _FixedDraws:
    """The shard runner's job interface over drawn parameters, rendered in a given storage."""

    def __init__(self, draws: list[dict], storage: dict):
        self.draws, self.storage = draws, storage

    def members(self, split: str, index: int) -> tuple[dict, float]:
        params = self.draws[index]
        return to_members(render({**params, "storage": self.storage})), params["duration_s"]


def _hubbub_speed(draws: list[dict], storage: dict, out_dir: Path, repeats: int = 3) -> tuple[float, float]:
    """Mixtures/s of what a worker does for a shard of ``draws`` (render, encode, write, sync,
    sidecar with its sha256), the best of ``repeats`` passes (as timeit does: this machine's noise
    only ever slows a pass down), and kB written per mixture."""
    job, plan = _FixedDraws(draws, storage), ShardPlan("train", 0, 0, len(draws))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        record = write_shard(job, plan, str(out_dir))
        rates.append(len(draws) / (time.perf_counter() - start))
        if record["failed"]:  # a failed sample is skipped, not fatal: it would inflate the rate
            raise RuntimeError(f"a benchmark mixture failed: {record['failed'][0]['error']}")
    return max(rates), (out_dir / plan.name).stat().st_size / len(draws) / 1e3


def _ray_rates(recipe, num: int, mixtures: int, seed: int, ks: list[int]) -> dict[int, float]:
    """Mixtures/s of whole ``simulate`` runs of ``num`` mixtures (the train split's ``mixtures``)
    on a local Ray with ``max(ks)`` CPUs and ``k`` workers, for each k: alternating, twice, the
    best of each (a slow pass is this VM's noise, not the code's)."""
    rates: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        init_local_ray(max(ks), log_to_driver=False)
        try:
            # warm the workers as a long run has them: imports done, the utterances they draw
            # decoded (the same run, into another folder)
            simulate(recipe, num=num, out_dir=Path(tmp) / "warm", seed=seed, workers=max(ks), progress=False,
                     splits=["train"])
            for rep in range(2):
                for k in ks:
                    start = time.perf_counter()
                    simulate(recipe, num=num, out_dir=Path(tmp) / f"w{k}-{rep}", seed=seed, workers=k,
                             progress=False, splits=["train"])
                    rates[k] = max(rates.get(k, 0.0), mixtures / (time.perf_counter() - start))
        finally:
            ray.shutdown()
    return rates


def _pool_rates(job, plans: list, ks: list[int]) -> dict[int, float]:
    """The plain alternative to Ray on one machine: the same shards written by a process pool of
    k processes (``concurrent.futures``, spawned, one thread each), warmed the same way, timed
    alternating with the other k, best of two. Its scaling is what the machine allows."""
    mixtures = sum(p.num_samples for p in plans)
    pools = {k: ProcessPoolExecutor(k, mp_context=multiprocessing.get_context("spawn")) for k in ks}
    rates: dict[int, float] = {}
    try:
        # the pools spawn their processes as work arrives; they start with this environment
        with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, SINGLE_THREAD_ENV):
            for rep in ("warm", 0, 1):
                for k, pool in pools.items():
                    out = Path(tmp) / f"p{k}-{rep}"
                    out.mkdir()
                    start = time.perf_counter()
                    list(pool.map(write_shard, repeat(job), plans, repeat(str(out))))
                    if rep != "warm":
                        rates[k] = max(rates.get(k, 0.0), mixtures / (time.perf_counter() - start))
    finally:
        for pool in pools.values():
            pool.shutdown()
    return rates


def bench_simulate(*, num_hubbub: int = 60, num_plain: int = 12, ray_num: int = 200,
                   workers: int | None = None, recipe: str = "whamr", overrides: tuple[str, ...] = (),
                   seed: int = 0, bank_rooms: int = 24, bank_positions: int = 6,
                   mixtures_per_room: int = 10) -> dict:
    """Mixtures per second per core of hubbub and of the plain path, and Ray scaling 1 -> N.

    Defaults: the WHAMR!-style preset at 16 kHz, 4 s fixed-length mixtures, all targets written,
    on the built-in voices. Besides the recipe as given (the headline figure), the same draws are
    rendered in every storage (FLAC/WAV, 24/16 bits), and mixtures are drawn from a RIR bank of
    ``bank_rooms`` rooms built in the same run: its rate counts the bank's cost shared by
    ``mixtures_per_room`` mixtures per room. Ray's scaling from 1 to ``workers`` is measured on
    ``ray_num`` mixtures, next to a plain process pool writing the same shards (what the machine
    allows without Ray). The pool spawns processes: from a script, call this under
    ``if __name__ == "__main__":`` (:func:`main` is).
    """
    workers = workers or os.cpu_count() or 1
    pra.constants.set("num_threads", 1)
    base = ["sample_rate_hz=16000", "duration.mode=fixed", "duration.fixed_s=4.0", "samples_per_shard=8", *overrides]
    r = load_recipe(recipe, base)
    pools, _, _ = prepare_sources(r, seed)
    sim = Simulator(r, pools, seed)
    sim.members("train", 0)  # warm caches and imports for both paths
    draws = [sim.draw("train", i) for i in range(max(num_hubbub, num_plain))]
    storage = to_dict(r.storage)

    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the plain path as a script runs it (the allocator's defaults: nothing here has set it yet)
        plain_default_allocator = keep_freed_memory.cache_info().currsize == 0
        plain_rate = _plain_speed(draws[:num_plain], tmp / "plain")
        hubbub_rate, kb = _hubbub_speed(draws[:num_hubbub], storage, tmp / "bench")
        for name, codec, bits in STORAGES:
            rate, kb_v = _hubbub_speed(draws[:num_hubbub], {"codec": codec, "bits": bits}, tmp / name)
            variants[name] = {"mixtures_per_s_per_core": round(rate, 3), "kb_per_mixture": round(kb_v, 1)}

        # RIR bank: rooms once (timed, one process), then mixtures drawn from them
        bank_recipe = load_recipe(recipe, base)
        start = time.perf_counter()
        simulate_rir_bank(bank_recipe, num_rooms=bank_rooms, positions=bank_positions, out_dir=tmp / "bank",
                          seed=seed, workers=0, progress=False)
        bank_s_per_room = (time.perf_counter() - start) / bank_rooms
        bank_sim = Simulator(load_recipe(recipe, [*base, f"room.rir_bank={tmp / 'bank'}"]), pools, seed)
        bank_sim.members("train", 0)
        bank_draws = [bank_sim.draw("train", i) for i in range(num_hubbub)]
        bank = {"rooms": bank_rooms, "positions": bank_positions, "mixtures_per_room": mixtures_per_room,
                "build_s_per_room": round(bank_s_per_room, 4)}
        for name, codec, bits in (STORAGES[0], STORAGES[-1]):
            rate, _ = _hubbub_speed(bank_draws, {"codec": codec, "bits": bits}, tmp / f"bank-{name}")
            # each mixture also pays its share of the room it uses
            amortised = 1.0 / (1.0 / rate + bank_s_per_room / mixtures_per_room)
            bank[name] = {"mixing_only_mixtures_per_s_per_core": round(rate, 3),
                          "mixtures_per_s_per_core": round(amortised, 3)}

        # and again in this process, now set up as hubbub's workers are
        plain_kept_rate = _plain_speed(draws[:num_plain], tmp / "plain-kept")

    for v in variants.values():
        v["speedup_vs_plain"] = round(v["mixtures_per_s_per_core"] / plain_rate, 2)
    for name, _, _ in (STORAGES[0], STORAGES[-1]):
        bank[name]["speedup_vs_plain"] = round(bank[name]["mixtures_per_s_per_core"] / plain_rate, 2)

    plans = plan_shards(r, ray_num, ["train"])
    ks = sorted({1, workers})
    scaling = _ray_rates(r, ray_num, sum(p.num_samples for p in plans), seed, ks)
    pool_rates = _pool_rates(sim, plans, ks)
    rt60 = [d["room"]["rt60_s_target"] for d in draws[:num_plain]]
    return {
        "recipe": recipe, "sample_rate_hz": 16000, "duration_s": 4.0, "cores": os.cpu_count(),
        "storage": storage,
        "hubbub_mixtures_per_s_per_core": round(hubbub_rate, 3),
        "hubbub_kb_per_mixture": round(kb, 1),
        "plain_mixtures_per_s_per_core": round(plain_rate, 4),
        "plain_default_allocator": plain_default_allocator,
        "speedup_vs_plain": round(hubbub_rate / plain_rate, 2),
        "plain_kept_memory_mixtures_per_s_per_core": round(plain_kept_rate, 4),
        "speedup_vs_plain_kept_memory": round(hubbub_rate / plain_kept_rate, 2),
        "num_hubbub": num_hubbub, "num_plain": num_plain,
        "plain_rt60_s_mean": round(float(np.mean(rt60)), 3),
        "storages": variants,
        "rir_bank": bank,
        "ray_mixtures_per_s": {str(k): round(v, 3) for k, v in scaling.items()},
        "ray_scaling": round(scaling[workers] / scaling[1], 2) if workers > 1 else 1.0,
        "ray_workers": workers,
        "ray_num_mixtures": sum(p.num_samples for p in plans), "ray_num_shards": len(plans),
        "process_pool_mixtures_per_s": {str(k): round(v, 3) for k, v in pool_rates.items()},
        "process_pool_scaling": round(pool_rates[workers] / pool_rates[1], 2) if workers > 1 else 1.0,
        "rir_mode": r.room.rir_mode,
    }


def format_bench(res: dict) -> str:
    st = res["storage"]
    bank = res["rir_bank"]
    lines = [
        f"{res['recipe']} preset, {res['sample_rate_hz']} Hz, {res['duration_s']} s mixtures, all targets written",
        f"  hubbub ({res['rir_mode']} RIRs, {st['codec'].upper()} {st['bits']}-bit): "
        f"{res['hubbub_mixtures_per_s_per_core']:.2f} mixtures/s/core ({res['num_hubbub']} mixtures, "
        f"{res['hubbub_kb_per_mixture']:.0f} kB each)",
        f"  plain pyroomacoustics:  {res['plain_mixtures_per_s_per_core']:.3f} mixtures/s/core "
        f"({res['num_plain']} mixtures, mean RT60 {res['plain_rt60_s_mean']} s"
        + (", the allocator's defaults)" if res["plain_default_allocator"] else ", this process's allocator)"),
        f"  speed-up vs plain: {res['speedup_vs_plain']:.1f}x "
        f"(plain with freed memory kept, as hubbub's workers: {res['plain_kept_memory_mixtures_per_s_per_core']:.3f}"
        f"/s, {res['speedup_vs_plain_kept_memory']:.1f}x)",
        "  same draws by storage: " + "; ".join(
            f"{name} {v['mixtures_per_s_per_core']:.1f}/s ({v['speedup_vs_plain']:.1f}x, {v['kb_per_mixture']:.0f} kB)"
            for name, v in res["storages"].items()),
        f"  RIR bank ({bank['rooms']} rooms x {bank['positions']} positions, {bank['build_s_per_room'] * 1e3:.0f} ms "
        f"a room, shared by {bank['mixtures_per_room']} mixtures): " + "; ".join(
            f"{name} {bank[name]['mixtures_per_s_per_core']:.1f}/s ({bank[name]['speedup_vs_plain']:.1f}x; "
            f"mixing alone {bank[name]['mixing_only_mixtures_per_s_per_core']:.1f}/s)"
            for name in ("flac24", "wav16")),
        f"  Ray ({res['ray_num_mixtures']} mixtures in {res['ray_num_shards']} shards): " + ", ".join(
            f"{k} worker(s) {v:.2f} mixtures/s" for k, v in res["ray_mixtures_per_s"].items())
        + f"; scaling 1 -> {res['ray_workers']}: {res['ray_scaling']:.2f}x",
        "  the same shards in a process pool, no Ray: " + ", ".join(
            f"{k} process(es) {v:.2f} mixtures/s" for k, v in res["process_pool_mixtures_per_s"].items())
        + f"; scaling 1 -> {res['ray_workers']}: {res['process_pool_scaling']:.2f}x",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", action="store_true")
    p.add_argument("--recipe", default="whamr")
    p.add_argument("--num-hubbub", type=int, default=60)
    p.add_argument("--num-plain", type=int, default=12)
    p.add_argument("--ray-num", type=int, default=200, help="mixtures per Ray timing")
    p.add_argument("--workers", type=int, default=None, help="N for the Ray scaling (default: all cores)")
    p.add_argument("--bank-rooms", type=int, default=24, help="rooms of the RIR bank built and timed")
    p.add_argument("--mixtures-per-room", type=int, default=10,
                   help="mixtures sharing each bank room's cost in the bank figure")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    res = bench_simulate(num_hubbub=args.num_hubbub, num_plain=args.num_plain, ray_num=args.ray_num,
                         workers=args.workers, recipe=args.recipe, overrides=tuple(args.set),
                         bank_rooms=args.bank_rooms, mixtures_per_room=args.mixtures_per_room)
    print(json.dumps(res) if args.json else format_bench(res))
    return res


if __name__ == "__main__":
    main()
