"""Run folders in an object store (S3 on 127.0.0.1, moto in server mode): `--out s3://...` trains,
checkpoints land in the store, a run resumes there from another machine (a lost local mirror),
and the commands that read a run read its URL."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from hubbub import rundir, storage
from hubbub.cli import main
from hubbub.evaluate import evaluate_run
from hubbub.finetune import PITStage, finetune_pit
from hubbub.separate import load_separator
from hubbub.storage import LockedError
from hubbub.testing import hubbub_launch, make_dummy_corpus
from hubbub.train import load_train_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": 8, "valid": 2, "test": 3},
                             sample_rate_hz=8000, seconds=1.0)


def _cfg(corpus, steps, *extra):
    return load_train_config("pit_debug", [f"data.shards={corpus}", "data.crop_s=0.5", "log_every=1", "ckpt_every=3",
                                           "keep_checkpoints=2", f"steps={steps}", "eval_every=0", *extra])


def _losses(rows_text: str):
    return [(r["step"], r["loss"]) for r in map(json.loads, rows_text.splitlines()) if "loss" in r]


def _count_steps(monkeypatch) -> list[bool]:
    """The PIT stage's run_step calls from now on: True for a training step."""
    calls, real_step = [], PITStage.run_step
    monkeypatch.setattr(PITStage, "run_step", lambda self, m, b, train: calls.append(train) or real_step(self, m, b,
                                                                                                          train))
    return calls


def _objects(url: str) -> set[str]:
    fs = fsspec.filesystem("s3")
    root = fs._strip_protocol(url).rstrip("/") + "/"
    return {p[len(root):] for p in fs.find(root)}


def test_a_run_in_s3_holds_what_a_run_on_disk_holds_and_resumes_on_a_fresh_machine(tmp_path, corpus, s3_bucket,
                                                                                monkeypatch):
    finetune_pit(_cfg(corpus, 7), tmp_path / "disk")
    url = f"{s3_bucket}/runs/pit"
    finetune_pit(_cfg(corpus, 7), url)
    objects = _objects(url)
    assert {"run.json", "metrics.jsonl", "curves.png", "model/config.json", "model/model.safetensors"} <= objects
    # keep_checkpoints=2 in the store too: steps 6 and 7, each with its manifest
    assert sorted({o.split("/")[1] for o in objects if o.startswith("checkpoints/")}) == ["step_00000006",
                                                                                         "step_00000007"]
    assert "checkpoints/step_00000007/files.json" in objects
    assert any(o.startswith("tensorboard/") for o in objects)
    assert _losses(storage.read_bytes(f"{url}/metrics.jsonl").decode()) == \
        _losses((tmp_path / "disk" / "metrics.jsonl").read_text())
    assert json.loads(storage.read_bytes(f"{url}/run.json"))["status"] == "done"

    # Another machine (no local mirror) trains on to step 10: it starts from the store's step 7.
    shutil.rmtree(rundir.local_mirror(url))
    steps = _count_steps(monkeypatch)
    finetune_pit(_cfg(corpus, 10), url)
    assert sum(steps) == 3
    rows = _losses(storage.read_bytes(f"{url}/metrics.jsonl").decode())
    assert [s for s, _ in rows] == list(range(1, 11))
    assert json.loads(storage.read_bytes(f"{url}/run.json"))["state"]["step"] == 10


