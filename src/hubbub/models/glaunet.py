"""An efficient U-Net separator with global-local attention ("GLA"), in the style of TDANet
(Li, Chen, Yang & Hu, "An efficient encoder-decoder architecture with top-down attention for
speech separation", ICLR 2023) and Dolphin's GLA blocks.

Time-domain masking like Conv-TasNet, but the separator is a stack of multi-scale U-Net blocks.
Inside a block (hidden width H):

1. bottom-up: a depthwise conv, then ``num_levels - 1`` stride-2 depthwise convs give levels of
   L, L/2, L/4, ... frames;
2. global: every level is average-pooled to the coarsest length and summed, and one transformer
   layer (multi-head self-attention + a depthwise-conv feed-forward) runs over that short
   sequence; this is the only place attention's quadratic cost is paid, on L / 2^(levels-1) frames;
3. local + top-down: each level is refined by a depthwise conv and modulated by the global context
   (``local(x) * sigmoid(gate(g)) + value(g)``, g resized to the level); then, coarsest first, each
   level is fused the same way with the level below it, ending at full resolution.

Blocks are residual, and the stack can be unrolled with shared weights (``num_repeats``), which is
how TDANet gets depth from few parameters.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from hubbub.models.base import Backbone, Features, Separator, as_mono_batch
from hubbub.models.encoders import ConvEncoder
from hubbub.models.heads import MaskHead


def _depthwise(channels: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """Depthwise conv + global layer norm; stride 2 gives ceil(L / 2) frames."""
    return nn.Sequential(nn.Conv1d(channels, channels, kernel, stride=stride, padding=kernel // 2,
                                   groups=channels),
                         nn.GroupNorm(1, channels))


class _GlobalAttention(nn.Module):
    """Pre-norm transformer layer over (B, C, L). No positional encoding: the depthwise conv in
    the feed-forward gives the layer relative position."""

    def __init__(self, dim: int, num_heads: int, kernel: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Conv1d(dim, 2 * dim, 1),
            nn.Conv1d(2 * dim, 2 * dim, kernel, padding=kernel // 2, groups=2 * dim),
            nn.GELU(),
            nn.Conv1d(2 * dim, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.transpose(1, 2)                                           # (B, L, C)
        q, k, v = self.qkv(self.attn_norm(seq)).unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        seq = seq + self.attn_out(att)
        seq = seq + self.ffn(self.ffn_norm(seq).transpose(1, 2)).transpose(1, 2)
        return seq.transpose(1, 2)


class _Modulate(nn.Module):
    """``local(x) * sigmoid(gate(c)) + value(c)``: a coarser context c gates and shifts a finer x.
    The context's convs run at its own (shorter) length, then are resized to x's length."""

    def __init__(self, dim: int, kernel: int):
        super().__init__()
        self.local = _depthwise(dim, kernel)
        self.gate = _depthwise(dim, kernel)
        self.value = _depthwise(dim, kernel)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        length = x.shape[-1]
        gate = F.interpolate(torch.sigmoid(self.gate(context)), size=length, mode="nearest")
        value = F.interpolate(self.value(context), size=length, mode="nearest")
        return self.local(x) * gate + value


class _GLABlock(nn.Module):
    def __init__(self, channels: int, hidden: int, num_levels: int, kernel: int, num_heads: int):
        super().__init__()
        self.proj_in = nn.Sequential(nn.Conv1d(channels, hidden, 1), nn.PReLU(), nn.GroupNorm(1, hidden))
        self.down = nn.ModuleList([_depthwise(hidden, kernel)]
                                  + [_depthwise(hidden, kernel, stride=2) for _ in range(num_levels - 1)])
        self.attention = _GlobalAttention(hidden, num_heads, kernel)
        self.inject = nn.ModuleList(_Modulate(hidden, kernel) for _ in range(num_levels))
        self.fuse = nn.ModuleList(_Modulate(hidden, kernel) for _ in range(num_levels - 1))
        self.proj_out = nn.Conv1d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        levels = [self.down[0](self.proj_in(x))]
        for down in self.down[1:]:
            levels.append(down(levels[-1]))
        coarse = levels[-1].shape[-1]
        context = self.attention(sum(F.adaptive_avg_pool1d(level, coarse) for level in levels))
        levels = [inject(level, context) for inject, level in zip(self.inject, levels)]
        y = levels[-1]
        for fuse, level in zip(reversed(self.fuse), reversed(levels[:-1])):
            y = fuse(level, y)
        return x + self.proj_out(y)


class GLAUNetBackbone(Backbone):
    """Encoder + GLA U-Net blocks. ``frames`` is the last block's output (B, C, L) at the encoder
    frame rate, ``L = T // hop + 1`` with hop ``kernel_size // 2``; ``encoded`` is the encoder
    output (B, N, L)."""

    def __init__(self, num_filters: int, kernel_size: int, bottleneck_dim: int, hidden_dim: int,
                 num_levels: int, level_kernel_size: int, num_heads: int, num_blocks: int, num_repeats: int):
        super().__init__()
        if level_kernel_size % 2 == 0:
            raise ValueError(f"level_kernel_size must be odd to keep the length, got {level_kernel_size}")
        self.feature_dim = bottleneck_dim
        self.hop_samples = kernel_size // 2
        self.num_repeats = num_repeats
        self.encoder = ConvEncoder(num_filters, kernel_size, self.hop_samples)
        self.norm = nn.GroupNorm(1, num_filters)
        self.bottleneck = nn.Conv1d(num_filters, bottleneck_dim, 1)
        self.blocks = nn.ModuleList(
            _GLABlock(bottleneck_dim, hidden_dim, num_levels, level_kernel_size, num_heads)
            for _ in range(num_blocks))

    def forward(self, mix: torch.Tensor, fuse: Callable[[torch.Tensor], torch.Tensor] | None = None,
                fuse_at: int = 0) -> Features:
        """``fuse``, when given, maps the (B, C, L) features before block application ``fuse_at``
        (of ``num_blocks * num_repeats``): where the audio-visual extractor adds the video
        (:class:`hubbub.models.av.AVExtractor`), on this very code path."""
        mix = as_mono_batch(mix)
        encoded = self.encoder(mix)
        x = self.bottleneck(self.norm(encoded))
        for i, block in enumerate(block for _ in range(self.num_repeats) for block in self.blocks):
            if fuse is not None and i == fuse_at:
                x = fuse(x)
            x = block(x)
        return Features(frames=x, num_samples=mix.shape[-1], encoded=encoded)


def glaunet(num_sources: int = 2, num_filters: int = 512, kernel_size: int = 16, bottleneck_dim: int = 128,
            hidden_dim: int = 512, num_levels: int = 5, level_kernel_size: int = 5, num_heads: int = 8,
            num_blocks: int = 1, num_repeats: int = 16) -> Separator:
    """GLA U-Net; the defaults are a TDANet-sized configuration (one block unrolled 16 times).

    ``num_filters`` encoder filters of ``kernel_size`` samples (hop ``kernel_size // 2``), a
    ``bottleneck_dim`` feature width between blocks, ``hidden_dim`` inside them, ``num_levels``
    scales with depthwise kernels of ``level_kernel_size``, ``num_heads`` attention heads,
    ``num_blocks`` distinct blocks applied ``num_repeats`` times with shared weights. ReLU masks.
    """
    backbone = GLAUNetBackbone(num_filters, kernel_size, bottleneck_dim, hidden_dim, num_levels,
                               level_kernel_size, num_heads, num_blocks, num_repeats)
    head = MaskHead(num_sources, bottleneck_dim, num_filters, kernel_size, backbone.hop_samples, mask="relu")
    return Separator(backbone, head)
