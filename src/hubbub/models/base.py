"""The backbone/head split every separator follows.

A :class:`Separator` is ``head(backbone(mix))``. The backbone holds everything that does not depend
on what is separated (encoder, separator stack) and returns :class:`Features`; the head holds the
source-specific parts (a mask/estimate projection for ``num_sources`` and the decoder). The number
of sources lives only in the head, so a pretrained backbone loads under a head with a different
number of sources, or under a different kind of head (a token classifier, a MixIT head, an
audio-visual fusion) that reads only ``Features.frames``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Features:
    """What a backbone hands to a head.

    Attributes:
        frames: (B, D, L) float tensor, one D-dimensional feature vector per frame, with
            ``D == backbone.feature_dim`` and frames ``backbone.hop_samples`` apart
            (``backbone.frame_rate_hz(sample_rate_hz)`` per second). This is the contract for
            generic heads: time-domain models give their separator stack's output, TF models
            average their per-frequency embedding over frequency. Every backbone gives
            ``L = T // hop_samples + 1`` frames for T input samples, frame ``l`` centred on sample
            ``l * hop_samples``, so features of different models align by frame index times hop.
        num_samples: T, the length of the (unpadded) input; heads return waveforms of this length.
        encoded: (B, N, L) the mixture's learned-encoder representation, for masking heads
            (time-domain models only).
        grid: (B, D, L, F) the per-frequency embedding TF models' own heads decode; ``frames`` is
            its mean over F (TF models only).
        scale: (B, 1) the factor the backbone divided the input by (TF models normalise the
            mixture to unit variance); heads multiply their waveforms by it.

    Example::

        feats = model.backbone(mix)                 # mix (B, T)
        logits = token_head(feats.frames)           # any head that reads (B, D, L)
    """

    frames: torch.Tensor
    num_samples: int
    encoded: torch.Tensor | None = None
    grid: torch.Tensor | None = None
    scale: torch.Tensor | None = None


class Backbone(nn.Module):
    """Base class of backbones: ``forward(mix) -> Features``.

    Subclasses set ``feature_dim`` (D of ``Features.frames``) and ``hop_samples`` (samples between
    consecutive frames) in ``__init__``.
    """

    feature_dim: int
    hop_samples: int

    def frame_rate_hz(self, sample_rate_hz: float) -> float:
        """Frames per second of ``Features.frames`` for input at ``sample_rate_hz``."""
        return sample_rate_hz / self.hop_samples


def as_mono_batch(mix: torch.Tensor) -> torch.Tensor:
    """(B, T) or (B, 1, T) -> (B, T); anything else is an error (one mono mixture per example)."""
    if mix.dim() == 3 and mix.shape[1] == 1:
        return mix[:, 0]
    if mix.dim() != 2:
        raise ValueError(f"expected a (B, T) or (B, 1, T) mono mixture, got shape {tuple(mix.shape)}")
    return mix


class Separator(nn.Module):
    """A separation model: ``head(backbone(mix))``, mixture (B, T) or (B, 1, T) -> sources (B, S, T).

    Attributes:
        backbone: a :class:`Backbone`; its state-dict keys are ``backbone.*``.
        head: an ``nn.Module`` with ``num_sources`` and ``forward(Features) -> (B, S, T)``.
        spec: ``{"name": registered name, "kwargs": all builder kwargs}`` when built by
            :func:`hubbub.models.build_model` (checkpoints store it); ``None`` for a hand-assembled
            model.

        inputs: what ``forward`` takes, in order: ``("mix",)``. An audio-visual extractor
            (:class:`hubbub.models.av.AVExtractor`) declares ``("mix", "video")``; callers read
            this, not the model's attributes, to know what to pass.

    Example::

        model = build_model("convtasnet", num_sources=2, **model_config("convtasnet", "debug"))
        est = model(torch.randn(4, 8000))           # (4, 2, 8000)
    """

    inputs: tuple[str, ...] = ("mix",)

    def __init__(self, backbone: Backbone, head: nn.Module, spec: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spec = spec

    @property
    def num_sources(self) -> int:
        return self.head.num_sources

    def forward(self, mix: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(mix))
