"""EnCodec tokens: a thin wrapper around ``transformers.EncodecModel`` for the codec-token stage.

A :class:`Codec` turns waveforms at any rate into residual-vector-quantised codes::

    codec = load_codec("facebook/encodec_24khz")          # or a local directory; 6 kbps -> Q = 8
    codes = codec.encode(wave, sample_rate_hz=16000)      # (B, T) float -> (B, Q, L) int64
    assert codes.shape[-1] == codec.num_frames(wave.shape[-1], 16000)

Alignment. The input is resampled to the codec's rate ``sample_rate_hz`` (polyphase, so ``T``
samples become ``ceil(T * codec_rate / rate)``) and the encoder's causal convolutions stride by
``hop = prod(upsampling_ratios)`` (320 at 24 kHz: 75 frames/s). Frame ``l`` covers codec-rate
samples ``[l * hop, (l + 1) * hop)``, i.e. seconds ``[l / frame_rate_hz, (l + 1) / frame_rate_hz)``;
the last frame of a length that is no multiple of ``hop`` is padded (by reflection), so
``L = ceil(T * frame_rate_hz / rate)``. The encoder being causal, ``[l * hop, (l + 1) * hop)``
are the newest samples frame ``l`` sees; it also sees the receptive field of its convolutions
before them, and through the LSTM all of the past, so tokens of a crop encoded alone are close
to, not equal to, the crop's span of the whole sample's tokens. :func:`token_span` maps a crop
of the audio to its span of frames.

Only mono models without chunking (``facebook/encodec_24khz``) are supported; the 48 kHz model
is stereo and encodes in overlapping 1 s chunks, which have no single frame grid.
"""
from __future__ import annotations

import hashlib
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from hubbub.audio import resample

DEFAULT_BANDWIDTH_KBPS = 6.0
# Config fields that decide the tokens (not transformers_version or other bookkeeping, which
# would change the hash when the library is upgraded).
_IDENTITY_FIELDS = ("sampling_rate", "audio_channels", "normalize", "chunk_length_s", "overlap",
                    "hidden_size", "num_filters", "num_residual_layers", "upsampling_ratios", "norm_type",
                    "kernel_size", "last_kernel_size", "residual_kernel_size", "dilation_growth_rate",
                    "use_causal_conv", "pad_mode", "compress", "num_lstm_layers", "trim_right_ratio",
                    "codebook_size", "codebook_dim", "use_conv_shortcut", "target_bandwidths")


def _exact_rate(frame_rate_hz: float | Fraction) -> Fraction:
    # Frame rates are codec_rate / hop with small integers (75 = 24000 / 320); recovering the
    # fraction keeps ceil() exact where a float product would land a hair above an integer.
    if isinstance(frame_rate_hz, Fraction):
        return frame_rate_hz
    return Fraction(frame_rate_hz).limit_denominator(10**6)


def frame_count(num_samples: int, sample_rate_hz: int, frame_rate_hz: float | Fraction) -> int:
    """Token frames of ``num_samples`` samples at ``sample_rate_hz``: ``ceil(T * frame_rate / rate)``."""
    return math.ceil(num_samples * _exact_rate(frame_rate_hz) / sample_rate_hz)


