"""Fast-mode RIRs against pyroomacoustics' full image-source method: fidelity and cost.

    python benchmarks/rir_fidelity.py [--rooms 50] [--sample-rate-hz 16000]

For random shoebox rooms (3-10 x 3-10 x 2.5-4 m, RT60 0.2-0.8 s, one source and two mics at least
0.5 m from the walls) it prints the median relative RT60 error (pyroomacoustics' measure_rt60) and
the median direct-to-reverberant ratio difference of fast vs full RIRs of the same room, then the
milliseconds per room (2 sources x 2 mics, 6 x 5 x 3 m) of both modes at RT60 0.2, 0.5, 0.8 s.
"""
import argparse
import json
import time

import numpy as np

from hubbub.simulate.rir import compute_rirs, direct_to_reverberant_db, measure_rt60_s


def fidelity(rooms: int, fs: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rt60_err, drr_diff = [], []
    for room in range(rooms):
        dims = rng.uniform([3.0, 3.0, 2.5], [10.0, 10.0, 4.0])
        rt60 = rng.uniform(0.2, 0.8)
        src, mics = rng.uniform(0.5, dims - 0.5, (1, 3)), rng.uniform(0.5, dims - 0.5, (2, 3))
        try:
            full = compute_rirs(dims, rt60, src, mics, fs, mode="full", rng=np.random.default_rng(room))
        except ValueError:  # an RT60 this room cannot have
            continue
        fast = compute_rirs(dims, rt60, src, mics, fs, mode="fast", rng=np.random.default_rng(room))
        for m in range(2):
            a, b = measure_rt60_s(fast.rirs[0, m], fs), measure_rt60_s(full.rirs[0, m], fs)
            rt60_err.append((a - b) / b)
            d = full.direct_delay_samples[0, m]
            drr_diff.append(direct_to_reverberant_db(fast.rirs[0, m], d, fs) - direct_to_reverberant_db(full.rirs[0, m], d, fs))
    rt60_err, drr_diff = np.array(rt60_err), np.array(drr_diff)
    return {"pairs": len(rt60_err), "rt60_median_abs_rel_error": round(float(np.nanmedian(np.abs(rt60_err))), 4),
            "rt60_median_rel_error": round(float(np.nanmedian(rt60_err)), 4),
            "drr_median_abs_diff_db": round(float(np.nanmedian(np.abs(drr_diff))), 3),
            "drr_median_diff_db": round(float(np.nanmedian(drr_diff)), 3)}


def cost(fs: int) -> dict:
    dims, src = [6.0, 5.0, 3.0], [[1.0, 1.2, 1.5], [4.5, 3.5, 1.7]]
    mics = [[3.0, 2.5, 1.4], [3.16, 2.5, 1.4]]
    out = {}
    for rt60 in (0.2, 0.5, 0.8):
        for mode in ("full", "fast"):
            reps = 2 if mode == "full" else 20
            start = time.perf_counter()
            for i in range(reps):
                compute_rirs(dims, rt60, src, mics, fs, mode=mode, rng=np.random.default_rng(i))
            out[f"{mode}_ms_rt60_{rt60}"] = round((time.perf_counter() - start) / reps * 1000, 2)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--rooms", type=int, default=50)
    p.add_argument("--sample-rate-hz", type=int, default=16000)
    args = p.parse_args()
    print(json.dumps({"sample_rate_hz": args.sample_rate_hz, **fidelity(args.rooms, args.sample_rate_hz),
                      **cost(args.sample_rate_hz)}, indent=1))
