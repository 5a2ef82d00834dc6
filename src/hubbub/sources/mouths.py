"""Synthetic mouths: lip streams drawn from phoneme timings, for speech that has no faces.

Audio-visual separation models (Dolphin, IIANet, CTCNet) condition on each speaker's mouth: a
grayscale region of interest, ``uint8`` of shape ``(frames, 96, 96)`` at 25 fps, cropped to 88x88
when loaded (the geometry: :mod:`hubbub.video`). The built-in voices (:mod:`hubbub.voices`), and
any corpus whose manifest rows carry ``phonemes`` (:mod:`hubbub.sources.lips`), have no faces, so
this module draws one: each phoneme maps to a viseme, each viseme to a mouth shape ``(opening,
width, rounding)`` in [0, 1], and a simple parametric mouth (lips, dark interior, teeth) is
drawn per frame on a face-skin background whose look is fixed by the speaker id.

Phonemes are ``[name, start_s, end_s]`` rows in the set ``"ipa"`` (espeak-ng) or ``"cmu"``
(flite, Festival; ARPAbet lower case), with :data:`PAUSE` the pause in both. Frame ``k`` of the
stream covers ``[k / 25, (k + 1) / 25)`` s of the audio.

>>> row = {"speaker": "fli_slt_p0_r100", "phoneme_set": "cmu",
...        "phonemes": [["pau", 0.0, 0.1], ["hh", 0.1, 0.18], ["aa", 0.18, 0.4], ["pau", 0.4, 0.5]]}
>>> lip_stream(row).shape
(13, 96, 96)
>>> from hubbub.video import crop_roi
>>> crop_roi(lip_stream(row), train=False).shape
(13, 88, 88)
"""
from __future__ import annotations

import collections
import math
import unicodedata
import zlib

import numpy as np
from scipy.signal import lfilter

from hubbub.video import FPS, ROI_SIZE

PAUSE = "pau"   # the pause in both phoneme sets (what the built-in voices write)

# Mouth shape per viseme: (opening, width, rounding), each in [0, 1]. Opening is the lips' inner
# gap (jaw drop), width the mouth corners' spread, rounding the protrusion that narrows the mouth
# and makes the opening rounder. The classes follow the usual 12-15 class sets (MPEG-4 FAP
# visemes, Disney/Preston-Blair), with open and close rounded vowels kept apart.
VISEMES: dict[str, tuple[float, float, float]] = {
    "rest": (0.0, 0.45, 0.0),          # pause: lips closed, relaxed
    "bilabial": (0.0, 0.5, 0.1),       # p b m: lips pressed shut
    "labiodental": (0.1, 0.55, 0.0),   # f v: lower lip tucked under the upper teeth
    "dental": (0.25, 0.55, 0.0),       # th dh: tongue tip between the teeth
    "alveolar": (0.3, 0.55, 0.0),      # t d n s z l
    "postalveolar": (0.3, 0.4, 0.6),   # sh zh ch jh: lips protruded
    "velar": (0.35, 0.5, 0.0),         # k g ng h: lips free, take the neighbours' shape
    "open": (1.0, 0.65, 0.0),          # aa ae ah: jaw dropped
    "mid": (0.6, 0.6, 0.1),            # eh ax: neutral half-open (also unknown symbols)
    "spread": (0.3, 0.95, 0.0),        # iy ih y: corners pulled back
    "round_open": (0.65, 0.4, 0.7),    # ao o: open and rounded
    "round": (0.25, 0.2, 1.0),         # uw uh w: small rounded opening
    "r": (0.35, 0.4, 0.5),             # r er: slightly rounded
}
_NAMES = tuple(VISEMES)
_INDEX = {name: i for i, name in enumerate(_NAMES)}
_SHAPES = np.array(list(VISEMES.values()), dtype=np.float64)
# How strongly a viseme holds the lips against its neighbours (the dominance functions of
# Cohen & Massaro's coarticulation model, reduced to one number): the lips are free during
# tongue consonants, so those take the surrounding vowels' shape, while p/b/m close whatever
# comes around them.
_DOMINANCE = np.array([{"rest": 0.5, "bilabial": 1.0, "labiodental": 0.9, "dental": 0.5,
                        "alveolar": 0.3, "postalveolar": 0.8, "velar": 0.25, "open": 0.8,
                        "mid": 0.7, "spread": 0.8, "round_open": 0.85, "round": 0.9,
                        "r": 0.6}[n] for n in _NAMES])
