"""Codec-token pretraining: masks, the token PIT loss, cached tokens, and the backbone it hands on."""
import json

import pytest
import torch
from safetensors.torch import load_file

from hubbub.cli import main
from hubbub.codec import Codec
from hubbub.finetune import PITStage
from hubbub.losses import pit_from_matrix
from hubbub.models import load_model
from hubbub.pretrain import pretrain_codec
from hubbub.pretrain.codec import codebook_weights, mask_waveform, span_mask, token_nll
from hubbub.publish import from_pretrained, publish_run
from hubbub.testing import make_dummy_corpus, make_random_codec
from hubbub.train import load_train_config


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": 16, "valid": 8},
                             samples_per_shard=5, num_speakers=[1, 2], seconds=1.0)


@pytest.fixture(scope="module")
def codec(tmp_path_factory):
    return make_random_codec(tmp_path_factory.mktemp("codec") / "encodec", seed=0)


def _cfg(corpus, codec, *extra):
    return load_train_config("codec_debug", [f"data.shards={corpus}", f"codec.model={codec}", "data.crop_s=0.5",
                                             "log_every=1", "ckpt_every=4", *extra])


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_span_mask_masks_whole_spans_in_every_row():
    g = torch.Generator().manual_seed(0)
    mask = span_mask(64, 200, prob=0.05, span=10, generator=g)
    assert mask.any(-1).all()
    # every masked run is at least one span long, except where it is cut by the end
    for row in mask:
        padded = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
        starts, ends = (padded.diff() == 1).nonzero()[:, 0], (padded.diff() == -1).nonzero()[:, 0]
        assert all(e - s >= 10 or e == 200 for s, e in zip(starts.tolist(), ends.tolist()))
    # HuBERT's expected masked fraction: 1 - (1 - p)^span
    assert mask.float().mean().item() == pytest.approx(1 - 0.95 ** 10, abs=0.05)


def test_masked_frames_are_zeroed_in_the_waveform():
    wave = torch.ones(1, 16000)
    mask = torch.zeros(1, 75, dtype=torch.bool)
    mask[0, 10:20] = True
    out = mask_waveform(wave, mask, 16000, 75.0)
    zero = (out[0] == 0).nonzero()[:, 0]
    assert zero.min().item() == pytest.approx(10 * 16000 / 75, abs=1)
    assert zero.max().item() == pytest.approx(20 * 16000 / 75, abs=1)
    assert out.sum().item() == pytest.approx(16000 - 10 * 16000 / 75, abs=2)


def test_token_pit_loss_is_zero_for_perfect_predictions_in_any_order():
    tokens = torch.randint(0, 32, (2, 3, 4, 50))                        # (B, S, Q, L)
    logits = 50.0 * torch.nn.functional.one_hot(tokens, 32).movedim(-1, -2).float()   # (B, S, Q, K, L)
    weights = codebook_weights(4, 0.5)
    assert weights[0] > weights[-1] and weights.sum().item() == pytest.approx(1.0)
    perm = torch.tensor([2, 0, 1])
    est = logits[:, perm]
    cost = torch.stack([token_nll(est, tokens[:, j:j + 1].expand(-1, 3, -1, -1), weights).mean(-1)
                        for j in range(3)], -1)
    loss, assignment = pit_from_matrix(cost)
    assert torch.allclose(loss, torch.zeros(2), atol=1e-6)
    assert torch.equal(assignment[0], torch.argsort(perm))


def test_masked_token_pretraining_learns_and_hands_on_its_backbone(tmp_path, corpus, codec, capsys):
    metrics = pretrain_codec(_cfg(corpus, codec, "steps=40", "eval_every=1"), tmp_path / "codec")
    nll = [r["valid/token_nll"] for r in _rows(tmp_path / "codec") if "valid/token_nll" in r]
    assert nll[-1] == pytest.approx(metrics["token_nll"]) and nll[-1] < nll[0] - 0.2, nll[::8]
    model_dir = tmp_path / "codec" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["contents"] == "backbone" and config["heads"]["kind"] == "codec-tokens"
    with pytest.raises(ValueError, match="finetune"):
        load_model(model_dir)

    # finetuning drops the token head and keeps the backbone
    cfg = load_train_config("pit_debug", [f"data.shards={corpus}", "data.crop_s=0.5", "steps=2", "ckpt_every=2",
                                          f"init={tmp_path / 'codec'}"])
    model = PITStage(cfg, tmp_path / "pit").build_model()
    pre = load_file(str(model_dir / "model.safetensors"))
    assert any(k.startswith("token_head.") for k in pre)
    state = model.state_dict()
    assert all(torch.equal(state[k], pre[k]) for k in state if k.startswith("backbone."))

    # a published backbone carries its pretraining card and starts a finetune; it is no separator
    published = publish_run(tmp_path / "codec", tmp_path / "published")
    card = (published / "README.md").read_text()
    assert "backbone" in card and "Codec tokens" in card and "finetune pit --init" in card
    assert json.loads((published / "data_card.json").read_text())["training"]["stage"] == "codec"
    with pytest.raises(ValueError, match="finetune"):
        from_pretrained(published)
    assert main(["finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--init", str(published),
                 "--out", str(tmp_path / "ft"),
                 "--set", "steps=2", "--set", "data.crop_s=0.5", "--set", "ckpt_every=2"]) == 0


def test_sources_task_reads_cached_tokens_without_running_the_codec(tmp_path, corpus, codec, monkeypatch, capsys):
    import shutil

    tokenised = tmp_path / "tokenised"
    shutil.copytree(corpus, tokenised)
    assert main(["shards", "tokens", str(tokenised), "--codec", str(codec), "--quiet"]) == 0
    assert main(["shards", "verify", str(tokenised)]) == 0

    def no_codec(*args, **kwargs):
        raise AssertionError("the codec ran although the tokens are cached")

    monkeypatch.setattr(Codec, "encode", no_codec)
    assert main(["pretrain", "codec", "--shards", str(tokenised), "--codec", str(codec), "--config", "codec_debug",
                 "--out", str(tmp_path / "run"),
                 "--set", "codec.task=sources", "--set", "codec.cached=require", "--set", "steps=3",
                 "--set", "data.crop_s=0.5", "--set", "ckpt_every=3"]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data_card"]["tokens_cached"] is True and run["status"] == "done"
    # without cached tokens, "require" is a clear error
    assert main(["pretrain", "codec", "--shards", str(corpus), "--codec", str(codec), "--config", "codec_debug",
                 "--out", str(tmp_path / "bad"), "--set", "codec.cached=require"]) == 2
    assert "hubbub shards tokens" in capsys.readouterr().err
