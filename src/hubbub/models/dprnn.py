"""DPRNN (Luo, Chen & Yoshioka, "Dual-path RNN: efficient long sequence modeling for time-domain
single-channel speech separation", ICASSP 2020).

The encoder frames are cut into half-overlapping chunks of K frames; each block runs a BLSTM
inside every chunk (local) and then across chunks at each within-chunk position (global), so a
sequence of L frames costs RNN passes of length K and about 2L/K instead of one of length L.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hubbub.models.base import Backbone, Features, Separator, as_mono_batch
from hubbub.models.encoders import ConvEncoder
from hubbub.models.heads import MaskHead


class _PathRNN(nn.Module):
    """BLSTM over one axis of the chunked tensor, linear back to D, gLN, residual."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.rnn = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.proj = nn.Linear(2 * hidden, dim)
        self.norm = nn.GroupNorm(1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D, C, K): the RNN runs along the last axis, independently for each (B, C)."""
        b, d, c, k = x.shape
        seq = x.permute(0, 2, 3, 1).reshape(b * c, k, d)
        out = self.proj(self.rnn(seq)[0]).reshape(b, c, k, d).permute(0, 3, 1, 2)
        return x + self.norm(out)


class _DPRNNBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.intra = _PathRNN(dim, hidden)
        self.inter = _PathRNN(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, D, C chunks, K frames per chunk)."""
        x = self.intra(x)
        return self.inter(x.transpose(2, 3)).transpose(2, 3)


class DPRNNBackbone(Backbone):
    """Encoder + dual-path BLSTM blocks. ``frames`` (B, D, L) is the last block's output
    overlap-added back to a sequence, ``L = T // hop + 1`` with hop ``kernel_size // 2``;
    ``encoded`` is the encoder output (B, N, L)."""

    def __init__(self, num_filters: int, kernel_size: int, feature_dim: int, hidden_dim: int,
                 chunk_size: int, num_blocks: int):
        super().__init__()
        if chunk_size < 2 or chunk_size % 2:
            raise ValueError(f"chunk_size must be even (chunks overlap by half), got {chunk_size}")
        self.feature_dim = feature_dim
        self.hop_samples = max(1, kernel_size // 2)
        self.chunk_size = chunk_size
        self.encoder = ConvEncoder(num_filters, kernel_size, self.hop_samples)
        self.norm = nn.GroupNorm(1, num_filters)
        self.bottleneck = nn.Conv1d(num_filters, feature_dim, 1)
        self.blocks = nn.Sequential(*(_DPRNNBlock(feature_dim, hidden_dim) for _ in range(num_blocks)))

    def forward(self, mix: torch.Tensor) -> Features:
        mix = as_mono_batch(mix)
        encoded = self.encoder(mix)
        x = self.bottleneck(self.norm(encoded))
        length = x.shape[-1]
        hop = self.chunk_size // 2
        # Pad one hop in front and at least one at the back so every frame lies in two chunks.
        num_chunks = -(-length // hop) + 1
        padded = (num_chunks + 1) * hop
        x = F.pad(x, (hop, padded - hop - length))
        chunks = x.unfold(-1, self.chunk_size, hop)                   # (B, D, C, K)
        chunks = self.blocks(chunks)
        b, d, c, k = chunks.shape
        seq = F.fold(chunks.permute(0, 1, 3, 2).reshape(b, d * k, c), output_size=(1, padded),
                     kernel_size=(1, k), stride=(1, hop))             # overlap-add: (B, D, 1, padded)
        frames = seq[:, :, 0, hop:hop + length]
        return Features(frames=frames, num_samples=mix.shape[-1], encoded=encoded)


def dprnn(num_sources: int = 2, num_filters: int = 64, kernel_size: int = 2, feature_dim: int = 64,
          hidden_dim: int = 128, chunk_size: int = 250, num_blocks: int = 6) -> Separator:
    """DPRNN; the defaults are the paper's 2-sample-window configuration (about 2.6 M params).

    ``num_filters`` encoder filters of ``kernel_size`` samples (hop ``kernel_size // 2``), a
    ``feature_dim`` bottleneck, ``num_blocks`` dual-path blocks with BLSTMs of ``hidden_dim``
    units per direction, chunks of ``chunk_size`` frames (50 % overlap). ReLU masks.
    """
    backbone = DPRNNBackbone(num_filters, kernel_size, feature_dim, hidden_dim, chunk_size, num_blocks)
    head = MaskHead(num_sources, feature_dim, num_filters, kernel_size, backbone.hop_samples, mask="relu")
    return Separator(backbone, head)
