"""Training throughput and peak memory of the separators, eager beside ``torch.compile``.

    python benchmarks/gpu_throughput.py [--models convtasnet,dprnn,tfgridnet,glaunet] [--size paper]
        [--batch 4] [--seconds 4] [--sample-rate-hz 8000] [--precision bf16] [--compile both]
        [--steps 20] [--budget-s 50] [--device cuda] [--json FILE]

For each model: a PIT training step (forward, negative SI-SNR with the best permutation,
backward, AdamW) on random mixtures of ``--batch`` x ``--seconds`` at ``--sample-rate-hz`` (the
paper batch of ``hubbub/finetune/configs/pit.yaml``: 4 x 4 s), under bf16 autocast; samples/s
over ``--steps`` timed steps after warm-up (compilation included in warm-up, reported apart), and
the peak memory the CUDA allocator held. A model or mode that runs out of memory, fails to
compile, or passes ``--budget-s`` is reported as such and the next one runs. On CPU (no GPU) it
runs too, for checking the script: ``--device cpu --size debug --compile no --steps 2``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import time

import torch

from hubbub.losses import PITLoss
from hubbub.models import MODELS, build_model, model_config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, *, size: str, batch: int, num_samples: int, precision: str, compiled: bool,
            steps: int, budget_s: float, device: torch.device) -> dict:
    """One model in one mode: {"samples_per_s", "step_ms", "peak_gib", "warmup_s", ...} or {"error"}."""
    torch.manual_seed(0)
    model = build_model(name, num_sources=2, **model_config(name, size)).to(device)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = PITLoss()
    forward = torch.compile(model) if compiled else model
    mix = torch.randn(batch, num_samples, device=device)
    refs = torch.randn(batch, 2, num_samples, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            est = forward(mix)
        loss, _ = loss_fn(est.float(), refs, mix=mix)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    row = {"model": name, "size": size, "params_m": round(params / 1e6, 3), "compile": compiled}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        start = time.perf_counter()
        for _ in range(2):  # compilation (and cuDNN autotuning) happen here
            step()
        _sync(device)
        row["warmup_s"] = round(time.perf_counter() - start, 2)
        done, start = 0, time.perf_counter()
        while done < steps and time.perf_counter() - start < budget_s:
            step()
            done += 1
        _sync(device)
        elapsed = time.perf_counter() - start
    except torch.cuda.OutOfMemoryError:
        return {**row, "error": "out of memory"}
    except Exception as exc:  # noqa: BLE001 - a compiler failure is a result here, not a crash
        return {**row, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
    row.update(steps=done, step_ms=round(1000 * elapsed / max(done, 1), 1),
               samples_per_s=round(done * batch / elapsed, 2) if done else None)
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if done < steps:
        row["note"] = f"{done} of {steps} steps within the {budget_s:.0f} s budget"
    return row


def format_table(result: dict) -> str:
    lines = [f"{result['device']}, batch {result['batch']} x {result['seconds']} s at {result['sample_rate_hz']} Hz, "
             f"{result['precision']} ({result['date']})", "",
             "| model | params | mode | samples/s | step | peak memory | warm-up |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mode = "compile" if r["compile"] else "eager"
        if "error" in r:
            lines.append(f"| {r['model']} | {r['params_m']} M | {mode} | {r['error']} | | | |")
            continue
        peak = f"{r['peak_gib']} GiB" if "peak_gib" in r else "-"
        lines.append(f"| {r['model']} | {r['params_m']} M | {mode} | {r['samples_per_s']} | {r['step_ms']} ms | "
                     f"{peak} | {r['warmup_s']} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="convtasnet,dprnn,tfgridnet,glaunet")
    p.add_argument("--size", default="paper")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--sample-rate-hz", type=int, default=8000)
    p.add_argument("--precision", choices=("bf16", "fp16", "no"), default="bf16")
    p.add_argument("--compile", choices=("both", "no", "yes"), default="both")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--budget-s", type=float, default=50.0, help="timed seconds per model and mode at most")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    names = [n for n in args.models.split(",") if n]
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")
    modes = {"both": (False, True), "no": (False,), "yes": (True,)}[args.compile]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in names:
        for compiled in modes:
            row = measure(name, size=args.size, batch=args.batch, num_samples=round(args.seconds * args.sample_rate_hz),
                          precision=args.precision, compiled=compiled, steps=args.steps, budget_s=args.budget_s,
                          device=device)
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {"date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "batch": args.batch, "seconds": args.seconds,
              "sample_rate_hz": args.sample_rate_hz, "precision": args.precision, "size": args.size, "rows": rows}
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
