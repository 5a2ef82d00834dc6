"""benchmarks/loader.py runs end to end and reports what it measured, consistently (tiny sizes:
the figures themselves are for the benchmark, not for tests)."""
import importlib.util
import json
from pathlib import Path

import pytest

from hubbub.testing import make_speech_folder

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "loader.py"


def load_benchmark():
    # benchmarks/ is a folder of scripts, not a package: load the file as a module
    spec = importlib.util.spec_from_file_location("loader_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_loader_benchmark_reports_every_path_and_its_io(tmp_path, capsys):
    bench = load_benchmark()
    speech = make_speech_folder(tmp_path / "speech", num_speakers=6, utterances_per_speaker=2, seconds=3.0)
    res = bench.main(["--num", "32", "--set", f"speech.corpus={speech}", "--set", "samples_per_shard=8",
                      "--work-dir", str(tmp_path / "work"), "--json"])
    assert json.loads(capsys.readouterr().out)["io"] == json.loads(json.dumps(res["io"]))
    assert res["corpus"]["num_samples"] == res["loose"]["num_samples"] == 32
    assert res["corpus"]["num_shards"] == 4 and res["loose"]["num_sources"] == 2

    # every reader at every worker count, and the ratios are those of the rates reported
    t = res["throughput"]
    rates = t["samples_per_s"]
    for reader in ("hubbub", "loose", "webdataset"):
        assert set(rates[reader]) == {"0", "2", "2 kept"} and all(r > 0 for r in rates[reader].values()), reader
    for w in ("0", "2", "2 kept"):
        assert t["hubbub_vs_loose"][w] == pytest.approx(rates["hubbub"][w] / rates["loose"][w])
        assert t["hubbub_vs_webdataset"][w] == pytest.approx(rates["hubbub"][w] / rates["webdataset"][w])

    # hubbub reads what it yields, whatever W x N, locally and from S3; the others read whole shards
    rows = res["io"]["rows"]
    assert [(r["world_size"], r["workers"]) for r in rows] == [(1, 0), (1, 2), (2, 2), (4, 2)]
    corpus_bytes = res["io"]["corpus_bytes"]
    assert corpus_bytes == res["corpus"]["bytes"]
    for r in rows:
        for where in ("local", "s3"):
            io = r[where]
            assert io["yielded_samples"] == 32, (r, where)  # 32 divides by 8 x W: no padding
            assert io["yielded_bytes"] <= io["bytes"] <= 1.05 * io["yielded_bytes"], (r, where)
            assert 32 <= io["requests"] <= 4 * 32, (r, where)  # at most one a member (json, mix, 2 sources)
        assert r["s3"]["yielded_bytes"] == r["local"]["yielded_bytes"]
        assert r["s3"]["other_requests"] >= 2 * r["world_size"]  # each rank: index.json and members table
        assert r["webdataset"]["bytes"] == corpus_bytes
        assert r["stream_all"]["bytes"] == r["world_size"] * max(r["workers"], 1) * corpus_bytes
        assert r["local"]["bytes"] < corpus_bytes / 2  # mix + 2 of the 8 audio members

    text = bench.format_report(res)
    for heading in ("hubbub/loose", "webdataset", "S3 GETs", "stream-all"):
        assert heading in text
