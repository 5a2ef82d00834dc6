"""Standard separation sets (LibriMix, WHAM!, WHAMR!, wsj0-mix) ingested into labelled corpora:
small fake trees of each layout, written as the sets' scripts write them (every signal rounded
to 16 bits on its own, so a mixture is its sources' sum only up to rounding)."""
import json
from collections import defaultdict
from pathlib import Path

import fsspec
import numpy as np
import pytest
import soundfile as sf
from webdataset.tariterators import group_by_keys, tar_file_expander

from hubbub.shards.format import decode_audio
from hubbub.shards.layouts import LayoutError, detect_layout, ingest_dataset
from hubbub.shards.reader import ShardDataset
from hubbub.shards.stats import corpus_stats
from hubbub.shards.verify import verify_corpus
from hubbub.testing import dummy_speech, make_speech_folder

RATE = 8000
STEP = 2.0 ** -15  # one step of the sets' 16-bit files
SPLITS = {"librimix": {"train-360": 3, "dev": 2, "test": 2}, "wham": {"tr": 3, "cv": 2, "tt": 2},
          "whamr": {"tr": 3, "cv": 2, "tt": 2}, "wsj0mix": {"tr": 3, "cv": 2, "tt": 2}}


def _ids(layout: str, split: str, count: int, num_speakers: int) -> list[str]:
    if layout == "librimix":  # {speaker-chapter-utterance}_{...}
        return ["_".join(f"{100 * (k + 1) + i}-{k}-{i:04d}" for k in range(num_speakers)) for i in range(count)]
    # wsj0-mix: {utterance}_{gain dB}_{utterance}_{gain dB}, the speaker the utterance's first 3 characters
    return ["_".join(f"{k}{split}{i}0a0{k}_{(-1) ** k * 0.5:.4f}" for k in range(num_speakers))
            for i in range(count)]


