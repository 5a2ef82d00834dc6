"""Evaluating a trained run on a corpus split, overall and broken down by acoustic condition.

Every sample of the split is separated whole (mic 0, chunked by :func:`hubbub.separate.separate_waveform`
so long samples fit in memory) and scored against its present reference sources with
:func:`hubbub.metrics.evaluate_separation`, under the best assignment of the model's outputs (a
model with S outputs scores a mixture of fewer speakers on its best-matching subset). The sample
JSONs then give breakdowns by reverberation, noise, overlap and speaker count, because an average
over a whole test set hides exactly where a model fails::

    results = evaluate_run("runs/pit", "corpora/whamr", split="test")
    results["overall"]["mean"]["si_snri"]
    results["breakdowns"]["rt60"]     # [{"bin": "< 0.3 s", "count": 41, "mean": {...}}, ...]
    print(format_markdown(results))

Written to ``RUN/eval/{corpus}-{split}/``: ``results.json``, ``results.md`` and one
``si_snri_by_{factor}.png`` per breakdown.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hubbub import rundir, storage
from hubbub.metrics import METRICS, evaluate_separation
from hubbub.schema import SampleMeta
from hubbub.separate import RUN_CONFIG_NAME, load_separator, separate_waveform
from hubbub.shards.reader import ShardDataset
from hubbub.shards.writer import atomic_write_bytes, atomic_write_json
from hubbub.train.validation import with_mismatched_lips

log = logging.getLogger(__name__)

# Score names in report order, with their table headings; evaluate_separation returns a subset.
COLUMNS = {
    "si_snri": "SI-SNRi (dB)", "si_snr": "SI-SNR (dB)", "sdri": "SDRi (dB)", "sdr": "SDR (dB)",
    "pesq": "PESQ", "pesq_mix": "PESQ mix", "stoi": "STOI", "stoi_mix": "STOI mix",
}


@dataclass(frozen=True)
class Factor:
    """A condition to break results down by: a sample-row field cut into bins at ``edges``.

    ``edges=()`` makes every distinct value its own bin (speaker counts). Rows whose field is
    None (no room, no noise) go to the ``none_label`` bin, placed first or last.
    """

    name: str
    title: str
    field: str
    edges: tuple[float, ...] = ()
    unit: str = ""
    none_label: str = "none"
    none_first: bool = False

    def label(self, value: float | None) -> str:
        if value is None:
            return self.none_label
        if not self.edges:
            return f"{value:g}"
        unit = f" {self.unit}" if self.unit else ""
        i = int(np.searchsorted(self.edges, value, side="right"))
        if i == 0:
            return f"< {self.edges[0]:g}{unit}"
        if i == len(self.edges):
            return f"≥ {self.edges[-1]:g}{unit}"
        return f"{self.edges[i - 1]:g}–{self.edges[i]:g}{unit}"

    def order(self, value: float | None) -> tuple:
        """Sort key putting bins in the order of their values, the None bin first or last."""
        if value is None:
            return (0 if self.none_first else 2, 0.0)
        rank = value if not self.edges else float(np.searchsorted(self.edges, value, side="right"))
        return (1, rank)


FACTORS = (
    Factor("rt60", "RT60", "rt60_s", edges=(0.3, 0.6), unit="s", none_label="anechoic", none_first=True),
    Factor("snr", "SNR", "snr_db", edges=(0.0, 5.0, 10.0), unit="dB", none_label="no noise"),
    Factor("overlap", "Overlap ratio", "overlap_ratio", edges=(0.25, 0.5, 0.75)),
    Factor("speakers", "Speakers", "num_speakers"),
)


def _finite_mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(finite)) if finite else None


def _no_nan(obj):
    """nan -> None everywhere, so results are strict JSON (json.dumps writes bare NaN otherwise)."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def _summary(rows: list[dict]) -> dict:
    names = [n for n in COLUMNS if any(n in r["mean"] for r in rows)]
    return {"count": len(rows), "mean": {n: _finite_mean([r["mean"].get(n) for r in rows]) for n in names}}


