"""The synthetic-to-real gap, measured on real human speech: how much of it does pretraining on
unlabelled real recordings close?

    python benchmarks/real_gap.py --real /usr/share/games/fillets-ng/sound --out exp-real
        [--seeds 0 1 2] [--steps 3500] [--pretrain-steps 2000] [--runs builtin mixit codec semi oracle]
        [--num-builtin 4000] [--num-real-train 3000] [--num-real-test 400] [--max-eval 200]
        [--codec /models/encodec_24khz] [--voices DIR]

Data (8 kHz, the ``librimix`` recipe everywhere, so real and synthetic mixtures are mixed alike):

* **built-in**: mixtures of the built-in voices (``hubbub voices``, 240 synthetic speakers),
  train/valid/test splits of disjoint speakers; its test split is the in-domain synthetic test;
* **real**: a folder of real recordings with a speaker rule (``--layout``, default the Debian
  ``fillets-ng-data-nl`` preset: ~85 minutes of two voice actors), split by whole groups
  (:func:`hubbub.sources.real.split_real`) into an unlabelled half (recordings for MixIT, codec
  tokens and semi-supervised PIT) and a labelled half, which is split again into the oracle's
  training speech and the **real test** speech, so no file is heard in two roles.

Runs, each the small Conv-TasNet (``pit_small``) with the same budget of supervised PIT steps:

1. ``builtin``: PIT on built-in mixtures only (the synthetic baseline);
2. ``mixit``: MixIT on the unlabelled real recordings (``--pretrain-steps``), then PIT on built-in;
3. ``codec``: codec-token pretraining on the same recordings, then PIT on built-in;
4. ``semi``: PIT on built-in plus MixIT on the real recordings in the same step (4 outputs);
5. ``oracle``: PIT on labelled real mixtures (in-domain; what no user has for their own audio).

Each is scored (SI-SNRi over the unprocessed mixture, dB) on the real test mixtures and on the
built-in test split; the table gives mean ± standard deviation over the seeds and the share of
the gap each method closes, ``(method - builtin) / (oracle - builtin)`` on the real test.
Results: ``OUT/results.json`` and ``OUT/results.md``; every stage resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from experiments import pick_codec, run_grid

from hubbub.evaluate import evaluate_run
from hubbub.finetune import finetune_pit
from hubbub.pretrain import pretrain_codec, pretrain_mixit
from hubbub.shards.ingest import ingest_recordings
from hubbub.simulate import load_recipe, simulate
from hubbub.sources.real import PRESETS, split_real
from hubbub.train import load_train_config
from hubbub.voices import make_voices

RUNS = ("builtin", "mixit", "codec", "semi", "oracle")


def make_data(out: Path, args) -> dict[str, Path]:
    """Every corpus the runs read, made once (each step resumes or is a no-op when done)."""
    rate = args.sample_rate_hz
    common = [f"sample_rate_hz={rate}"]
    voices = Path(args.voices) if args.voices else make_voices(out / "voices", sample_rate_hz=rate).parent
    builtin = simulate(load_recipe("librimix", [f"speech.corpus={voices}", *common]), num=args.num_builtin,
                       out_dir=out / "builtin", workers=args.workers, progress=False).out_dir
    halves = split_real(args.real, out / "real-split", layout=args.layout, labelled_fraction=0.5, seed=0)
    quarters = split_real(halves.out_dir / "labelled", out / "real-labelled-split", layout=args.layout,
                          labelled_fraction=0.5, seed=0)
    # the oracle's speech: quarters' "labelled" part; the real test speech: its other part
    regex = PRESETS[args.layout].speaker_regex if args.layout in PRESETS else args.speaker_regex
    oracle = simulate(load_recipe("librimix", [f"speech.corpus={quarters.out_dir / 'labelled'}", *common,
                                               "splits={train: 1.0}"]),
                      num=args.num_real_train, out_dir=out / "real-oracle", workers=args.workers,
                      progress=False).out_dir
    real_test = simulate(load_recipe("librimix", [f"speech.corpus={quarters.out_dir / 'unlabelled'}",
                                                  "speech.layout=regex", f"speech.regex={regex}", *common,
                                                  "splits={test: 1.0}"]),
                         num=args.num_real_test, out_dir=out / "real-test", workers=args.workers,
                         progress=False).out_dir
    unlabelled = ingest_recordings(halves.out_dir / "unlabelled", out / "real-unlabelled", sample_rate_hz=rate,
                                   segment_s=args.crop_s * 2, seed=0).out_dir
    return {"builtin": builtin, "oracle": oracle, "real_test": real_test, "unlabelled": unlabelled}


def run_one(name: str, seed: int, out: Path, data: dict[str, Path], args, codec: str | None) -> dict:
    runs = out / "runs" / f"seed{seed}"
    common = [f"seed={seed}", f"data.crop_s={args.crop_s}", "eval_every=0"]
    pit = [f"data.shards={data['builtin']}", f"steps={args.steps}", *common]
    pre = [f"data.shards={data['unlabelled']}", f"steps={args.pretrain_steps}", "model.size=small",
           "data.batch_size=4", "log_every=50", "ckpt_every=500", *common]
    start = time.time()
    if name == "builtin":
        finetune_pit(load_train_config("pit_small", pit), runs / name)
    elif name == "mixit":
        pretrain_mixit(load_train_config("mixit_debug", pre), runs / "mixit-pre")
        finetune_pit(load_train_config("pit_small", [*pit, f"init={runs / 'mixit-pre'}"]), runs / name)
    elif name == "codec":
        pretrain_codec(load_train_config("codec_debug", [*pre, f"codec.model={codec}"]), runs / "codec-pre")
        finetune_pit(load_train_config("pit_small", [*pit, f"init={runs / 'codec-pre'}"]), runs / name)
    elif name == "semi":
        finetune_pit(load_train_config("pit_small", [*pit, f"semi.unlabelled={data['unlabelled']}",
                                                     "model.num_sources=4"]), runs / name)
    elif name == "oracle":  # two speakers only: the oracle corpus is all train (valid on its head)
        finetune_pit(load_train_config("pit_small", [f"data.shards={data['oracle']}", "data.valid_split=train",
                                                     f"steps={args.steps}", *common]), runs / name)
    seconds = time.time() - start
    real = evaluate_run(runs / name, data["real_test"], split="test", metrics=("si_snri",), max_samples=args.max_eval)
    synthetic = evaluate_run(runs / name, data["builtin"], split="test", metrics=("si_snri",),
                             max_samples=args.max_eval)
    return {"run": name, "seed": seed, "real_si_snri_db": real["overall"]["mean"]["si_snri"],
            "builtin_si_snri_db": synthetic["overall"]["mean"]["si_snri"], "real_count": real["overall"]["count"],
            "builtin_count": synthetic["overall"]["count"], "train_seconds": round(seconds, 1)}


def summarise(rows: list[dict]) -> dict[str, dict]:
    """Per run: mean and standard deviation of both scores over the seeds, and the share of the
    real-test gap closed, (method - builtin) / (oracle - builtin), from the means."""
    out = {}
    for name in RUNS:
        mine = [r for r in rows if r["run"] == name]
        if mine:
            out[name] = {"seeds": len(mine), **{
                f"{key}_{stat}": (statistics.mean if stat == "mean" else statistics.stdev)([r[key] for r in mine])
                if stat == "mean" or len(mine) > 1 else None
                for key in ("real_si_snri_db", "builtin_si_snri_db") for stat in ("mean", "sd")}}
    if "builtin" in out and "oracle" in out:
        low, high = out["builtin"]["real_si_snri_db_mean"], out["oracle"]["real_si_snri_db_mean"]
        for s in out.values():
            s["gap_closed"] = (s["real_si_snri_db_mean"] - low) / (high - low) if high != low else None
    return out


def table(summary: dict[str, dict], args, codec_note: str) -> str:
    def cell(s, key):
        sd = s[f"{key}_sd"]
        return f"{s[f'{key}_mean']:+.2f}" + (f" ± {sd:.2f}" if sd is not None else "")

    lines = ["| run | real test SI-SNRi (dB) | built-in test SI-SNRi (dB) | gap closed | seeds |",
             "|---|---|---|---|---|"]
    for name, s in summary.items():
        closed = f"{100 * s['gap_closed']:.0f}%" if s.get("gap_closed") is not None else ""
        lines.append(f"| {name} | {cell(s, 'real_si_snri_db')} | {cell(s, 'builtin_si_snri_db')} | {closed} | "
                     f"{s['seeds']} |")
    lines += ["", f"Conv-TasNet small (pit_small), {args.steps} PIT steps per run, {args.pretrain_steps} pretraining "
                  f"steps, {args.crop_s} s crops at {args.sample_rate_hz} Hz; real speech from {args.real} "
                  f"({args.layout}); {codec_note}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--real", required=True, help="a folder of real recordings (e.g. /usr/share/games/fillets-ng/sound)")
    p.add_argument("--layout", default="fillets", help="a preset of hubbub.sources.real.PRESETS")
    p.add_argument("--speaker-regex", default=None, help="the speaker rule, for a folder without a preset")
    p.add_argument("--out", default="exp-real")
    p.add_argument("--voices", default=None, help="a built-in voices folder already made (default: make one in OUT)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    p.add_argument("--steps", type=int, default=3500, help="PIT steps of every run (the fixed budget)")
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--crop-s", type=float, default=2.0)
    p.add_argument("--sample-rate-hz", type=int, default=8000)
    p.add_argument("--num-builtin", type=int, default=4000)
    p.add_argument("--num-real-train", type=int, default=3000)
    p.add_argument("--num-real-test", type=int, default=400)
    p.add_argument("--max-eval", type=int, default=200, help="test mixtures scored per corpus")
    p.add_argument("--codec", default=None, help="EnCodec directory or hub id (default: a random small EnCodec)")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args(argv)
    if "builtin" not in args.runs or "oracle" not in args.runs:
        print("note: without both the builtin and oracle runs no share of the gap is computed")
    out = Path(args.out)
    data = make_data(out, args)
    codec, codec_note = pick_codec(args.codec, out, "codec" in args.runs)
    rows = run_grid(args.seeds, args.runs, lambda name, seed: run_one(name, seed, out, data, args, codec))
    summary = summarise(rows)
    md = table(summary, args, codec_note)
    results = {"args": vars(args), "rows": rows, "summary": summary}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "results.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
