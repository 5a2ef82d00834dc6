"""Lip streams: their geometry (frame rate, frame sizes, frame counts, the models' crop) and
mouth regions of interest (ROI) read from files. Everything audio-visual takes these from here.

A lip stream is ``uint8`` of shape ``(frames, 96, 96)``: grayscale mouth crops at 25 fps
(:data:`FPS`, :data:`ROI_SIZE`), frame ``k`` covering ``[k / 25, (k + 1) / 25)`` s of its
utterance's audio, i.e. samples ``[k * sr / 25, (k + 1) * sr / 25)`` (640 at 16 kHz), so ``T``
samples have :func:`num_video_frames` ``= ceil(T * 25 / sr)`` frames and a crop of the audio at
sample ``s`` (a multiple of 640) starts at frame ``s // 640``. Models see 88x88 crops
(:data:`CROP_SIZE`, :func:`crop_roi`). One ROI file belongs to one utterance (one audio file,
one face), never to a mixture: ``hubbub simulate`` places each source's stream on the mixture's
time axis itself.

:func:`load_roi` reads what LRS2/LRS3/VoxCeleb2 preparations store:

* ``.npy``: ``(F, H, W)`` grayscale, ``(F, H, W, 1)``, or ``(F, H, W, 3|4)`` RGB(A);
* ``.npz``: one array, or the key ``"data"`` (the CTCNet/IIANet LRS2 preparations);
* a folder of frame images (PNG, JPEG, BMP), one per frame, in file-name order.

Colour becomes ITU-R BT.601 luma (``0.299 R + 0.587 G + 0.114 B``, alpha dropped). Float arrays
are taken as 0..255, or as 0..1 when no value exceeds 1. Frames that are not 96x96 are
centre-cropped to a square and resized to 96x96 with Pillow's bicubic filter (anti-aliased when
shrinking); frames smaller than 88x88, the models' crop, are refused. Videos (``.mp4``) must be
cropped to the mouth first (e.g. with the landmark-based scripts of the LRS3 preparations):
hubbub has no video decoding dependency.

Every refusal is a ``ValueError`` that names the file: pickled (object) arrays, which
``allow_pickle=False`` never loads, NaN or inf, empty clips, a wrong number of axes.

>>> frames = load_roi("mouths/trainval/0af00UcTOSc/50001.npz")   # doctest: +SKIP
>>> frames.shape, frames.dtype                                    # doctest: +SKIP
((63, 96, 96), dtype('uint8'))
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

FPS = 25                      # frames per second of every lip stream
ROI_SIZE = 96                 # stored frames are ROI_SIZE x ROI_SIZE
# the models' crop (random in training, central otherwise): smaller frames cannot be used
CROP_SIZE = 88
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
ROI_EXTENSIONS = (".npy", ".npz")
NPZ_KEY = "data"
_LUMA_BT601 = np.array([0.299, 0.587, 0.114])


def num_video_frames(num_samples: int, sample_rate_hz: int, fps: float = FPS) -> int:
    """Frames covering ``num_samples`` of audio: ``ceil(num_samples * fps / sample_rate_hz)``."""
    if float(fps).is_integer():
        return -(-num_samples * int(fps) // sample_rate_hz)  # exact in integers
    return math.ceil(num_samples * fps / sample_rate_hz - 1e-9)


def samples_per_frame(sample_rate_hz: int, fps: int = FPS) -> int:
    """Audio samples per video frame (640 at 16 kHz); the rate must hold whole frames."""
    if sample_rate_hz % fps:
        raise ValueError(f"{sample_rate_hz} Hz does not hold a whole number of samples per {fps} fps frame")
    return sample_rate_hz // fps


def crop_roi(frames, size: int = CROP_SIZE, *, train: bool, rng=None):
    """Crop the last two axes of ``(F, H, W)`` or ``(..., F, H, W)`` frames to ``size`` squared.

    Evaluation (``train=False``) takes the centre crop; training takes one random offset for the
    whole clip (the lips must not jump between frames), drawn from ``rng``: a
    ``numpy.random.Generator`` or an int seed, derived from the sample's identity. Works on numpy
    arrays and torch tensors alike and returns a view of the same type.
    """
    height, width = frames.shape[-2], frames.shape[-1]
    if height < size or width < size:
        raise ValueError(f"frames of {height}x{width} are smaller than the {size}x{size} crop")
    if train:
        if rng is None:
            raise ValueError("train=True needs rng (a Generator or an int seed from the sample)")
        rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
        top = int(rng.integers(0, height - size + 1))
        left = int(rng.integers(0, width - size + 1))
    else:
        top, left = (height - size) // 2, (width - size) // 2
    return frames[..., top:top + size, left:left + size]


@dataclass(frozen=True)
class RoiInfo:
    """What :func:`probe_roi` reads from a ROI file's header: its frame count and frame size."""

    num_frames: int
    height: int
    width: int


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _npz_member(path: Path, names: list[str]) -> str:
    """The array of an npz to read: ``"data"``, or its only array."""
    keys = [n[:-4] if n.endswith(".npy") else n for n in names]
    if NPZ_KEY in keys:
        return names[keys.index(NPZ_KEY)]
    if len(keys) == 1:
        return names[0]
    raise ValueError(f"{path}: an npz ROI file needs one array or the key {NPZ_KEY!r}, it has {sorted(keys)}")


