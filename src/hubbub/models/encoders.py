"""Front ends: a learned 1-D conv filterbank (Conv-TasNet style) and an STFT with its inverse.

Both handle any input length T and give ``L = T // hop + 1`` frames, frame ``l`` centred on
sample ``l * hop`` (for 50 % overlap): the conv encoder pads the ends and its decoder crops back to
T; the STFT pads by half a window each side (``center=True``) and its inverse is told T.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvEncoder(nn.Module):
    """Learned analysis filterbank: waveform (B, T) -> non-negative frames (B, N, L).

    ``N = num_filters`` basis functions of ``kernel_size`` samples, ``stride`` samples apart. The
    input is padded by ``kernel_size - stride`` samples in front and up to a whole stride at the
    end, so ``L = T // stride + 1`` and frame ``l`` spans samples
    ``[l * stride - (kernel_size - stride), (l + 1) * stride)``: with 50 % overlap it is centred on
    sample ``l * stride``, the same frame count and alignment as :class:`STFT` with that hop. The
    ReLU keeps the representation non-negative so that masks act as gains on it, as in TasNet.

    Example::

        enc = ConvEncoder(512, kernel_size=16, stride=8)
        enc(torch.randn(2, 8000)).shape             # (2, 512, 1001)
    """

    def __init__(self, num_filters: int, kernel_size: int, stride: int):
        super().__init__()
        if not 0 < stride <= kernel_size:
            raise ValueError(f"need 0 < stride <= kernel_size, got stride {stride}, kernel {kernel_size}")
        self.stride = stride
        self.lead = kernel_size - stride
        self.conv = nn.Conv1d(1, num_filters, kernel_size, stride=stride, bias=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        wav = F.pad(wav, (self.lead, self.stride - wav.shape[-1] % self.stride))
        return torch.relu(self.conv(wav.unsqueeze(1)))


class ConvDecoder(nn.Module):
    """Learned synthesis filterbank: frames (..., N, L) -> waveform (..., T).

    A transposed conv (overlap-add of N learned basis functions); the output is cropped to
    ``num_samples`` after the ``kernel_size - stride`` samples of front padding that
    :class:`ConvEncoder` added. Leading dimensions (e.g. sources) are kept.
    """

    def __init__(self, num_filters: int, kernel_size: int, stride: int):
        super().__init__()
        self.lead = kernel_size - stride
        self.deconv = nn.ConvTranspose1d(num_filters, 1, kernel_size, stride=stride, bias=False)

    def forward(self, frames: torch.Tensor, num_samples: int) -> torch.Tensor:
        lead = frames.shape[:-2]
        wav = self.deconv(frames.reshape(-1, *frames.shape[-2:]))
        return wav.reshape(*lead, -1)[..., self.lead:self.lead + num_samples]


class STFT(nn.Module):
    """STFT with a square-root Hann window, and its inverse (perfect reconstruction).

    ``forward``: waveform (..., T) -> complex spectrum (..., F, L) with ``F = n_fft // 2 + 1`` and
    ``L = T // hop_length + 1`` (frame ``l`` is centred on sample ``l * hop_length``).
    ``inverse``: complex (..., F, L) -> waveform (..., T). The ends are zero-padded rather than
    reflected, so any T works (reflection needs T > n_fft / 2). Has no parameters; the window is a
    non-persistent buffer, so it moves with ``.to(device)`` and stays out of checkpoints.

    Example::

        stft = STFT(256, 64)
        spec = stft(torch.randn(2, 8000))           # (2, 129, 126) complex
        wav = stft.inverse(spec, 8000)              # (2, 8000)
    """

    def __init__(self, n_fft: int, hop_length: int):
        super().__init__()
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.register_buffer("window", torch.hann_window(n_fft).sqrt(), persistent=False)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        lead = wav.shape[:-1]
        spec = torch.stft(wav.reshape(-1, wav.shape[-1]), self.n_fft, self.hop_length,
                          window=self.window, center=True, pad_mode="constant", return_complex=True)
        return spec.reshape(*lead, *spec.shape[-2:])

    def inverse(self, spec: torch.Tensor, num_samples: int) -> torch.Tensor:
        lead = spec.shape[:-2]
        wav = torch.istft(spec.reshape(-1, *spec.shape[-2:]), self.n_fft, self.hop_length,
                          window=self.window, center=True, length=num_samples)
        return wav.reshape(*lead, num_samples)
