import json

import pytest
import torch
from safetensors.torch import load_file

from hubbub.models import MODELS, Separator, build_model, load_backbone, load_model, model_config, save_model
from hubbub.models.factory import AUDIO_VISUAL

NAMES = sorted(set(MODELS) - AUDIO_VISUAL)  # the AV extractor: tests/models/test_av.py


def debug_model(name: str, num_sources: int = 2, seed: int = 0) -> Separator:
    torch.manual_seed(seed)
    return build_model(name, num_sources=num_sources, **model_config(name, "debug"))


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(tmp_path, name):
    model = debug_model(name).eval()
    save_model(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["name"] == name
    assert config["kwargs"] == {"num_sources": 2, **model_config(name, "debug")}
    assert config["hubbub_version"]

    loaded = load_model(tmp_path / "ckpt").eval()
    assert loaded.spec == model.spec
    mix = torch.randn(2, 1234)
    with torch.no_grad():
        assert torch.equal(loaded(mix), model(mix))


@pytest.mark.parametrize("name", NAMES)
def test_pretrained_backbone_loads_under_a_three_source_head(tmp_path, name):
    pretrained = debug_model(name, num_sources=2, seed=0).eval()
    save_model(pretrained, tmp_path)
    finetune = debug_model(name, num_sources=3, seed=1).eval()
    head_before = {k: v.clone() for k, v in finetune.head.state_dict().items()}

    report = load_backbone(finetune, tmp_path)
    assert report.missing == []

    assert report.loaded == sorted("backbone." + k for k in pretrained.backbone.state_dict())
    assert report.ignored == sorted("head." + k for k in pretrained.head.state_dict())
    for key, value in finetune.head.state_dict().items():
        assert torch.equal(value, head_before[key]), f"head.{key} was overwritten"
    mix = torch.randn(2, 3001)
    with torch.no_grad():
        assert torch.equal(finetune.backbone(mix).frames, pretrained.backbone(mix).frames)
        assert finetune(mix).shape == (2, 3, 3001)


def test_load_backbone_from_a_state_dict():
    pretrained, other = debug_model("convtasnet", seed=0), debug_model("convtasnet", seed=1)
    report = load_backbone(other, pretrained.state_dict())
    assert report.loaded and all(k.startswith("backbone.") for k in report.loaded)
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(other.backbone.state_dict()[key], value)


def test_load_backbone_strictness():
    model = debug_model("convtasnet")
    state = {k: v for k, v in debug_model("convtasnet").state_dict().items() if "blocks.0." not in k}
    state["backbone.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError, match="Missing key"):
        load_backbone(model, state)
    report = load_backbone(model, state, strict=False)
    assert "backbone.extra" in report.ignored and "backbone.extra" not in report.loaded
    assert report.missing and all(k.startswith("backbone.blocks.0.") for k in report.missing)
    assert not set(report.missing) & set(report.loaded)

    wider = build_model("convtasnet", **(model_config("convtasnet", "debug") | {"bottleneck_dim": 24}))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_backbone(model, wider.state_dict(), strict=False)


def test_load_backbone_rejects_another_model(tmp_path):
    save_model(debug_model("dprnn"), tmp_path)
    with pytest.raises(ValueError, match="holds a 'dprnn' model, whose backbone does not fit a 'glaunet' model"):
        load_backbone(debug_model("glaunet"), tmp_path)


def test_glaunet_backbone_loads_into_the_av_extractor_and_back(tmp_path):
    """The AV extractor's audio path is a GLA U-Net backbone: pretrained glaunet checkpoints start
    it, and its audio path can serve as a glaunet separator's backbone; other models refuse."""
    glaunet = debug_model("glaunet")
    save_model(glaunet, tmp_path / "g")
    av = build_model("avextractor", num_sources=1, **model_config("avextractor", "debug"))
    report = load_backbone(av, tmp_path / "g")
    assert report.loaded and not report.missing
    for key, value in glaunet.backbone.state_dict().items():
        assert torch.equal(av.backbone.state_dict()[key], value)
    save_model(av, tmp_path / "av")
    assert load_backbone(debug_model("glaunet"), tmp_path / "av").loaded == report.loaded
    with pytest.raises(ValueError, match="does not fit"):
        load_backbone(av, save_model(debug_model("convtasnet"), tmp_path / "c"))


def test_load_model_rejects_unknown_names(tmp_path):
    save_model(debug_model("convtasnet"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"name": "TasNetV9"}))
    with pytest.raises(ValueError, match=r"config\.json: unknown model 'TasNetV9'; registered models: avextractor, conv"):
        load_model(tmp_path)


def test_save_refuses_a_model_without_spec(tmp_path):
    model = debug_model("convtasnet")
    with pytest.raises(ValueError, match="build_model"):
        save_model(Separator(model.backbone, model.head), tmp_path)


def test_weights_are_plain_safetensors(tmp_path):
    model = debug_model("tfgridnet")
    save_model(model, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert state.keys() == model.state_dict().keys()
