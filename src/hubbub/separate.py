"""Separating recordings of any length in bounded memory: streamed, chunked, aligned, cross-faded.

A separator's activations grow with the input (a 2-minute file at 16 kHz needs gigabytes through
a full-size model; Asteroid #140, #676), so the model runs on overlapping chunks under
``torch.inference_mode`` and only one chunk's activations are alive at a time. A model may order
its outputs differently in every chunk (the permutation ambiguity PIT training leaves), so each
chunk's sources are reordered to best match the previous chunk on the samples they share before
the chunks are cross-faded together::

    chunk k      |--------------------------|
    chunk k+1                        |--------------------------|
                                     |<- overlap: align, fade ->|

:func:`separate_stream` is that loop over a mixture arriving in blocks: it holds one chunk of
input and one overlap of output, and yields each stretch of sources as soon as the cross-fade
with the next chunk has finished it. :func:`separate_waveform` runs it on an in-memory mixture
and returns the whole (S, T) array.

:func:`separate_file` streams an audio file through it end to end, so its memory does not grow
with the recording's length: the file is read ``READ_BLOCK_FRAMES`` at a time, downmixed, resampled
block by block to the model's rate (the same polyphase filter as :func:`hubbub.audio.load_audio`,
each block with enough neighbouring input that the result equals resampling the whole file), and
the sources are appended to one float WAV each under a temporary name, renamed when all are
complete. Any rate and channel count in, one float WAV per source out, at the model's rate::

    separate_file("runs/pit", "meeting.wav", "out")   # [out/meeting_s0.wav, out/meeting_s1.wav]

An audio-visual extractor (``hubbub finetune av``) takes the target speaker's mouth regions of
interest too, and returns that one speaker; chunks then start on video frames. The frames of the
whole recording are held in memory (88x88 bytes per 25 fps frame: 0.7 GB an hour)::

    separate_file("runs/av", "meeting.wav", "out", lips="speaker_a_mouth.npy")   # [out/meeting_s0.wav]
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from collections.abc import Generator, Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from hubbub.audio import AudioError, _open_source, probe, resample
from hubbub.models import Separator, load_model
from hubbub.rundir import fetch_run
from hubbub.sources.lips import LIPS_FRAME_TOLERANCE
from hubbub.video import FPS, crop_roi, fit_frames, load_roi, num_video_frames, samples_per_frame

RUN_CONFIG_NAME = "run.json"
RUN_MODEL_DIR = "model"
CARD_NAME = "data_card.json"  # written by hubbub.publish.save_pretrained; carries sample_rate_hz
READ_BLOCK_FRAMES = 1 << 16  # frames of the input file decoded at a time by separate_file


def _fade_in(length: int) -> np.ndarray:
    # sin² rises from ~0 to ~1 and (1 - sin²) = cos² is its mirror image, so a fade-out built as
    # 1 - fade-in sums with it to exactly 1 at every sample of the overlap.
    return np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length).astype(np.float32) ** 2


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


def _chunking(sample_rate_hz: int, chunk_s: float, overlap_s: float, video, fps: int) -> tuple[int, int, int]:
    """(chunk, overlap, samples per video frame) in samples, checked; whole frames for a video."""
    chunk = round(chunk_s * sample_rate_hz)
    overlap = round(overlap_s * sample_rate_hz)
    per_frame = 1
    if video is not None:
        per_frame = samples_per_frame(sample_rate_hz, fps)
        chunk, overlap = chunk // per_frame * per_frame, overlap // per_frame * per_frame
    if not 0 < overlap <= chunk // 2:
        raise ValueError(f"need 0 < overlap_s <= chunk_s / 2 (chunks are aligned on their overlap), "
                         f"got chunk_s={chunk_s}, overlap_s={overlap_s} at {sample_rate_hz} Hz")
    return chunk, overlap, per_frame


def separate_stream(model: nn.Module, blocks: Iterable[np.ndarray], *, sample_rate_hz: int, chunk_s: float = 8.0,
                    overlap_s: float = 2.0, device: str | torch.device | None = None, video=None,
                    fps: int = FPS) -> Generator[np.ndarray, None, None]:
    """Separate a mixture that arrives in blocks, yielding the sources as they are finished.

    The chunking, alignment and cross-fade of :func:`separate_waveform`, which this is the core
    of: the yielded pieces, concatenated, are exactly ``separate_waveform`` of the concatenated
    blocks, however the mixture is cut into blocks. Memory is one chunk of input, one chunk's
    activations and one overlap of output, whatever the mixture's length.

    Args:
        model, sample_rate_hz, chunk_s, overlap_s, device, video, fps: as for
            :func:`separate_waveform`; ``video`` covers the whole mixture.
        blocks: consecutive (n,) float32 pieces of the mono mixture, of any lengths (0 included).
            One sample past a chunk is read before the chunk runs, to know whether it is the last.

    Returns:
        an iterator of (S, n) float32 arrays: ``chunk - overlap`` samples per chunk, the last
        chunk whole. The model is in eval mode while the iterator runs and its mode is restored
        when it ends or is closed.

    Raises:
        ValueError: bad chunk/overlap here; a block that is not 1-D or a model output that is not
            (1, S, T_chunk) from the iterator.

    Example::

        with sf.SoundFile("meeting.wav") as f:   # mono, at the model's rate
            for sources in separate_stream(model, f.blocks(8000, dtype="float32"), sample_rate_hz=8000):
                ...                               # sources: (S, 6 * 8000) until the last
    """
    chunk, overlap, per_frame = _chunking(sample_rate_hz, chunk_s, overlap_s, video, fps)
    if video is not None:
        video = torch.as_tensor(video)
    device = _model_device(model) if device is None else torch.device(device)
    model.to(device)
    return _separate_chunks(model, iter(blocks), chunk, overlap, per_frame, device, video)


def _run_chunk(model: nn.Module, piece: np.ndarray, start: int, device: torch.device, video,
               per_frame: int) -> np.ndarray:
    # A copy in: a model may work on its input in place, and the piece's samples are read again
    # by the next chunk.
    x = torch.from_numpy(np.array(piece, dtype=np.float32))[None].to(device)
    with torch.inference_mode():
        if video is None:
            est = model(x)
        else:
            first = start // per_frame
            frames = video[first:first + math.ceil(len(piece) / per_frame)]
            est = model(x, frames[None].to(device)).estimates   # an Extraction; its aux losses unused
    if est.dim() != 3 or est.shape[0] != 1 or est.shape[-1] != len(piece):
        raise ValueError(f"model returned shape {tuple(est.shape)} for input (1, {len(piece)}); "
                         f"expected (1, S, {len(piece)})")
    # One chunk's estimates leave the device at a time: device memory stays O(chunk). A copy,
    # because the fades work in place and a model may return a view of its input.
    return est[0].float().cpu().numpy().copy()


def _separate_chunks(model: nn.Module, blocks: Iterator, chunk: int, overlap: int, per_frame: int,
                     device: torch.device, video) -> Generator[np.ndarray, None, None]:
    hop = chunk - overlap
    fade_in = _fade_in(overlap)
    pending = np.zeros(0, np.float32)  # the input from the current chunk's first sample on
    start = 0  # the current chunk's first sample in the mixture
    previous_tail = carried = None  # the previous chunk's raw (alignment) and faded (to add) overlap
    ended = False
    was_training = model.training
    model.eval()
    try:
        while True:
            # A chunk is the last one when it reaches the end of the mixture: one sample past it says.
            while not ended and len(pending) <= chunk:
                block = next(blocks, None)
                if block is None:
                    ended = True
                    continue
                block = np.asarray(block, dtype=np.float32)
                if block.ndim != 1:
                    raise ValueError(f"expected (n,) blocks of a mono mixture, got shape {block.shape}")
                # A block that starts a chunk is kept, not copied: a mixture given whole (by
                # separate_waveform) is never copied.
                pending = np.concatenate([pending, block]) if len(pending) else block
            if not len(pending):  # an empty mixture
                return
            last = len(pending) <= chunk
            est = _run_chunk(model, pending[:chunk], start, device, video, per_frame)
            if carried is not None:
                est = est[align_sources(previous_tail, est[:, :overlap])]
                est[:, :overlap] *= fade_in
            if not last:
                previous_tail = est[:, -overlap:].copy()  # before fading: alignment compares raw signals
                est[:, -overlap:] *= 1.0 - fade_in
            if carried is not None:
                est[:, :overlap] += carried
            if last:
                yield est
                return
            carried = est[:, hop:]
            yield est[:, :hop]
            pending = pending[hop:]
            start += hop
    finally:
        model.train(was_training)


def separate_waveform(model: nn.Module, mix, *, sample_rate_hz: int, chunk_s: float = 8.0,
                      overlap_s: float = 2.0, device: str | torch.device | None = None,
                      video=None, fps: int = FPS) -> np.ndarray:
    """Separate an in-memory mixture of any length, the model's memory bounded by a chunk.

    The mixture is cut into chunks of ``chunk_s`` seconds, ``chunk_s - overlap_s`` apart (the
    last one may be shorter); each chunk is separated on its own, its sources are reordered to
    match the previous chunk on their overlap (:func:`align_sources`), and the chunks are added
    with a sin²/cos² cross-fade over the overlap that sums to 1, so where consecutive chunks agree
    the result is exactly what one pass would give. Inputs up to ``chunk_s`` long run in one pass.
    This is :func:`separate_stream` on the mixture as one block.

    Args:
        model: a separator, ``(B, T) -> (B, S, T)`` (any ``nn.Module`` with that contract). It is
            run in eval mode and its train/eval mode is restored afterwards.
        mix: (T,) or (C, T) float tensor or array, ``T > 0``; of a (C, T) mixture only channel 0
            (the reference microphone) is separated, as the models are single-channel.
        sample_rate_hz: the rate of ``mix`` (which must be the model's rate); converts the
            chunk and overlap durations to samples.
        chunk_s: chunk length in seconds; the model's memory grows with it, not with T.
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
        ValueError: bad chunk/overlap, a mixture that is not (T,) or (C, T) or is empty, or a
            model whose output is not (1, S, T_chunk).

    Cost: about ``T / (chunk_s - overlap_s)`` model passes of ``chunk_s`` each; peak memory is
    one chunk's activations plus the (S, T) output (and a CPU copy of a mixture given on a GPU).
    For a file, :func:`separate_file` does not hold the output either.

    Example::

        est = separate_waveform(model, mix, sample_rate_hz=8000)    # mix (960000,): 2 min
        est.shape                                                   # (2, 960000)
    """
    mix = torch.as_tensor(mix, dtype=torch.float32)
    if mix.dim() == 2:
        mix = mix[0]
    if mix.dim() != 1:
        raise ValueError(f"expected a (T,) or (C, T) mixture, got shape {tuple(mix.shape)}")
    if not len(mix):
        raise ValueError("the mixture is empty")
    pieces = separate_stream(model, [mix.detach().cpu().numpy()], sample_rate_hz=sample_rate_hz,
                             chunk_s=chunk_s, overlap_s=overlap_s, device=device, video=video, fps=fps)
    out, filled = None, 0
    for piece in pieces:
        if out is None:
            out = np.empty((len(piece), len(mix)), dtype=np.float32)
        out[:, filled:filled + piece.shape[1]] = piece
        filled += piece.shape[1]
    assert filled == len(mix)
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
        FileNotFoundError: no such directory.
        ValueError: no rate is known, or ``sample_rate_hz`` contradicts the recorded one.
    """
    directory = fetch_run(run_or_model_dir)  # a run in an object store: run.json and model/ fetched
    if not directory.is_dir():
        raise FileNotFoundError(f"{run_or_model_dir}: no such run or model directory")
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


def load_lips(path: str | Path, num_samples: int, sample_rate_hz: int, fps: int = FPS) -> np.ndarray:
    """The target's mouth ROIs for an ``num_samples`` recording: (F, 88, 88) uint8, centre-cropped,
    ``F = ceil(num_samples * fps / sample_rate_hz)`` (a file a frame or two short or long, as
    video and audio tracks often are, is cut or its last frame repeated).

    ``path`` is anything :func:`hubbub.video.load_roi` reads: a ``.npy``/``.npz`` of (F, H, W)
    frames, or a folder of frame images, at ``fps``.

    Raises:
        ValueError: the frames cover a duration more than
            :data:`hubbub.sources.lips.LIPS_FRAME_TOLERANCE` frames off the audio's.
    """
    frames = load_roi(path)
    expected = num_video_frames(num_samples, sample_rate_hz, fps)
    if abs(len(frames) - expected) > LIPS_FRAME_TOLERANCE:
        raise ValueError(f"{path}: {len(frames)} frames at {fps} fps, but the recording needs {expected} "
                         f"({num_samples / sample_rate_hz:.2f} s): give the mouth ROIs of this recording")
    return np.ascontiguousarray(crop_roi(fit_frames(frames, expected), train=False))


def _mono_blocks(path: str | Path, block_frames: int) -> Iterator[np.ndarray]:
    """The file downmixed to mono float32, ``block_frames`` frames at a time, at its own rate, with
    :func:`hubbub.audio.load_audio`'s checks; the ``empty`` and ``silent`` verdicts come after the
    last block, as only then are they known."""
    try:
        sound = sf.SoundFile(_open_source(path))
    except OSError:
        raise
    except Exception as exc:  # libsndfile raises several types for non-audio input
        raise AudioError(path, "unreadable", str(exc).splitlines()[0][:200]) from None
    total, heard = 0, False
    with sound:
        while True:
            try:
                x = sound.read(block_frames, dtype="float32", always_2d=True)
            except OSError:
                raise
            except Exception as exc:
                raise AudioError(path, "unreadable", str(exc).splitlines()[0][:200]) from None
            if not len(x):
                break
            if not np.all(np.isfinite(x)):
                raise AudioError(path, "non-finite", "NaN or inf samples")
            x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
            heard = heard or bool(np.any(x))
            total += len(x)
            yield np.ascontiguousarray(x)
    if not total:
        raise AudioError(path, "empty")
    if not heard:
        raise AudioError(path, "silent", "all samples are zero")


def _resampled_blocks(blocks: Iterable[np.ndarray], from_hz: int, to_hz: int) -> Iterator[np.ndarray]:
    """:func:`hubbub.audio.resample` of the concatenated ``blocks``, block by block.

    Output sample ``m`` is a weighted sum of the input within ``reach / up`` samples of
    ``m * down / up``; it is yielded once the input up to there has arrived. Each block is
    resampled together with the input that the not yet yielded outputs reach back to, starting on
    a multiple of ``down`` input samples so its outputs fall on the whole signal's output grid;
    the zero padding the resampler puts past a piece's ends then matters only for outputs not
    yet yielded, or at the signal's own ends, where the whole-signal resampling pads the same.
    """
    if from_hz == to_hz:
        yield from blocks
        return
    ratio = Fraction(to_hz, from_hz)
    up, down = ratio.numerator, ratio.denominator
    reach = 10 * max(up, down)  # scipy's resample_poly FIR half-length, in upsampled samples
    pending = np.zeros(0, np.float32)  # the input from sample `start` on
    start = 0  # a multiple of down: pending's outputs start on output start * up // down
    total = 0  # input samples so far
    done = 0  # output samples yielded so far
    for block in blocks:
        pending = np.concatenate([pending, block])
        total += len(block)
        ready = max(done, -((reach - total * up) // down))  # outputs m < ceil((total * up - reach) / down)
        if ready > done:
            first = start * up // down
            yield resample(pending, from_hz, to_hz)[done - first:ready - first]
            done = ready
            # Keep what output `done` reaches back to, from a multiple of down.
            keep_from = max(start, (done * down - reach) // up // down * down)
            pending = pending[keep_from - start:]
            start = keep_from
    if total:
        yield resample(pending, from_hz, to_hz)[done - start * up // down:]


def _check_paths(in_path: str | Path, out_dir: Path) -> None:
    """One line for an input that is not there or an output folder that cannot be one, before
    anything is loaded."""
    if "://" not in str(in_path) and not os.path.exists(in_path):
        raise FileNotFoundError(f"{in_path}: the input file does not exist")
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    if existing == out_dir and not existing.is_dir():
        raise ValueError(f"{out_dir}: is a file, not a folder for the outputs")
    if not existing.is_dir():
        raise ValueError(f"{out_dir}: cannot be the output folder, {existing} is a file")


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Errors writing ``path`` as OSErrors that name it, with the system's error number.

    libsndfile reports a failed write(2) (a full disk, a quota, a file-size limit) as its
    'System error' alone; cffi keeps the errno of the failed call, which says which one it was.
    """
    try:
        yield
    except sf.LibsndfileError as exc:
        code = getattr(getattr(sf, "_ffi", None), "errno", 0) if exc.code == 2 else 0  # 2: SFE_SYSTEM
        if not code:
            raise
        raise OSError(code, os.strerror(code), str(path)) from exc
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def _write_sources(sources: Generator[np.ndarray, None, None], out_dir: Path, stem: str,
                   sample_rate_hz: int) -> list[Path]:
    """Append the (S, n) pieces of ``sources`` to ``{out_dir}/{stem}_s{k}.wav``, one float WAV per
    source, each under a unique temporary name renamed once all are complete; on any error
    (a full disk, bad input found late) the temporaries are removed and the error raised, so
    files of an earlier run stay as they were."""
    paths: list[Path] = []
    temporaries: list[Path] = []
    files: list[sf.SoundFile] = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for piece in sources:
            if not files:
                paths = [out_dir / f"{stem}_s{k}.wav" for k in range(len(piece))]
                for path in paths:
                    temporaries.append(path.with_name(f"{path.name}.{uuid.uuid4().hex[:12]}.tmp"))
                    with _writing(path):
                        files.append(sf.SoundFile(temporaries[-1], "w", sample_rate_hz, 1, format="WAV",
                                                  subtype="FLOAT"))
            for path, file, source in zip(paths, files, piece):
                with _writing(path):
                    file.write(source)
        for path, file in zip(paths, files):
            with _writing(path):
                file.close()  # writes the header's sizes
        for temporary, path in zip(temporaries, paths):
            os.replace(temporary, path)
    except BaseException:
        for file in files:
            with contextlib.suppress(Exception):
                file.close()
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
        raise
    finally:
        sources.close()  # stopped early (a failed write), it restores the model's mode now
    return paths


def separate_file(run_or_model_dir: str | Path, in_path: str | Path, out_dir: str | Path, *,
                  chunk_s: float = 8.0, overlap_s: float = 2.0, sample_rate_hz: int | None = None,
                  device: str | torch.device | None = None, lips: str | Path | None = None) -> list[Path]:
    """Separate an audio file into one float WAV per source, ``{out_dir}/{stem}_s{k}.wav``, streamed.

    The file (any format libsndfile reads, any rate, any channel count) is downmixed to mono and
    resampled to the model's rate; the outputs are at the model's rate, as long as the resampled
    input, unnormalised (32-bit float, so peaks above 1 are kept rather than clipped). They equal
    :func:`separate_waveform` on :func:`hubbub.audio.load_audio`'s whole-file mixture, but
    neither the mixture nor the outputs are ever whole in memory: the file is read, separated and
    written a block at a time (see the module's description). Each output is written under a
    unique temporary name in ``out_dir`` and renamed when all are complete; on any error the
    temporaries are removed and earlier files of the same names are left as they were.

    Args:
        run_or_model_dir: a run or model directory (see :func:`load_separator`).
        in_path: the recording: a local path or an fsspec URL (a URL's bytes are fetched whole).
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
        FileNotFoundError: no such input file, or no such run or model directory.
        ValueError: ``out_dir`` (or a folder above it) is a file; lips missing, refused or not
            matching the recording; bad chunk/overlap.
        hubbub.audio.AudioError: unreadable, empty, non-finite or silent input; non-finite
            samples are found when their block is read and silence at the end, so both can come
            after the model has run (nothing is left written).
        OSError: writing failed, with ``errno.ENOSPC`` for a full disk, naming the output.

    Example::

        separate_file("runs/pit", "meeting.flac", "out")   # [out/meeting_s0.wav, out/meeting_s1.wav]
    """
    out_dir = Path(out_dir)
    _check_paths(in_path, out_dir)
    model, rate = load_separator(run_or_model_dir, sample_rate_hz)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    file_rate, frames, _ = probe(in_path)
    if frames == 0:
        raise AudioError(in_path, "empty")
    audio_visual = "video" in model.inputs
    if audio_visual != (lips is not None):
        raise ValueError(f"{run_or_model_dir} is an audio-visual extractor: pass the target's mouth ROIs (--lips)"
                         if audio_visual else f"{run_or_model_dir} is an audio-only separator: it takes no lips")
    # The resampled length, as resample_poly gives it: ceil(frames * rate / file_rate).
    video = load_lips(lips, -(-frames * rate // file_rate), rate) if audio_visual else None
    mix = _resampled_blocks(_mono_blocks(in_path, READ_BLOCK_FRAMES), file_rate, rate)
    sources = separate_stream(model, mix, sample_rate_hz=rate, chunk_s=chunk_s, overlap_s=overlap_s,
                              device=device, video=video)
    return _write_sources(sources, out_dir, Path(in_path).stem, rate)
