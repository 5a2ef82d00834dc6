"""The MixIT stage: it learns from mixtures alone, runs distributed, feeds finetuning."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hubbub.cli import main
from hubbub.config import ConfigError
from hubbub.finetune import PITStage, finetune_pit
from hubbub.pretrain import pretrain_mixit
from hubbub.pretrain.mixit import default_num_outputs, mixit_batch
from hubbub.testing import hubbub_launch, make_dummy_corpus, make_speech_folder
from hubbub.train import load_train_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": 16, "valid": 8},
                             samples_per_shard=5, num_speakers=[1, 2], seconds=1.0)


def _cfg(corpus, *extra):
    return load_train_config("mixit_debug", [f"data.shards={corpus}", "data.crop_s=0.5", "log_every=1",
                                             "ckpt_every=4", *extra])


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_pairs_consecutive_mixtures_into_mixtures_of_mixtures():
    mix = torch.arange(4 * 3, dtype=torch.float32).reshape(4, 1, 3)
    mom, mixtures = mixit_batch(mix)
    assert torch.equal(mixtures[1, 0], mix[2, 0]) and torch.equal(mixtures[1, 1], mix[3, 0])
    assert torch.equal(mom, mix[0::2, 0] + mix[1::2, 0])
    with pytest.raises(ValueError, match="even"):
        mixit_batch(mix[:3])


def test_default_outputs_are_twice_the_most_speakers():
    assert default_num_outputs({"recipe": {"speakers": {"count": 2, "distribution": {}}}}) == 4
    assert default_num_outputs({"recipe": {"speakers": {"count": 2, "distribution": {1: 0.5, 3: 0.5}}}}) == 6
    assert default_num_outputs({"recipe": {"kind": "recordings"}}) == 4


@pytest.mark.slow
@pytest.mark.parametrize("consistency", ["uniform", "learned"])
def test_mixit_lowers_its_validation_loss(tmp_path, corpus, consistency):
    metrics = pretrain_mixit(_cfg(corpus, "steps=150", "eval_every=1", f"mixit.consistency={consistency}"),
                             tmp_path / "run")
    valid = [r["valid/mixit_loss_db"] for r in _rows(tmp_path / "run") if "valid/mixit_loss_db" in r]
    assert valid[-1] == pytest.approx(metrics["mixit_loss_db"])
    assert valid[-1] < valid[0] - 0.5, valid[::10]   # 0.7 dB better than after one step here
    # the saved model is the separator alone: M = 4 outputs, no consistency head
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["kwargs"]["num_sources"] == 4 and config["contents"] == "separator"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["stage"] == "mixit" and run["data_card"]["unlabelled"] is True


def test_finetune_pit_from_a_mixit_backbone(tmp_path, corpus):
    pretrain_mixit(_cfg(corpus, "steps=2"), tmp_path / "mixit")
    cfg = load_train_config("pit_debug", [f"data.shards={corpus}", "data.crop_s=0.5", "steps=2", "ckpt_every=2",
                                          f"init={tmp_path / 'mixit'}", "model.num_sources=2"])
    model = PITStage(cfg, tmp_path / "pit").build_model()
    pre = load_file(str(tmp_path / "mixit" / "model" / "model.safetensors"))
    state = model.state_dict()
    assert all(torch.equal(state[k], pre[k]) for k in state if k.startswith("backbone."))
    assert model.num_sources == 2 and pre["head.proj.weight"].shape[0] == 2 * state["head.proj.weight"].shape[0]
    finetune_pit(cfg, tmp_path / "pit")


def test_two_processes_match_one_process(tmp_path, corpus):
    steps = 4
    pretrain_mixit(_cfg(corpus, f"steps={steps}", "data.batch_size=2"), tmp_path / "one")
    config = Path(__file__).parents[2] / "cluster" / "accelerate" / "cpu-2proc.yaml"
    cmd = hubbub_launch(config, "pretrain", "mixit", "--shards", str(corpus), "--config", "mixit_debug", "--out",
                        str(tmp_path / "two"),
                        "--set", "data.crop_s=0.5", "--set", "log_every=1", "--set", "ckpt_every=4",
                        "--set", f"steps={steps}", "--set", "data.batch_size=1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    one = [(r["step"], r["loss"]) for r in _rows(tmp_path / "one") if "loss" in r]
    two = [(r["step"], r["loss"]) for r in _rows(tmp_path / "two") if "loss" in r]
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, steps + 1))
    for (_, a), (_, b) in zip(one, two):
        assert a == pytest.approx(b, rel=1e-3, abs=1e-3)


def test_mixit_from_a_folder_of_recordings(tmp_path, capsys):
    folder = make_speech_folder(tmp_path / "recordings", num_speakers=4, utterances_per_speaker=3)
    out = tmp_path / "run"
    assert main(["pretrain", "mixit", "--recordings", str(folder), "--config", "mixit_debug", "--out", str(out),
                 "--set", "steps=3",
                 "--set", "data.crop_s=0.5", "--set", "mixit.segment_s=1.0", "--set", "data.batch_size=2",
                 "--set", "ckpt_every=3"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "done"
    assert run["config"]["data"]["shards"] == str(out / "recordings")
    assert run["data_card"]["recipe"]["kind"] == "recordings"
    assert main(["pretrain", "mixit", "--out", str(out)]) == 2           # neither input
    assert "--shards" in capsys.readouterr().err


def test_semi_supervised_pit_adds_mixit_on_unlabelled_mixtures(tmp_path, corpus):
    unlabelled = make_dummy_corpus(tmp_path / "unlabelled", splits={"train": 12}, samples_per_shard=5,
                                   num_speakers=[1, 2], seconds=1.0, seed=3)
    base = [f"data.shards={corpus}", "data.crop_s=0.5", "steps=6", "ckpt_every=3", "log_every=1",
            f"semi.unlabelled={unlabelled}"]
    with pytest.raises(ConfigError, match="model.num_sources"):
        PITStage(load_train_config("pit_debug", base), tmp_path / "bad")
    cfg = load_train_config("pit_debug", [*base, "model.num_sources=4", "semi.weight=0.5"])
    finetune_pit(cfg, tmp_path / "semi")
    rows = [r for r in _rows(tmp_path / "semi") if "loss" in r]
    for r in rows:
        assert r["loss"] == pytest.approx(r["pit_loss"] + 0.5 * r["mixit_loss"], abs=1e-4)
    state = json.loads((tmp_path / "semi" / "checkpoints" / "step_00000006" / "data.json").read_text())
    assert state["unlabelled"]["global_consumed"] > 0
    card = json.loads((tmp_path / "semi" / "run.json").read_text())["data_card"]
    assert card["unlabelled"]["weight"] == 0.5
