"""Generated English sentences: a small grammar over word lists, driven by a numpy Generator.

The text is ours (CC0), so the synthesized corpus needs no licence from anyone. The word lists
favour everyday words both synthesizers pronounce well (flite's CMU lexicon, espeak-ng's English
rules) and cover the visually distinct articulations a lip renderer needs: bilabials (p b m),
labiodentals (f v), rounded and spread vowels, dentals (th).

>>> import numpy as np
>>> make_sentence(np.random.default_rng(0), min_words=4, max_words=6)
'Last winter, the frozen violin slept.'
"""
from __future__ import annotations

import numpy as np

_DETERMINERS = ("the", "a", "my", "your", "our", "this", "that", "every", "one")
_ADJECTIVES = (
    "old", "young", "small", "quiet", "bright", "heavy", "purple", "warm", "gentle", "famous",
    "curious", "lazy", "brave", "tired", "happy", "clever", "broken", "golden", "muddy", "silver",
    "tall", "busy", "friendly", "yellow", "careful", "noisy", "smooth", "empty", "polite", "frozen",
)
_NOUNS = (
    "farmer", "teacher", "captain", "baker", "doctor", "pilot", "neighbour", "student", "fisherman",
    "painter", "river", "window", "garden", "basket", "bridge", "mountain", "letter", "bottle",
    "village", "kitchen", "violin", "umbrella", "blanket", "bicycle", "monkey", "puppy", "horse",
    "engine", "mirror", "pumpkin", "feather", "wagon", "museum", "orchard", "ladder", "parcel",
)
_NAMES = (
    "Maria", "Peter", "Oliver", "Fatima", "Victor", "Emma", "Bruno", "Amelia", "Thomas", "Lucia",
    "Martin", "Sophie", "Hugo", "Nora", "Felix", "Paula",
)
# (base, past) so questions and imperatives can use the base form.
_TRANSITIVE = (
    ("find", "found"), ("paint", "painted"), ("carry", "carried"), ("watch", "watched"),
    ("open", "opened"), ("borrow", "borrowed"), ("follow", "followed"), ("move", "moved"),
    ("fix", "fixed"), ("push", "pushed"), ("wash", "washed"), ("visit", "visited"),
    ("bring", "brought"), ("buy", "bought"), ("throw", "threw"), ("forget", "forgot"),
    ("build", "built"), ("leave", "left"), ("remember", "remembered"), ("measure", "measured"),
)
_INTRANSITIVE = (
    ("laugh", "laughed"), ("wait", "waited"), ("sleep", "slept"), ("arrive", "arrived"),
    ("whisper", "whispered"), ("vanish", "vanished"), ("wander", "wandered"),
    ("shiver", "shivered"),
    ("smile", "smiled"), ("listen", "listened"), ("sing", "sang"), ("fall", "fell"),
)
_PREPOSITIONS = (
    "near", "behind", "under", "beside", "across", "through", "inside", "above", "below", "around",
    "past", "beyond",
)
_ADVERBS = (
    "quickly", "slowly", "again", "softly", "carefully", "quietly", "happily", "twice", "at once",
    "without a word", "by mistake", "on purpose",
)
_TIMES = (
    "in the morning", "after lunch", "last winter", "every Monday", "before dawn", "on Friday",
    "at midnight", "during the storm", "some years ago", "this evening",
)
_SAYING = ("said", "thought", "knew", "heard", "believed", "promised")
_QUESTION_WORDS = ("Why", "When", "Where", "How often")

_VOWELS = "aeiou"
# How many candidate sentences to draw per call; the one closest to the target length wins.
_CANDIDATES = 24


def _pick(rng: np.random.Generator, words: tuple) -> str | tuple:
    return words[int(rng.integers(len(words)))]


def _noun_phrase(rng: np.random.Generator) -> str:
    if rng.random() < 0.2:
        return _pick(rng, _NAMES)
    words = [_pick(rng, _NOUNS)]
    if rng.random() < 0.6:
        words.insert(0, _pick(rng, _ADJECTIVES))
    det = _pick(rng, _DETERMINERS)
    if det == "a" and words[0][0] in _VOWELS:
        det = "an"
    return " ".join([det, *words])


def _place(rng: np.random.Generator) -> str:
    return f"{_pick(rng, _PREPOSITIONS)} {_noun_phrase(rng)}"


def _clause(rng: np.random.Generator) -> str:
    """A declarative clause in the past tense, optionally extended by a place and an adverb."""
    subject = _noun_phrase(rng)
    if rng.random() < 0.65:
        words = [subject, _pick(rng, _TRANSITIVE)[1], _noun_phrase(rng)]
    else:
        words = [subject, _pick(rng, _INTRANSITIVE)[1]]
    if rng.random() < 0.5:
        words.append(_place(rng))
    if rng.random() < 0.3:
        words.append(_pick(rng, _ADVERBS))
    return " ".join(words)


def _candidate(rng: np.random.Generator) -> str:
    form = rng.random()
    if form < 0.40:
        text = _clause(rng) + "."
    elif form < 0.55:
        text = f"{_pick(rng, _TIMES)}, {_clause(rng)}."
    elif form < 0.70:
        text = f"{_clause(rng)}, and {_clause(rng)}."
    elif form < 0.80:
        text = f"{_noun_phrase(rng)} {_pick(rng, _SAYING)} that {_clause(rng)}."
    elif form < 0.90:
        text = (f"{_pick(rng, _QUESTION_WORDS)} did {_noun_phrase(rng)} "
                f"{_pick(rng, _TRANSITIVE)[0]} {_noun_phrase(rng)}?")
    else:
        text = f"Please {_pick(rng, _TRANSITIVE)[0]} {_noun_phrase(rng)} {_place(rng)}."
    return text[0].upper() + text[1:]


def make_sentence(rng: np.random.Generator, min_words: int = 4, max_words: int = 14) -> str:
    """One English sentence of ``min_words``..``max_words`` words, drawn from ``rng``.

    The target length is drawn uniformly, then the candidate closest to it (the first on ties) is
    kept, so lengths spread over the whole range instead of clustering where the grammar is
    densest. At espeak-ng's default 175 words per minute, 4..14 words is about 1.5..5 s of speech.
    Deterministic: the same generator state gives the same sentence and leaves the same state.
    """
    if not 1 <= min_words <= max_words:
        raise ValueError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    target = int(rng.integers(min_words, max_words + 1))
    best, best_gap = "", None
    for _ in range(_CANDIDATES):
        text = _candidate(rng)
        n_words = len(text.split())
        gap = abs(n_words - target) if min_words <= n_words <= max_words else None
        if gap is not None and (best_gap is None or gap < best_gap):
            best, best_gap = text, gap
    if best_gap is None:
        # The grammar's shortest sentence has 2 words and its longest about 30, so this only
        # happens for ranges like (1, 1): fail loudly instead of returning an off-range sentence.
        raise ValueError(f"no sentence of {min_words}..{max_words} words in {_CANDIDATES} draws")
    return best
