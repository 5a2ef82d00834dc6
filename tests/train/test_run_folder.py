"""A run folder under stress: two runs at once, a full disk while checkpointing, a resume that
changes what is trained on or how, a file where the folder should be."""
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubbub import storage
from hubbub.cli import main
from hubbub.finetune import finetune_pit
from hubbub.shards.writer import LOCK_NAME
from hubbub.train import load_train_config


def _cfg(corpus, *extra):
    return load_train_config("pit_debug", [f"data.shards={corpus}", "data.crop_s=0.5", "log_every=1",
                                           "ckpt_every=2", "eval_every=0", *extra])


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def test_a_second_run_on_a_busy_folder_is_refused_before_it_writes(tmp_path, corpus):
    run = tmp_path / "run"
    run.mkdir()
    with storage.exclusive(run / LOCK_NAME, "pit training"):  # the first run, as the lock sees it
        with pytest.raises(storage.LockedError, match=f"{run} is in use by pit training"):
            finetune_pit(_cfg(corpus, "steps=2"), run)
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing read or written
    finetune_pit(_cfg(corpus, "steps=2"), run)  # free again: it trains
    assert _steps(run) == [1, 2]


@pytest.mark.slow
def test_two_commands_on_one_run_folder_at_once(tmp_path, corpus):
    """Real processes: the second exits 2 with one line while the first trains on, and the first's
    log has every step once and no half-written checkpoint is left."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "hubbub.cli", "finetune", "pit", "--shards", str(corpus), "--config", "pit_debug",
           "--out", str(run),
           "--set", "data.crop_s=0.5", "--set", "log_every=1", "--set", "ckpt_every=5", "--set", "eval_every=0",
           "--set", "steps=80"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "run.json").exists():
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert second.returncode == 2
    assert second.stderr.strip().splitlines() == [f"hubbub: {run} is in use by pit training (pid {first.pid} on "
                                                  f"{os.uname().nodename}): wait for it to finish, or use another "
                                                  "folder"]
    assert _steps(run) == list(range(1, 81))
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint_and_says_so(tmp_path, corpus, monkeypatch,
                                                                                capsys):
    run = tmp_path / "run"
    real_write = Path.write_bytes
    calls = {"optimizer": 0}

    def write_bytes(path, data):
        if path.name.startswith(".optimizer.pt."):
            calls["optimizer"] += 1
            if calls["optimizer"] == 2:  # the second checkpoint (step 4) meets a full disk
                real_write(path, data[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    args = ["finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--out", str(run),
            "--set", "data.crop_s=0.5",
            "--set", "log_every=1", "--set", "ckpt_every=2", "--set", "eval_every=0", "--set", "steps=6"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the progress bar, then one line
    assert err[-1:] == [f"hubbub: no space left on the device writing {run}/checkpoints/step_00000004.tmp/optimizer.pt: "
                   "free some and rerun the same command (what was complete is kept, nothing partial counts)"]
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step_00000002"]  # intact; no temporary left
    assert not list(run.rglob("*.tmp"))
    monkeypatch.setattr(Path, "write_bytes", real_write)  # space freed: the same command resumes
    assert main(args) == 0
    assert _steps(run) == [1, 2, 3, 4, 5, 6]


def test_a_resume_on_another_corpus_is_refused_and_other_settings_are_recorded(tmp_path, corpus, caplog,
                                                                               monkeypatch):
    run = tmp_path / "run"
    finetune_pit(_cfg(corpus, "steps=2", "optim.lr=0.001"), run)
    other = shutil.copytree(corpus, tmp_path / "other")  # equal files, but another corpus
    with pytest.raises(ValueError, match=r"trained with data.shards=.*; this command says data.shards=.*other.*"
                                         r"resume with the same settings, or train into a new --out"):
        finetune_pit(_cfg(other, "steps=4"), run)
    with pytest.raises(ValueError, match="model.kwargs.num_filters"):
        finetune_pit(_cfg(corpus, "steps=4", "model.kwargs.num_filters=32"), run)
    # the same corpus spelled differently (relative to another folder) is the same corpus
    monkeypatch.chdir(corpus.parent)
    finetune_pit(_cfg(corpus.name, "steps=4", "optim.lr=0.0005"), run)
    finetune_pit(_cfg(corpus, "steps=5", "optim.lr=0.0005", "schedule.kind=constant"), run)
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["config"]["optim"]["lr"] == 0.0005
    assert recorded["config_changes"] == [
        {"step": 2, "field": "optim.lr", "was": 0.001, "now": 0.0005},
        {"step": 2, "field": "steps", "was": 2, "now": 4},
        {"step": 4, "field": "schedule.kind", "was": "cosine", "now": "constant"},
        {"step": 4, "field": "steps", "was": 4, "now": 5},
    ]
    assert "optim.lr changed from 0.001 to 0.0005 at step 2" in caplog.text
    assert _steps(run) == [1, 2, 3, 4, 5]


def test_stale_checkpoint_temporaries_are_removed_and_a_file_is_no_run_folder(tmp_path, corpus):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000002.tmp").mkdir(parents=True)  # a killed run's half checkpoint
    (run / "checkpoints" / "step_00000002.tmp" / "optimizer.pt").write_bytes(b"partial")
    finetune_pit(_cfg(corpus, "steps=2"), run)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]
    (tmp_path / "afile").write_text("notes")
    with pytest.raises(ValueError, match="afile is a file, not a run folder"):
        finetune_pit(_cfg(corpus, "steps=2"), tmp_path / "afile")
    assert (tmp_path / "afile").read_text() == "notes"
