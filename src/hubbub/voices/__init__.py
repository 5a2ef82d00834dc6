"""The built-in voices corpus: no download, speakers from espeak-ng, flite and Festival
(``hubbub voices``; ``docs/voices.md``).

>>> from hubbub.voices import make_voices
>>> manifest = make_voices("data/voices")  # doctest: +SKIP
"""
from hubbub.voices.sentences import make_sentence
from hubbub.voices.synth import (
    LICENCE,
    PAUSE,
    SYNTHESIZERS,
    Synthesis,
    SynthesisError,
    VoiceSpec,
    available_synthesizers,
    festival_voices,
    list_voices,
    make_voices,
    synthesize,
)

__all__ = [
    "LICENCE",
    "PAUSE",
    "SYNTHESIZERS",
    "Synthesis",
    "SynthesisError",
    "VoiceSpec",
    "available_synthesizers",
    "festival_voices",
    "list_voices",
    "make_sentence",
    "make_voices",
    "synthesize",
]
