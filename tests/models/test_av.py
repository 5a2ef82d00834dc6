import inspect
import time

import pytest
import torch
import torch.nn.functional as F

from hubbub.models import build_model, load_backbone, model_config, save_model
from hubbub.models.av import (AV_CONFIGS, AVExtractor, LipTokenEncoder, ResNet18VideoFrontEnd, avextractor, count_av,
                              glaunet_kwargs)
from hubbub.models.glaunet import GLAUNetBackbone


def _video(batch=2, frames=25, size=88, seed=0) -> torch.Tensor:
    """uint8 frames with per-frame structure (upsampled 8x8 noise + a per-frame brightness), so
    frames differ as mouths do rather than only in pixel noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch * frames, 1, 8, 8, generator=g) + torch.rand(batch * frames, 1, 1, 1, generator=g)
    frames_ = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False) * 127
    return frames_.clamp(0, 255).to(torch.uint8).reshape(batch, frames, size, size)


def _mix(batch=2, samples=16000, seed=0) -> torch.Tensor:
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def debug_model() -> AVExtractor:
    torch.manual_seed(0)
    return avextractor(**AV_CONFIGS["debug"])


def test_shapes_and_aux_losses(debug_model):
    assert debug_model.inputs == ("mix", "video")
    est, aux = debug_model(_mix(), _video())
    assert est.shape == (2, 1, 16000)
    assert set(aux) == {"vq", "recon"}
    # (B, 1, T) mixtures, odd lengths, 96x96 shard crops; no reconstruction loss in eval
    debug_model.eval()
    out = debug_model(_mix(samples=12345)[:, None], _video(frames=19, size=96))
    assert out.estimates.shape == (2, 1, 12345)
    assert set(out.aux_losses) == {"vq"}
    assert not hasattr(debug_model, "aux_losses")  # returned, never stored on the model


def test_debug_config_is_small_and_fast(debug_model):
    assert sum(p.numel() for p in debug_model.parameters()) < 200_000
    mix, video = _mix(), _video()
    debug_model(mix, video).estimates.square().mean().backward()         # warm-up
    start = time.perf_counter()
    est, aux = debug_model(mix, video)
    (est.square().mean() + sum(aux.values())).backward()
    assert time.perf_counter() - start < 1.0


def test_gradients_reach_audio_fusion_and_video(debug_model):
    est = debug_model(_mix(), _video()).estimates
    est.square().mean().backward()                                         # separation loss only
    for name in ("backbone.encoder.conv.weight", "backbone.blocks.0.proj_in.0.weight", "fusion.proj.0.weight",
                 "video.stem.0.weight", "video.semantic.0.weight", "head.proj.weight"):
        grad = debug_model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_lip_tokens():
    torch.manual_seed(0)
    encoder = LipTokenEncoder(video_dim=16, stem_channels=8, channels=(16, 32), blocks_per_stage=1,
                              temporal_layers=1, num_codes=32, recon_size=12)
    out = encoder(_video())
    assert out.features.shape == (2, 16, 25)
    assert out.tokens.shape == (2, 25) and out.tokens.dtype == torch.int64
    assert 0 <= out.tokens.min() and out.tokens.max() < 32
    assert out.tokens.unique().numel() > 1                                 # the codebook is used
    assert torch.isfinite(out.vq_loss) and out.vq_loss > 0
    # straight-through: a loss on the quantised features alone reaches the trunk, not the codebook
    out.features.square().sum().backward()
    assert encoder.stem[0].weight.grad.abs().sum() > 0
    assert encoder.quantizer.codebook.grad is None or encoder.quantizer.codebook.grad.abs().sum() == 0
    out = encoder(_video())
    out.vq_loss.backward()
    assert encoder.quantizer.codebook.grad.abs().sum() > 0


def test_reconstruction_loss_decreases():
    torch.manual_seed(0)
    encoder = LipTokenEncoder(video_dim=16, stem_channels=8, channels=(16, 32), blocks_per_stage=1,
                              temporal_layers=1, num_codes=32, recon_size=12)
    video = _video(batch=2, frames=8)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = encoder(video).recon_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert encoder.eval()(video).recon_loss is None
    assert LipTokenEncoder(reconstruction=False).decoder is None


def test_glaunet_backbone_loads_strictly(tmp_path, debug_model):
    for size in ("debug", "small"):
        assert glaunet_kwargs(AV_CONFIGS[size]) == model_config("glaunet", size)
    assert isinstance(debug_model.backbone, GLAUNetBackbone)
    torch.manual_seed(1)
    pretrained = build_model("glaunet", num_sources=2, **model_config("glaunet", "debug"))
    report = load_backbone(debug_model, pretrained.state_dict(), strict=True)
    assert report.missing == []
    assert report.loaded == sorted(f"backbone.{k}" for k in debug_model.backbone.state_dict())
    for key, value in pretrained.backbone.state_dict().items():
        assert torch.equal(debug_model.backbone.state_dict()[key], value), key
    # from a checkpoint directory too (the extractor's own head, fusion and video are untouched)
    save_model(pretrained, tmp_path / "glaunet")
    assert load_backbone(debug_model, tmp_path / "glaunet").missing == []
    # the extractor runs the backbone's own modules: without video it computes backbone(mix) exactly
    debug_model.eval()
    mix = _mix()
    torch.testing.assert_close(debug_model.audio_features(mix).frames, debug_model.backbone(mix).frames,
                               rtol=0, atol=0)


def test_the_video_is_fused_on_the_backbones_own_forward(debug_model):
    """The fusion runs after fusion_layer block applications of GLAUNetBackbone.forward, which the
    extractor calls rather than copies; a separator declares the mixture as its only input."""
    assert build_model("glaunet", num_sources=2, **model_config("glaunet", "debug")).inputs == ("mix",)
    debug_model.eval()
    mix, b = _mix(), debug_model.backbone
    with torch.no_grad():
        feats = debug_model.video(_video()).features
        x = b.bottleneck(b.norm(b.encoder(mix)))
        for i, block in enumerate(block for _ in range(b.num_repeats) for block in b.blocks):
            if i == debug_model.fusion_layer:
                x = debug_model.fusion(x, feats)
            x = block(x)
        torch.testing.assert_close(debug_model.audio_features(mix, feats).frames, x, rtol=0, atol=0)


def test_video_matters(debug_model):
    debug_model.eval()
    mix = _mix()
    with torch.no_grad():
        a = debug_model(mix, _video(seed=0)).estimates
        b = debug_model(mix, _video(seed=1)).estimates
        again = debug_model(mix, _video(seed=0)).estimates
    assert torch.equal(a, again)
    assert (a - b).abs().max() > 1e-4 * a.abs().max()


def test_resnet18_front_end():
    front = ResNet18VideoFrontEnd(video_dim=64)
    # torchvision's resnet18: 11,689,512 parameters, of which fc 512 * 1000 + 1000 and conv1 3 * 64 * 7 * 7
    trunk = 11_689_512 - (512 * 1000 + 1000) - 3 * 64 * 7 * 7
    assert sum(p.numel() for p in front.trunk.parameters()) + 2 * 64 == trunk      # + the stem's BN (bn1)
    stem = 1 * 64 * 5 * 7 * 7 + 2 * 64                                              # 3-D conv + BN
    assert sum(p.numel() for p in front.stem.parameters()) == stem
    assert sum(p.numel() for p in front.parameters()) == trunk - 2 * 64 + stem + 512 * 64 + 64
    out = front(_video(batch=1, frames=3, size=32))
    assert out.features.shape == (1, 64, 3) and out.tokens is None and out.vq_loss is None
    model = avextractor(**AV_CONFIGS["debug"] | {"video": "resnet18"})
    est, aux = model(_mix(batch=1, samples=1600), _video(batch=1, frames=3, size=32))
    assert est.shape == (1, 1, 1600)
    assert aux == {}


def test_count_av_and_paper_size(debug_model):
    counts = count_av(debug_model, seconds=1.0)
    assert counts["params"] == counts["params_audio"] + counts["params_video"]
    assert counts["params"] + counts["params_train_only"] == sum(p.numel() for p in debug_model.parameters())
    assert 0 < counts["macs_video"] < counts["macs"] and counts["macs_audio"] > 0
    assert count_av(debug_model, seconds=2.0)["macs"] > 1.5 * counts["macs"]
    assert debug_model.training                                           # the caller's model is untouched
    # Dolphin: 7.00 M parameters, 6.22 M without the video encoder (MACs are measured in the report)
    paper = avextractor(**AV_CONFIGS["paper"])
    decoder = sum(p.numel() for p in paper.video.decoder.parameters())
    audio = sum(p.numel() for p in paper.audio_parameters())
    assert abs(audio / 6.22e6 - 1) < 0.05
    assert abs((audio + sum(p.numel() for p in paper.video_parameters()) - decoder) / 7.00e6 - 1) < 0.05


def test_builder_defaults_are_the_paper_config():
    defaults = {k: v.default for k, v in inspect.signature(avextractor).parameters.items() if k != "num_sources"}
    assert defaults == AV_CONFIGS["paper"]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_sources"):
        avextractor(num_sources=2, **AV_CONFIGS["debug"])
    with pytest.raises(ValueError, match="fusion_layer"):
        avextractor(**AV_CONFIGS["debug"] | {"fusion_layer": 2})
    with pytest.raises(ValueError, match="video"):
        avextractor(**AV_CONFIGS["debug"] | {"video": "vit"})
