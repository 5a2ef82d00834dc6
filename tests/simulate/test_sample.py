"""Properties of one rendered mixture: exact sums, re-rendering from metadata, alignment, levels."""
import json

import numpy as np
import pytest

from hubbub.shards.format import dequantize, storage_of
from hubbub.simulate.sample import render
from hubbub.testing import make_simulator, make_speech_folder, simulate_one


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return make_speech_folder(tmp_path_factory.mktemp("speech"), num_speakers=12, utterances_per_speaker=2,
                              seconds=2.5)


@pytest.mark.parametrize("overrides", [
    ("mics.array=pair", "mics.count=2", "speakers.distribution={2: 1.0}"),
    ("mics.array=circular", "mics.count=4", "speakers.distribution={3: 1.0}", "noise.kind=babble"),
    ("room.rir_mode=anechoic", "room.rt60_s=[0, 0]", "noise.kind=none"),
])
def test_mixture_is_the_sum_of_reverberant_images_plus_noise(tmp_path, speech, overrides):
    s = simulate_one(make_simulator(speech, "debug", *overrides), tmp_path)
    total = sum(s["sources"]["reverberant"]) + (s["noise"] if s["noise"] is not None else 0)
    np.testing.assert_allclose(s["mix"], total, atol=1e-6)
    assert np.abs(s["mix"]).max() <= 0.9 + 1e-6 and np.abs(s["mix"]).max() > 1e-3
    m = s["meta"]
    assert s["mix"].shape == (m["num_mics"], m["num_samples"])
    assert len(s["sources"]["reverberant"]) == m["num_speakers"]


def test_draw_depends_only_on_identity(speech):
    a, b = make_simulator(speech, "debug"), make_simulator(speech, "debug")
    assert a.draw("train", 5) == b.draw("train", 5)
    assert a.draw("train", 5) != a.draw("train", 6)
    assert a.draw("train", 5) != a.draw("valid", 5)


def test_metadata_alone_re_renders_the_sample(tmp_path, speech):
    s = simulate_one(make_simulator(speech, "debug", "mics.array=pair", "mics.count=2"), tmp_path)
    again = render(s["meta"])
    np.testing.assert_array_equal(dequantize(again.mix_q, storage_of(again.meta)["bits"]), s["mix"])
    assert again.meta["key"] == s["meta"]["key"]


def test_sir_and_snr_are_what_the_metadata_says(tmp_path, speech):
    sim = make_simulator(speech, "debug", "speakers.distribution={2: 1.0}", "mixing.snr_db=[5, 15]",
                         "mixing.sir_db=[-4, 4]")
    s = simulate_one(sim, tmp_path, index=3)
    m, ref = s["meta"], s["meta"]["mics"]["reference"]

    def active_power(x):
        nz = np.flatnonzero(np.abs(x) > 1e-7)
        return np.mean(x[nz[0]:nz[-1] + 1].astype(np.float64) ** 2)

    rev = s["sources"]["reverberant"]
    sir = 10 * np.log10(active_power(rev[1][ref]) / active_power(rev[0][ref]))
    assert abs(sir - m["sources"][1]["sir_db"]) < 0.1
    snr = 10 * np.log10(active_power(sum(rev)[ref]) / active_power(s["noise"][ref]))
    assert abs(snr - m["noise"]["snr_db"]) < 0.1


def test_dry_target_lines_up_with_the_direct_path(tmp_path, speech):
    s = simulate_one(make_simulator(speech, "debug", "speakers.distribution={1: 1.0}"), tmp_path)
    dry, direct = s["sources"]["dry"][0], s["sources"]["direct"][0][0]
    lags = np.arange(-20, 21)
    xc = [np.dot(dry[max(0, -l):len(dry) - max(0, l)], direct[max(0, l):len(direct) - max(0, -l)]) for l in lags]
    assert abs(lags[int(np.argmax(xc))]) <= 1
    # the stored RIR is the one used: reverberant == undelayed dry source * RIR
    delay = s["meta"]["sources"][0]["dry_delay_samples"]
    source = np.zeros_like(dry)
    source[: len(dry) - delay] = dry[delay:]
    rir = s["sources"]["rir"][0]
    rebuilt = np.convolve(source, rir[0])[: len(dry)]
    rev = s["sources"]["reverberant"][0][0]
    keep = len(dry) - delay  # the dry target's last `delay` samples fell off the end
    assert np.abs(rebuilt - rev)[:keep].max() < 1e-4 * np.abs(rev).max() + 1e-5


def test_overlap_modes_place_speakers_as_asked(speech):
    sim = make_simulator(speech, "debug", "overlap.mode=sparse", "overlap.ratio=[-0.2, -0.1]",
                         "speakers.distribution={2: 1.0}", "duration.mode=max", "duration.max_s=10")
    p = sim.draw("train", 0)
    a, b = p["sources"]
    assert b["start_sample"] >= a["start_sample"] + a["num_samples"]  # a gap: no overlap at all
    full = make_simulator(speech, "debug", "speakers.distribution={2: 1.0}", "duration.mode=min").draw("train", 0)
    assert all(s["start_sample"] == 0 for s in full["sources"])
    assert full["num_samples"] == min(s["num_samples"] for s in full["sources"])


def test_a_noise_target_without_noise_is_not_claimed(tmp_path):
    # targets [.., noise] with noise.kind=none: the samples store no noise member, so their JSON
    # does not list the target and the corpus verifies (it used to report the member missing)
    from hubbub.shards.verify import verify_corpus
    from hubbub.simulate import load_recipe, simulate
    from hubbub.testing import make_speech_folder

    speech = make_speech_folder(tmp_path / "speech", num_speakers=4, utterances_per_speaker=2)
    recipe = load_recipe("librimix", [f"speech.corpus={speech}", "noise.kind=none", "sample_rate_hz=8000",
                                      "splits={train: 1.0}"])
    res = simulate(recipe, num=2, out_dir=tmp_path / "c", workers=0, progress=False)
    assert res.failed_samples == []
    report = verify_corpus(tmp_path / "c")
    assert report.ok, report
    import tarfile
    with tarfile.open(tmp_path / "c" / "train-000000.tar") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    assert "noise" not in meta["targets"] and not any(".noise." in n or n.endswith("noise.flac") for n in names)
