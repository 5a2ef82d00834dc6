"""The corpus bytes of every preset are pinned: refactoring the simulator (the sample schema, the
rendering pipeline) must not move one byte of what a recipe writes. Every member of two samples
per preset (train and test) is hashed; the speech folder's own path is masked in the JSON."""
import hashlib

import pytest

from hubbub.simulate.recipe import preset_names
from hubbub.simulate.sample import render, to_members
from hubbub.testing import make_av_folder, make_simulator, make_speech_folder

# Recorded on 2026-12-06 (commit a48e6b0), before the renovation of issue 18.
CORPUS_HASHES = {
    "anechoic_2spk": "27ba551f05bcd837",
    "av": "a9f1cebbd8230c05",
    "av_debug": "daaa0bcf7383a870",
    "debug": "ceb376d1ea439f25",
    "librimix": "11f3dfc17c5f6e8a",
    "mixit": "a4a7747861cbd8e7",
    "smswsj": "806e35d93c09bda3",
    "sparse": "5d746047d5c4dc4c",
    "whamr": "b6c59d46c834b517",
}
AV_PRESETS = ("av", "av_debug")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")  # the folders' names are recorded (corpus names): keep them
    speech = make_speech_folder(root / "speech", num_speakers=8, utterances_per_speaker=2,
                                seconds=2.5)
    av = make_av_folder(root / "lrs", num_speakers=4, utterances_per_speaker=2, seconds=2.5)
    return speech, av


def corpus_hash(folder, preset: str) -> str:
    sim = make_simulator(folder, preset, "splits={train: 0.5, test: 0.5}")
    digest = hashlib.sha256()
    for split, index in (("train", 0), ("test", 1)):
        members = to_members(render(sim.draw(split, index)))
        for name in sorted(members):
            data = members[name]
            data = data.encode() if isinstance(data, str) else data
            digest.update(name.encode() + b"\0" + data.replace(str(folder).encode(), b"<speech>") + b"\0")
    return digest.hexdigest()[:16]


@pytest.mark.parametrize("preset", sorted(preset_names()))
def test_every_preset_writes_the_bytes_it_wrote_before(folders, preset):
    speech, av = folders
    got = corpus_hash(av if preset in AV_PRESETS else speech, preset)
    assert got == CORPUS_HASHES[preset], f"{preset}: the corpus bytes moved ({got})"