def test_an_incomplete_checkpoint_in_the_store_is_passed_over(tmp_path, corpus, s3_bucket, monkeypatch):
    url = f"{s3_bucket}/runs/partial"
    finetune_pit(_cfg(corpus, 6), url)
    # as if the upload of step 6 stopped before its manifest: resume from step 3
    storage.remove(f"{url}/checkpoints/step_00000006/files.json")
    storage.remove(f"{url}/checkpoints/step_00000006/optimizer.pt")
    assert sorted(rundir.remote_checkpoints(url)) == ["step_00000003"]
    # and one whose file is shorter than its manifest says
    manifest = storage.read_json(f"{url}/checkpoints/step_00000003/files.json")
    storage.write_json(f"{url}/checkpoints/step_00000003/files.json", {**manifest, "scheduler.pt": 1})
    assert rundir.remote_checkpoints(url) == {}
    storage.write_json(f"{url}/checkpoints/step_00000003/files.json", manifest)
    shutil.rmtree(rundir.local_mirror(url))
    steps = _count_steps(monkeypatch)
    finetune_pit(_cfg(corpus, 6), url)
    assert sum(steps) == 3  # steps 4..6 again
    assert sorted(rundir.remote_checkpoints(url)) == ["step_00000003", "step_00000006"]


def test_a_second_run_on_the_same_url_is_refused(corpus, s3_bucket):
    url = f"{s3_bucket}/runs/locked"
    with storage.exclusive(f"{url}/.hubbub.lock", "another training"):
        with pytest.raises(LockedError, match="another training"):
            finetune_pit(_cfg(corpus, 2), url)
    assert not storage.exists(f"{url}/run.json")


def test_commands_that_read_a_run_take_its_url(tmp_path, corpus, s3_bucket, capsys):
    url = f"{s3_bucket}/runs/read"
    assert main(["finetune", "pit", "--config", "pit_debug", "--shards", str(corpus), "--out", url, "--set", "steps=2",
                 "--set", "data.crop_s=0.5", "--set", "eval_every=0"]) == 0
    model, rate = load_separator(url)
    assert rate == 8000 and model.num_sources == 2
    # evaluate: the report goes next to the run, in the store
    result = evaluate_run(url, corpus, split="test", metrics=("si_snri",))
    assert result["run"] == url and result["overall"]["count"] == 3
    assert storage.exists(f"{url}/eval/{corpus.name}-test/results.json")
    # --init from the URL: its backbone starts a new run
    assert main(["finetune", "pit", "--config", "pit_debug", "--shards", str(corpus), "--init", url,
                 "--out", str(tmp_path / "ft"), "--set", "steps=1", "--set", "data.crop_s=0.5"]) == 0
    assert main(["publish", url, "--to", str(tmp_path / "published")]) == 0
    assert (tmp_path / "published" / "model.safetensors").is_file()
    # a URL under which nothing is stored is one line, not a traceback
    assert main(["evaluate", f"{s3_bucket}/runs/none", "--shards", str(corpus)]) == 2
    assert "no such run" in capsys.readouterr().err


