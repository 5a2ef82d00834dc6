import inspect
import time

import pytest
import torch

from hubbub.models import MODELS, Separator, build_model, model_config
from hubbub.models.factory import AUDIO_VISUAL

NAMES = sorted(set(MODELS) - AUDIO_VISUAL)  # the AV extractor: tests/models/test_av.py
SAMPLE_RATE_HZ = 8000
# Reported parameter counts of the paper configurations.
PAPER_PARAMS = {"convtasnet": 5.1e6, "dprnn": 2.6e6, "tfgridnet": 14.4e6}


def debug_model(name: str, num_sources: int = 2, seed: int = 0) -> Separator:
    torch.manual_seed(seed)
    return build_model(name, num_sources=num_sources, **model_config(name, "debug"))


def num_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_samples", [1, 37, 4001, 8000])
def test_shapes_for_any_length(name, num_samples):
    model = debug_model(name).eval()
    mix = torch.randn(2, num_samples)
    with torch.no_grad():
        est = model(mix)
        est_channel = model(mix.unsqueeze(1))
        features = model.backbone(mix)
    assert est.shape == (2, 2, num_samples)
    assert torch.isfinite(est).all()
    torch.testing.assert_close(est_channel, est)
    hop = model.backbone.hop_samples
    assert features.frames.shape == (2, model.backbone.feature_dim, num_samples // hop + 1)
    assert features.num_samples == num_samples


@pytest.mark.parametrize("name", NAMES)
def test_frame_rate(name):
    backbone = debug_model(name).backbone
    assert backbone.frame_rate_hz(SAMPLE_RATE_HZ) == SAMPLE_RATE_HZ / backbone.hop_samples


@pytest.mark.parametrize("name", NAMES)
def test_rejects_multichannel_input(name):
    with pytest.raises(ValueError, match="mono"):
        debug_model(name)(torch.randn(2, 2, 800))


@pytest.mark.parametrize("name", NAMES)
def test_debug_config_is_tiny_and_fast(name):
    model = debug_model(name).eval()
    assert num_params(model) < 100_000
    mix = torch.randn(2, SAMPLE_RATE_HZ)
    with torch.no_grad():
        model(mix)  # warm-up: first calls pay for kernel selection and allocation
        seconds = []
        for _ in range(3):
            start = time.perf_counter()
            model(mix)
            seconds.append(time.perf_counter() - start)
    assert min(seconds) < 0.5


@pytest.mark.parametrize("name", NAMES)
def test_small_config_sits_between_debug_and_paper_and_trains(name):
    sizes = {size: num_params(build_model(name, **model_config(name, size))) for size in ("debug", "small", "paper")}
    assert sizes["debug"] < sizes["small"] < sizes["paper"] / 4
    torch.manual_seed(0)
    model = build_model(name, **model_config(name, "small"))
    mix = torch.randn(2, 4000)
    est = model(mix)
    assert est.shape == (2, 2, 4000)
    est.pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_parameter_count(name):
    model = build_model(name, **model_config(name, "paper"))
    assert num_params(model) == pytest.approx(PAPER_PARAMS[name], rel=0.10)


def test_glaunet_paper_config_is_efficient():
    """The GLA U-Net has no paper count to match; it should stay lighter than Conv-TasNet."""
    assert num_params(build_model("glaunet", **model_config("glaunet", "paper"))) < 3e6


@pytest.mark.parametrize("name", NAMES)
def test_eval_is_deterministic(name):
    model = debug_model(name).eval()
    mix = torch.randn(2, 3001)
    with torch.no_grad():
        assert torch.equal(model(mix), model(mix))


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_backbone_and_head(name):
    model = debug_model(name).train()
    model(torch.randn(2, 2001)).pow(2).mean().backward()
    for key, param in model.named_parameters():
        assert param.grad is not None, f"{key} gets no gradient"
    for part in (model.backbone, model.head):
        assert sum(p.grad.abs().sum() for p in part.parameters()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_only_the_head_depends_on_num_sources(name):
    two, three = debug_model(name, 2), debug_model(name, 3)
    assert three(torch.randn(1, 800)).shape == (1, 3, 800)
    shapes = lambda m: {k: v.shape for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(two.backbone) == shapes(three.backbone)
    assert shapes(two.head) != shapes(three.head)
    assert "num_sources" not in inspect.signature(type(two.backbone)).parameters


@pytest.mark.parametrize("name", NAMES)
def test_spec_records_every_kwarg(name):
    model = build_model(name, num_sources=3, **model_config(name, "debug"))
    assert model.spec == {"name": name, "kwargs": {"num_sources": 3, **model_config(name, "debug")}}
    # Defaults are resolved into the spec, so a checkpoint does not depend on them.
    assert build_model(name).spec["kwargs"] == {"num_sources": 2, **model_config(name, "paper")}


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown model 'nope'.*convtasnet"):
        build_model("nope")
    with pytest.raises(ValueError, match="unknown model"):
        model_config("nope", "debug")
    with pytest.raises(ValueError, match="unknown size"):
        model_config("dprnn", "huge")
    with pytest.raises(TypeError):
        build_model("dprnn", num_layers=3)


def test_model_config_returns_a_copy():
    model_config("convtasnet", "debug")["num_filters"] = 1
    assert model_config("convtasnet", "debug")["num_filters"] != 1
