import json
import math

import numpy as np
import pytest

from hubbub.evaluate import FACTORS, breakdown, evaluate_run, format_markdown
from hubbub.losses import SI_SNR_FLOOR_DB
from hubbub.metrics import evaluate_separation, si_snr
from hubbub.models import load_model
from hubbub.separate import separate_waveform
from hubbub.shards.reader import ShardDataset
from hubbub.testing import make_dummy_corpus, make_dummy_run

SR = 8000


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    # Speaker counts cycle 1, 2, 3: a 2-output model scores 1- and 2-speaker mixtures, skips 3.
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus") / "dummy", splits={"test": 6},
                             samples_per_shard=4, num_speakers=[1, 2, 3], seconds=1.0, sample_rate_hz=SR)


def make_run(run_dir, corpus_dir, *, target="reverberant", sample_rate_hz=SR):
    return make_dummy_run(run_dir, corpus_dir, target=target, sample_rate_hz=sample_rate_hz)


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_evaluate_run_scores_reports_and_plots(tmp_path, corpus):
    run = make_run(tmp_path / "run", corpus)
    results = evaluate_run(run, corpus, metrics=("si_snri", "sdri"))

    out = run / "eval" / "dummy-test"
    assert results["out_dir"] == str(out)
    assert strict_json(out / "results.json") == results
    assert (out / "results.md").read_text() == format_markdown(results)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"si_snri_by_{f.name}.png" for f in FACTORS)
    assert not list(out.glob("*.tmp"))

    assert results["target"] == "reverberant" and results["model"] == {"name": "convtasnet", "num_sources": 2,
                                                                                  "audio_visual": False}
    assert [r["num_speakers"] for r in results["samples"]] == [1, 2, 1, 2]
    assert [s["key"] for s in results["skipped"]] == ["test_00000002", "test_00000005"]
    assert results["overall"]["count"] == 4
    assert set(results["overall"]["mean"]) == {"si_snr", "si_snri", "sdr", "sdri"}
    assert results["overall"]["mean"]["si_snri"] == pytest.approx(
        np.mean([r["mean"]["si_snri"] for r in results["samples"]]))
    for name, bins in results["breakdowns"].items():
        assert sum(b["count"] for b in bins) == 4, name
    assert [(b["bin"], b["count"]) for b in results["breakdowns"]["speakers"]] == [("1", 2), ("2", 2)]
    for row in results["samples"]:
        assert len(row["perm"]) == row["num_speakers"]  # a 1-speaker mixture: the best single output


def test_rows_are_the_metrics_of_the_whole_sample_at_mic_0(tmp_path, corpus):
    run = make_run(tmp_path / "run", corpus, target="early")
    results = evaluate_run(run, corpus, target="direct", max_samples=2, metrics=("si_snri",),
                           out_dir=tmp_path / "eval")
    assert results["target"] == "direct" and len(results["samples"]) == 2

    model = load_model(run / "model").eval()
    item = next(iter(ShardDataset(corpus, "test", targets=("direct",), shuffle=False, mic=0)))
    mix = item["mix"][0].numpy()
    expected = evaluate_separation(separate_waveform(model, mix, sample_rate_hz=SR),
                                   item["sources"]["direct"].numpy(), mix, SR, metrics=("si_snri",))
    row = results["samples"][0]
    assert row["key"] == item["key"] and row["perm"] == expected["perm"]
    assert row["mean"]["si_snri"] == pytest.approx(expected["mean"]["si_snri"])
    assert row["rt60_s"] == item["meta"]["room"]["rt60_s_measured"]


def test_fewer_speakers_than_outputs_are_scored_on_the_present_sources_by_the_best_output(tmp_path, corpus):
    # As documented: scored against the present references only, on the best-matching outputs.
    run = make_run(tmp_path / "run", corpus)
    results = evaluate_run(run, corpus, max_samples=1, metrics=("si_snri", "sdri"), out_dir=tmp_path / "eval")
    row = results["samples"][0]
    assert row["num_speakers"] == 1 and results["model"]["num_sources"] == 2
    # No absent (all-zero) reference is scored: its SDR would be missing, its SI-SNR the floor.
    assert {name: len(values) for name, values in row["per_source"].items()} == {
        "si_snr": 1, "si_snri": 1, "sdr": 1, "sdri": 1}
    assert row["per_source"]["sdr"][0] is not None and row["per_source"]["si_snr"][0] > SI_SNR_FLOOR_DB

    item = next(iter(ShardDataset(corpus, "test", targets=("reverberant",), shuffle=False, mic=0)))
    mix, ref = item["mix"][0].numpy(), item["sources"]["reverberant"].numpy()
    est = separate_waveform(load_model(run / "model").eval(), mix, sample_rate_hz=SR)
    per_output = si_snr(est, ref[0])
    assert est.shape[0] == 2 and row["perm"] == [int(np.argmax(per_output))]
    assert row["per_source"]["si_snr"][0] == pytest.approx(per_output.max())