_UNKNOWN_VISEME = "mid"
# Each frame averages the phonemes in its 40 ms plus this much each side (an 80 ms box kernel
# in continuous time), so the mouth moves continuously without blurring 60 ms closures away.
_COARTICULATION_S = 0.02
# A diphthong starts on its first element and glides to the rest for this share of its time.
_NUCLEUS_SHARE = 0.6

_CMU = {
    "rest": "pau sil h# sp",
    "bilabial": "p b m em",
    "labiodental": "f v",
    "dental": "th dh",
    "alveolar": "t d n en s z l el dx nx",
    "postalveolar": "sh zh ch jh",
    "velar": "k g ng hh hv",
    "open": "aa ae ah",
    "mid": "eh ax",
    "spread": "iy ih ix y",
    "round_open": "ao",
    "round": "uw uh ux w",
    "r": "r er axr",
}
_CMU_DIPHTHONGS = {"aw": ("open", "round"), "ay": ("open", "spread"), "ey": ("mid", "spread"),
                   "ow": ("round_open", "round"), "oy": ("round_open", "spread")}
_IPA = {
    "rest": "_",
    "bilabial": "p b m ɓ ʙ ɸ β",
    "labiodental": "f v ɱ ʋ",
    "dental": "θ ð",
    "alveolar": "t d n s z l ɾ ɫ ɬ ɮ ɗ ts dz ʦ ʣ ɺ ɭ ɳ ʈ ɖ ʂ ʐ",
    "postalveolar": "ʃ ʒ tʃ dʒ ʧ ʤ ɕ ʑ tɕ dʑ",
    "velar": "k g ɡ ŋ h ɦ x ɣ ʝ ʔ q ɢ ʁ χ ɲ c ɟ",
    "open": "a ɑ æ ɐ ɶ ʌ",
    "mid": "e ɛ ə ɜ ɘ ɞ",
    "spread": "i ɪ ɨ ᵻ j ɯ ɤ",
    "round_open": "o ɔ ɒ ɵ ø œ",
    "round": "u ʊ ʉ w ʍ y ʏ ɥ",
    "r": "ɹ r ɻ ɚ ɝ ʀ",
}


def _table(groups: dict[str, str]) -> dict[str, str]:
    return {phone: viseme for viseme, phones in groups.items() for phone in phones.split()}


_CMU_TABLE = _table(_CMU)
_IPA_TABLE = _table(_IPA)
_IPA_LONGEST = max(len(p) for p in _IPA_TABLE)
# espeak-ng writes ":" for length in some voices and "'" / "," for stress in ASCII output.
_IPA_DROP = set("ˈˌːˑ:',.|‖-")

UNKNOWN_PHONEMES: collections.Counter[str] = collections.Counter()
"""Phonemes (``"set:name"``) that mapped to no viseme and were drawn with the neutral ``mid``
shape, counted over the process. Check it after rendering a corpus; it should stay empty."""


def _normalise_ipa(phoneme: str) -> str:
    """Strip stress, length, tie bars and diacritics (combining marks, superscript modifiers)."""
    kept = []
    for ch in unicodedata.normalize("NFD", phoneme):
        if ch in _IPA_DROP or unicodedata.category(ch) in ("Mn", "Me", "Lm", "Sk"):
            continue
        kept.append(ch)
    return "".join(kept)


def _ipa_parts(phoneme: str) -> list[str]:
    """Greedy longest match of the normalised symbol: affricates (tʃ) are one element,
    diphthongs and r-coloured vowels (aɪ, ɔːɹ) several. Unknown characters are skipped."""
    s = _normalise_ipa(phoneme)
    parts, i = [], 0
    while i < len(s):
        for n in range(min(_IPA_LONGEST, len(s) - i), 0, -1):
            viseme = _IPA_TABLE.get(s[i:i + n])
            if viseme is not None:
                if not parts or parts[-1] != viseme:
                    parts.append(viseme)
                i += n
                break
        else:
            i += 1
    return parts


