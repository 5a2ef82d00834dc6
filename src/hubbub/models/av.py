"""Audio-visual target-speaker extraction in the style of Dolphin (Li, Gao & Hu, 2025, "Dolphin:
efficient audio-visual speech separation with discrete lip semantics and multi-scale global-local
attention"), and the ResNet-18 lip front end of CTCNet / IIANet as a baseline.

Given a mixture and the target speaker's mouth-region video (grayscale crops, 88x88 at 25 fps), an
:class:`AVExtractor` returns the target's waveform::

    mix (B, T) ──► GLA U-Net backbone: encoder → bottleneck → blocks[:k] ─┐
                                                                        fusion ─► blocks[k:] → MaskHead ─► (B, 1, T)
    video (B, F, H, W) ──► video encoder ─► (B, D_v, F) ─► upsample to L ─┘

The audio path *is* a :class:`~hubbub.models.glaunet.GLAUNetBackbone` built by
:func:`~hubbub.models.glaunet.glaunet` with the same kwargs, so a backbone pretrained by any hubbub
stage (``backbone.*`` keys) loads into ``AVExtractor.backbone`` unchanged; the backbone's own
forward inserts the fusion after ``fusion_layer`` block applications (its ``fuse`` hook).

The extractor returns what it computes: an :class:`Extraction`, the estimate and the video
encoder's auxiliary losses, which training weights and adds (``est, aux = model(mix, video)``) and
inference leaves (``model(mix, video).estimates``).

Video encoders (``forward(video) -> VideoFeatures``):

* :class:`LipTokenEncoder` (Dolphin's DP-LipCoder, simplified): a light 3-D conv stem and
  depthwise-separable 2-D stages per frame, pooled to one vector per frame, then a temporal conv
  stack; a semantic path quantises a projection of it into discrete lip tokens (cosine-similarity
  VQ, straight-through), and a reconstruction path decodes the same continuous vectors back to
  low-resolution frames (a training-time loss that keeps visual detail in the shared trunk).
* :class:`ResNet18VideoFrontEnd`: the baseline 3-D stem + ResNet-18 trunk per frame (11 M
  parameters, ~16 G MACs for 2 s: the cost Dolphin's encoder avoids).
"""
from __future__ import annotations

import copy
import functools
import inspect
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from hubbub.models.base import Features
from hubbub.models.glaunet import GLAUNetBackbone, glaunet
from hubbub.models.heads import MaskHead
from hubbub.video import CROP_SIZE, FPS

# Grayscale mouth-ROI statistics (LRS3) that the lipreading front ends of Ma et al. and the
# CTCNet / IIANet recipes standardise with; any fixed pair works if training and use agree.
LIP_MEAN, LIP_STD = 0.421, 0.165


@dataclass
class VideoFeatures:
    """What a video encoder hands to the fusion.

    Attributes:
        features: (B, D_v, F) float, one vector per video frame (25 fps for the usual crops).
        tokens: (B, F) int64 lip-token ids in ``[0, num_codes)``, or None (continuous encoders).
        vq_loss: scalar, codebook + commitment loss of the quantiser, or None (no quantiser).
        recon_loss: scalar L1 loss of the reconstructed low-resolution frames, or None (no
            reconstruction path, or eval mode).
    """

    features: torch.Tensor
    tokens: torch.Tensor | None = None
    vq_loss: torch.Tensor | None = None
    recon_loss: torch.Tensor | None = None


def standardise_frames(video: torch.Tensor) -> torch.Tensor:
    """(B, F, H, W) uint8 in [0, 255] or float in [0, 1] -> (B, 1, F, H, W) float32 standardised
    with :data:`LIP_MEAN` / :data:`LIP_STD`."""
    if video.dim() != 4:
        raise ValueError(f"expected (B, F, H, W) grayscale frames, got shape {tuple(video.shape)}")
    x = video.float() / 255.0 if video.dtype == torch.uint8 else video.float()
    return ((x - LIP_MEAN) / LIP_STD).unsqueeze(1)