def breakdown(rows: list[dict], factor: Factor) -> list[dict]:
    """Rows grouped into ``factor``'s bins (empty bins left out), in bin order: a list of
    ``{"bin": label, "count": n, "mean": {score: mean over the bin's rows, or None}}``."""
    groups: dict[str, list[dict]] = {}
    keys: dict[str, tuple] = {}
    for row in rows:
        value = row[factor.field]
        # a row may name its bin where its value is unknown (a reverberant set that records no RT60)
        label = row.get(f"{factor.name}_bin") or factor.label(value)
        groups.setdefault(label, []).append(row)
        keys[label] = (3, 0.0) if row.get(f"{factor.name}_bin") else factor.order(value)
    return [{"bin": label, **_summary(groups[label])} for label in sorted(groups, key=keys.get)]


def _sample_row(key: str, meta: SampleMeta, scores: dict) -> dict:
    room, noise, mixing = meta.room, meta.noise, meta.mixing
    # No measured RT60 means anechoic only where the room says so: an ingested reverberant set
    # (WHAMR!) records its reverberation as "unknown" and gets an "unknown" RT60 bin.
    reverb_unknown = room is not None and room.rt60_s_measured is None and (room.rir_mode or "anechoic") != "anechoic"
    return {
        "key": key,
        **({"rt60_bin": "unknown"} if reverb_unknown else {}),
        "num_speakers": meta.num_speakers,
        "duration_s": meta.duration_s,
        "rt60_s": room.rt60_s_measured if room else None,
        "snr_db": noise.snr_db if noise else None,
        "overlap_ratio": mixing.overlap_ratio if mixing else None,
        "mean": scores["mean"],
        "per_source": scores["per_source"],
        "perm": scores["perm"],
        "nan_reasons": scores["nan_reasons"],
    }


