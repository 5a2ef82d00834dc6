"""Elastic resume: a checkpoint written on W processes continues on W' with the same global batches."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from hubbub.finetune import PITStage, finetune_pit
from hubbub.pretrain import pretrain_codec
from hubbub.testing import hubbub_launch, make_random_codec
from hubbub.train import load_train_config

CONFIG = Path(__file__).parents[2] / "cluster" / "accelerate" / "cpu-2proc.yaml"
STEPS, STOP = 6, 3  # 16 samples in global batches of 4: the resumed steps cross an epoch


def _cfg(corpus, *extra):
    return load_train_config("pit_debug", [f"data.shards={corpus}", "data.crop_s=0.5", "log_every=1",
                                           f"ckpt_every={STOP}", f"steps={STEPS}", *extra])


def _launch(corpus, out: Path, num_processes: int, *sets: str) -> None:
    args = ["finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--out", str(out),
            "--set", "data.crop_s=0.5", "--set", "log_every=1", "--set", f"ckpt_every={STOP}",
            "--set", f"steps={STEPS}", "--set", "log_sample_keys=true"]
    for s in sets:
        args += ["--set", s]
    res = subprocess.run(hubbub_launch(CONFIG, *args, num_processes=num_processes), capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in _rows(run / "metrics.jsonl") if "loss" in r]


def _global_batches(run: Path) -> dict[int, list[str]]:
    """Step -> the keys of its global batch: every rank's chunk, in rank order."""
    batches: dict[int, list[str]] = {}
    for rank in range(len(list(run.glob("samples_rank*.jsonl")))):
        for row in _rows(run / f"samples_rank{rank}.jsonl"):
            batches.setdefault(row["step"], []).extend(row["keys"])
    return batches


def _stop_after_checkpoint(run: Path, copy: Path, step: int) -> None:
    """``copy``: ``run`` as a kill right after its step-``step`` checkpoint would have left it."""
    shutil.copytree(run, copy)
    for ckpt in (copy / "checkpoints").glob("step_*[0-9]"):
        if int(ckpt.name[5:]) > step:
            shutil.rmtree(ckpt)
    shutil.rmtree(copy / "model")
    for keys in copy.glob("samples_rank*.jsonl"):
        keys.write_text("".join(json.dumps(r) + "\n" for r in _rows(keys) if r["step"] < step))


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_on_one_and_four_processes(tmp_path, corpus):
    full = tmp_path / "full"
    _launch(corpus, full, 2, "data.batch_size=2")
    assert json.loads((full / "checkpoints" / f"step_{STOP:08d}" / "trainer.json").read_text())["global_batch"] == \
        {"data.batch_size": 4, "semi.batch_size": 0}
    for world_size in (1, 4):
        resumed = tmp_path / f"on{world_size}"
        _stop_after_checkpoint(full, resumed, STOP)
        # The config's batch is ignored on resume: the checkpoint's global batch of 4 is kept.
        _launch(corpus, resumed, world_size, "data.batch_size=2")
        assert json.loads((resumed / "run.json").read_text())["config"]["data"]["batch_size"] == 4 // world_size
        assert _global_batches(resumed) == _global_batches(full)
        assert len(_global_batches(full)) == STEPS and all(len(b) == 4 for b in _global_batches(full).values())
        got, want = _losses(resumed), _losses(full)
        assert [s for s, _ in got] == [s for s, _ in want] == list(range(1, STEPS + 1))
        # equal up to float reassociation (the all-reduce sums in another order), compounded by Adam
        assert [loss for _, loss in got] == pytest.approx([loss for _, loss in want], rel=1e-3, abs=1e-3)


def test_a_global_batch_the_processes_cannot_split_is_refused(tmp_path, corpus):
    stage = PITStage(_cfg(corpus, "data.batch_size=3"), tmp_path / "run")
    trainer = {"step": 3, "epoch": 0, "skipped_nonfinite": 0, "world_size": 2,
               "global_batch": {"data.batch_size": 4, "semi.batch_size": 8}}
    cfg = stage._resume_config(tmp_path / "ckpt", trainer, 4)
    assert (cfg.data.batch_size, cfg.semi.batch_size) == (1, 2)
    with pytest.raises(ValueError, match=r"global batch of 4 \(data.batch_size 2 x 2 processes\), which 3 processes"):
        stage._resume_config(tmp_path / "ckpt", trainer, 3)


def test_a_checkpoint_with_per_rank_positions_resumes_on_its_own_world_size(tmp_path, corpus):
    finetune_pit(_cfg(corpus), tmp_path / "full")
    old = tmp_path / "old"
    _stop_after_checkpoint(tmp_path / "full", old, STOP)
    # The format before elastic resume: rank{r}.json, rng_rank{r}.pt and no global batch.
    ckpt = old / "checkpoints" / f"step_{STOP:08d}"
    position = json.loads((ckpt / "data.json").read_text())
    (ckpt / "rank0.json").write_text(json.dumps({**position, "consumed": position["global_consumed"]}))
    (ckpt / "data.json").unlink()
    trainer = json.loads((ckpt / "trainer.json").read_text())
    del trainer["global_batch"]
    (ckpt / "trainer.json").write_text(json.dumps({**trainer, "world_size": 2}))
    with pytest.raises(ValueError, match="per-rank data positions of 2 processes"):
        finetune_pit(_cfg(corpus), old)
    (ckpt / "trainer.json").write_text(json.dumps(trainer))
    finetune_pit(_cfg(corpus), old)
    assert _losses(old) == _losses(tmp_path / "full")


def test_random_masks_are_redrawn_exactly_on_resume(tmp_path, corpus):
    codec = make_random_codec(tmp_path / "encodec", seed=0)
    cfg = load_train_config("codec_debug", [f"data.shards={corpus}", f"codec.model={codec}", "data.crop_s=0.5",
                                            "log_every=1", "ckpt_every=2", "steps=4", "eval_every=0"])
    pretrain_codec(cfg, tmp_path / "full")
    _stop_after_checkpoint(tmp_path / "full", tmp_path / "resumed", 2)
    pretrain_codec(cfg, tmp_path / "resumed")
    rows = [_rows(run / "metrics.jsonl") for run in (tmp_path / "full", tmp_path / "resumed")]
    assert [(r["loss"], r["masked_fraction"]) for r in rows[0] if "loss" in r] == \
        [(r["loss"], r["masked_fraction"]) for r in rows[1] if "loss" in r]
