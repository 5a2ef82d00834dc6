"""The experiment behind the platform: does pretraining on unlabelled data close a domain gap?

    python benchmarks/pretrain_experiment.py --out exp [--steps 600] [--pretrain-steps 600] [--seeds 0 1]
                                             [--codec /models/encodec_24khz] [--size debug|paper]

A miniature of the synthetic-to-real gap on the built-in voices, with no download:

* labelled data: 2-speaker mixtures of **espeak-ng** voices (the only labels any run gets);
* unlabelled data: mixtures of 1 or 2 **flite** speakers (the ``mixit`` recipe), no sources used;
* test: 2-speaker mixtures of other flite speakers (speakers disjoint from the unlabelled ones).

Four runs share the same budget of supervised PIT steps (``--steps``) and are scored on the test
split (SI-SNRi over the unprocessed mixture, in dB):

1. ``scratch``: PIT from a random initialisation;
2. ``mixit``: MixIT pretraining on the unlabelled flite mixtures (``--pretrain-steps``), then PIT
   from its backbone;
3. ``codec``: codec-token pretraining (masked mixture tokens) on the same unlabelled mixtures,
   then PIT from its backbone;
4. ``semi``: PIT plus MixIT on the unlabelled mixtures in the same step (weight 1), 4 outputs
   (the best 2 are scored, as for MixIT models in Wisdom et al. 2020).

EnCodec weights cannot be downloaded here: without ``--codec`` the codec run uses a small
randomly initialised EnCodec (:func:`hubbub.testing.make_random_codec`), i.e. a random-projection
quantiser in the manner of BEST-RQ, and the table says so. Results and a markdown table go to
``OUT/results.json`` and ``OUT/results.md``; every stage resumes, so an interrupted run continues
where it stopped.
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
from hubbub.simulate import load_recipe, simulate
from hubbub.train import load_train_config
from hubbub.voices import make_voices

RUNS = ("scratch", "mixit", "codec", "semi")
# The same speaker partition for the unlabelled and the test corpora of flite voices (only the
# train split of one and the test split of the other are simulated).
FLITE_SPLITS = "splits={train: 0.6, test: 0.4}"


def make_corpora(out: Path, *, rate: int, num_labelled: int, num_unlabelled: int, num_test: int,
                 workers: int | None) -> dict[str, Path]:
    espeak = make_voices(out / "voices-espeak", num_speakers=16, utterances_per_speaker=8, sample_rate_hz=rate,
                         synthesizers=("espeak-ng",)).parent
    flite = make_voices(out / "voices-flite", num_speakers=16, utterances_per_speaker=8, sample_rate_hz=rate,
                        synthesizers=("flite",)).parent
    common = [f"sample_rate_hz={rate}", "samples_per_shard=100"]
    labelled = simulate(load_recipe("anechoic_2spk", [f"speech.corpus={espeak}", *common,
                                                      "splits={train: 0.8, valid: 0.2}"]),
                        num=num_labelled, out_dir=out / "labelled-espeak", workers=workers, progress=False).out_dir
    unlabelled = simulate(load_recipe("mixit", [f"speech.corpus={flite}", *common, FLITE_SPLITS]),
                          num=round(num_unlabelled / 0.6), out_dir=out / "unlabelled-flite", workers=workers, splits=["train"],
                          progress=False).out_dir
    test = simulate(load_recipe("anechoic_2spk", [f"speech.corpus={flite}", *common, FLITE_SPLITS]),
                    num=round(num_test / 0.4), out_dir=out / "test-flite", workers=workers, splits=["test"], progress=False).out_dir
    return {"labelled": labelled, "unlabelled": unlabelled, "test": test}


def run_one(name: str, seed: int, out: Path, data: dict[str, Path], args, codec: str) -> dict:
    common = [f"seed={seed}", f"model.name={args.model}", f"model.size={args.size}", f"data.crop_s={args.crop_s}",
              "log_every=50", "ckpt_every=200", "eval_every=0"]
    pit = [f"data.shards={data['labelled']}", f"steps={args.steps}", *common]
    runs = out / "runs" / f"seed{seed}"
    t0 = time.time()
    if name == "scratch":
        finetune_pit(load_train_config("pit_debug", pit), runs / name)
    elif name == "mixit":
        pretrain_mixit(load_train_config("mixit_debug", [f"data.shards={data['unlabelled']}",
                                                         f"steps={args.pretrain_steps}", *common]), runs / "mixit-pre")
        finetune_pit(load_train_config("pit_debug", [*pit, f"init={runs / 'mixit-pre'}"]), runs / name)
    elif name == "codec":
        pretrain_codec(load_train_config("codec_debug", [f"data.shards={data['unlabelled']}", f"codec.model={codec}",
                                                         f"steps={args.pretrain_steps}", *common]), runs / "codec-pre")
        finetune_pit(load_train_config("pit_debug", [*pit, f"init={runs / 'codec-pre'}"]), runs / name)
    elif name == "semi":
        finetune_pit(load_train_config("pit_debug", [*pit, f"semi.unlabelled={data['unlabelled']}",
                                                     "model.num_sources=4"]), runs / name)
    seconds = time.time() - t0
    test = evaluate_run(runs / name, data["test"], split="test", metrics=("si_snri",))
    valid = evaluate_run(runs / name, data["labelled"], split="valid", metrics=("si_snri",))
    return {"run": name, "seed": seed, "test_si_snri_db": test["overall"]["mean"]["si_snri"],
            "labelled_valid_si_snri_db": valid["overall"]["mean"]["si_snri"],
            "test_count": test["overall"]["count"], "train_seconds": round(seconds, 1)}


def table(rows: list[dict], args, codec_note: str) -> str:
    lines = ["| run | test SI-SNRi, flite (dB) | labelled-domain valid SI-SNRi, espeak-ng (dB) | seeds |",
             "|---|---|---|---|"]
    for name in RUNS:
        mine = [r for r in rows if r["run"] == name]
        if not mine:
            continue

        def cell(key):
            values = [r[key] for r in mine]
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):+.2f}{spread}"

        lines.append(f"| {name} | {cell('test_si_snri_db')} | {cell('labelled_valid_si_snri_db')} | {len(mine)} |")
    lines += ["", f"{args.model} ({args.size}), {args.steps} PIT steps per run, {args.pretrain_steps} pretraining "
                  f"steps, {args.crop_s} s crops at {args.sample_rate_hz} Hz; {codec_note}."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="exp")
    p.add_argument("--steps", type=int, default=600, help="PIT steps of every run (the fixed budget)")
    p.add_argument("--pretrain-steps", type=int, default=600)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    p.add_argument("--model", default="convtasnet")
    p.add_argument("--size", default="debug", choices=("debug", "paper"))
    p.add_argument("--crop-s", type=float, default=2.0)
    p.add_argument("--sample-rate-hz", type=int, default=8000)
    p.add_argument("--num-labelled", type=int, default=800)
    p.add_argument("--num-unlabelled", type=int, default=800)
    p.add_argument("--num-test", type=int, default=100)
    p.add_argument("--codec", default=None, help="EnCodec directory or hub id (default: a random small EnCodec)")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args()

    out = Path(args.out)
    data = make_corpora(out, rate=args.sample_rate_hz, num_labelled=args.num_labelled,
                        num_unlabelled=args.num_unlabelled, num_test=args.num_test, workers=args.workers)
    codec, codec_note = pick_codec(args.codec, out, "codec" in args.runs)
    rows = run_grid(args.seeds, args.runs, lambda name, seed: run_one(name, seed, out, data, args, codec))
    md = table(rows, args, codec_note)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1) + "\n")
    (out / "results.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