def _per_frame(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, H, W) -> (B * F, C, H, W): 2-D layers then see every frame as an image."""
    return x.transpose(1, 2).flatten(0, 1)


class VectorQuantizer(nn.Module):
    """Nearest-code quantisation of (B, D, F) vectors, straight-through, with a learned codebook.

    Vectors and codes are compared on the unit sphere (both l2-normalised; Yu et al. 2022,
    ViT-VQGAN): lookups become cosine similarities and no code can lose by having a small norm,
    which keeps the codebook in use without EMA updates or dead-code restarts. The loss is
    ``||sg(z) - q||^2 + commitment * ||z - sg(q)||^2`` (codebook + commitment terms, van den Oord
    et al. 2017); gradients reach the encoder through ``z + sg(q - z)``.

    Returns ``(quantised (B, D, F) unit vectors, tokens (B, F) int64, loss scalar)``.
    """

    def __init__(self, num_codes: int, dim: int, commitment: float = 0.25):
        super().__init__()
        self.num_codes = num_codes
        self.commitment = commitment
        self.codebook = nn.Parameter(torch.randn(num_codes, dim))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = F.normalize(z.transpose(1, 2), dim=-1)                        # (B, F, D)
        codes = F.normalize(self.codebook, dim=-1)
        tokens = (z @ codes.t()).argmax(-1)
        q = codes[tokens]
        loss = F.mse_loss(q, z.detach()) + self.commitment * F.mse_loss(z, q.detach())
        return (z + (q - z).detach()).transpose(1, 2), tokens, loss


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    """Depthwise 3x3 (stride) + pointwise 1x1, each with BN + ReLU (MobileNet v1)."""
    return nn.Sequential(nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
                         nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class _Residual(nn.Module):
    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class LipTokenEncoder(nn.Module):
    """Dolphin-style lightweight lip encoder: frames (B, F, H, W) -> :class:`VideoFeatures`.

    Trunk: Conv3d(1 -> ``stem_channels``, kernel (5, 7, 7), stride (1, 2, 2)) + BN + ReLU, then per
    frame one stage per entry of ``channels``, each a stride-2 depthwise-separable block followed by
    ``blocks_per_stage - 1`` residual ones (88x88 -> 44 -> 22 -> 11 -> 6), global average pooling
    to (B, C, F), and ``temporal_layers`` residual temporal convs (kernel ``temporal_kernel``)
    giving the continuous features h.

    Semantic path: 1x1 conv + BN to ``video_dim``, then :class:`VectorQuantizer` with ``num_codes``
    codes: ``features`` are the (straight-through) quantised vectors, ``tokens`` their ids.

    Reconstruction path (``reconstruction=True``, training only): a per-frame decoder from the
    *continuous* h (a linear map to a 3x3 map, then stride-2 transposed convs) to
    ``recon_size`` x ``recon_size`` frames, L1 against the standardised input average-pooled to that
    size. It decodes h rather than the quantised vectors so that the codebook stays free to keep
    only what distinguishes lip shapes while the shared trunk still has to see the mouth.

    Any H, W work (88 for the usual crops, 96 as stored in hubbub shards); F is not changed.
    """

    def __init__(self, video_dim: int = 128, stem_channels: int = 64, channels: tuple[int, ...] = (80, 160, 288),
                 blocks_per_stage: int = 2, temporal_layers: int = 2, temporal_kernel: int = 3,
                 num_codes: int = 256, commitment: float = 0.25, reconstruction: bool = True,
                 recon_size: int = 24):
        super().__init__()
        ups = math.log2(recon_size / 3)
        if reconstruction and (ups != int(ups) or ups < 1):
            raise ValueError(f"recon_size must be 3 * 2^k with k >= 1 (6, 12, 24, 48), got {recon_size}")
        self.stem = nn.Sequential(nn.Conv3d(1, stem_channels, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False),
                                  nn.BatchNorm3d(stem_channels), nn.ReLU())
        stages, cin = [], stem_channels
        for cout in channels:
            stages.append(_separable(cin, cout, 2))
            stages.extend(_Residual(_separable(cout, cout, 1)) for _ in range(blocks_per_stage - 1))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.temporal = nn.Sequential(*(
            _Residual(nn.Sequential(nn.Conv1d(cin, cin, temporal_kernel, padding=temporal_kernel // 2, bias=False),
                                    nn.BatchNorm1d(cin), nn.ReLU()))
            for _ in range(temporal_layers)))
        # BN over (batch, frames) centres each channel, so at initialisation frames point in
        # different directions on the sphere and the VQ uses many codes from the first step.
        self.semantic = nn.Sequential(nn.Conv1d(cin, video_dim, 1, bias=False), nn.BatchNorm1d(video_dim))
        self.quantizer = VectorQuantizer(num_codes, video_dim, commitment)
        self.recon_size = recon_size
        self.decoder = self._decoder(cin, int(ups)) if reconstruction else None

    @staticmethod
    def _decoder(dim: int, ups: int) -> nn.Sequential:
        widths = [max(32 >> i, 8) for i in range(ups + 1)]
        layers: list[nn.Module] = [nn.Linear(dim, widths[0] * 9), nn.Unflatten(1, (widths[0], 3, 3))]
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += [nn.ReLU(), nn.ConvTranspose2d(cin, cout, 4, 2, 1)]
        return nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(widths[-1], 1, 3, padding=1))

    def forward(self, video: torch.Tensor) -> VideoFeatures:
        clip = standardise_frames(video)                                   # (B, 1, F, H, W)
        batch, frames = clip.shape[0], clip.shape[2]
        x = self.stages(_per_frame(self.stem(clip)))                       # (B * F, C, h, w)
        h = self.temporal(x.mean((-2, -1)).unflatten(0, (batch, frames)).transpose(1, 2))   # (B, C, F)
        features, tokens, vq_loss = self.quantizer(self.semantic(h))
        recon_loss = None
        if self.decoder is not None and self.training:
            recon = self.decoder(h.transpose(1, 2).flatten(0, 1))           # (B * F, 1, s, s)
            target = F.adaptive_avg_pool2d(_per_frame(clip), self.recon_size)
            recon_loss = F.l1_loss(recon, target)
        return VideoFeatures(features, tokens, vq_loss, recon_loss)


class _BasicBlock(nn.Module):
    """ResNet basic block; parameter names follow torchvision (conv1, bn1, conv2, bn2, downsample)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18VideoFrontEnd(nn.Module):
    """The visual front end of CTCNet / IIANet (after Ma et al.'s lipreading model): frames
    (B, F, H, W) -> :class:`VideoFeatures` (continuous; no tokens, no losses).

    Conv3d(1 -> 64, kernel (5, 7, 7), stride (1, 2, 2)) + BN + ReLU + MaxPool3d((1, 3, 3), (1, 2, 2)),
    a ResNet-18 trunk (``trunk.layer1`` .. ``layer4``, basic blocks [2, 2, 2, 2] of 64-128-256-512
    channels, torchvision names) per frame, global average pooling to (B, 512, F) and a 1x1 conv
    to ``video_dim``. For 88x88 crops the trunk sees 22x22 maps.
    """

    def __init__(self, video_dim: int = 512):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(1, 64, (5, 7, 7), (1, 2, 2), (2, 3, 3), bias=False), nn.BatchNorm3d(64),
                                  nn.ReLU(), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)))
        layers, cin = OrderedDict(), 64
        for i, cout in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            layers[f"layer{i + 1}"] = nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1))
            cin = cout
        self.trunk = nn.Sequential(layers)
        self.proj = nn.Conv1d(512, video_dim, 1)

    def forward(self, video: torch.Tensor) -> VideoFeatures:
        clip = standardise_frames(video)
        batch, frames = clip.shape[0], clip.shape[2]
        x = self.trunk(_per_frame(self.stem(clip))).mean((-2, -1))         # (B * F, 512)
        return VideoFeatures(self.proj(x.unflatten(0, (batch, frames)).transpose(1, 2)))


