"""The trainer: exact resume after a kill, 2 processes == 1 process, NaN steps skipped, init."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hubbub.finetune import PITStage, finetune_pit
from hubbub.testing import hubbub_launch
from hubbub.train import load_train_config


def _cfg(corpus, *extra):
    return load_train_config("pit_debug", [f"data.shards={corpus}", "data.crop_s=0.5", "log_every=1",
                                           "ckpt_every=4", *extra])


def _losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def _relative_distance(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all weights. Not per element: Adam turns the float noise of a
    near-zero gradient into a step of +-lr either way, so single weights may differ by ~lr."""
    diff = sum(float(((a[k] - b[k]) ** 2).sum()) for k in a)
    norm = sum(float((a[k] ** 2).sum()) for k in a)
    return (diff / norm) ** 0.5


def test_a_killed_run_resumes_and_logs_the_same_losses(tmp_path, corpus):
    steps = 40
    finetune_pit(_cfg(corpus, f"steps={steps}"), tmp_path / "full")
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hubbub.cli", "finetune", "pit", "--shards", str(corpus), "--config", "pit_debug",
           "--out", str(out),
           "--set", "data.crop_s=0.5", "--set", "log_every=1", "--set", "ckpt_every=4", "--set", f"steps={steps}"]
    # one intra-op thread, like this test process: float sums in the same order, bit-equal losses
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "checkpoints").glob("step_00000008")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "killed before the end"
    resumed_from = max(int(p.name[5:]) for p in (out / "checkpoints").glob("step_*[0-9]"))
    assert 8 <= resumed_from < steps
    finetune_pit(_cfg(corpus, f"steps={steps}"), out)  # the same command again
    assert _losses(out) == _losses(tmp_path / "full")
    a, b = load_file(str(out / "model" / "model.safetensors")), load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_persistent_workers_train_as_a_run_without_workers(tmp_path, corpus):
    # three epochs of 16 samples in batches of 4: the same batches every epoch, whether the two
    # workers are started afresh for each or kept
    steps = ["steps=12", "eval_every=0"]
    finetune_pit(_cfg(corpus, *steps), tmp_path / "plain")
    finetune_pit(_cfg(corpus, *steps, "data.num_workers=2", "data.persistent_workers=true"), tmp_path / "kept")
    assert _losses(tmp_path / "kept") == _losses(tmp_path / "plain") and len(_losses(tmp_path / "plain")) == 12


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, corpus):
    steps = 6
    finetune_pit(_cfg(corpus, f"steps={steps}", "data.batch_size=4", "log_sample_keys=true"), tmp_path / "one")
    out = tmp_path / "two"
    config = Path(__file__).parents[2] / "cluster" / "accelerate" / "cpu-2proc.yaml"
    cmd = hubbub_launch(config, "finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--out", str(out),
           "--set", "data.crop_s=0.5", "--set", "log_every=1", "--set", "ckpt_every=4", "--set", f"steps={steps}",
           "--set", "data.batch_size=2", "--set", "log_sample_keys=true")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]

    def keys(run, rank):
        return [json.loads(line) for line in (run / f"samples_rank{rank}.jsonl").read_text().splitlines()]

    one = keys(tmp_path / "one", 0)
    r0, r1 = keys(out, 0), keys(out, 1)
    assert len(one) == len(r0) == len(r1) == steps
    for a, b, c in zip(one, r0, r1):
        assert sorted(a["keys"]) == sorted(b["keys"] + c["keys"])  # the same global batch
    epoch0 = [k for row in r0 + r1 if row["epoch"] == 0 for k in row["keys"]]
    assert sorted(epoch0) == sorted(set(epoch0)) and len(epoch0) == 16  # each sample once per epoch
    for (s1, l1), (s2, l2) in zip(_losses(tmp_path / "one"), _losses(out)):
        # equal up to float reassociation (DDP's all-reduce sums in another order), compounded by Adam
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-3, abs=1e-3)
    a, b = load_file(str(tmp_path / "one" / "model" / "model.safetensors")), load_file(str(out / "model" / "model.safetensors"))
    assert _relative_distance(a, b) < 1e-3


