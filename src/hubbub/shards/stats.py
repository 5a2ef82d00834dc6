"""What a corpus contains: distributions of the sampled parameters, from the sample JSONs only.

``corpus_stats`` reads only the ``{key}.json`` members, by their byte ranges (audio is never
read), so it takes seconds on a corpus that takes hours to verify, also in an object store.
``format_stats`` prints it, ``plot_stats`` draws it; ``hubbub shards stats DIR [--json]`` is
these three functions.
"""
from __future__ import annotations

import io
import json
import math
import tarfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from hubbub import storage
from hubbub.schema import SampleMeta, SchemaError
from hubbub.shards.ranges import read_members
from hubbub.shards.writer import load_index

# Metric name -> how to read it from one sample (a list: sir_db has one value per further source;
# the first source is the reference, its SIR is 0 dB by definition). Unlabelled samples (cut from
# recordings by hubbub.shards.ingest) have no room, mixing or sources: None, left out.
METRICS = {
    "rt60_s_measured": lambda m: [m.room.rt60_s_measured if m.room else None],
    "rt60_s_target": lambda m: [m.room.rt60_s_target if m.room else None],
    "snr_db": lambda m: [m.noise.snr_db if m.noise else None],
    "sir_db": lambda m: [s.sir_db for s in m.sources[1:]],
    "overlap_ratio": lambda m: [m.mixing.overlap_ratio if m.mixing else None],
    "duration_s": lambda m: [m.duration_s],
}
HISTOGRAM_BINS = 20


def iter_split_json(corpus_dir: str | Path, split: str, shard_names: list[str]) -> Iterator[dict]:
    """The sample JSONs of a split in shard order, reading nothing else: by their byte ranges
    (:func:`hubbub.shards.ranges.read_members`), or shard by shard from the tar headers for
    corpora without ranges."""
    members = read_members(corpus_dir, split, "json")
    if members is not None:
        for key, data in members:
            try:
                yield json.loads(data)
            except ValueError as exc:
                raise storage.StorageError(f"{corpus_dir} ({split}) sample {key}: its JSON is damaged ({exc}); "
                                           f"run `hubbub shards verify {corpus_dir}`") from None
        return
    for name in shard_names:
        yield from iter_sample_json(storage.join(corpus_dir, name))