class AVFusion(nn.Module):
    """``a + PReLU(conv1x1([a; up(norm(v))]))``: video (B, D_v, F) is layer-normalised, upsampled
    by nearest neighbour to the audio's L frames, concatenated with the audio (B, C, L) and
    projected back to C, as a residual. Nearest keeps a lip token's vector constant over its
    40 ms; the video and the mixture are assumed to span the same time (F / fps == T / sr)."""

    def __init__(self, audio_dim: int, video_dim: int):
        super().__init__()
        self.video_norm = nn.GroupNorm(1, video_dim)
        self.proj = nn.Sequential(nn.Conv1d(audio_dim + video_dim, audio_dim, 1), nn.PReLU())

    def forward(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        video = F.interpolate(self.video_norm(video), size=audio.shape[-1], mode="nearest")
        return audio + self.proj(torch.cat([audio, video], 1))


class Extraction(NamedTuple):
    """What :class:`AVExtractor` returns.

    Attributes:
        estimates: (B, 1, T) the target speaker's waveform.
        aux_losses: ``{"vq": scalar, "recon": scalar}``, only the losses the video encoder produced
            (``recon`` only in training), for the trainer to weight and add.

    A tuple, so ``est, aux = model(mix, video)`` unpacks it (and DDP and Accelerate's output
    casting see its tensors); separators, which have no auxiliary losses, return their bare
    (B, S, T) tensor.
    """

    estimates: torch.Tensor
    aux_losses: dict[str, torch.Tensor]


class AVExtractor(nn.Module):
    """Target-speaker extractor: ``forward(mix (B, T) or (B, 1, T), video (B, F, H, W)) -> Extraction``
    (estimates (B, 1, T) and the auxiliary losses).

    Attributes:
        backbone: the audio :class:`GLAUNetBackbone` (state-dict keys ``backbone.*``, the same as a
            glaunet separator's, so pretrained backbones load with
            :func:`hubbub.models.load_backbone`).
        video: the video encoder (:class:`LipTokenEncoder` or :class:`ResNet18VideoFrontEnd`).
        fusion: :class:`AVFusion`, applied after ``fusion_layer`` of the backbone's
            ``num_blocks * num_repeats`` block applications (0: at the separator's input).
        head: a one-source :class:`MaskHead`.
        inputs: ``("mix", "video")``, as :class:`~hubbub.models.base.Separator` declares its own.
        spec: set by the model factory (name + kwargs), None for a hand-assembled model.

    Example::

        model = avextractor(**AV_CONFIGS["debug"])
        est, aux = model(torch.randn(2, 16000), torch.randint(0, 256, (2, 25, 88, 88), dtype=torch.uint8))
        loss = -si_sdr(est, target).mean() + 0.1 * sum(aux.values())
    """

    num_sources = 1
    inputs = ("mix", "video")

    def __init__(self, backbone: GLAUNetBackbone, video: nn.Module, fusion: AVFusion, head: MaskHead,
                 fusion_layer: int = 0, spec: dict | None = None):
        super().__init__()
        depth = len(backbone.blocks) * backbone.num_repeats
        if not 0 <= fusion_layer < depth:
            raise ValueError(f"fusion_layer must be in [0, {depth}) so that GLA blocks follow the fusion, "
                             f"got {fusion_layer}")
        if head.num_sources != 1:
            raise ValueError(f"a target-speaker extractor has a one-source head, got {head.num_sources}")
        self.backbone = backbone
        self.video = video
        self.fusion = fusion
        self.head = head
        self.fusion_layer = fusion_layer
        self.spec = spec

    def audio_features(self, mix: torch.Tensor, video_features: torch.Tensor | None = None) -> Features:
        """The backbone's :class:`Features` with ``video_features`` (B, D_v, F) fused after
        ``fusion_layer`` blocks; with None, exactly ``self.backbone(mix)`` (audio only)."""
        if video_features is None:
            return self.backbone(mix)
        return self.backbone(mix, functools.partial(self.fusion, video=video_features), self.fusion_layer)

    def forward(self, mix: torch.Tensor, video: torch.Tensor) -> Extraction:
        if video.shape[0] != mix.shape[0]:
            raise ValueError(f"mix has batch {mix.shape[0]} but video has {video.shape[0]}")
        visual = self.video(video)
        aux = {name: loss for name, loss in (("vq", visual.vq_loss), ("recon", visual.recon_loss)) if loss is not None}
        return Extraction(self.head(self.audio_features(mix, visual.features)), aux)

    def video_parameters(self) -> list[nn.Parameter]:
        """The video encoder's parameters (for a separate learning rate, or to freeze it)."""
        return list(self.video.parameters())

    def audio_parameters(self) -> list[nn.Parameter]:
        """Everything else: audio backbone, fusion and head."""
        video = {id(p) for p in self.video.parameters()}
        return [p for p in self.parameters() if id(p) not in video]


_GLAUNET_KWARGS = [name for name in inspect.signature(glaunet).parameters if name != "num_sources"]


def glaunet_kwargs(av_kwargs: dict) -> dict:
    """The :func:`~hubbub.models.glaunet.glaunet` kwargs inside an :func:`avextractor` config: build
    (and pretrain) a glaunet with these and its ``backbone.*`` loads into the extractor."""
    return {k: av_kwargs[k] for k in _GLAUNET_KWARGS if k in av_kwargs}


def avextractor(num_sources: int = 1, video: str = "lip_tokens", num_filters: int = 512, kernel_size: int = 32,
                bottleneck_dim: int = 176, hidden_dim: int = 352, num_levels: int = 4, level_kernel_size: int = 5,
                num_heads: int = 8, num_blocks: int = 5, num_repeats: int = 3, fusion_layer: int = 1,
                video_dim: int = 128, stem_channels: int = 64, video_channels: tuple[int, ...] = (80, 160, 288),
                blocks_per_stage: int = 2, temporal_layers: int = 2, num_codes: int = 256,
                commitment: float = 0.25, reconstruction: bool = True, recon_size: int = 24) -> AVExtractor:
    """Build an :class:`AVExtractor`; the defaults are :data:`AV_CONFIGS` ``["paper"]``.

    Args:
        num_sources: must be 1 (kept so the model factory can pass it like for any separator).
        video: ``"lip_tokens"`` (:class:`LipTokenEncoder`) or ``"resnet18"``
            (:class:`ResNet18VideoFrontEnd`, which uses only ``video_dim`` of the video kwargs).
        num_filters .. num_repeats: the audio path, exactly :func:`~hubbub.models.glaunet.glaunet`'s
            kwargs (see :func:`glaunet_kwargs`).
        fusion_layer: GLA block applications before the fusion (0: fuse at the separator input).
        video_dim: D_v, the video feature width (and the lip-token codebook's dimension).
        stem_channels, video_channels, blocks_per_stage, temporal_layers: the lip encoder's trunk.
        num_codes, commitment: the lip-token codebook size and the VQ commitment weight.
        reconstruction, recon_size: the lip encoder's training-time frame reconstruction path.
    """
    if num_sources != 1:
        raise ValueError(f"avextractor extracts one target speaker, got num_sources={num_sources}")
    audio = glaunet(1, num_filters, kernel_size, bottleneck_dim, hidden_dim, num_levels, level_kernel_size,
                    num_heads, num_blocks, num_repeats)
    if video == "lip_tokens":
        encoder = LipTokenEncoder(video_dim, stem_channels, tuple(video_channels), blocks_per_stage, temporal_layers,
                                  num_codes=num_codes, commitment=commitment, reconstruction=reconstruction,
                                  recon_size=recon_size)
    elif video == "resnet18":
        encoder = ResNet18VideoFrontEnd(video_dim)
    else:
        raise ValueError(f"video must be 'lip_tokens' or 'resnet18', got {video!r}")
    return AVExtractor(audio.backbone, encoder, AVFusion(bottleneck_dim, video_dim), audio.head, fusion_layer)


# The paper config is sized to Dolphin's published counts for 2 s at 16 kHz with 50 frames of 88x88
# (count_av): 7.02 M parameters / 10.78 G MACs (Dolphin 7.00 M / 10.89 G), of which the audio part
# (backbone + fusion + head) 6.24 M / 8.43 G (6.22 M / 8.51 G) and the lip encoder 0.78 M / 2.34 G,
# plus 0.10 M of training-only reconstruction decoder. The builder's defaults repeat it. The debug
# (and small) config's audio part is glaunet's debug (small) config (a test keeps them equal), so backbones load
# into it; it has 44k parameters and runs a (2, 16000) mix + (2, 25, 88, 88) video in milliseconds.
AV_CONFIGS: dict[str, dict] = {
    "paper": dict(video="lip_tokens", num_filters=512, kernel_size=32, bottleneck_dim=176, hidden_dim=352,
                  num_levels=4, level_kernel_size=5, num_heads=8, num_blocks=5, num_repeats=3, fusion_layer=1,
                  video_dim=128, stem_channels=64, video_channels=(80, 160, 288), blocks_per_stage=2,
                  temporal_layers=2, num_codes=256, commitment=0.25, reconstruction=True, recon_size=24),
    "small": dict(video="lip_tokens", num_filters=128, kernel_size=16, bottleneck_dim=64, hidden_dim=128,
                  num_levels=4, level_kernel_size=5, num_heads=4, num_blocks=1, num_repeats=4, fusion_layer=1,
                  video_dim=32, stem_channels=16, video_channels=(32, 64), blocks_per_stage=1,
                  temporal_layers=1, num_codes=64, commitment=0.25, reconstruction=True, recon_size=12),
    "debug": dict(video="lip_tokens", num_filters=32, kernel_size=16, bottleneck_dim=16, hidden_dim=32,
                  num_levels=3, level_kernel_size=5, num_heads=2, num_blocks=1, num_repeats=2, fusion_layer=1,
                  video_dim=16, stem_channels=8, video_channels=(16, 32), blocks_per_stage=1,
                  temporal_layers=1, num_codes=32, commitment=0.25, reconstruction=True, recon_size=12),
}


def count_av(model: AVExtractor, seconds: float = 2.0, sample_rate_hz: int = 16000, fps: int = FPS,
             frame_size: int = CROP_SIZE) -> dict[str, int]:
    """Parameters and MACs of an :class:`AVExtractor` for one ``seconds`` clip, split into the video
    encoder and the rest (audio backbone + fusion + head, Dolphin's "without the video encoder").

    MACs are counted as in :func:`hubbub.models.count_macs` (``FlopCounterMode`` on a CPU eval-mode
    copy, FLOPs / 2, elementwise ops and norms not counted) on a zero mixture of
    ``seconds * sample_rate_hz`` samples and ``seconds * fps`` frames of ``frame_size`` squared.
    Parameters are those used at inference: the lip encoder's reconstruction decoder (training only)
    is left out and reported as ``params_train_only``.

    Returns:
        ``{"params", "params_audio", "params_video", "params_train_only", "macs", "macs_audio",
        "macs_video"}`` (counts, not millions).
    """
    model = copy.deepcopy(model).to("cpu").eval()
    mix = torch.zeros(1, round(seconds * sample_rate_hz))
    video = torch.zeros(1, round(seconds * fps), frame_size, frame_size, dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(mix, video)
    flops = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    macs = flops["Global"] // 2
    macs_video = flops.get(f"{type(model).__name__}.video", 0) // 2
    decoder = getattr(model.video, "decoder", None)
    train_only = sum(p.numel() for p in decoder.parameters()) if decoder is not None else 0
    params_video = sum(p.numel() for p in model.video_parameters()) - train_only
    params_audio = sum(p.numel() for p in model.audio_parameters())
    return {"params": params_audio + params_video, "params_audio": params_audio, "params_video": params_video,
            "params_train_only": train_only, "macs": macs, "macs_audio": macs - macs_video,
            "macs_video": macs_video}