def test_non_finite_steps_are_skipped_and_counted(tmp_path, corpus, monkeypatch):
    real = PITStage.run_step
    calls = {"n": 0}

    def sometimes_nan(self, model, batch, train):
        loss, logs = real(self, model, batch, train)
        calls["n"] += train
        return (loss * float("nan") if train and calls["n"] in (3, 5) else loss), logs

    monkeypatch.setattr(PITStage, "run_step", sometimes_nan)
    finetune_pit(_cfg(corpus, "steps=8"), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-2]["skipped_nonfinite"] == 2 or rows[-1].get("skipped_nonfinite") == 2
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_run_whose_every_step_fails_stops_in_one_line(tmp_path, corpus, monkeypatch, capsys):
    from hubbub.cli import main
    from hubbub.train.solver import MAX_NONFINITE_RUN

    real = PITStage.run_step
    monkeypatch.setattr(PITStage, "run_step",
                        lambda self, model, batch, train: (lambda loss, logs: (loss * float("nan"), logs))(
                            *real(self, model, batch, train)))
    run = tmp_path / "run"
    assert main(["finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--out", str(run),
                 "--set", "data.crop_s=0.5", "--set", "ckpt_every=10", "--set", "steps=100",
                 "--set", "eval_every=0"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"hubbub: the loss or gradients were not finite in {MAX_NONFINITE_RUN} steps in a row "
                           f"(up to step {MAX_NONFINITE_RUN})")
    assert not (run / "model").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000010"]  # kept as it was


def test_finetune_from_a_pretrained_backbone_with_more_sources(tmp_path, corpus):
    finetune_pit(_cfg(corpus, "steps=2"), tmp_path / "pre")
    cfg = _cfg(corpus, "steps=1", "model.num_sources=3", f"init={tmp_path / 'pre'}")
    stage = PITStage(cfg, tmp_path / "ft")
    model = stage.build_model()
    pre = load_file(str(tmp_path / "pre" / "model" / "model.safetensors"))
    for k, v in model.state_dict().items():
        if k.startswith("backbone."):
            assert torch.equal(v, pre[k])
    assert model.num_sources == 3
    finetune_pit(cfg, tmp_path / "ft")
    assert json.loads((tmp_path / "ft" / "run.json").read_text())["status"] == "done"


def test_bad_config_names_the_field(corpus):
    from hubbub.config import ConfigError

    with pytest.raises(ConfigError, match="model.name"):
        _cfg(corpus, "model.name=nope")


def test_gradient_accumulation_matches_the_larger_batch(tmp_path, corpus):
    finetune_pit(_cfg(corpus, "steps=3", "data.batch_size=4"), tmp_path / "big")
    finetune_pit(_cfg(corpus, "steps=3", "data.batch_size=2", "optim.grad_accum=2"), tmp_path / "accum")
    a = load_file(str(tmp_path / "big" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "accum" / "model" / "model.safetensors"))
    assert _relative_distance(a, b) < 1e-3  # the same 4 samples per step; sums in another order


def test_bf16_mixed_precision_trains_and_logs_to_tensorboard(tmp_path, corpus):
    finetune_pit(_cfg(corpus, "steps=3", "precision=bf16"), tmp_path / "bf16")
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in _losses(tmp_path / "bf16"))
    assert list((tmp_path / "bf16" / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("damage", ["model.safetensors", "optimizer.pt", "trainer.json"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, corpus, damage, caplog):
    """A truncated file in the newest checkpoint (a crash or a full disk while it was written):
    the run resumes from the previous intact one, says which file it passed over, and logs the
    losses of an uninterrupted run."""
    cfg = _cfg(corpus, "steps=12", "keep_checkpoints=3")
    finetune_pit(cfg, tmp_path / "full")
    run = tmp_path / "damaged"
    finetune_pit(_cfg(corpus, "steps=12", "keep_checkpoints=3"), run)
    shutil.rmtree(run / "checkpoints" / "step_00000012")
    shutil.rmtree(run / "model")
    path = run / "checkpoints" / "step_00000008" / damage
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3] if damage != "trainer.json" else b"")
    with caplog.at_level("WARNING"):
        finetune_pit(_cfg(corpus, "steps=12", "keep_checkpoints=3"), run)
    assert f"step_00000008/{damage}" in caplog.text
    assert _losses(run) == _losses(tmp_path / "full")


def test_a_pickle_in_a_checkpoint_is_refused_unread_without_advice_to_load_it(tmp_path, corpus, caplog):
    import pickle

    run = tmp_path / "run"
    finetune_pit(_cfg(corpus, "steps=8", "keep_checkpoints=3"), run)
    shutil.rmtree(run / "model")
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (run / "checkpoints" / "step_00000008" / "optimizer.pt").write_bytes(pickle.dumps(Payload(), protocol=2))
    with caplog.at_level("WARNING"):
        finetune_pit(_cfg(corpus, "steps=8", "keep_checkpoints=3"), run)
    assert not marker.exists()
    assert "optimizer.pt: holds objects other than tensors" in caplog.text and "weights_only=False" not in caplog.text


def test_a_nan_target_is_skipped_by_its_gradients_and_the_model_stays_finite(tmp_path, corpus, monkeypatch):
    """A NaN in one reference can leave the loss finite (the source looks absent) while every
    gradient is NaN: that step is skipped and counted, and the saved model is finite."""
    real = PITStage.run_step
    calls = {"n": 0}

    def nan_target_once(self, model, batch, train):
        calls["n"] += train
        if train and calls["n"] == 3:
            for target in batch["sources"].values():
                target[0, 0, :10] = float("nan")
        return real(self, model, batch, train)

    monkeypatch.setattr(PITStage, "run_step", nan_target_once)
    finetune_pit(_cfg(corpus, "steps=6"), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_nonfinite"] for r in rows if "loss" in r][-1] == 1
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_weights_that_diverge_stop_the_run_in_one_line_and_save_nothing(tmp_path, corpus, capsys, monkeypatch):
    """Weights that stop being finite (a divergence, here forced after step 3's update) end the run
    with one line that says what to do; no model is saved and every checkpoint stays finite."""
    from hubbub.cli import main

    real, calls = PITStage.run_step, {"n": 0}

    def diverge(self, model, batch, train):
        calls["n"] += train
        if train and calls["n"] == 4:  # the update of step 3 has been applied
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return real(self, model, batch, train)

    monkeypatch.setattr(PITStage, "run_step", diverge)
    args = ["finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--out", str(tmp_path / "run"),
            "--set", "data.crop_s=0.5", "--set", "steps=6", "--set", "ckpt_every=2", "--set", "log_every=1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("hubbub:")]  # the rest is the progress bar
    assert "Traceback" not in err and len(said) == 1
    assert "no longer finite at step 4" in said[0] and "optim.lr" in said[0]
    assert not (tmp_path / "run" / "model").exists()
    ckpts = list((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == ["step_00000002"]
    assert all(torch.isfinite(w).all() for w in load_file(str(ckpts[0] / "model.safetensors")).values())