def token_span(start_sample: int, num_samples: int, sample_rate_hz: int, frame_rate_hz: float,
               total_frames: int | None = None) -> tuple[int, int]:
    """The frames ``(first, count)`` of a sample's tokens that cover a crop of its audio.

    The crop is samples ``[start_sample, start_sample + num_samples)`` at ``sample_rate_hz``.
    ``first`` is the frame whose start is nearest the crop's start, ``round(start * frame_rate /
    rate)`` with halves rounded up, so the tokens are at most half a frame off the audio;
    ``count`` is ``frame_count(num_samples, ...)``, what encoding the crop alone gives, so crops of
    equal length give equal counts. Crops whose start and length are whole frames (e.g. 640
    samples at 16 kHz for a 75 Hz codec) tile the frames exactly, consecutive crops giving
    consecutive spans. With ``total_frames`` (the sample's token count) the span is clamped to
    the tokens that exist, so a crop running past the end gets fewer frames and the caller pads
    (as the reader pads the audio).

    Example: with tokens ``codes`` (Q, L) of a sample and a reader item cropped to ``n`` samples,
    ``first, count = token_span(item["start_sample"], n, sr, 75.0, codes.shape[-1])`` and
    ``codes[:, first:first + count]`` are the crop's tokens.
    """
    if start_sample < 0 or num_samples < 0:
        raise ValueError(f"start_sample {start_sample} and num_samples {num_samples} must be >= 0")
    rate = _exact_rate(frame_rate_hz)
    first = math.floor(start_sample * rate / sample_rate_hz + Fraction(1, 2))
    count = frame_count(num_samples, sample_rate_hz, rate)
    if total_frames is not None:
        first = min(first, total_frames)
        count = min(count, total_frames - first)
    return first, count