def _parts(phoneme: str, phoneme_set: str) -> list[str]:
    """The visemes a phoneme passes through, the dominant one first."""
    if phoneme_set not in ("ipa", "cmu"):
        raise ValueError(f"unknown phoneme_set {phoneme_set!r}; expected 'ipa' or 'cmu'")
    if phoneme == PAUSE:
        return ["rest"]
    if phoneme_set == "cmu":
        name = phoneme.lower().rstrip("012")  # ARPAbet stress digits
        if name in _CMU_DIPHTHONGS:
            return list(_CMU_DIPHTHONGS[name])
        parts = [_CMU_TABLE[name]] if name in _CMU_TABLE else []
    else:
        parts = _ipa_parts(phoneme)
    if not parts:
        UNKNOWN_PHONEMES[f"{phoneme_set}:{phoneme}"] += 1
        return [_UNKNOWN_VISEME]
    return parts


def viseme_of(phoneme: str, phoneme_set: str) -> str:
    """The viseme (a key of :data:`VISEMES`) of one phoneme of a voices manifest.

    ``phoneme_set`` is ``"ipa"`` (espeak-ng) or ``"cmu"`` (flite, ARPAbet lower case); ``"pau"``
    is the pause in both. IPA symbols lose stress, length and diacritics first; a diphthong or
    r-coloured vowel maps to its first (nucleus) element, an affricate to its release
    (``tʃ`` -> ``postalveolar``). Unknown symbols give ``"mid"`` and are counted in
    :data:`UNKNOWN_PHONEMES`.

    >>> viseme_of("ˈaɪ", "ipa"), viseme_of("m", "cmu"), viseme_of("tʃ", "ipa")
    ('open', 'bilabial', 'postalveolar')
    """
    return _parts(phoneme, phoneme_set)[0]


def mouth_shapes(phonemes, phoneme_set: str, num_frames: int, fps: float = FPS) -> np.ndarray:
    """Mouth shape per video frame, ``(num_frames, 3)`` float32: opening, width, rounding.

    ``phonemes`` are ``[name, start_s, end_s]`` rows on the audio's time axis. Frame ``k`` blends
    the visemes of the phonemes overlapping ``[k / fps - 20 ms, (k + 1) / fps + 20 ms)``, each
    weighted by its overlap times its dominance (lips free during t/k/h take the neighbouring
    vowels' shape; p/b/m close regardless). Time not covered by any phoneme, before the first or
    after the last, is ``rest``. Zero-length phonemes (espeak-ng's folded liquids) weigh nothing.
    """
    starts, ends, index = [], [], []
    for name, start_s, end_s in phonemes:
        start_s, end_s = float(start_s), float(end_s)
        parts = _parts(str(name), phoneme_set)
        edges = [start_s]
        if len(parts) > 1:
            glide = start_s + _NUCLEUS_SHARE * (end_s - start_s)
            edges += list(np.linspace(glide, end_s, len(parts))[:-1])
        edges.append(end_s)
        for viseme, a, b in zip(parts, edges, edges[1:]):
            starts.append(a)
            ends.append(b)
            index.append(_INDEX[viseme])
    frames = np.arange(num_frames, dtype=np.float64)
    t0 = frames[:, None] / fps - _COARTICULATION_S
    t1 = (frames[:, None] + 1) / fps + _COARTICULATION_S
    starts, ends, index = np.array(starts), np.array(ends), np.array(index, dtype=np.int64)
    overlap = np.clip(np.minimum(ends, t1) - np.maximum(starts, t0), 0, None)  # (F, segments)
    uncovered = np.clip((t1 - t0)[:, 0] - overlap.sum(axis=1), 0, None)
    weights = overlap * _DOMINANCE[index]
    rest = _INDEX["rest"]
    shapes = weights @ _SHAPES[index] + (uncovered * _DOMINANCE[rest])[:, None] * _SHAPES[rest]
    total = weights.sum(axis=1) + uncovered * _DOMINANCE[rest]
    return (shapes / np.maximum(total, 1e-12)[:, None]).astype(np.float32)