@pytest.mark.slow
def test_two_processes_train_into_s3_and_one_on_another_machine_resumes(tmp_path, corpus, s3_bucket):
    """accelerate launch with 2 CPU processes writes the run to the store; a process with another
    local cache (another machine: no mirror, no shared disk) resumes it from the store."""
    url = f"{s3_bucket}/runs/launched"
    args = ["finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--out", url, "--set", "data.crop_s=0.5",
            "--set", "data.batch_size=2", "--set", "eval_every=0", "--set", "ckpt_every=2", "--set", "log_every=1"]
    config = Path(__file__).parents[2] / "cluster" / "accelerate" / "cpu-2proc.yaml"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HUBBUB_CACHE": str(tmp_path / "node-a")}
    res = subprocess.run(hubbub_launch(config, *args, "--set", "steps=4", num_processes=2), capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(rundir.remote_checkpoints(url)) == ["step_00000002", "step_00000004"]
    env["HUBBUB_CACHE"] = str(tmp_path / "node-b")
    res = subprocess.run([sys.executable, "-m", "hubbub.cli", *args, "--set", "steps=6"], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    run = json.loads(storage.read_bytes(f"{url}/run.json"))
    # resumed, not started afresh: one process keeps the checkpoint's global batch of 2 x 2
    assert run["state"]["step"] == 6 and run["config"]["data"]["batch_size"] == 4
    assert [s for s, _ in _losses(storage.read_bytes(f"{url}/metrics.jsonl").decode())] == list(range(1, 7))


def test_a_diverged_remote_run_names_its_checkpoints_in_the_store(tmp_path, corpus, s3_bucket, monkeypatch):
    # the user knows the run by its URL: the message points there, not at the local mirror
    from hubbub.train.solver import NonFiniteWeights
    import torch

    real, calls = PITStage.run_step, {"n": 0}

    def diverge(self, model, batch, train):
        calls["n"] += train
        if train and calls["n"] == 4:
            with torch.no_grad():
                next(model.parameters()).fill_(float("inf"))
        return real(self, model, batch, train)

    monkeypatch.setattr(PITStage, "run_step", diverge)
    monkeypatch.setenv("HUBBUB_CACHE", str(tmp_path / "cache"))
    url = f"{s3_bucket}/runs/diverged"
    with pytest.raises(NonFiniteWeights, match="no longer finite at step 4") as caught:
        finetune_pit(_cfg(corpus, 6, "ckpt_every=2"), url)
    assert f"{url}/checkpoints" in str(caught.value) and str(tmp_path / "cache") not in str(caught.value)
    assert "checkpoints/step_00000002/files.json" in _objects(url)


def test_mixit_from_recordings_into_a_run_in_s3_keeps_its_corpus_there(tmp_path, s3_bucket, monkeypatch):
    # the recordings are cut into RUN_URL/recordings (not a local folder named "s3:"), and a
    # rerun on a fresh machine finds that corpus complete and resumes from the store
    from hubbub.testing import make_speech_folder

    folder = make_speech_folder(tmp_path / "recordings", num_speakers=4, utterances_per_speaker=3)
    url = f"{s3_bucket}/runs/mixit"
    args = ["pretrain", "mixit", "--recordings", str(folder), "--config", "mixit_debug", "--out", url,
            "--set", "data.crop_s=0.5", "--set", "mixit.segment_s=1.0", "--set", "data.batch_size=2",
            "--set", "ckpt_every=2"]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HUBBUB_CACHE", str(tmp_path / "cache-a"))
    assert main([*args, "--set", "steps=2"]) == 0
    objects = _objects(url)
    assert {"recordings/index.json", "recordings/recipe.json", "run.json"} <= objects
    assert not (tmp_path / "s3:").exists()
    run = json.loads(storage.read_bytes(f"{url}/run.json"))
    assert run["config"]["data"]["shards"] == f"{url}/recordings"
    index = storage.read_bytes(f"{url}/recordings/index.json")
    monkeypatch.setenv("HUBBUB_CACHE", str(tmp_path / "cache-b"))  # another machine
    assert main([*args, "--set", "steps=4"]) == 0
    assert storage.read_bytes(f"{url}/recordings/index.json") == index  # the same corpus, its shards kept
    rows = [json.loads(r) for r in storage.read_bytes(f"{url}/metrics.jsonl").decode().splitlines()]
    assert max(r.get("step", 0) for r in rows) == 4


def test_sample_keys_of_a_remote_run_reach_the_store_and_survive_a_move(tmp_path, corpus, s3_bucket, monkeypatch):
    # log_sample_keys: each rank's rows go up with each checkpoint and at the end; a run resumed
    # on another machine starts from the rows in the store
    url = f"{s3_bucket}/runs/keys"
    monkeypatch.setenv("HUBBUB_CACHE", str(tmp_path / "cache-a"))
    finetune_pit(_cfg(corpus, 4, "ckpt_every=2", "log_sample_keys=true"), url)
    monkeypatch.setenv("HUBBUB_CACHE", str(tmp_path / "cache-b"))
    finetune_pit(_cfg(corpus, 6, "ckpt_every=2", "log_sample_keys=true"), url)
    rows = [json.loads(r) for r in storage.read_bytes(f"{url}/samples_rank0.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4, 5]
    first_machine = next((tmp_path / "cache-a").rglob("samples_rank0.jsonl"))
    assert rows[:4] == [json.loads(r) for r in first_machine.read_text().splitlines()]