def test_perceptual_metrics_are_reported(tmp_path, corpus):
    run = make_run(tmp_path / "run", corpus)
    results = evaluate_run(run, corpus, max_samples=2, out_dir=tmp_path / "eval")
    assert {"pesq", "pesq_mix", "stoi", "stoi_mix"} <= set(results["overall"]["mean"])
    for row in results["samples"]:
        for name in ("pesq_mix", "stoi_mix"):
            values = row["per_source"][name]
            assert len(values) == row["num_speakers"]
            assert all(v is not None or row["nan_reasons"][name] for v in values)
    assert "| PESQ |" in format_markdown(results).replace(" mix", "")


def test_wrong_sample_rate_is_refused(tmp_path, corpus):
    run = make_run(tmp_path / "run", corpus, sample_rate_hz=16000)
    with pytest.raises(ValueError, match="8000 Hz"):
        evaluate_run(run, corpus, metrics=("si_snri",), out_dir=tmp_path / "eval")


def test_bins_follow_their_values_with_none_first_or_last():
    values = {"rt60_s": [None, 0.29, 0.3, 0.61, 0.45], "snr_db": [None, -2.0, 12.0, 5.0, 0.0],
              "overlap_ratio": [0.0, 0.3, 0.3, 0.99, -0.2], "num_speakers": [3, 1, 2, 2, 1]}
    rows = [{**{k: v[i] for k, v in values.items()}, "mean": {"si_snri": float(i)}} for i in range(5)]
    factors = {f.name: f for f in FACTORS}

    def bins(name):
        return [(b["bin"], b["count"]) for b in breakdown(rows, factors[name])]

    assert bins("rt60") == [("anechoic", 1), ("< 0.3 s", 1), ("0.3–0.6 s", 2), ("≥ 0.6 s", 1)]
    assert bins("snr") == [("< 0 dB", 1), ("0–5 dB", 1), ("5–10 dB", 1), ("≥ 10 dB", 1), ("no noise", 1)]
    assert bins("overlap") == [("< 0.25", 2), ("0.25–0.5", 2), ("≥ 0.75", 1)]
    assert bins("speakers") == [("1", 2), ("2", 2), ("3", 1)]
    by_rt60 = breakdown(rows, factors["rt60"])
    assert by_rt60[2]["mean"]["si_snri"] == pytest.approx((2.0 + 4.0) / 2)
    # a reverberant sample without a measured RT60 (an ingested WHAMR! mixture) is not "anechoic"
    rows.append({**rows[0], "rt60_bin": "unknown"})
    assert bins("rt60")[0] == ("anechoic", 1) and bins("rt60")[-1] == ("unknown", 1)


def test_a_sample_row_bins_an_unmeasured_reverberant_room_as_unknown():
    from hubbub.evaluate import _sample_row
    from hubbub.schema import Room, SampleMeta

    def meta(room):
        return SampleMeta(key="k", split="test", index=0, sample_rate_hz=8000, num_samples=8000, num_speakers=2,
                          num_mics=1, targets=(), sources=[], room=room)

    scores = {"mean": {}, "per_source": {}, "perm": [0, 1], "nan_reasons": {}}
    reverb = _sample_row("k", meta(Room(rir_mode="unknown", rt60_s_measured=None)), scores)
    anechoic = _sample_row("k", meta(Room(rir_mode="anechoic", rt60_s_measured=None)), scores)
    assert reverb["rt60_bin"] == "unknown" and "rt60_bin" not in anechoic


def test_a_bin_whose_scores_are_all_nan_reads_none():
    rows = [{"rt60_s": 0.1, "mean": {"pesq": math.nan}}, {"rt60_s": 0.7, "mean": {"pesq": 2.0}}]
    rt60 = next(f for f in FACTORS if f.name == "rt60")
    assert [b["mean"]["pesq"] for b in breakdown(rows, rt60)] == [None, 2.0]