def evaluate_run(run_dir: str | Path, shards_dir: str | Path, *, split: str = "test",
                 target: str | None = None, max_samples: int | None = None,
                 metrics: Sequence[str] = METRICS, out_dir: str | Path | None = None,
                 chunk_s: float = 8.0, overlap_s: float = 2.0) -> dict:
    """Score a run's final model on a corpus split and write the report.

    Args:
        run_dir: a training run (``run.json`` + ``model/``).
        shards_dir: a corpus made by ``hubbub simulate`` at the model's sample rate.
        split: the split to evaluate, in corpus order.
        target: the reference the estimates are scored against ("reverberant", "early",
            "direct" or "dry"); default: the target the run trained on (``config.data.target``).
        max_samples: evaluate only the first N samples (quick looks).
        metrics: any of "si_snri", "sdri", "pesq", "stoi" (PESQ dominates the time on CPU).
        out_dir: default ``RUN/eval/{corpus directory name}-{split}``.
        chunk_s, overlap_s: chunking of long samples (see :func:`hubbub.separate.separate_waveform`).

    An audio-visual run (``hubbub finetune av``) is scored per source: each is extracted with its
    own lip stream (centre crop) and, for ``mismatched_lips``, with another utterance's; the
    estimate is scored against that source only (no permutation: the lips pick the speaker).

    Returns:
        A JSON-ready dict (missing values are None, not nan)::

            run, shards, corpus, split, target, sample_rate_hz, metrics,
            model        {name, num_sources, audio_visual}
            overall      {"count": n, "mean": {score: float | None}}  scores as in COLUMNS:
                         si_snri, si_snr, sdri, sdr (dB), pesq, pesq_mix, stoi, stoi_mix
            mismatched_lips  (audio-visual runs) the same scores when each source is extracted
                         with another utterance's lips (the next mixture's first source; the
                         last mixture takes the first's)
            breakdowns   {"rt60" | "snr" | "overlap" | "speakers": [{"bin", "count", "mean"}]}
                         RT60 bins of room.rt60_s_measured (< 0.3, 0.3–0.6, ≥ 0.6 s, anechoic, and unknown:
                         a reverberant room that records no RT60, as ingested WHAMR!),
                         SNR bins of noise.snr_db (< 0, 0–5, 5–10, ≥ 10 dB, no noise), overlap
                         bins of mixing.overlap_ratio (quarters), and speaker counts
            samples      one row per sample: key, num_speakers, duration_s, rt60_s, snr_db,
                         overlap_ratio, mean, per_source, perm, nan_reasons
            skipped      [{"key", "reason"}]: mixtures with more speakers than model outputs, and
                         damaged samples (JSON and members disagree: see hubbub shards verify)
            out_dir      where results.json, results.md and the PNGs were written

    Raises:
        ValueError: the corpus's sample rate differs from the model's, or the run records no
            training target and none is given.

    Example::

        r = evaluate_run("runs/pit", "corpora/whamr", metrics=("si_snri", "sdri"), max_samples=100)
        print(format_markdown(r))
    """
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be at least 1, got {max_samples}")
    run_url = storage.normalize(run_dir) if rundir.is_remote(run_dir) else None
    run_dir = rundir.fetch_run(run_dir)  # a run in an object store: run.json and model/ fetched
    run = json.loads((run_dir / RUN_CONFIG_NAME).read_text())
    if target is None:
        target = ((run.get("config") or {}).get("data") or {}).get("target")
        if target is None:
            raise ValueError(f"{run_dir / RUN_CONFIG_NAME} records no config.data.target: pass target")
    model, sample_rate_hz = load_separator(run_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    corpus = storage.name_of(storage.normalize(shards_dir))
    audio_visual = "video" in model.inputs
    targets = (target, "lips") if audio_visual else (target,)
    dataset = ShardDataset(shards_dir, split, targets=targets, shuffle=False, mic=0, roi_crop="center",
                           skip_damaged=True)

    def extract(mix: np.ndarray, lips: torch.Tensor) -> np.ndarray:
        return np.concatenate([separate_waveform(model, mix, sample_rate_hz=sample_rate_hz, chunk_s=chunk_s,
                                                 overlap_s=overlap_s, device=device, video=frames)
                               for frames in lips])

    rows, skipped, mismatched = [], [], []
    items = itertools.islice(dataset, max_samples)
    # the same other utterance's lips as the AV stage's validation uses
    for item, other_lips in with_mismatched_lips(items) if audio_visual else ((item, None) for item in items):
        key, meta = item["key"], SampleMeta.from_dict(item["meta"])
        if meta.sample_rate_hz != sample_rate_hz:
            raise ValueError(f"{shards_dir} is at {meta.sample_rate_hz} Hz, the model at {sample_rate_hz} Hz")
        mix, ref = item["mix"][0].numpy(), item["sources"][target].numpy()
        if audio_visual:
            lips = item["sources"]["lips"]
            est = extract(mix, lips)
            scores = evaluate_separation(est, ref, mix, sample_rate_hz, metrics=metrics, assign=False)
            if other_lips is not None:
                other = extract(mix, [other_lips] * len(lips))
                mismatched.append(evaluate_separation(other, ref, mix, sample_rate_hz, metrics=metrics, assign=False))
        else:
            if item["num_sources"] > model.num_sources:
                skipped.append({"key": key, "reason": f"{item['num_sources']} speakers > {model.num_sources} "
                                                      f"model outputs"})
                continue
            est = separate_waveform(model, mix, sample_rate_hz=sample_rate_hz, chunk_s=chunk_s,
                                    overlap_s=overlap_s, device=device)
            scores = evaluate_separation(est, ref, mix, sample_rate_hz, metrics=metrics)
        rows.append(_sample_row(key, meta, scores))
        log.info("%s: SI-SNRi %s", key, scores["mean"].get("si_snri"))

    if out_dir is None:  # next to the run's model, in the store too for a run in one
        out_dir = storage.join(run_url or run_dir, "eval", f"{corpus}-{split}")
    results = _no_nan({
        "run": run_url or str(run_dir), "shards": str(shards_dir), "corpus": corpus, "split": split, "target": target,
        "sample_rate_hz": sample_rate_hz, "model": {"name": model.spec["name"], "num_sources": model.num_sources,
                                                    "audio_visual": audio_visual},
        "metrics": list(metrics),
        "overall": _summary(rows),
        **({"mismatched_lips": _summary(mismatched)} if audio_visual else {}),
        "breakdowns": {f.name: breakdown(rows, f) for f in FACTORS},
        "samples": rows,
        "skipped": skipped + dataset.skipped,
        "out_dir": str(out_dir),
    })
    # written locally (a URL's files in a local folder first), then uploaded one PUT each
    local_out = Path(out_dir) if storage.is_local(out_dir) else rundir.local_mirror(out_dir)
    local_out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(local_out / "results.json", results)
    atomic_write_bytes(local_out / "results.md", format_markdown(results).encode())
    if rows:
        for factor in FACTORS:
            plot_breakdown(results, factor, local_out / f"si_snri_by_{factor.name}.png")
    if not storage.is_local(out_dir):
        for path in sorted(local_out.iterdir()):
            if path.is_file():
                storage.put_file(path, storage.join(out_dir, path.name))
    return results


def _cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _table(first: str, groups: list[tuple[str, dict]], names: list[str]) -> list[str]:
    lines = [f"| {first} | samples | " + " | ".join(COLUMNS[n] for n in names) + " |",
             "|" + "---|" * (len(names) + 2)]
    for label, summary in groups:
        cells = [_cell(summary["mean"].get(n)) for n in names]
        lines.append(f"| {label} | {summary['count']} | " + " | ".join(cells) + " |")
    return lines


def format_markdown(results: dict) -> str:
    """The results of :func:`evaluate_run` as Markdown: a header, the overall means, one table
    per breakdown and the skipped samples."""
    names = list(results["overall"]["mean"])
    model = results["model"]
    lines = [f"# Evaluation of {results['run']}", "",
             f"{model['name']} ({model['num_sources']} outputs) on {results['corpus']}/{results['split']}, "
             f"target {results['target']}, {results['sample_rate_hz']} Hz: {results['overall']['count']} "
             f"samples scored, {len(results['skipped'])} skipped.", "",
             "## Overall", ""]
    lines += _table("", [("all", results["overall"])], names)
    if "mismatched_lips" in results:
        lines += ["", "## Lips: the target's own vs another utterance's", "",
                  "Each source extracted with its own lip stream, and with the first source's lips of the "
                  "next mixture (an utterance not in this one): the gap is what the video contributes.", ""]
        lines += _table("lips", [("own", results["overall"]), ("another utterance's", results["mismatched_lips"])],
                        names)
    by_name = {f.name: f for f in FACTORS}
    for name, bins in results["breakdowns"].items():
        title = by_name[name].title if name in by_name else name
        lines += ["", f"## By {title}", ""]
        lines += _table(title, [(b["bin"], b) for b in bins], names)
    if results["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s['key']}: {s['reason']}" for s in results["skipped"]]
    return "\n".join(lines) + "\n"


def plot_breakdown(results: dict, factor: Factor, png_path: str | Path, score: str = "si_snri") -> Path | None:
    """Plot ``score`` per bin of ``factor``: each sample as a dot, each bin's mean as a bar,
    annotated with its sample count. Written atomically; None (nothing written) when no sample
    has the score."""
    # A bare Figure renders with Agg and leaves pyplot's global state (and the caller's backend) alone.
    from matplotlib.figure import Figure

    bins = [b for b in results["breakdowns"][factor.name] if b["mean"].get(score) is not None]
    if not bins:
        return None
    by_bin: dict[str, list[float]] = {b["bin"]: [] for b in bins}
    for row in results["samples"]:
        label, value = factor.label(row[factor.field]), row["mean"].get(score)
        if label in by_bin and value is not None:
            by_bin[label].append(value)
    fig = Figure(figsize=(1.2 * len(bins) + 2.5, 3.5), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(bins))
    ax.bar(x, [b["mean"][score] for b in bins], color="C0", alpha=0.5, label="mean")
    jitter = np.random.default_rng(0)  # fixed: the same results always draw the same picture
    for i, values in enumerate(by_bin.values()):
        ax.plot(i + jitter.uniform(-0.2, 0.2, len(values)), values, ".", color="C1", alpha=0.7)
    for i, b in enumerate(bins):
        mean = b["mean"][score]
        ax.annotate(f"n={b['count']}", (i, mean), ha="center", va="bottom" if mean >= 0 else "top", fontsize=8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set(xticks=x, xticklabels=list(by_bin), xlabel=factor.title, ylabel=COLUMNS.get(score, score),
           title=f"{COLUMNS.get(score, score)} by {factor.title.lower()} ({results['corpus']}/{results['split']})")
    png_path = Path(png_path)
    tmp = png_path.with_name(png_path.name + ".tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, png_path)
    return png_path