# --- rendering ---------------------------------------------------------------------------------


def _appearance(speaker: str, size: int) -> dict:
    """The speaker's look, a function of the id alone (crc32 -> rng, like the voices' seeds)."""
    rng = np.random.default_rng([zlib.crc32(speaker.encode()), 0x11B5])
    s = size / ROI_SIZE
    skin = rng.uniform(105.0, 195.0)
    return {
        "skin": skin,
        "lip": skin * rng.uniform(0.6, 0.8),         # lips darker than the skin, never black
        "lower_lip_highlight": rng.uniform(4.0, 14.0),
        "interior": rng.uniform(12.0, 40.0),
        "teeth": rng.uniform(185.0, 235.0),
        "teeth_shown": rng.uniform(0.3, 1.0),        # how much of the teeth the lips uncover
        "half_width_px": s * rng.uniform(25.0, 31.0),  # mouth half-width at width = 1
        "max_gap_px": s * rng.uniform(10.0, 13.0),   # inner half-height at opening = 1
        "upper_lip_px": s * rng.uniform(4.0, 7.0),
        "lower_lip_px": s * rng.uniform(5.0, 8.5),
        "articulation": rng.uniform(0.8, 1.1),       # hypo- to hyper-articulating speakers
        "centre_px": (size / 2 + s * rng.uniform(-3.0, 3.0), size / 2 + s * rng.uniform(-3.0, 3.0)),
        "nose_shadow": rng.uniform(10.0, 35.0),
        "shading": rng.uniform(-12.0, 12.0, size=2),  # left-right and top-bottom light gradient
        "jitter_px": s * rng.uniform(0.5, 1.5),
    }