def _check_shape(path: Path, shape: tuple[int, ...]) -> RoiInfo:
    if len(shape) == 4 and shape[-1] in (1, 3, 4):
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"{path}: ROI arrays are (frames, height, width) or (frames, height, width, 1|3|4), "
                         f"got shape {tuple(shape)}")
    if shape[0] == 0 or shape[1] == 0 or shape[2] == 0:
        raise ValueError(f"{path}: empty ROI clip, shape {tuple(shape)}")
    return RoiInfo(int(shape[0]), int(shape[1]), int(shape[2]))


def _check_dtype(path: Path, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise ValueError(f"{path}: holds Python objects (a pickle); ROI files must be plain numeric arrays "
                         "(they are loaded with allow_pickle=False)")
    if dtype.kind not in "uif":
        raise ValueError(f"{path}: ROI arrays must be numeric, got dtype {dtype}")


def probe_roi(path: str | Path) -> RoiInfo:
    """Frame count and size of a ROI file without decoding its frames (cheap enough to run on
    every utterance of a corpus when it is indexed).

    Reads the npy header (the array is memory-mapped; float arrays are scanned for NaN and inf),
    the header of the npz member (:func:`load_roi` picks the same one), or, for a frame folder,
    the image count and the first image's size. Raises ``ValueError`` (naming the file) for what
    :func:`load_roi` would refuse, apart from frames of unequal sizes in a folder, and
    ``FileNotFoundError`` when nothing is there.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ROI file {path} does not exist")
    if path.is_dir():
        files = _image_files(path)
        if not files:
            raise ValueError(f"{path}: a ROI folder needs frame images ({', '.join(IMAGE_EXTENSIONS)}), found none")
        try:
            with Image.open(files[0]) as im:
                width, height = im.size
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"{files[0]}: not a readable image: {exc}") from None
        return RoiInfo(len(files), height, width)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            try:
                arr = np.load(path, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:  # numpy refuses to map object arrays
                if "object" in str(exc).lower() or "pickle" in str(exc).lower():
                    raise ValueError(f"{path}: holds Python objects (a pickle); ROI files must be plain "
                                     "numeric arrays (they are loaded with allow_pickle=False)") from None
                raise
            _check_dtype(path, arr.dtype)
            info = _check_shape(path, arr.shape)
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ValueError(f"{path}: ROI frames hold NaN or inf")
            return info
        if suffix == ".npz":
            with zipfile.ZipFile(path) as zf:
                name = _npz_member(path, zf.namelist())
                with zf.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                                   (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read_header is None:  # a format version without a public reader: decode it
                        return _check_shape(path, _to_gray_uint8(path, _read_array(path)).shape)
                    shape, _, dtype = read_header(f)
            _check_dtype(path, np.dtype(dtype))
            return _check_shape(path, shape)
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        raise ValueError(f"{path}: not a readable ROI array: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable ROI array: {exc}") from None
    raise ValueError(_unsupported(path))


def _unsupported(path: Path) -> str:
    hint = (" Videos must be cropped to mouth regions first (hubbub decodes no video): save the crops as "
            "(frames, 96, 96) uint8 .npy" if path.suffix.lower() in (".mp4", ".avi", ".mov", ".mkv", ".webm")
            else "")
    return (f"{path}: unsupported ROI file; expected .npy, .npz or a folder of frame images "
            f"({', '.join(IMAGE_EXTENSIONS)}).{hint}")


def _read_array(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return npz[_npz_member(path, list(npz.files))]
    except ValueError as exc:
        if str(path) in str(exc):
            raise
        if "pickle" in str(exc).lower():
            raise ValueError(f"{path}: holds Python objects (a pickle); ROI files must be plain numeric arrays "
                             "(they are loaded with allow_pickle=False)") from None
        raise ValueError(f"{path}: not a readable ROI array: {exc}") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{path}: not a readable ROI array: {exc}") from None
    raise ValueError(_unsupported(path))


def _read_frames(folder: Path) -> np.ndarray:
    files = _image_files(folder)
    if not files:
        raise ValueError(f"{folder}: a ROI folder needs frame images ({', '.join(IMAGE_EXTENSIONS)}), found none")
    frames = []
    for f in files:
        try:
            with Image.open(f) as im:
                # Pillow's "L" conversion is the BT.601 luma; alpha and palettes go through RGB(A).
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGBA" if "A" in im.mode or im.mode == "P" else "RGB")
                frames.append(np.asarray(im.convert("L"), dtype=np.uint8))
        except (OSError, UnidentifiedImageError) as exc:
            raise ValueError(f"{f}: not a readable image: {exc}") from None
    shapes = {fr.shape for fr in frames}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: frame images of different sizes {sorted(shapes)}")
    return np.stack(frames)


def _to_gray_uint8(path: Path, x: np.ndarray) -> np.ndarray:
    """(F, H, W[, C]) numeric -> (F, H, W) uint8 grayscale, checking values on the way."""
    _check_dtype(path, x.dtype)
    _check_shape(path, x.shape)
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise ValueError(f"{path}: ROI frames hold NaN or inf")
    if x.dtype == np.uint8 and x.ndim == 3:
        return x
    was_float = x.dtype.kind == "f"
    x = x.astype(np.float64)
    if x.ndim == 4:
        x = x[..., 0] if x.shape[-1] == 1 else x[..., :3] @ _LUMA_BT601
    if was_float and x.max() <= 1.0 and x.min() >= 0.0:
        x = x * 255.0  # floats in 0..1 (normalised crops); a 0..255 clip this dark is no face
    if x.min() < 0 or x.max() > 255:
        raise ValueError(f"{path}: ROI values must lie in 0..255 (or 0..1 for floats), "
                         f"got {x.min():.3g}..{x.max():.3g}")
    return np.rint(x).astype(np.uint8)


def _resize(path: Path, frames: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize every frame to ``size`` x ``size`` (bicubic)."""
    _, height, width = frames.shape
    if min(height, width) < CROP_SIZE:
        raise ValueError(f"{path}: ROI frames of {height}x{width} are smaller than the {CROP_SIZE}x"
                         f"{CROP_SIZE} crop the models take; re-crop the mouths at {size}x{size}")
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    frames = frames[:, top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(frames)
    resample = Image.Resampling.BICUBIC
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), resample), dtype=np.uint8)
                     for f in frames])


def load_roi(path: str | Path) -> np.ndarray:
    """A mouth-ROI file (``.npy``, ``.npz`` or a folder of frame images) -> ``(F, 96, 96)`` uint8.

    Grayscale (BT.601 luma from RGB(A)), values 0..255, frames centre-cropped to a square and
    resized to 96x96 when they are another size (at least 88x88). See the module docstring for
    the formats; raises ``ValueError`` naming the file for anything it cannot use (pickles, NaN,
    empty clips, wrong axes, small frames, videos) and ``FileNotFoundError`` when it is missing.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ROI file {path} does not exist")
    frames = _read_frames(path) if path.is_dir() else _to_gray_uint8(path, _read_array(path))
    return _resize(path, frames, ROI_SIZE)


def fit_frames(frames, num_frames: int):
    """(F, H, W) frames (numpy or torch) cut, or extended by repeating the last frame, to
    ``num_frames``: a stream a frame or two off its audio, or another utterance's lips standing in
    for the target's (the mismatched-lips evaluation)."""
    if len(frames) == 0:
        raise ValueError("no frames to fit")
    return frames[np.minimum(np.arange(num_frames), len(frames) - 1)]