def make_set(root: Path, layout: str, *, num_speakers: int = 2, rate: int = RATE, mode: str = "min",
             seconds: float = 0.5, splits: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A fake tree of ``layout`` under ``root`` (``root/wav8k/min/<split>/<folder>/<id>.wav``):
    sources at different levels, WHAM!-like noise, WHAMR!'s reverberant images by a decaying RIR,
    every mixture folder of the layout the sum of its parts, each file 16-bit PCM."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    for split, count in (splits or SPLITS[layout]).items():
        folder = root / f"wav{rate // 1000}k" / mode / split
        for id_ in _ids(layout, split, count, num_speakers):
            dry = [dummy_speech(rng, seconds, rate) * 3 * 10 ** (-k / 8) for k in range(num_speakers)]
            noise = (0.02 * rng.standard_normal(n)).astype(np.float32)
            signals = {"noise": noise}
            if layout == "whamr":
                rir = np.exp(-np.arange(rate // 10) / (rate * 0.02)) * rng.standard_normal(rate // 10) * 0.1
                rir[0] = 1.0
                reverb = [np.convolve(x, rir)[:n].astype(np.float32) * 0.5 for x in dry]
                for k in range(num_speakers):
                    signals[f"s{k + 1}_anechoic"], signals[f"s{k + 1}_reverb"] = dry[k], reverb[k]
                for kind, srcs in (("anechoic", dry), ("reverb", reverb)):
                    signals[f"mix_clean_{kind}"] = sum(srcs)
                    signals[f"mix_both_{kind}"] = sum(srcs) + noise
                    signals[f"mix_single_{kind}"] = srcs[0] + noise
            else:
                for k in range(num_speakers):
                    signals[f"s{k + 1}"] = dry[k]
                if layout == "wsj0mix":
                    signals = {"mix": sum(dry), **{f"s{k + 1}": dry[k] for k in range(num_speakers)}}
                else:
                    signals.update(mix_clean=sum(dry), mix_both=sum(dry) + noise, mix_single=dry[0] + noise)
            for name, x in signals.items():
                (folder / name).mkdir(parents=True, exist_ok=True)
                sf.write(folder / name / f"{id_}.wav", x, rate, subtype="PCM_16")
    return root


def read_corpus(corpus: Path) -> dict[str, list[dict]]:
    """Every sample by split, read with webdataset (not hubbub's reader): meta and decoded members."""
    out = defaultdict(list)
    for path in sorted(corpus.glob("*.tar")):
        with open(path, "rb") as f:
            for raw in group_by_keys(tar_file_expander([{"url": str(path), "stream": f}])):
                meta = json.loads(raw["json"])
                audio = {k.rsplit(".", 1)[0]: decode_audio(v)[0] for k, v in raw.items()
                         if k.endswith((".flac", ".wav"))}
                out[meta["split"]].append({"meta": meta, "audio": audio})
    return out


def file_of(root: Path, meta: dict, stem: str) -> np.ndarray:
    return sf.read(root / meta["dataset"]["files"][stem], dtype="float32")[0]


@pytest.fixture(scope="module")
def libri(tmp_path_factory):
    """A Libri2Mix tree and its mix_both corpus, 2 samples a shard."""
    root = make_set(tmp_path_factory.mktemp("sets") / "Libri2Mix", "librimix")
    out = tmp_path_factory.mktemp("corpora") / "libri2mix"
    return root, ingest_dataset(root, out, mixture="mix_both", samples_per_shard=2)


@pytest.mark.parametrize("layout", ["librimix", "wham", "whamr", "wsj0mix"])
def test_the_layout_is_told_by_the_folder_names(tmp_path, layout):
    root = make_set(tmp_path / "set", layout, splits={list(SPLITS[layout])[-1]: 1})
    assert detect_layout(root) == layout
    assert detect_layout(root / "wav8k") == layout == detect_layout(root / "wav8k" / "min")
    assert detect_layout(make_speech_folder(tmp_path / "speech", num_speakers=2, utterances_per_speaker=1)) is None


def test_librimix_samples_splits_and_provenance(libri):
    root, res = libri
    corpus = read_corpus(Path(res.out_dir))
    assert {s: len(v) for s, v in corpus.items()} == {"train": 3, "valid": 2, "test": 2}
    assert res.index["splits"]["train"]["shards"] == 2 and res.written == 4 and not res.skipped
    sample = corpus["test"][0]
    meta = sample["meta"]
    assert meta["labelled"] and meta["num_speakers"] == 2 and meta["targets"] == ["dry", "reverberant", "noise"]
    assert sorted(sample["audio"]) == ["mix", "noise", "s0.dry", "s0.reverberant", "s1.dry", "s1.reverberant"]
    assert [s["speaker"] for s in meta["sources"]] == ["100", "200"]
    assert meta["dataset"]["files"]["s1.dry"] == f"wav8k/min/test/s2/{meta['dataset']['id']}.wav"
    # measured as hubbub measures (powers over the sources' active spans: here all of them)
    s1, s2, noise = (file_of(root, meta, stem) for stem in ("s0.dry", "s1.dry", "noise"))
    power = lambda x: np.mean(x.astype(np.float64) ** 2)  # noqa: E731
    assert meta["sources"][1]["sir_db"] == pytest.approx(10 * np.log10(power(s2) / power(s1)), abs=0.01)
    assert meta["noise"]["snr_db"] == pytest.approx(10 * np.log10(power(s1 + s2) / power(noise)), abs=0.01)
    assert 0 < meta["mixing"]["overlap_ratio"] <= 1
    card = res.index["data_card"]
    assert card["dataset"] == "Libri2Mix" and card["licences"] == ["CC-BY-4.0", "CC-BY-NC-4.0"]
    assert card["speakers_per_split"] == {"train": 6, "valid": 4, "test": 4}
    assert "non-commercial" in card["redistribution"] and res.index["recipe"]["sample_rate_hz"] == RATE
    assert res.index["recipe"]["splits"] == {"train-360": "train", "dev": "valid", "test": "test"}
    stats = corpus_stats(res.out_dir)["splits"]["test"]   # from the JSONs: speakers and measured SNRs
    assert stats["distinct_speakers"] == 4 and stats["metrics"]["snr_db"]["count"] == 2


def test_mixture_is_the_file_and_the_exact_sum_of_its_targets(libri):
    root, res = libri
    report = verify_corpus(res.out_dir)   # also mix == sum(reverberant) + noise, exactly
    assert report.ok, report.format()
    adjusted = 0
    for samples in read_corpus(Path(res.out_dir)).values():
        for s in samples:
            a, meta = s["audio"], s["meta"]
            np.testing.assert_array_equal(a["mix"], file_of(root, meta, "mix"))   # the set's mixture, as is
            np.testing.assert_array_equal(a["mix"], a["s0.reverberant"] + a["s1.reverberant"] + a["noise"])
            for stem in ("s0.dry", "s1.dry", "s0.reverberant", "noise"):
                np.testing.assert_allclose(a[stem], file_of(root, meta, stem), atol=STEP, rtol=0)
            adjusted += meta["dataset"]["mix_sum_error"] > 0
    assert adjusted  # the fake sets round like the real ones: some mixtures needed spreading


def test_reader_and_an_oracle_evaluation(libri, tmp_path):
    """The reader yields the targets (as PIT training and evaluate read them), the references
    themselves score as a perfect separation, and evaluate runs a model on the corpus."""
    from hubbub.evaluate import evaluate_run
    from hubbub.metrics import evaluate_separation
    from hubbub.testing import make_dummy_run

    _, res = libri
    ds = ShardDataset(res.out_dir, "test", targets=("dry",), shuffle=False, max_sources=2)
    items = list(ds)
    assert [i["num_sources"] for i in items] == [2, 2] and items[0]["sources"]["dry"].shape == (2, RATE // 2)
    ref, mix = items[0]["sources"]["dry"].numpy(), items[0]["mix"][0].numpy()
    oracle = evaluate_separation(ref[::-1].copy(), ref, mix, RATE, metrics=("si_snri",))
    assert oracle["mean"]["si_snr"] > 60 and oracle["perm"] == [1, 0]

    run = make_dummy_run(tmp_path / "run", res.out_dir, target="reverberant", sample_rate_hz=RATE)
    results = evaluate_run(run, res.out_dir, split="test", metrics=("si_snri",))
    assert results["overall"]["count"] == 2 and np.isfinite(results["overall"]["mean"]["si_snri"])
    assert {b["bin"] for b in results["breakdowns"]["snr"]} <= {"< 0 dB", "0–5 dB", "5–10 dB", "≥ 10 dB"}


def test_whamr_reverberant_and_anechoic_targets(tmp_path):
    root = make_set(tmp_path / "whamr", "whamr", splits={"tt": 2})
    res = ingest_dataset(root, tmp_path / "corpus", targets="dry,direct,reverberant,noise")
    assert res.tree.mixture == "mix_both_reverb" and verify_corpus(res.out_dir).ok
    for s in read_corpus(Path(res.out_dir))["test"]:
        a, meta = s["audio"], s["meta"]
        assert meta["dataset"]["files"]["s0.reverberant"].endswith(f"tt/s1_reverb/{meta['dataset']['id']}.wav")
        np.testing.assert_array_equal(a["s1.dry"], file_of(root, meta, "s1.dry"))    # s2_anechoic, untouched
        np.testing.assert_array_equal(a["s1.direct"], a["s1.dry"])
        np.testing.assert_allclose(a["s1.reverberant"], file_of(root, meta, "s1.reverberant"), atol=STEP, rtol=0)
        assert not np.allclose(a["s0.dry"], a["s0.reverberant"], atol=1e-3)
        assert meta["room"]["rt60_s_measured"] is None and meta["sources"][0]["speaker"] == "0tt"
    assert res.index["data_card"]["licences"] == ["CC-BY-NC-4.0", "LicenseRef-LDC-WSJ0"]
    with pytest.raises(LayoutError, match="offers targets dry, direct, reverberant, noise; early asked for"):
        ingest_dataset(root, tmp_path / "early", targets=["early"])
    anechoic = ingest_dataset(root, tmp_path / "anechoic", mixture="mix_clean_anechoic", targets="early")
    assert anechoic.index["recipe"]["targets"] == ["early"] and verify_corpus(anechoic.out_dir).ok


@pytest.mark.parametrize("layout, name", [("wsj0mix", "wsj0-3mix"), ("librimix", "Libri3Mix")])
def test_three_speakers_where_s3_exists(tmp_path, layout, name):
    split = list(SPLITS[layout])[-1]
    root = make_set(tmp_path / "set", layout, num_speakers=3, splits={split: 2})
    res = ingest_dataset(root, tmp_path / "corpus")
    assert res.tree.name == name and verify_corpus(res.out_dir).ok
    meta = read_corpus(Path(res.out_dir))["test"][0]["meta"]
    assert meta["num_speakers"] == 3 and len(meta["sources"]) == 3 and meta["noise"] is None
    assert res.index["recipe"]["speakers"]["count"] == 3
    if layout == "wsj0mix":
        assert res.index["data_card"]["redistribution"].startswith("not allowed")


def test_mix_single_is_one_speaker_and_noise(libri, tmp_path):
    root, _ = libri
    res = ingest_dataset(root, tmp_path / "single", mixture="mix_single", splits="test=test")
    [a, b] = read_corpus(Path(res.out_dir))["test"]
    assert a["meta"]["num_speakers"] == 1 and sorted(a["audio"]) == ["mix", "noise", "s0.dry", "s0.reverberant"]
    assert verify_corpus(res.out_dir).ok and list(res.index["splits"]) == ["test"]


def test_a_url_ingests_as_the_folder_does(libri, tmp_path):
    root, _ = libri
    fs = fsspec.filesystem("memory")
    fs.put(str(root), "/sets/Libri2Mix", recursive=True)
    try:
        here = ingest_dataset(root, tmp_path / "here", splits="dev=valid,test=test")
        there = ingest_dataset("memory://sets/Libri2Mix", tmp_path / "there", splits="dev=valid,test=test")
    finally:
        fs.rm("/sets", recursive=True)
    for p in sorted(Path(here.out_dir).glob("*.tar")):
        assert p.read_bytes() == (Path(there.out_dir) / p.name).read_bytes()
    assert here.index["data_card"] == there.index["data_card"]


def test_rerun_keeps_the_corpus_and_other_settings_are_refused(libri):
    root, res = libri
    again = ingest_dataset(root, res.out_dir, mixture="mix_both", samples_per_shard=2)
    assert (again.written, again.skipped_complete) == (0, 4)
    with pytest.raises(ValueError, match="different settings"):
        ingest_dataset(root, res.out_dir, mixture="mix_clean", samples_per_shard=2)


def test_bad_files_are_skipped_with_their_reason(tmp_path):
    root = make_set(tmp_path / "Libri2Mix", "librimix", splits={"dev": 2, "test": 6})
    test = root / "wav8k" / "min" / "test"
    ids = sorted(p.stem for p in (test / "mix_clean").iterdir())
    (test / "s2" / f"{ids[0]}.wav").unlink()                                           # missing
    sf.write(test / "s1" / f"{ids[1]}.wav", np.zeros(RATE // 4, np.float32), RATE)        # length-mismatch
    x, _ = sf.read(test / "s1" / f"{ids[2]}.wav", dtype="float32")
    sf.write(test / "s1" / f"{ids[2]}.wav", x, 16000)                                    # rate-mismatch
    sf.write(test / "s1" / f"{ids[3]}.wav", x * 0.5, RATE)                               # not-a-sum
    (test / "s2" / f"{ids[4]}.wav").write_bytes(b"RIFF not really")                       # unreadable
    res = ingest_dataset(root, tmp_path / "corpus", samples_per_shard=2)
    reasons = {s["id"]: s["reason"] for s in res.skipped}
    assert reasons == {ids[0]: "missing", ids[1]: "length-mismatch", ids[2]: "rate-mismatch",
                       ids[3]: "not-a-sum", ids[4]: "unreadable"}
    assert res.index["splits"]["test"]["num_samples"] == 1 and res.index["splits"]["valid"]["num_samples"] == 2
    report = json.loads((Path(res.out_dir) / "report.json").read_text())
    assert {s["id"]: s["reason"] for s in report["skipped_samples"]} == reasons
    assert "s2/" in next(s["detail"] for s in report["skipped_samples"] if s["reason"] == "missing")
    assert verify_corpus(res.out_dir).ok


def test_malformed_trees_fail_in_one_line(tmp_path):
    root = make_set(tmp_path / "Libri2Mix", "librimix", splits={"test": 1})
    make_set(root, "librimix", rate=16000, splits={"test": 1})
    with pytest.raises(LayoutError, match="holds rates wav16k, wav8k: pick one with sample_rate_hz"):
        ingest_dataset(root, tmp_path / "out")
    (root / "wav16k").rename(tmp_path / "elsewhere")
    for folder in (root / "wav8k" / "min" / "test" / "noise").iterdir():
        folder.unlink()
    (root / "wav8k" / "min" / "test" / "noise").rmdir()
    with pytest.raises(LayoutError, match=r"test lacks noise/ \(needed for mix_both"):
        ingest_dataset(root, tmp_path / "out", mixture="mix_both")
    with pytest.raises(LayoutError, match="is not a whamr tree: no split folder tr, cv, tt"):
        ingest_dataset(root, tmp_path / "out", layout="whamr")
    with pytest.raises(LayoutError, match="looks like one split of a set"):
        detect_layout(root / "wav8k" / "min" / "test")
    with pytest.raises(LayoutError, match="has no split folder train-100"):
        ingest_dataset(root, tmp_path / "out", splits="train-100=train")
    (tmp_path / "odd" / "wav8k" / "min" / "foo").mkdir(parents=True)
    with pytest.raises(LayoutError, match="holds no split folders of a known layout"):
        detect_layout(tmp_path / "odd")
    assert not (tmp_path / "out").exists()


def test_cli_ingest_layouts_and_options(libri, tmp_path, capsys):
    from hubbub.cli import main

    root, _ = libri
    out = tmp_path / "corpus"
    assert main(["shards", "ingest", str(root), "--out", str(out), "--sample-rate-hz", "8000", "--mode", "min",
                 "--mixture", "mix_clean", "--splits", "test=test", "--codec", "wav", "--bits", "16", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Libri2Mix (librimix, mix_clean, 8000 Hz, min), test: 2 samples; 1 shards written" in printed
    assert main(["shards", "verify", str(out)]) == 0
    capsys.readouterr()
    assert main(["shards", "ingest", str(root), "--out", str(tmp_path / "x"), "--segment-s", "2"]) == 2
    assert "read as a librimix set: segment_s only applies to recordings" in capsys.readouterr().err
    assert main(["shards", "ingest", str(root), "--out", str(tmp_path / "x"), "--layout", "wsj0mix"]) == 2
    err = capsys.readouterr().err
    assert "not a wsj0mix tree" in err and err.count("\n") == 1
    speech = make_speech_folder(tmp_path / "speech", num_speakers=2, utterances_per_speaker=1)
    assert main(["shards", "ingest", str(speech), "--out", str(tmp_path / "y"), "--mixture", "mix_clean"]) == 2
    assert "read as recordings: mixture only applies to standard sets" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_ingest_then_finetune_and_evaluate(libri, tmp_path, capsys):
    """The set's tree -> corpus -> PIT finetuning -> evaluate, through the CLI as a user types it."""
    from hubbub.cli import main

    root, _ = libri
    corpus = tmp_path / "libri2mix"
    assert main(["shards", "ingest", str(root), "--out", str(corpus), "--mixture", "mix_clean", "--quiet"]) == 0
    run = tmp_path / "run"
    assert main(["finetune", "pit", "--shards", str(corpus), "--config", "pit_debug", "--out", str(run),
                 "--set", "steps=2", "--set", "data.crop_s=0.25", "--set", "data.batch_size=2"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--shards", str(corpus), "--split", "test", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert results["overall"]["count"] == 2 and np.isfinite(results["overall"]["mean"]["si_snri"])