def _model_hash(model) -> str:
    """sha256 of the token-relevant config and every tensor of the state dict (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    config = {f: getattr(model.config, f, None) for f in _IDENTITY_FIELDS}
    h.update(json.dumps(config, sort_keys=True, default=list).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class Codec:
    """A loaded EnCodec model at one bandwidth (use :func:`load_codec`).

    Attributes: ``name`` (the path or hub id it was loaded from), ``sample_rate_hz`` (the codec's
    rate), ``frame_rate_hz`` (token frames per second, ``sample_rate_hz / hop_length``),
    ``hop_length`` (codec-rate samples per frame), ``codebook_size``, ``num_codebooks`` (Q at
    ``bandwidth_kbps``), ``model`` (the ``EncodecModel``).
    """

    def __init__(self, model, name: str, bandwidth_kbps: float, model_sha256: str):
        config = model.config
        self.model = model
        self.name = name
        self.bandwidth_kbps = float(bandwidth_kbps)
        self.sample_rate_hz = int(config.sampling_rate)
        self.hop_length = int(np.prod(config.upsampling_ratios))
        self._frame_rate = Fraction(self.sample_rate_hz, self.hop_length)
        self.frame_rate_hz = float(self._frame_rate)
        self.codebook_size = int(config.codebook_size)
        self.num_codebooks = int(model.quantizer.get_num_quantizers_for_bandwidth(self.bandwidth_kbps))
        self.model_sha256 = model_sha256

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def info(self) -> dict:
        """The codec's identity, JSON-able: what a corpus records next to tokens it caches.

        Two codecs give the same tokens when their infos agree on everything but ``name``.
        """
        return {"name": self.name, "model_sha256": self.model_sha256, "bandwidth_kbps": self.bandwidth_kbps,
                "sample_rate_hz": self.sample_rate_hz, "frame_rate_hz": self.frame_rate_hz,
                "hop_length": self.hop_length, "num_codebooks": self.num_codebooks,
                "codebook_size": self.codebook_size}

    def num_frames(self, num_samples: int, sample_rate_hz: int) -> int:
        """Frames ``L`` that :meth:`encode` gives for ``num_samples`` samples at ``sample_rate_hz``."""
        return frame_count(num_samples, sample_rate_hz, self._frame_rate)

    def to(self, device) -> "Codec":
        self.model.to(device)
        return self

    def encode(self, wave: torch.Tensor, sample_rate_hz: int) -> torch.Tensor:
        """Codes of a batch of mono waveforms.

        Args:
            wave: (B, T) float waveforms at ``sample_rate_hz``, all of length T (pad or group by
                length: zero padding changes the last frames' codes, as the encoder is causal
                but pads the end by reflection).
            sample_rate_hz: their rate; other than the codec's, they are resampled on the CPU
                (``scipy.signal.resample_poly``; a device round trip for CUDA input).

        Returns (B, Q, L) int64 codes in ``[0, codebook_size)`` on ``wave``'s device, with
        ``L == num_frames(T, sample_rate_hz)``. Runs under ``torch.no_grad`` (the codes may serve as targets in autograd).
        """
        if wave.ndim != 2:
            raise ValueError(f"wave must be (B, T), got shape {tuple(wave.shape)}")
        if wave.shape[-1] == 0:
            raise ValueError("cannot encode empty waveforms")
        num_samples = wave.shape[-1]
        with torch.no_grad():
            x = wave.detach()
            if sample_rate_hz != self.sample_rate_hz:
                x = torch.from_numpy(resample(x.to("cpu", torch.float32).numpy(), sample_rate_hz,
                                              self.sample_rate_hz))
            x = x.to(self.device, torch.float32)[:, None, :]
            # audio_codes is (chunks, B, Q, L); an unchunked model has one chunk.
            codes = self.model.encode(x, bandwidth=self.bandwidth_kbps, return_dict=True).audio_codes[0]
        expected = self.num_frames(num_samples, sample_rate_hz)
        if codes.shape[-1] != expected:  # the alignment documented above no longer holds
            raise RuntimeError(f"EnCodec gave {codes.shape[-1]} frames for {num_samples} samples at "
                               f"{sample_rate_hz} Hz, expected {expected}")
        return codes.to(wave.device, torch.int64)


def _looks_local(name: str) -> bool:
    # A hub id is "org/name" (or a bare "name"); anything else that does not exist is a missing
    # local directory, which should say so rather than ask the hub.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_codec(name_or_path: str | Path, *, bandwidth_kbps: float | None = None, device="cpu") -> Codec:
    """Load an EnCodec model from a local directory or a hub id (weights from safetensors only).

    Args:
        name_or_path: a directory written by ``save_pretrained`` (see :func:`hubbub.testing.make_random_codec`)
            or a hub id such as ``facebook/encodec_24khz`` (needs the network or the HF cache).
        bandwidth_kbps: one of the model's ``target_bandwidths``; default 6.0 where the model
            has it (8 codebooks for the 24 kHz model), else its smallest.
        device: where the model runs.

    Raises FileNotFoundError for a path that does not exist (and a hub id the hub cannot give),
    ValueError for an unsupported bandwidth or model layout (stereo or chunked models).
    """
    from transformers import EncodecModel

    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        source = str(path)
    elif path.exists() or _looks_local(name):
        raise FileNotFoundError(f"{name}: no such codec directory (expected a save_pretrained directory "
                                f"with config.json and model.safetensors)")
    else:
        source = name
    try:
        model = EncodecModel.from_pretrained(source, use_safetensors=True, dtype=torch.float32)
    except OSError as e:
        if path.is_dir():
            raise
        raise FileNotFoundError(f"{name}: not a local directory, and the Hugging Face hub could not "
                                f"provide it: {e}") from e
    config = model.config
    if config.audio_channels != 1 or config.chunk_length_s is not None:
        raise ValueError(f"{name}: only mono EnCodec models without chunking are supported "
                         f"(audio_channels={config.audio_channels}, chunk_length_s={config.chunk_length_s}); "
                         f"use facebook/encodec_24khz")
    options = [float(b) for b in config.target_bandwidths]
    if bandwidth_kbps is None:
        bandwidth_kbps = DEFAULT_BANDWIDTH_KBPS if DEFAULT_BANDWIDTH_KBPS in options else min(options)
    match = [b for b in options if math.isclose(b, float(bandwidth_kbps), rel_tol=1e-9)]
    if not match:
        raise ValueError(f"{name} has no bandwidth {bandwidth_kbps} kbps; it supports {options} kbps")
    if config.codebook_size > 2**15:
        raise ValueError(f"{name}: codebook_size {config.codebook_size} does not fit the int16 token cache")
    model.eval()
    # Hash on the CPU before moving: the identity must not depend on the device.
    codec = Codec(model, name, match[0], _model_hash(model))
    return codec.to(device)
