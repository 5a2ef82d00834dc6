"""Peak memory of `hubbub separate` on long recordings: the whole file in memory (how separate_file
worked before it streamed: load_audio, separate_waveform, sf.write) beside the streamed
separate_file, each in a fresh process, for each duration. Figures for docs/separate.md.

    python benchmarks/separate_memory.py [--minutes 10,180] [--rate-hz 8000] [--work-dir DIR]

Makes a run directory with the debug Conv-TasNet (2 sources, untrained: what is measured is
memory, which the weights do not change) and, per duration, a 16-bit mono WAV of noise at
``--rate-hz``. Each mode runs in its own `python` process that reports its peak resident set size
(``ru_maxrss``), and its resident size after the imports and the model load (the floor that
does not depend on the input). The two modes' outputs are then compared, a block at a time.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

BLOCK_FRAMES = 1 << 20


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _child(mode: str, run_dir: str, wav: str, out_dir: str) -> None:
    """Separate ``wav`` one way and print {peak_rss_mb, floor_rss_mb, seconds} as JSON."""
    import torch

    from hubbub.separate import load_separator, separate_file

    # One intra-op thread: the model is tiny, and on a shared machine spinning threads only slow it.
    torch.set_num_threads(1)
    load_separator(run_dir)  # imports and one model load: the floor every mode starts from
    floor = _rss_mb()
    start = time.perf_counter()
    if mode == "streamed":
        separate_file(run_dir, wav, out_dir, device="cpu")
    else:
        from hubbub.audio import load_audio
        from hubbub.separate import separate_waveform

        model, rate = load_separator(run_dir)
        est = separate_waveform(model, load_audio(wav, rate), sample_rate_hz=rate, device="cpu")
        os.makedirs(out_dir, exist_ok=True)
        for k, source in enumerate(est):
            path = Path(out_dir) / f"{Path(wav).stem}_s{k}.wav"
            sf.write(path.with_name(path.name + ".tmp"), source, rate, format="WAV", subtype="FLOAT")
            os.replace(path.with_name(path.name + ".tmp"), path)
    print(json.dumps({"peak_rss_mb": _rss_mb(), "floor_rss_mb": floor, "seconds": time.perf_counter() - start}))


def _write_noise(path: Path, seconds: int, rate_hz: int) -> None:
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", rate_hz, 1, subtype="PCM_16") as f:
        for first in range(0, seconds * rate_hz, BLOCK_FRAMES):
            f.write(0.1 * rng.standard_normal(min(BLOCK_FRAMES, seconds * rate_hz - first)))


def _max_difference(a: Path, b: Path) -> float:
    worst = 0.0
    with sf.SoundFile(a) as fa, sf.SoundFile(b) as fb:
        if fa.frames != fb.frames:
            return float("inf")
        for xa, xb in zip(fa.blocks(BLOCK_FRAMES, dtype="float32"), fb.blocks(BLOCK_FRAMES, dtype="float32")):
            worst = max(worst, float(np.abs(xa - xb).max()))
    return worst


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="10,180", help="comma-separated durations")
    parser.add_argument("--rate-hz", type=int, default=8000)
    parser.add_argument("--work-dir", default=None, help="default: a temporary folder, removed afterwards")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "RUN", "WAV", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child)
        return {}

    import torch

    from hubbub.models import build_model, model_config, save_model

    minutes = [float(m) for m in args.minutes.split(",")]
    print(f"{datetime.date.today()}  python benchmarks/separate_memory.py --minutes {args.minutes} "
          f"--rate-hz {args.rate_hz}   (torch {torch.__version__}, {os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work_dir or scratch)
        run = work / "run"
        torch.manual_seed(0)
        save_model(build_model("convtasnet", num_sources=2, **model_config("convtasnet", "debug")), run / "model")
        (run / "run.json").write_text(json.dumps({"sample_rate_hz": args.rate_hz}))
        results = {}
        print(f"{'input':>10s} {'mode':>9s} {'peak RSS':>10s} {'after imports':>14s} {'time':>8s}  (1 thread)")
        for m in minutes:
            wav = work / f"noise_{m:g}min.wav"
            _write_noise(wav, round(m * 60), args.rate_hz)
            row = {}
            for mode in ("whole", "streamed"):
                out = work / f"out_{mode}"
                command = [sys.executable, os.path.abspath(__file__), "--child", mode, str(run), str(wav), str(out)]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                row[mode] = json.loads(done.stdout.strip().splitlines()[-1])
                print(f"{m:>6g} min {mode:>9s} {row[mode]['peak_rss_mb']:>7.0f} MB "
                      f"{row[mode]['floor_rss_mb']:>11.0f} MB {row[mode]['seconds']:>7.1f}s")
            row["max_abs_difference"] = max(_max_difference(work / "out_whole" / f"{wav.stem}_s{k}.wav",
                                                            work / "out_streamed" / f"{wav.stem}_s{k}.wav")
                                            for k in range(2))
            print(f"{'':>10s} outputs of the two modes differ by at most {row['max_abs_difference']:.2g}")
            results[f"{m:g}min"] = row
            for path in [wav, *(work / "out_whole").glob("*"), *(work / "out_streamed").glob("*")]:
                path.unlink()
    return results


if __name__ == "__main__":
    main()
