"""Lip streams in simulated shards: opt-in target, alignment with the source, re-rendering from the
metadata, worker-count invariance, ROI-file corpora and their bad files."""
import json

import numpy as np
import pytest
import webdataset as wds

import hubbub.simulate.recipe as recipe_module
from hubbub.config import ConfigError
from hubbub.shards.format import decode_sample, dequantize, storage_of
from hubbub.shards.stats import corpus_stats
from hubbub.shards.verify import verify_corpus
from hubbub.simulate import load_recipe, simulate
from hubbub.simulate.recipe import DEFAULT_TARGETS, preset_names, recipe_from_dict
from hubbub.simulate.sample import render
from hubbub.sources.lips import roi_frame_indices
from hubbub.testing import make_av_folder, make_bad_rois, make_simulator, simulate_one
from hubbub.sources.mouths import VISEMES, mouth_shapes
from hubbub.video import load_roi, num_video_frames
from hubbub.voices import available_synthesizers, make_voices

needs_voices = pytest.mark.skipif(not available_synthesizers(),
                                  reason="needs espeak-ng or flite (apt-get install espeak-ng flite)")
DARK = 50  # grey level below which a pixel is mouth interior (as in tests/sources/test_mouths.py)
# Content hashes of the presets before lips existed: adding the target must not move them.
PRESET_HASHES = {"anechoic_2spk": "188907a391c179a4", "debug": "77b7a2e0d2944c71", "librimix": "0993ec3e5664f0c2",
                 "mixit": "6dd41a1911db6ccd", "smswsj": "aa8d8987e17c0d27", "sparse": "2288cfb4e306b859",
                 "whamr": "961685b19527a0a3"}


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    if not available_synthesizers():
        pytest.skip("needs espeak-ng or flite (apt-get install espeak-ng flite)")
    out = tmp_path_factory.mktemp("voices")
    # espeak-ng and flite: their phoneme timings are the ones the mouth-opening check was tuned on
    make_voices(out, num_speakers=6, utterances_per_speaker=2, seed=3, synthesizers=("espeak-ng", "flite"))
    return out


@pytest.fixture(scope="module")
def lrs(tmp_path_factory):
    root = make_av_folder(tmp_path_factory.mktemp("lrs"), num_speakers=3, utterances_per_speaker=2, seconds=2.5)
    return root, make_bad_rois(root)


def _tar_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tar"))}


# -- recipe -------------------------------------------------------------------------------------------
def test_lips_are_opt_in_and_the_presets_keep_their_hashes():
    assert {name: load_recipe(name).content_hash() for name in PRESET_HASHES} == PRESET_HASHES
    assert all("lips" not in load_recipe(name).targets for name in PRESET_HASHES)
    assert recipe_from_dict({}).targets == list(DEFAULT_TARGETS) and "lips" not in DEFAULT_TARGETS
    base = load_recipe("librimix")
    assert load_recipe("librimix", ["targets=[dry, lips]"]).content_hash() != base.content_hash()
    assert load_recipe("librimix", ["speech.lips_dir=/data/mouths"]).content_hash() == base.content_hash()


def test_av_presets():
    assert {"av", "av_debug"} <= set(preset_names())
    for name in ("av", "av_debug"):
        r = load_recipe(name)
        assert "lips" in r.targets and {"dry", "reverberant"} <= set(r.targets)
        assert (r.sample_rate_hz, r.speakers.count, r.duration.mode, r.speech.corpus) == (16000, 2, "fixed", "builtin")
    assert load_recipe("av_debug").duration.fixed_s < load_recipe("av").duration.fixed_s


def test_lips_need_whole_samples_per_frame(monkeypatch):
    monkeypatch.setattr(recipe_module, "SAMPLE_RATES_HZ", (16000, 16010))
    recipe_from_dict({"sample_rate_hz": 16010})
    with pytest.raises(ConfigError) as exc:
        recipe_from_dict({"sample_rate_hz": 16010, "targets": ["dry", "lips"]})
    assert exc.value.field == "sample_rate_hz" and "25" in str(exc.value)


# -- built-in voices: lips drawn from phoneme timings ------------------------------------------------
@needs_voices
def test_lips_are_drawn_after_everything_else(voices):
    sim = make_simulator(voices, "av_debug")
    with_lips = sim.draw("train", 3)
    sim.recipe.targets.remove("lips")   # same seed key: only the lips draws may differ
    without = sim.draw("train", 3)
    lips = [s.pop("lips") for s in with_lips["sources"]]
    assert with_lips == {**without, "targets": without["targets"] + ["lips"]}
    assert [x["kind"] for x in lips] == ["phonemes", "phonemes"] and lips[0]["seed"] != lips[1]["seed"]


