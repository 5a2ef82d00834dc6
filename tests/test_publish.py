import json
import os
import shutil

import pytest
import torch
from huggingface_hub import ModelCard

import hubbub.publish as publish
from hubbub.config import to_dict
from hubbub.models import build_model, load_model, model_config, save_model
from hubbub.publish import from_pretrained, publish_run, run_card, save_pretrained
from hubbub.separate import load_separator
from hubbub.simulate.recipe import load_recipe
from hubbub.testing import make_dummy_corpus, make_dummy_run

SR = 8000
DATA_CARD = {"speech_corpus": "/data/private/voices", "speech_corpus_name": "builtin-voices",
             "speakers_per_split": {"train": 18, "valid": 3}, "utterances": 192, "speech_hours": 0.2171,
             "licences": ["CC0-1.0"], "noise": "babble", "skipped_files": 0}


@pytest.fixture
def corpus(tmp_path):
    """A dummy corpus whose index.json carries a full recipe and data card, as `hubbub simulate` writes."""
    corpus = make_dummy_corpus(tmp_path / "corpus", splits={"train": 4, "valid": 2}, seconds=0.5, sample_rate_hz=SR)
    index = json.loads((corpus / "index.json").read_text())
    index.update(recipe=to_dict(load_recipe("whamr")), data_card=DATA_CARD)
    (corpus / "index.json").write_text(json.dumps(index))
    return corpus


def make_run(run_dir, corpus_dir, data_card=None):
    return make_dummy_run(run_dir, corpus_dir, target="early", sample_rate_hz=SR, steps=120,
                          final_metrics={"valid": {"si_snri": 7.25, "loss": -7.1}}, data_card=data_card)


def test_round_trip_gives_identical_outputs(tmp_path, corpus):
    run = make_run(tmp_path / "run", corpus)
    out = publish_run(run, tmp_path / "published")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "data_card.json", "model.safetensors"]
    original, loaded = load_model(run / "model").eval(), from_pretrained(out)
    assert not loaded.training
    mix = torch.randn(2, 3000)
    with torch.no_grad():
        assert torch.equal(loaded(mix), original(mix))
    # hubbub separate can use a published directory directly: its card records the rate.
    assert load_separator(out)[1] == SR


def test_card_describes_the_training_data_with_valid_metadata(tmp_path, corpus):
    out = publish_run(make_run(tmp_path / "run", corpus), tmp_path / "whamr-tiny")
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "hubbub"
    assert card.data.license == "cc0-1.0"  # from the single licence of the training audio
    assert {"speech-separation", "audio-to-audio"} <= set(card.data.tags)

    text = card.text
    index = json.loads((corpus / "index.json").read_text())
    for expected in ("# whamr-tiny", "**whamr**", "WHAMR! style", "builtin-voices", "CC0-1.0", "| RT60 | 0.1 to 1 s",
                     "| SNR | -6 to 3 dB", "| SIR | -3 to 3 dB", "babble", "| pit | 120 | early |",
                     "| valid.si_snri | 7.250 |",
                     f"| train | 4 | {index['splits']['train']['hours']:g} | 18 |",
                     f"| valid | 2 | {index['splits']['valid']['hours']:g} | 3 |"):
        assert expected in text, expected

    data_card = json.loads((out / "data_card.json").read_text())
    assert data_card["data"]["recipe"]["name"] == "whamr"
    assert data_card["data"]["splits"]["train"]["num_samples"] == 4
    assert data_card["sample_rate_hz"] == SR
    # A public card names corpora, never this machine's directories.
    for path in (out / "README.md", out / "data_card.json"):
        assert "/data/private" not in path.read_text() and str(tmp_path) not in path.read_text()


def test_card_comes_from_run_json_when_the_corpus_is_gone(tmp_path, corpus):
    index = json.loads((corpus / "index.json").read_text())
    kept = {**index["data_card"], "recipe": index["recipe"], "splits": index["splits"]}
    run = make_run(tmp_path / "run", corpus, data_card=kept)
    with_corpus = run_card(run)
    shutil.rmtree(corpus)
    assert run_card(run) == with_corpus
    assert run_card(run, license="apache-2.0")["license"] == "apache-2.0"


