"""The README's main job on the built-in default: voices -> simulated corpus -> verify -> stats."""
from __future__ import annotations

from pathlib import Path


def run_demo(out: str | Path, *, num: int = 200, workers: int | None = None, recipe: str = "whamr") -> int:
    from hubbub.shards.stats import corpus_stats, format_stats, plot_stats
    from hubbub.shards.verify import verify_corpus
    from hubbub.simulate import load_recipe, simulate
    from hubbub.voices import make_voices

    out = Path(out)
    voices = make_voices(out / "voices", progress=True).parent
    print(f"[1/3] built-in voices in {voices}")
    res = simulate(load_recipe(recipe, [f"speech.corpus={voices}"]), num=num, out_dir=out / recipe, workers=workers)
    print(f"[2/3] {num} {recipe} mixtures in {res.out_dir} "
          f"({len(res.failed_samples)} failed, {len(res.skipped_files)} source files skipped)")
    report = verify_corpus(res.out_dir)
    print(report.format())
    stats = corpus_stats(res.out_dir)
    plot_stats(stats, res.out_dir / "stats.png")
    print(format_stats(stats))
    print(f"[3/3] verified; stats plot: {res.out_dir / 'stats.png'}")
    return 0 if report.ok else 1
