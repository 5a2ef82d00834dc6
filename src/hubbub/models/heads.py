"""Separation heads shared by several models (model-specific heads live with their model)."""
from __future__ import annotations

import torch
from torch import nn

from hubbub.models.base import Features
from hubbub.models.encoders import ConvDecoder

_MASK_ACTIVATIONS = {"sigmoid": torch.sigmoid, "relu": torch.relu}


class MaskHead(nn.Module):
    """Masking head for learned-encoder models: ``Features`` -> waveforms (B, S, T).

    ``frames`` (B, D, L) -> PReLU -> 1x1 conv to ``S * N`` channels -> one mask (B, S, N, L) per
    source -> masks times ``encoded`` (B, N, L) -> :class:`ConvDecoder` -> (B, S, T). The decoder
    is shared by the sources but lives here, not in the backbone, so a backbone can be reused by
    heads that never synthesise audio.

    Args:
        num_sources: S.
        feature_dim: D, the backbone's ``feature_dim``.
        num_filters, kernel_size, stride: the backbone encoder's geometry (N, its kernel and hop).
        mask: ``"sigmoid"`` (masks in [0, 1]) or ``"relu"`` (unbounded non-negative masks).
    """

    def __init__(self, num_sources: int, feature_dim: int, num_filters: int, kernel_size: int,
                 stride: int, mask: str = "sigmoid"):
        super().__init__()
        if mask not in _MASK_ACTIVATIONS:
            raise ValueError(f"mask must be one of {sorted(_MASK_ACTIVATIONS)}, got {mask!r}")
        self.num_sources = num_sources
        self.num_filters = num_filters
        self.activation = _MASK_ACTIVATIONS[mask]
        self.prelu = nn.PReLU()
        self.proj = nn.Conv1d(feature_dim, num_sources * num_filters, 1)
        self.decoder = ConvDecoder(num_filters, kernel_size, stride)

    def forward(self, features: Features) -> torch.Tensor:
        logits = self.proj(self.prelu(features.frames))
        masks = self.activation(logits.unflatten(1, (self.num_sources, self.num_filters)))
        return self.decoder(masks * features.encoded.unsqueeze(1), features.num_samples)