def test_several_licences_give_other(tmp_path):
    model = build_model("convtasnet", num_sources=2, **model_config("convtasnet", "debug"))
    out = save_pretrained(model, tmp_path / "m", card={"data": {"licences": ["CC-BY-4.0", "CC0-1.0"]}})
    assert ModelCard.load(out / "README.md").data.license == "other"
    assert "CC-BY-4.0, CC0-1.0" in (out / "README.md").read_text()


def test_an_av_card_states_the_lip_geometry(tmp_path):
    model = build_model("avextractor", num_sources=1, **model_config("avextractor", "debug"))
    text = (save_pretrained(model, tmp_path / "av", card={"training": {"stage": "av"}}) / "README.md").read_text()
    assert "(grayscale, 88x88 centre crops of 96x96 frames at 25 fps), it returns that speaker." in text
    assert "# (F, 88, 88) uint8" in text


def test_from_pretrained_refuses_pickle_checkpoints(tmp_path):
    model = build_model("convtasnet", num_sources=2, **model_config("convtasnet", "debug"))
    save_model(model, tmp_path / "m")
    os.remove(tmp_path / "m" / "model.safetensors")
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle checkpoint.*pytorch_model.bin.*safetensors only"):
        from_pretrained(tmp_path / "m")
    os.remove(tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        from_pretrained(tmp_path / "m")


def test_repo_ids_download_only_safe_files_and_paths_never_download(tmp_path, monkeypatch):
    model = build_model("convtasnet", num_sources=2, **model_config("convtasnet", "debug"))
    save_pretrained(model, tmp_path / "snapshot", card={})
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    assert from_pretrained("me/tiny", revision="v1").num_sources == 2
    assert calls == [("me/tiny", "v1", ["config.json", "model.safetensors", "README.md", "data_card.json"])]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    # runs/mixit beside a local runs/ is a mistyped path, not a Hub id
    for missing in (str(tmp_path / "nope"), "./nope", "a/b/c", "runs/mixit"):
        with pytest.raises(FileNotFoundError, match="no such model directory"):
            from_pretrained(missing)
    assert len(calls) == 1


def test_a_hub_id_the_hub_cannot_give_is_one_line(tmp_path, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, revision=None, allow_patterns=None):
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub, and we "
                                      "cannot find the appropriate snapshot folder.\nPlease check your internet "
                                      "connection and try again.")

    monkeypatch.setattr("huggingface_hub.snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as info:
        from_pretrained("me/tiny")
    assert str(info.value).startswith("me/tiny: not a local directory, and the Hugging Face Hub did not give it")
    assert "\n" not in str(info.value)


def test_publish_uploads_the_written_folder_when_given_a_repo_id(tmp_path, corpus, monkeypatch):
    uploads = []
    monkeypatch.setattr(publish, "upload", lambda folder, repo_id, private: uploads.append((folder, repo_id, private)))
    out = publish_run(make_run(tmp_path / "run", corpus), tmp_path / "pub", repo_id="me/whamr-tiny", private=False)
    assert uploads == [(out, "me/whamr-tiny", False)]
    assert "# me/whamr-tiny" in (out / "README.md").read_text()
    assert 'from_pretrained("me/whamr-tiny")' in (out / "README.md").read_text()


@pytest.mark.network
def test_upload_and_download_through_the_hub(tmp_path, corpus):
    """Opt in with ``pytest -m network`` and HUBBUB_TEST_REPO_ID=namespace/name (needs a write token)."""
    repo_id = os.environ.get("HUBBUB_TEST_REPO_ID")
    if not repo_id:
        pytest.skip("set HUBBUB_TEST_REPO_ID to a Hub model repo you can write to")
    run = make_run(tmp_path / "run", corpus)
    publish_run(run, tmp_path / "pub", repo_id=repo_id, private=True)
    mix = torch.randn(1, 2000)
    with torch.no_grad():
        assert torch.equal(from_pretrained(repo_id)(mix), load_model(run / "model").eval()(mix))
