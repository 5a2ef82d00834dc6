"""One utterance of a speech corpus: what indexing finds (:mod:`hubbub.sources.speech`), what its
lip source adds (:mod:`hubbub.sources.lips`) and what the simulator draws from."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Utterance:
    path: str                    # an absolute local path or a full URL
    speaker: str
    duration_s: float
    sample_rate_hz: int
    corpus: str
    transcript: str | None = None
    licence: str | None = None
    extra: dict = field(default_factory=dict)
    lips: dict | None = None     # with index_speech(lips=True): see hubbub.sources.lips.lip_source
