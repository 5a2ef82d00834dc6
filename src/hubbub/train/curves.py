"""A run's training curves as one PNG next to it (``RUN/curves.png``), so a user sees what
happened without starting TensorBoard: the training loss per step (and its running mean), every
``valid/*`` metric per step, and the steps skipped as non-finite. The Solver redraws it at every
checkpoint and at the end, from ``metrics.jsonl`` alone.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from hubbub import storage

CURVES_NAME = "curves.png"


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a ``metrics.jsonl``; a line cut short by a kill is left out."""
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _running_mean(values: np.ndarray, width: int) -> np.ndarray:
    if len(values) < width or width < 2:
        return values
    kernel = np.ones(width) / width
    head = np.cumsum(values[: width - 1]) / np.arange(1, width)  # the first points average what there is
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_curves(rows: list[dict], png_path: str | Path, title: str = "") -> Path | None:
    """Draw the loss and the validation metrics of ``rows`` (metrics.jsonl rows) into a PNG,
    written atomically. Returns the path, or None when there is nothing to draw yet.

    Example::

        plot_curves(read_metrics("runs/pit/metrics.jsonl"), "runs/pit/curves.png", title="runs/pit")
    """
    from matplotlib.figure import Figure  # a bare Figure: Agg, pyplot's global state left alone

    train = [r for r in rows if isinstance(r.get("loss"), (int, float)) and np.isfinite(r["loss"])]
    valid_names = sorted({k for r in rows for k in r if k.startswith("valid/")})
    if not train and not valid_names:
        return None
    panels = 1 + len(valid_names)
    fig = Figure(figsize=(6.0, 2.6 * panels), layout="constrained")
    axes = fig.subplots(panels, 1, squeeze=False)[:, 0]
    ax = axes[0]
    if train:
        steps = np.array([r["step"] for r in train])
        loss = np.array([r["loss"] for r in train], dtype=float)
        ax.plot(steps, loss, lw=0.6, alpha=0.45, label="loss")
        ax.plot(steps, _running_mean(loss, max(1, len(loss) // 20)), lw=1.6, label="running mean")
        skipped = train[-1].get("skipped_nonfinite", 0)
        if skipped:
            ax.set_title(f"{skipped} step(s) skipped as non-finite", fontsize=9, loc="right")
        ax.legend(fontsize=8)
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    for ax, name in zip(axes[1:], valid_names):
        points = [(r["step"], r[name]) for r in rows if isinstance(r.get(name), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if points:
            ax.annotate(f"{points[-1][1]:.2f}", points[-1], fontsize=8, xytext=(4, 4), textcoords="offset points")
    axes[-1].set_xlabel("optimizer step")
    if title:
        fig.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    storage.write_bytes(png_path, buffer.getvalue())
    return Path(png_path)


def plot_run(run_dir: str | Path) -> Path | None:
    """``RUN/curves.png`` from ``RUN/metrics.jsonl`` (None if the run has logged nothing)."""
    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists():
        return None
    return plot_curves(read_metrics(metrics), run_dir / CURVES_NAME, title=str(run_dir))
