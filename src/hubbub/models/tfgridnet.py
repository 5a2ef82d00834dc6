"""TF-GridNet (Wang, Cornell, Choi, Lee, Kim & Watanabe, "TF-GridNet: Integrating full- and
sub-band modeling for speech separation", IEEE/ACM TASLP 2023).

Complex spectral mapping: the mixture's STFT (real and imaginary parts as two channels) is
embedded to D channels per T-F unit by a 3x3 conv, refined by B blocks, and a 3x3 transposed conv
predicts each source's real and imaginary parts, which an iSTFT turns into waveforms. Each block
has three residual modules:

* intra-frame full-band: within each frame, a BLSTM runs across frequency over unfolded groups of
  I neighbouring bins (stride J), and a transposed conv folds its outputs back to D per bin;
* sub-band temporal: the same across frames, independently for each frequency;
* cross-frame self-attention: L heads attend across frames, each frame's query/key being the E x F
  (value: D/L x F) matrix of all its frequencies, layer-normalised over channels and frequency.

The mixture is normalised to unit variance first and the estimates scaled back, as in the paper.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from hubbub.models.base import Backbone, Features, Separator, as_mono_batch
from hubbub.models.encoders import STFT


class _UnfoldedBLSTM(nn.Module):
    """Residual BLSTM along the last axis of (B, D, T, F) over groups of ``kernel`` positions."""

    def __init__(self, dim: int, hidden: int, kernel: int, stride: int):
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.norm = nn.LayerNorm(dim)
        self.rnn = nn.LSTM(dim * kernel, hidden, batch_first=True, bidirectional=True)
        self.fold = nn.ConvTranspose1d(2 * hidden, dim, kernel, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, t, n = x.shape
        # Pad the axis so the unfolded groups cover it exactly (at least one whole group).
        steps = math.ceil(max(n - self.kernel, 0) / self.stride)
        padded = steps * self.stride + self.kernel
        seq = self.norm(x.permute(0, 2, 3, 1)).reshape(b * t, n, d)
        seq = F.pad(seq, (0, 0, 0, padded - n))
        groups = seq.unfold(1, self.kernel, self.stride).reshape(b * t, steps + 1, d * self.kernel)
        out = self.fold(self.rnn(groups)[0].transpose(1, 2))[..., :n]   # (B*T, D, N)
        return x + out.reshape(b, t, d, n).permute(0, 2, 1, 3)


class _FrameNorm(nn.Module):
    """Layer norm of each frame over (channels, frequency), per group of channels (the paper's
    cfLN); its affine parameters are per channel and frequency, so it is tied to the STFT size."""

    def __init__(self, groups: int, channels: int, num_freqs: int, eps: float = 1e-5):
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(groups, channels, 1, num_freqs))
        self.bias = nn.Parameter(torch.zeros(groups, channels, 1, num_freqs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, groups * channels, T, F)."""
        x = x.unflatten(1, (self.groups, -1))
        mean = x.mean(dim=(2, 4), keepdim=True)
        var = x.var(dim=(2, 4), keepdim=True, unbiased=False)
        return ((x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias).flatten(1, 2)


class _FrameAttention(nn.Module):
    """Residual multi-head self-attention across frames of (B, D, T, F)."""

    def __init__(self, dim: int, num_heads: int, qk_dim: int, num_freqs: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        v_dim = dim // num_heads

        def projection(out_per_head: int) -> nn.Sequential:
            channels = num_heads * out_per_head
            return nn.Sequential(nn.Conv2d(dim, channels, 1), nn.PReLU(channels),
                                 _FrameNorm(num_heads, out_per_head, num_freqs))

        self.query = projection(qk_dim)
        self.key = projection(qk_dim)
        self.value = projection(v_dim)
        self.out = nn.Sequential(nn.Conv2d(dim, dim, 1), nn.PReLU(dim), _FrameNorm(1, dim, num_freqs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, d, t, n = x.shape

        def per_head(proj: nn.Module) -> torch.Tensor:   # -> (B, heads, T, channels * F)
            return proj(x).unflatten(1, (self.num_heads, -1)).transpose(2, 3).flatten(3)

        att = F.scaled_dot_product_attention(per_head(self.query), per_head(self.key), per_head(self.value))
        att = att.unflatten(3, (d // self.num_heads, n)).transpose(2, 3).reshape(b, d, t, n)
        return x + self.out(att)


class _GridBlock(nn.Module):
    def __init__(self, dim: int, hidden: int, kernel: int, stride: int, num_heads: int, qk_dim: int,
                 num_freqs: int):
        super().__init__()
        self.intra = _UnfoldedBLSTM(dim, hidden, kernel, stride)
        self.inter = _UnfoldedBLSTM(dim, hidden, kernel, stride)
        self.attention = _FrameAttention(dim, num_heads, qk_dim, num_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.intra(x)                                      # across frequency, per frame
        x = self.inter(x.transpose(2, 3)).transpose(2, 3)      # across time, per frequency
        return self.attention(x)


class TFGridNetBackbone(Backbone):
    """STFT + 3x3 conv embedding + grid blocks.

    ``grid`` is the final embedding (B, D, L, F) with ``L = T // hop_length + 1`` STFT frames and
    ``F = n_fft // 2 + 1``; ``frames`` is its mean over frequency, (B, D, L); ``scale`` is the
    mixture's standard deviation (B, 1).
    """

    def __init__(self, n_fft: int, hop_length: int, embed_dim: int, num_blocks: int, unfold_kernel: int,
                 unfold_stride: int, lstm_hidden: int, num_heads: int, qk_dim: int):
        super().__init__()
        self.feature_dim = embed_dim
        self.hop_samples = hop_length
        self.stft = STFT(n_fft, hop_length)
        num_freqs = n_fft // 2 + 1
        self.embed = nn.Sequential(nn.Conv2d(2, embed_dim, 3, padding=1), nn.GroupNorm(1, embed_dim))
        self.blocks = nn.Sequential(*(
            _GridBlock(embed_dim, lstm_hidden, unfold_kernel, unfold_stride, num_heads, qk_dim, num_freqs)
            for _ in range(num_blocks)))

    def forward(self, mix: torch.Tensor) -> Features:
        mix = as_mono_batch(mix)
        # Population std (correction=0) is defined for T == 1 too.
        scale = mix.std(dim=-1, keepdim=True, correction=0) + 1e-8
        spec = self.stft(mix / scale)                                     # (B, F, L) complex
        x = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)    # (B, 2, L, F)
        grid = self.blocks(self.embed(x))
        return Features(frames=grid.mean(dim=-1), num_samples=mix.shape[-1], grid=grid, scale=scale)


class SpectralMappingHead(nn.Module):
    """TF-GridNet's head: ``grid`` (B, D, L, F) -> 3x3 transposed conv to each source's real and
    imaginary parts -> iSTFT -> times ``scale`` -> (B, S, T)."""

    def __init__(self, num_sources: int, embed_dim: int, n_fft: int, hop_length: int):
        super().__init__()
        self.num_sources = num_sources
        self.deconv = nn.ConvTranspose2d(embed_dim, 2 * num_sources, 3, padding=1)
        self.stft = STFT(n_fft, hop_length)

    def forward(self, features: Features) -> torch.Tensor:
        ri = self.deconv(features.grid).unflatten(1, (self.num_sources, 2))   # (B, S, 2, L, F)
        spec = torch.complex(ri[:, :, 0], ri[:, :, 1]).transpose(2, 3)      # (B, S, F, L)
        return self.stft.inverse(spec, features.num_samples) * features.scale.unsqueeze(1)


def tfgridnet(num_sources: int = 2, n_fft: int = 256, hop_length: int = 64, embed_dim: int = 128,
              num_blocks: int = 4, unfold_kernel: int = 4, unfold_stride: int = 1, lstm_hidden: int = 256,
              num_heads: int = 4, qk_dim: int = 4) -> Separator:
    """TF-GridNet; the defaults are the paper's WSJ0-2mix configuration at 8 kHz (32 ms window,
    8 ms hop; about 15 M params against the reported 14.4 M).

    Paper symbols: D=``embed_dim``, B=``num_blocks``, I=``unfold_kernel``, J=``unfold_stride``,
    H=``lstm_hidden`` (per direction), L=``num_heads``, E=``qk_dim`` (per frequency bin, so a
    query has E x F entries).
    """
    backbone = TFGridNetBackbone(n_fft, hop_length, embed_dim, num_blocks, unfold_kernel, unfold_stride,
                                 lstm_hidden, num_heads, qk_dim)
    head = SpectralMappingHead(num_sources, embed_dim, n_fft, hop_length)
    return Separator(backbone, head)
