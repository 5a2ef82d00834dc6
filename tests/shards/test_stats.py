import json
from collections import Counter

import numpy as np
import pytest
from webdataset.tariterators import group_by_keys, tar_file_expander

from hubbub.shards.stats import corpus_stats, distribution, format_stats, plot_stats
from hubbub.testing import make_dummy_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": 9, "valid": 3},
                             samples_per_shard=4, num_speakers=[1, 2, 3], seconds=0.25)


def jsons(corpus, split):
    """Every sample JSON of a split, read independently of hubbub.shards.stats."""
    out = []
    for path in sorted(corpus.glob(f"{split}-*.tar")):
        with open(path, "rb") as f:
            out += [json.loads(s["json"]) for s in group_by_keys(tar_file_expander([{"url": path, "stream": f}]))]
    return out


def test_stats_match_the_jsons(corpus):
    stats = corpus_stats(corpus)
    assert list(stats["splits"]) == ["train", "valid"]
    for split, s in stats["splits"].items():
        metas = jsons(corpus, split)
        expected = {
            "rt60_s_measured": [m["room"]["rt60_s_measured"] for m in metas],
            "rt60_s_target": [m["room"]["rt60_s_target"] for m in metas],
            "snr_db": [m["noise"]["snr_db"] for m in metas],
            "sir_db": [src["sir_db"] for m in metas for src in m["sources"][1:]],
            "overlap_ratio": [m["mixing"]["overlap_ratio"] for m in metas],
            "duration_s": [m["duration_s"] for m in metas],
        }
        assert s["num_samples"] == len(metas)
        assert s["hours"] == pytest.approx(sum(expected["duration_s"]) / 3600)
        assert s["num_speakers"] == {str(k): v for k, v in sorted(Counter(m["num_speakers"] for m in metas).items())}
        assert s["distinct_speakers"] == len({src["speaker"] for m in metas for src in m["sources"]})
        for name, values in expected.items():
            d = s["metrics"][name]
            assert d["count"] == len(values)
            assert d["mean"] == pytest.approx(np.mean(values))
            assert d["std"] == pytest.approx(np.std(values))
            assert (d["min"], d["max"]) == (min(values), max(values))
            assert [d["p5"], d["p50"], d["p95"]] == pytest.approx(np.percentile(values, [5, 50, 95]))
            assert sum(d["histogram"]["counts"]) == len(values)
            assert len(d["histogram"]["edges"]) == len(d["histogram"]["counts"]) + 1
    json.dumps(stats)  # what `hubbub shards stats --json` prints


def test_split_selection(corpus):
    assert list(corpus_stats(corpus, splits=["valid"])["splits"]) == ["valid"]
    with pytest.raises(ValueError, match="nosuch"):
        corpus_stats(corpus, splits=["nosuch"])


def test_distribution_ignores_missing_values():
    d = distribution([1.0, None, 3.0])
    assert (d["count"], d["mean"], d["min"], d["max"]) == (2, 2.0, 1.0, 3.0)
    empty = distribution([None])
    assert empty["count"] == 0 and empty["mean"] is None and empty["histogram"]["counts"] == []


def test_format_and_plot(corpus, tmp_path):
    stats = corpus_stats(corpus)
    text = format_stats(stats)
    for word in ("train", "valid", "rt60_s_measured", "sir_db", "p95"):
        assert word in text
    png = plot_stats(stats, tmp_path / "stats.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["stats.png"]  # no .tmp left behind


@pytest.mark.parametrize("damage", ["directory", "dangling link", "truncated"])
def test_a_damaged_shard_is_one_error_naming_it(corpus, tmp_path, damage):
    import shutil

    from hubbub.storage import StorageError

    damaged = shutil.copytree(corpus, tmp_path / "damaged")
    tar = damaged / "train-000001.tar"
    size = tar.stat().st_size
    tar.unlink()
    if damage == "directory":
        tar.mkdir()
    elif damage == "dangling link":
        tar.symlink_to(tmp_path / "gone.tar")
    else:
        tar.write_bytes((corpus / tar.name).read_bytes()[: size // 3])
    with pytest.raises(StorageError, match=r"train-000001\.tar: .*run `hubbub shards verify`"):
        corpus_stats(damaged)


def test_stats_starts_without_torch():
    # `hubbub shards stats` reads one member per sample by byte range: nothing of torch (1.5 s to load)
    import subprocess
    import sys

    code = ("import sys, hubbub.shards.stats, hubbub.shards.ranges; "
            "print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
