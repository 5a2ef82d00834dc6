"""The README's main job on the built-in default, end to end on a CPU in about ten minutes:

1. the built-in voices (espeak-ng, flite and Festival; 240 speakers);
2. a WHAMR!-style corpus, verified, with its statistics plot;
3. a LibriMix-style 8 kHz corpus, the small Conv-TasNet trained on it with PIT (``pit_small``),
   and its evaluation on the test split (speakers never heard in training) against the
   unprocessed mixture.
"""
from __future__ import annotations

from pathlib import Path

from hubbub.evaluate import evaluate_run, format_markdown
from hubbub.finetune import finetune_pit
from hubbub.shards.stats import corpus_stats, format_stats, plot_stats
from hubbub.shards.verify import verify_corpus
from hubbub.simulate import load_recipe, simulate
from hubbub.train import load_train_config
from hubbub.voices import make_voices


def run_demo(out: str | Path, *, num: int = 200, train_num: int = 2000, steps: int = 1200,
             workers: int | None = None) -> int:
    out = Path(out)
    voices = make_voices(out / "voices", progress=True).parent
    print(f"[1/4] built-in voices in {voices}")

    res = simulate(load_recipe("whamr", [f"speech.corpus={voices}"]), num=num, out_dir=out / "whamr", workers=workers)
    report = verify_corpus(res.out_dir)
    print(report.format())
    stats = corpus_stats(res.out_dir)
    plot_stats(stats, res.out_dir / "stats.png")
    print(format_stats(stats))
    print(f"[2/4] {num} WHAMR!-style mixtures in {res.out_dir}, verified; stats plot {res.out_dir / 'stats.png'}")
    if not report.ok:
        return 1

    train = simulate(load_recipe("librimix", [f"speech.corpus={voices}", "sample_rate_hz=8000"]), num=train_num,
                     out_dir=out / "librimix8k", workers=workers)
    print(f"[3/4] {train_num} LibriMix-style mixtures in {train.out_dir}")
    cfg = load_train_config("pit_small", [f"data.shards={train.out_dir}", f"steps={steps}",
                                          f"eval_every={max(steps // 3, 1)}", "data.valid_max_samples=32"])
    run = out / "runs" / "pit-convtasnet-small"
    finetune_pit(cfg, run)
    results = evaluate_run(run, train.out_dir, split="test", metrics=("si_snri", "sdri", "stoi"))
    print(format_markdown(results))
    gain = results["overall"]["mean"]["si_snri"]
    print(f"[4/4] PIT run {run} (curves: {run / 'curves.png'}): SI-SNRi on the test split (unseen speakers) "
          f"{gain:+.2f} dB over the unprocessed mixture (report in {results['out_dir']})")
    return 0