@needs_voices
def test_synthetic_lips_move_with_their_source_and_rest_outside_it(voices):
    # longer than most utterances: silence around them
    sim = make_simulator(voices, "av_debug", "duration.fixed_s=5.0")
    hop, rested = 16000 // 25, 0
    for index in range(3):
        rendered = render(sim.draw("train", index))
        meta = rendered.meta
        frames_total = num_video_frames(meta["num_samples"], meta["sample_rate_hz"])
        for k, src in enumerate(meta["sources"]):
            frames = rendered.lips[k]
            assert frames.dtype == np.uint8 and frames.shape == (frames_total, 96, 96)
            assert src["lips"]["num_frames"] == frames_total and src["lips"]["fps"] == 25
            j = np.arange(frames_total)
            start, stop = src["start_sample"], src["start_sample"] + src["num_samples"]
            outside = ((j + 1) * hop <= start) | (j * hop >= stop)
            shapes = mouth_shapes(src["lips"]["phonemes"], src["lips"]["phoneme_set"], frames_total)
            # the phonemes are clipped to the excerpt: outside it the mouth is exactly at rest
            np.testing.assert_allclose(shapes[outside], np.tile(VISEMES["rest"], (outside.sum(), 1)), atol=1e-6)
            dark = (frames < DARK).sum(axis=(1, 2)).astype(float)
            assert dark[outside].max(initial=0) == 0 and dark[~outside].max() > 200
            rested += outside.sum()
            # the mouth opens where the dry source is loud, in step with it
            dry = np.pad(rendered.targets_q["dry"][k].astype(float), (0, frames_total * hop - meta["num_samples"]))
            rms = np.sqrt((dry.reshape(frames_total, hop) ** 2).mean(axis=1))

            def corr(lag):  # video delayed by `lag` frames
                return np.corrcoef(dark[max(lag, 0):frames_total + min(lag, 0)],
                                   rms[max(-lag, 0):frames_total + min(-lag, 0)])[0, 1]

            assert corr(0) > 0.4 and corr(0) > max(corr(lag) for lag in (-8, -5, 5, 8))
    assert rested > 50


@needs_voices
def test_metadata_alone_re_renders_the_lips(tmp_path, voices):
    s = simulate_one(make_simulator(voices, "av_debug"), tmp_path, index=2)
    assert [x.shape for x in s["sources"]["lips"]] == [(50, 96, 96)] * 2
    again = render(s["meta"])
    for k in range(2):
        np.testing.assert_array_equal(again.lips[k], s["sources"]["lips"][k])
    np.testing.assert_array_equal(dequantize(again.mix_q, storage_of(again.meta)["bits"]), s["mix"])


@pytest.mark.slow
@needs_voices
def test_one_and_two_workers_write_identical_av_shards(tmp_path, voices):
    r = load_recipe("av_debug", [f"speech.corpus={voices}", "samples_per_shard=2"])
    simulate(r, num=6, out_dir=tmp_path / "w1", seed=1, workers=1, progress=False)
    simulate(r, num=6, out_dir=tmp_path / "w2", seed=1, workers=2, progress=False)
    one, two = _tar_bytes(tmp_path / "w1"), _tar_bytes(tmp_path / "w2")
    assert len(one) == 4 and one == two
    report = verify_corpus(tmp_path / "w2")
    assert report.ok, report.format()
    assert corpus_stats(tmp_path / "w2")["splits"]["train"]["lip_streams"] == {"phonemes": 2 * 5}
    card = json.loads((tmp_path / "w2" / "index.json").read_text())["data_card"]
    assert card["lips"] == {"phonemes": 12, "file": 0}


# -- ROI-file corpora ---------------------------------------------------------------------------------
def test_an_lrs_folder_gives_file_lips_and_reports_bad_rois(tmp_path, lrs):
    root, bad = lrs
    r = load_recipe("av_debug", [f"speech.corpus={root}", "splits={train: 1.0}", "duration.fixed_s=3.0"])
    res = simulate(r, num=4, out_dir=tmp_path / "c", workers=0, progress=False)
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert {f["path"]: f["reason"] for f in report["skipped_files"]} == bad
    assert {f["kind"] for f in report["skipped_files"]} == {"lips"} and not res.failed_samples
    assert verify_corpus(tmp_path / "c").ok
    for raw in wds.WebDataset(str(tmp_path / "c" / "train-000000.tar"), shardshuffle=False, empty_check=False):
        s = decode_sample(raw)
        for k, src in enumerate(s["meta"]["sources"]):
            lips = src["lips"]
            assert lips["kind"] == "file" and lips["num_frames"] == 75
            roi = load_roi(lips["path"])
            assert lips["roi_num_frames"] == len(roi)
            expected = roi[roi_frame_indices(75, 16000, src, len(roi))]
            np.testing.assert_array_equal(s["sources"]["lips"][k], expected)
        again = render(s["meta"])
        for k in range(len(again.lips)):
            np.testing.assert_array_equal(again.lips[k], s["sources"]["lips"][k])


def test_a_source_without_a_lip_source_fails_its_sample_not_the_run(tmp_path, lrs):
    root, _ = lrs
    sim = make_simulator(root, "av_debug", "splits={train: 1.0}")
    for us in sim.pools["train"].utterances_by_speaker.values():
        for u in us:
            u.lips = None   # as if indexed without lips
    with pytest.raises(ValueError, match="lip source"):
        sim.draw("train", 0)
