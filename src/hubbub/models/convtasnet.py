"""Conv-TasNet (Luo & Mesgarani, "Conv-TasNet: Surpassing ideal time-frequency magnitude masking
for speech separation", IEEE/ACM TASLP 2019): a learned encoder, a temporal convolutional network
(TCN) of dilated depthwise-separable conv blocks, masks on the encoder output, a learned decoder.

The non-causal, global-layer-norm variant. Paper symbols: N filters of L samples (hop L/2),
bottleneck B, block hidden size H, skip size Sc, depthwise kernel P, X blocks per repeat (dilations
1..2^(X-1)), R repeats.
"""
from __future__ import annotations

import torch
from torch import nn

from hubbub.models.base import Backbone, Features, Separator, as_mono_batch
from hubbub.models.encoders import ConvEncoder
from hubbub.models.heads import MaskHead


class _TCNBlock(nn.Module):
    """1x1 conv -> PReLU -> gLN -> dilated depthwise conv -> PReLU -> gLN, then a skip output and
    (except in the last block, whose residual nothing reads) a residual output."""

    def __init__(self, channels: int, hidden: int, skip: int, kernel_size: int, dilation: int,
                 residual: bool):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(channels, hidden, 1), nn.PReLU(), nn.GroupNorm(1, hidden),
            nn.Conv1d(hidden, hidden, kernel_size, dilation=dilation,
                      padding=dilation * (kernel_size - 1) // 2, groups=hidden),
            nn.PReLU(), nn.GroupNorm(1, hidden),
        )
        self.skip = nn.Conv1d(hidden, skip, 1)
        self.residual = nn.Conv1d(hidden, channels, 1) if residual else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        if self.residual is not None:
            x = x + self.residual(h)
        return x, self.skip(h)


class ConvTasNetBackbone(Backbone):
    """Encoder + TCN. ``frames`` is the sum of the blocks' skip outputs, (B, Sc, L) with
    ``L = T // hop + 1`` and hop ``kernel_size // 2``; ``encoded`` is the encoder output (B, N, L)."""

    def __init__(self, num_filters: int, kernel_size: int, bottleneck_dim: int, hidden_dim: int,
                 skip_dim: int, conv_kernel_size: int, num_layers: int, num_repeats: int):
        super().__init__()
        if conv_kernel_size % 2 == 0:
            raise ValueError(f"conv_kernel_size must be odd to keep the length, got {conv_kernel_size}")
        self.feature_dim = skip_dim
        self.hop_samples = kernel_size // 2
        self.encoder = ConvEncoder(num_filters, kernel_size, self.hop_samples)
        self.norm = nn.GroupNorm(1, num_filters)  # GroupNorm with one group == global layer norm
        self.bottleneck = nn.Conv1d(num_filters, bottleneck_dim, 1)
        num_blocks = num_layers * num_repeats
        self.blocks = nn.ModuleList(
            _TCNBlock(bottleneck_dim, hidden_dim, skip_dim, conv_kernel_size, 2 ** (i % num_layers),
                      residual=i < num_blocks - 1)
            for i in range(num_blocks)
        )

    def forward(self, mix: torch.Tensor) -> Features:
        mix = as_mono_batch(mix)
        encoded = self.encoder(mix)
        x = self.bottleneck(self.norm(encoded))
        skips = 0
        for block in self.blocks:
            x, skip = block(x)
            skips = skips + skip
        return Features(frames=skips, num_samples=mix.shape[-1], encoded=encoded)


def convtasnet(num_sources: int = 2, num_filters: int = 512, kernel_size: int = 16,
               bottleneck_dim: int = 128, hidden_dim: int = 512, skip_dim: int = 128,
               conv_kernel_size: int = 3, num_layers: int = 8, num_repeats: int = 3) -> Separator:
    """Conv-TasNet; the defaults are the paper's best non-causal configuration (about 5 M params).

    N=``num_filters``, L=``kernel_size`` (samples; the hop is L/2), B=``bottleneck_dim``,
    H=``hidden_dim``, Sc=``skip_dim``, P=``conv_kernel_size``, X=``num_layers``,
    R=``num_repeats``. Sigmoid masks, as in the paper.
    """
    backbone = ConvTasNetBackbone(num_filters, kernel_size, bottleneck_dim, hidden_dim, skip_dim,
                                  conv_kernel_size, num_layers, num_repeats)
    head = MaskHead(num_sources, backbone.feature_dim, num_filters, kernel_size,
                    backbone.hop_samples, mask="sigmoid")
    return Separator(backbone, head)
