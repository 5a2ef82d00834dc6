"""Separating recordings of any length: overlapping chunks, aligned and cross-faded.

A separator's activations grow with the input (a 2-minute file at 16 kHz needs gigabytes through
a full-size model; Asteroid #140, #676). :func:`separate_waveform` therefore runs the model on
overlapping chunks under ``torch.inference_mode`` and keeps only one chunk's activations alive.
A model may order its outputs differently in every chunk (the permutation ambiguity PIT training
leaves), so each chunk's sources are reordered to best match the previous chunk on the samples
they share before the chunks are cross-faded together::

    chunk k      |--------------------------|
    chunk k+1                        |--------------------------|
                                     |<- overlap: align, fade ->|

:func:`separate_file` is the same for an audio file: any rate and channel count in, one float WAV
per source out, at the model's sample rate::

    separate_file("runs/pit", "meeting.wav", "out")   # [out/meeting_s0.wav, out/meeting_s1.wav]

An audio-visual extractor (``hubbub finetune av``) takes the target speaker's mouth regions of
interest too, and returns that one speaker; chunks then start on video frames::

    separate_file("runs/av", "meeting.wav", "out", lips="speaker_a_mouth.npy")   # [out/meeting_s0.wav]
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from hubbub.audio import load_audio
from hubbub.models import Separator, load_model

RUN_CONFIG_NAME = "run.json"
RUN_MODEL_DIR = "model"
CARD_NAME = "data_card.json"  # written by hubbub.publish.save_pretrained; carries sample_rate_hz


def _fade_in(length: int) -> np.ndarray:
    # sin² rises from ~0 to ~1 and (1 - sin²) = cos² is its mirror image, so a fade-out built as
    # 1 - fade-in sums with it to exactly 1 at every sample of the overlap.
    return np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length).astype(np.float32) ** 2


def _chunk_starts(num_samples: int, chunk: int, hop: int) -> list[int]:
    """Starts of chunks ``hop`` apart covering ``num_samples``; the last chunk may be shorter but
    still spans the whole overlap (``chunk - hop`` samples) with the one before it."""
    if num_samples <= chunk:
        return [0]
    overlap = chunk - hop
    return [k * hop for k in range(math.ceil((num_samples - overlap) / hop))]


def align_sources(previous: np.ndarray, current: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """The order of ``current``'s sources that best matches ``previous`` on the same samples.

    Args:
        previous: (S, L) the already-aligned sources of the previous chunk on the overlap.
        current: (S, L) the new chunk's sources on the same samples.
        eps: keeps a silent source's correlations finite (they are then 0 and any order will do).

    Returns:
        (S,) int permutation ``perm`` maximising the summed normalised correlation (cosine)
        between ``previous[i]`` and ``current[perm[i]]``; ``current[perm]`` is in
        ``previous``'s order. Cosine, not raw correlation: a quiet source must not lose its
        match to a loud one.
    """
    prev = previous / (np.linalg.norm(previous, axis=-1, keepdims=True) + eps)
    cur = current / (np.linalg.norm(current, axis=-1, keepdims=True) + eps)
    return linear_sum_assignment(prev @ cur.T, maximize=True)[1]


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def separate_waveform(model: nn.Module, mix, *, sample_rate_hz: int, chunk_s: float = 8.0,
                      overlap_s: float = 2.0, device: str | torch.device | None = None,
                      video=None, fps: int = 25) -> np.ndarray:
    """Separate a mixture of any length with bounded memory.

    The mixture is cut into chunks of ``chunk_s`` seconds, ``chunk_s - overlap_s`` apart (the
    last one may be shorter); each chunk is separated on its own, its sources are reordered to
    match the previous chunk on their overlap (:func:`align_sources`), and the chunks are added
    with a sin²/cos² cross-fade over the overlap that sums to 1, so where consecutive chunks agree
    the result is exactly what one pass would give. Inputs up to ``chunk_s`` long run in one pass.

    Args:
        model: a separator, ``(B, T) -> (B, S, T)`` (any ``nn.Module`` with that contract). It is
            run in eval mode and its train/eval mode is restored afterwards.
        mix: (T,) or (C, T) float tensor or array; of a (C, T) mixture only channel 0 (the
            reference microphone) is separated, as the models are single-channel.
        sample_rate_hz: the rate of ``mix`` (which must be the model's rate); converts the
            chunk and overlap durations to samples.
        chunk_s: chunk length in seconds; memory grows with it, not with T.
        overlap_s: overlap between consecutive chunks, ``0 < overlap_s <= chunk_s / 2``. Longer
            overlaps align chunks more reliably (more shared signal) at the cost of more passes.
        device: where to run the model (moved there); default: where its parameters are.
        video: for an audio-visual extractor, ``model(mix (1, T), video (1, F, H, W))``: the
            target's (F, H, W) mouth frames at ``fps``, frame ``j`` covering samples
            ``[j, j + 1) * sample_rate_hz / fps`` of ``mix`` (``F = ceil(T * fps / sample_rate_hz)``).
            Chunk and overlap are then rounded to whole frames and each chunk gets its frames.

    Returns:
        (S, T) float32 numpy array, the sources in the first chunk's order.

    Raises:
        ValueError: bad chunk/overlap, a mixture that is not (T,) or (C, T), or a model whose
            output is not (1, S, T_chunk).

    Cost: about ``T / (chunk_s - overlap_s)`` model passes of ``chunk_s`` each; peak memory is
    one chunk's activations plus the (S, T) output.

    Example::

        est = separate_waveform(model, mix, sample_rate_hz=8000)    # mix (960000,): 2 min
        est.shape                                                   # (2, 960000)
    """
    chunk = round(chunk_s * sample_rate_hz)
    overlap = round(overlap_s * sample_rate_hz)
    per_frame = 1
    if video is not None:
        from hubbub.shards.reader import samples_per_frame

        per_frame = samples_per_frame(sample_rate_hz, fps)
        chunk, overlap = chunk // per_frame * per_frame, overlap // per_frame * per_frame
        video = torch.as_tensor(video)
    if not 0 < overlap <= chunk // 2:
        raise ValueError(f"need 0 < overlap_s <= chunk_s / 2 (chunks are aligned on their overlap), "
                         f"got chunk_s={chunk_s}, overlap_s={overlap_s} at {sample_rate_hz} Hz")
    mix = torch.as_tensor(mix, dtype=torch.float32)
    if mix.dim() == 2:
        mix = mix[0]
    if mix.dim() != 1:
        raise ValueError(f"expected a (T,) or (C, T) mixture, got shape {tuple(mix.shape)}")
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    num_samples = mix.shape[-1]
    hop = chunk - overlap
    fade_in = _fade_in(overlap)

    was_training = model.training
    model.eval()
    try:
        out = previous_tail = None
        starts = _chunk_starts(num_samples, chunk, hop)
        for k, start in enumerate(starts):
            piece = mix[start:start + chunk]
            with torch.inference_mode():
                if video is None:
                    est = model(piece[None].to(device))
                else:
                    first = start // per_frame
                    frames = video[first:first + math.ceil(len(piece) / per_frame)]
                    est = model(piece[None].to(device), frames[None].to(device))
            if est.dim() != 3 or est.shape[0] != 1 or est.shape[-1] != len(piece):
                raise ValueError(f"model returned shape {tuple(est.shape)} for input (1, {len(piece)}); "
                                 f"expected (1, S, {len(piece)})")
            # One chunk's estimates leave the device at a time: device memory stays O(chunk). A
            # copy, because the fades below work in place and a model may return a view of its input.
            est = est[0].float().cpu().numpy().copy()
            if out is None:
                out = np.zeros((est.shape[0], num_samples), dtype=np.float32)
            if k > 0:
                est = est[align_sources(previous_tail, est[:, :overlap])]
                est[:, :overlap] *= fade_in
            if k < len(starts) - 1:
                previous_tail = est[:, -overlap:].copy()  # before fading: alignment compares raw signals
                est[:, -overlap:] *= 1.0 - fade_in
            out[:, start:start + len(piece)] += est
    finally:
        model.train(was_training)
    return out


def load_separator(run_or_model_dir: str | Path, sample_rate_hz: int | None = None) -> tuple[Separator, int]:
    """A model and its sample rate from a training run or a model directory.

    Args:
        run_or_model_dir: a run directory (``run.json`` + ``model/``, rate from ``run.json``), or
            a model directory (``config.json`` + ``model.safetensors``) whose rate comes from
            ``sample_rate_hz`` or, for a directory written by :func:`hubbub.publish.save_pretrained`,
            from its ``data_card.json``.
        sample_rate_hz: the model's rate; required for a bare model directory, and must agree
            with the rate a run or card records.

    Returns:
        (model on CPU in eval mode, sample_rate_hz).

    Raises:
        ValueError: no rate is known, or ``sample_rate_hz`` contradicts the recorded one.
    """
    directory = Path(run_or_model_dir)
    if (directory / RUN_CONFIG_NAME).exists():
        recorded = json.loads((directory / RUN_CONFIG_NAME).read_text()).get("sample_rate_hz")
        directory = directory / RUN_MODEL_DIR
    elif (directory / CARD_NAME).exists():
        recorded = json.loads((directory / CARD_NAME).read_text()).get("sample_rate_hz")
    else:
        recorded = None
    if recorded is not None and sample_rate_hz is not None and int(recorded) != sample_rate_hz:
        raise ValueError(f"{run_or_model_dir} is a {recorded} Hz model, not {sample_rate_hz} Hz")
    rate = sample_rate_hz if sample_rate_hz is not None else recorded
    if rate is None:
        raise ValueError(f"{run_or_model_dir} does not record its sample rate: pass sample_rate_hz")
    return load_model(directory).eval(), int(rate)


def load_lips(path: str | Path, num_samples: int, sample_rate_hz: int, fps: int = 25) -> np.ndarray:
    """The target's mouth ROIs for an ``num_samples`` recording: (F, 88, 88) uint8, centre-cropped,
    ``F = ceil(num_samples * fps / sample_rate_hz)`` (a file a frame or two short or long, as
    video and audio tracks often are, is cut or its last frame repeated).

    ``path`` is anything :func:`hubbub.video.load_roi` reads: a ``.npy``/``.npz`` of (F, H, W)
    frames, or a folder of frame images, at ``fps``.

    Raises:
        ValueError: the frames cover a duration more than
            :data:`hubbub.sources.lips.LIPS_FRAME_TOLERANCE` frames off the audio's.
    """
    from hubbub.sources.lips import LIPS_FRAME_TOLERANCE
    from hubbub.video import fit_frames, load_roi
    from hubbub.voices.lips import crop_roi, num_video_frames

    frames = load_roi(path)
    expected = num_video_frames(num_samples, sample_rate_hz, fps)
    if abs(len(frames) - expected) > LIPS_FRAME_TOLERANCE:
        raise ValueError(f"{path}: {len(frames)} frames at {fps} fps, but the recording needs {expected} "
                         f"({num_samples / sample_rate_hz:.2f} s): give the mouth ROIs of this recording")
    return np.ascontiguousarray(crop_roi(fit_frames(frames, expected), train=False))


def separate_file(run_or_model_dir: str | Path, in_path: str | Path, out_dir: str | Path, *,
                  chunk_s: float = 8.0, overlap_s: float = 2.0, sample_rate_hz: int | None = None,
                  device: str | torch.device | None = None, lips: str | Path | None = None) -> list[Path]:
    """Separate an audio file into one float WAV per source, ``{out_dir}/{stem}_s{k}.wav``.

    The file (any format libsndfile reads, any rate, any channel count) is downmixed to mono and
    resampled to the model's rate; the outputs are at the model's rate, as long as the resampled
    input, unnormalised (32-bit float, so peaks above 1 are kept rather than clipped). Each file
    is written under a temporary name and renamed.

    Args:
        run_or_model_dir: a run or model directory (see :func:`load_separator`).
        in_path: the recording.
        out_dir: created if needed.
        chunk_s, overlap_s: see :func:`separate_waveform`.
        sample_rate_hz: the model's rate, for a bare model directory (see :func:`load_separator`).
        device: default CUDA when available, else CPU.
        lips: for an audio-visual extractor (required there, refused elsewhere): the target
            speaker's mouth ROIs over the whole recording (see :func:`load_lips`); the one
            output is that speaker.

    Returns:
        the written paths, source k at index k.

    Raises:
        hubbub.audio.AudioError: unreadable, empty, non-finite or silent input.

    Example::

        separate_file("runs/pit", "meeting.flac", "out")   # [out/meeting_s0.wav, out/meeting_s1.wav]
    """
    model, rate = load_separator(run_or_model_dir, sample_rate_hz)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    mix = load_audio(in_path, rate)
    audio_visual = hasattr(model, "video")
    if audio_visual != (lips is not None):
        raise ValueError(f"{run_or_model_dir} is an audio-visual extractor: pass the target's mouth ROIs (--lips)"
                         if audio_visual else f"{run_or_model_dir} is an audio-only separator: it takes no lips")
    video = load_lips(lips, len(mix), rate) if audio_visual else None
    est = separate_waveform(model, mix, sample_rate_hz=rate, chunk_s=chunk_s, overlap_s=overlap_s, device=device,
                            video=video)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, source in enumerate(est):
        path = out_dir / f"{Path(in_path).stem}_s{k}.wav"
        tmp = path.with_name(path.name + ".tmp")
        sf.write(tmp, source, rate, format="WAV", subtype="FLOAT")
        os.replace(tmp, path)
        paths.append(path)
    return paths