def iter_sample_json(tar_path: str | Path) -> Iterator[dict]:
    """The ``{key}.json`` members of one shard, in order, without reading any audio.

    The stdlib tarfile in random-access mode seeks over member data; a streaming reader (as
    webdataset uses) would read every audio byte to skip it.
    """
    with storage.open_file(tar_path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            # "{key}.json" has exactly one dot; later stages' "{key}.x.json" are not the sample JSON.
            if member.isfile() and member.name.endswith(".json") and member.name.count(".") == 1:
                yield json.load(tar.extractfile(member))


def distribution(values: Iterable[float | None], bins: int = HISTOGRAM_BINS) -> dict:
    """Summary of the non-None values: count, mean, std (population), min, p5, p50, p95, max and
    a histogram ``{"edges": [bins + 1], "counts": [bins]}``; statistics are None when empty."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return {"count": 0, **dict.fromkeys(("mean", "std", "min", "p5", "p50", "p95", "max")),
                "histogram": {"edges": [], "counts": []}}
    counts, edges = np.histogram(x, bins=bins)
    p5, p50, p95 = np.percentile(x, [5, 50, 95])
    return {"count": int(x.size), "mean": float(x.mean()), "std": float(x.std()), "min": float(x.min()),
            "p5": float(p5), "p50": float(p50), "p95": float(p95), "max": float(x.max()),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def corpus_stats(corpus_dir: str | Path, *, splits: Iterable[str] | None = None) -> dict:
    """Per-split distributions of a corpus's sampled parameters, JSON-serialisable.

    Args:
        corpus_dir: a corpus directory with ``index.json``.
        splits: splits to read (default: all in the index).

    Returns::

        {"corpus_dir": str, "splits": {split: {
            "num_samples": int, "hours": float,
            "num_speakers": {"1": count, "2": count, ...},   # mixtures per speaker count
            "distinct_speakers": int,                        # distinct sources[i].speaker
            "lip_streams": {"phonemes": count, "file": count},  # sources with lips, by kind ({} without)
            "metrics": {name: distribution(...)} for rt60_s_measured, rt60_s_target,
                       snr_db (noiseless mixtures left out), sir_db (one value per source after the first),
                       overlap_ratio, duration_s}}}

    Example: ``corpus_stats(d)["splits"]["train"]["metrics"]["snr_db"]["p50"]`` is the median SNR.
    """
    index = load_index(corpus_dir)
    wanted = list(index["splits"]) if splits is None else list(splits)
    unknown = sorted(set(wanted) - set(index["splits"]))
    if unknown:
        raise ValueError(f"splits {unknown} not in {corpus_dir}; it has {sorted(index['splits'])}")
    out = {"corpus_dir": str(corpus_dir), "splits": {}}
    for split in wanted:
        values = {name: [] for name in METRICS}
        speaker_counts, speakers, lip_streams = Counter(), set(), Counter()
        shards = [s["name"] for s in index["shards"] if s["split"] == split]
        for stored in iter_split_json(corpus_dir, split, shards):
            try:
                meta = SampleMeta.from_dict(stored)
            except SchemaError as exc:
                key = stored.get("key") if isinstance(stored, dict) else None
                raise SchemaError([f"{corpus_dir} ({split}) sample {key}: {exc}; "
                                   f"run `hubbub shards verify {corpus_dir}`"]) from None
            for name, read in METRICS.items():
                values[name] += read(meta)
            speaker_counts[meta.num_speakers] += 1
            speakers.update(s.speaker for s in meta.sources)
            lip_streams.update(s.lips.kind for s in meta.sources if s.lips is not None)
        out["splits"][split] = {
            "num_samples": sum(speaker_counts.values()),
            "hours": sum(values["duration_s"]) / 3600.0,
            "num_speakers": {str(k): speaker_counts[k] for k in sorted(speaker_counts)},
            "distinct_speakers": len(speakers),
            "lip_streams": dict(sorted(lip_streams.items())),
            "metrics": {name: distribution(v) for name, v in values.items()},
        }
    return out


def format_stats(stats: dict) -> str:
    """A terminal table per split: a summary line, then one row per metric."""
    columns = ("count", "mean", "std", "min", "p5", "p50", "p95", "max")
    lines = [f"corpus {stats['corpus_dir']}"]
    for split, s in stats["splits"].items():
        mixtures = ", ".join(f"{n} spk: {c}" for n, c in s["num_speakers"].items())
        lips = ", ".join(f"{c} {kind}" for kind, c in s.get("lip_streams", {}).items())
        lines += ["", f"{split}: {s['num_samples']} mixtures, {s['hours']:.3f} h, "
                      f"{s['distinct_speakers']} distinct speakers ({mixtures})"
                      + (f"; lip streams: {lips}" if lips else ""),
                  f"  {'metric':<16}" + "".join(f"{c:>10}" for c in columns)]
        for name, d in s["metrics"].items():
            cells = [f"{d['count']:>10}"] + [f"{'-':>10}" if d[c] is None else f"{d[c]:>10.3f}" for c in columns[1:]]
            lines.append(f"  {name:<16}" + "".join(cells))
    return "\n".join(lines)


def plot_stats(stats: dict, png_path: str | Path) -> str | Path:
    """Save one panel per metric (histograms of every split overlaid), mixtures per speaker count
    and hours per split, as a PNG written atomically (a local path or any fsspec URL)."""
    # A bare Figure renders with Agg and leaves pyplot's global state (and the caller's backend) alone.
    from matplotlib.figure import Figure

    splits = stats["splits"]
    panels = len(METRICS) + 2
    ncols = 4
    fig = Figure(figsize=(4 * ncols, 3.2 * math.ceil(panels / ncols)), layout="constrained")
    axes = fig.subplots(math.ceil(panels / ncols), ncols, squeeze=False).ravel()
    for ax, name in zip(axes, METRICS):
        for split, s in splits.items():
            hist = s["metrics"][name]["histogram"]
            if hist["counts"]:
                ax.stairs(hist["counts"], hist["edges"], label=split)
        ax.set(title=name, xlabel=name, ylabel="count")
    ax = axes[len(METRICS)]
    speaker_counts = sorted({int(k) for s in splits.values() for k in s["num_speakers"]})
    width = 0.8 / max(len(splits), 1)
    for i, (split, s) in enumerate(splits.items()):
        ax.bar([k + i * width for k in speaker_counts],
               [s["num_speakers"].get(str(k), 0) for k in speaker_counts], width=width, label=split)
    ax.set(title="mixtures per speaker count", xlabel="num_speakers", ylabel="mixtures",
           xticks=[k + width * (len(splits) - 1) / 2 for k in speaker_counts], xticklabels=speaker_counts)
    ax = axes[len(METRICS) + 1]
    ax.bar(list(splits), [s["hours"] for s in splits.values()], color=[f"C{i}" for i in range(len(splits))])
    ax.set(title="hours per split", ylabel="hours")
    for ax in axes[panels:]:
        ax.set_visible(False)
    if axes[0].get_legend_handles_labels()[0]:   # unlabelled recordings have no RT60s to plot
        axes[0].legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    storage.write_bytes(png_path, buf.getvalue())
    return png_path