def _soft_ellipse(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Approximate pixel coverage of the ellipse (x/a)^2 + (y/b)^2 <= 1: the implicit function
    over its gradient's norm is the signed distance to first order, which anti-aliases edges."""
    ia2, ib2 = 1.0 / (a * a), 1.0 / (b * b)
    f = x * x * ia2 + y * y * ib2 - 1.0
    grad = 2.0 * np.sqrt((x * ia2) ** 2 + (y * ib2) ** 2) + 1e-6
    return np.clip(0.5 - f / grad, 0.0, 1.0)


def render_lips(shapes: np.ndarray, speaker: str, *, seed: int = 0, size: int = ROI_SIZE) -> np.ndarray:
    """Draw one mouth per row of ``shapes`` (``(F, 3)`` opening, width, rounding in [0, 1]).

    Returns ``(F, size, size)`` uint8 grayscale. The speaker id fixes the skin tone, lip and
    teeth brightness, mouth size and its position (a few pixels off centre), so one speaker always
    looks the same and two speakers differ; ``seed`` drives the per-frame parts (a slow head-motion
    jitter of about a pixel and sensor noise of ~2 grey levels), deterministic for ``(speaker,
    seed)``. Cost: 5-15 ms per 100 frames (4 s) at 96x96 on one CPU core.
    """
    shapes = np.asarray(shapes, dtype=np.float32).reshape(-1, 3)
    num_frames = shapes.shape[0]
    if num_frames == 0:
        return np.zeros((0, size, size), dtype=np.uint8)
    look = _appearance(speaker, size)
    rng = np.random.default_rng([zlib.crc32(speaker.encode()), 1, seed])
    s = size / ROI_SIZE

    # Head motion: a smooth AR(1) walk per axis, bounded so the mouth stays inside a crop.
    walk = lfilter([1.0], [1.0, -0.85], rng.standard_normal((2, num_frames)), axis=1) * 0.53
    walk = np.clip(walk * look["jitter_px"], -3 * s, 3 * s)

    opening = np.clip(shapes[:, 0] * look["articulation"], 0.0, 1.0)
    width = np.clip(shapes[:, 1], 0.0, 1.0)
    rounding = np.clip(shapes[:, 2], 0.0, 1.0)
    gap = opening * look["max_gap_px"]  # inner half-height
    half_w = look["half_width_px"] * (0.55 + 0.45 * width) * (1.0 - 0.25 * rounding)
    # Protruded lips look thicker; the jaw, not the upper lip, opens the mouth.
    upper = look["upper_lip_px"] * (1.0 + 0.3 * rounding)
    lower = look["lower_lip_px"] * (1.0 + 0.3 * rounding)
    inner_w = np.maximum(half_w * (0.85 - 0.4 * rounding), gap)
    cx = look["centre_px"][0] + walk[0]
    cy = look["centre_px"][1] + walk[1] + 0.35 * gap

    # Only a box around the mouth changes from frame to frame: drawing there alone is ~3x cheaper.
    pad = 2.0
    x0 = max(int(np.floor((cx - half_w).min() - pad)), 0)
    x1 = min(int(np.ceil((cx + half_w).max() + pad)) + 1, size)
    y0 = max(int(np.floor((cy - gap - upper).min() - pad)), 0)
    y1 = min(int(np.ceil((cy + gap + lower).max() + pad)) + 1, size)
    col = lambda v: np.asarray(v, dtype=np.float32)[:, None, None]  # noqa: E731
    x = np.arange(x0, x1, dtype=np.float32)[None, None, :] - col(cx)
    y = np.arange(y0, y1, dtype=np.float32)[None, :, None] - col(cy)
    below = y > 0
    outer_h = np.where(below, col(gap + lower), col(gap + upper))
    lips = _soft_ellipse(x, y, col(half_w), outer_h)
    inner = _soft_ellipse(x, y, col(inner_w), col(np.maximum(gap, 0.3)))
    # Closed lips leave a faint seam; the interior darkens fully once ~1.5 px apart.
    inner *= col(0.25 + 0.75 * np.clip(gap / 1.5, 0.0, 1.0))
    teeth_h = np.minimum(0.45 * gap, 4.0 * s) * look["teeth_shown"]
    teeth = inner * np.clip(col(teeth_h - gap) - y, 0.0, 1.0) * (np.abs(x) < 0.7 * col(inner_w))

    grid = np.arange(size, dtype=np.float32) / size - 0.5
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    background = (look["skin"] + look["shading"][0] * xx + look["shading"][1] * yy
                  - look["nose_shadow"] * np.exp(-((yy + 0.5) / 0.15) ** 2 - (xx / 0.2) ** 2))
    skin = background[None, y0:y1, x0:x1]
    lip_tone = look["lip"] + look["lower_lip_highlight"] * below
    mouth = skin + lips * (lip_tone - skin)
    mouth += inner * (look["interior"] - mouth)
    mouth += teeth * (look["teeth"] - mouth)
    frames = np.empty((num_frames, size, size), dtype=np.float32)
    frames[:] = background
    frames[:, y0:y1, x0:x1] = mouth
    # Sensor noise, std ~1.6 grey levels: a sum of two 2-bit uniforms from raw random bytes costs
    # a fifth of standard_normal at this size.
    noise = np.frombuffer(rng.bytes(frames.size), dtype=np.uint8).reshape(frames.shape)
    frames += (noise & 3) + (noise >> 6)
    frames -= 2.5  # the noise's mean (3) less 0.5 to round on the cast
    return np.clip(frames, 0, 255).astype(np.uint8)


def lip_stream(utterance: dict, num_frames: int | None = None, *, seed: int = 0) -> np.ndarray:
    """A manifest row with phonemes (the voices') -> its speaker's mouth ROI, ``(F, 96, 96)`` uint8 at 25 fps.

    ``F`` defaults to ``ceil(end * 25)`` for the last phoneme's end (the utterance's duration);
    frame ``k`` covers audio samples ``[k * sr / 25, (k + 1) * sr / 25)``. Pass ``num_frames``
    (e.g. :func:`hubbub.video.num_video_frames` of the audio) to match a specific waveform;
    frames past the last phoneme show the mouth at rest.
    """
    phonemes = utterance["phonemes"]
    if num_frames is None:
        end_s = max((float(p[2]) for p in phonemes), default=0.0)
        num_frames = math.ceil(round(end_s * FPS, 6))
    shapes = mouth_shapes(phonemes, utterance["phoneme_set"], num_frames, FPS)
    return render_lips(shapes, utterance["speaker"], seed=seed, size=ROI_SIZE)
