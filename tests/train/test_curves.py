"""RUN/curves.png: the training curves next to each run, drawn from metrics.jsonl."""
import json

import numpy as np
from PIL import Image

from hubbub.finetune import finetune_pit
from hubbub.train import load_train_config
from hubbub.train.curves import plot_curves, read_metrics


def test_a_run_draws_its_curves_at_checkpoints_and_the_end(tmp_path, corpus):
    cfg = load_train_config("pit_debug", [f"data.shards={corpus}", "data.crop_s=0.5", "log_every=1",
                                          "ckpt_every=2", "eval_every=2", "steps=4", "data.valid_max_samples=2"])
    run = tmp_path / "run"
    finetune_pit(cfg, run)
    png = run / "curves.png"
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = image.size
        pixels = np.asarray(image.convert("L"))
    assert pixels.std() > 10  # something is drawn, not a blank canvas
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if "valid/si_snri_db" in r] == [2, 4]
    loss_only = plot_curves([r for r in rows if "loss" in r], tmp_path / "loss.png")
    with Image.open(loss_only) as image:
        assert image.size[0] == width and height > 1.8 * image.size[1]  # a panel for the valid metric too


def test_curves_skip_non_finite_and_cut_lines_and_draw_nothing_without_rows(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": s, "loss": float(10 - s), "skipped_nonfinite": 1} for s in range(1, 30)]
    rows[3]["loss"] = float("nan")
    rows += [{"step": 10, "valid/si_snri": 1.5}, {"step": 20, "valid/si_snri": 3.0}]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 31, "lo')  # killed mid-line
    assert len(read_metrics(metrics)) == len(rows)
    assert plot_curves(read_metrics(metrics), tmp_path / "c.png").exists()
    assert plot_curves([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
