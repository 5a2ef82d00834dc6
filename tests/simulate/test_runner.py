"""Distributed generation: worker-count invariance, resume after a kill, bad inputs, a 2-node Ray."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubbub.cli import main
from hubbub.shards.verify import verify_corpus
from hubbub.simulate import load_recipe, simulate
from hubbub.testing import make_bad_files, make_speech_folder


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return make_speech_folder(tmp_path_factory.mktemp("speech"), num_speakers=8, utterances_per_speaker=2,
                              seconds=2.0)


def _recipe(speech, *extra):
    return load_recipe("debug", [f"speech.corpus={speech}", "samples_per_shard=3", *extra])


def _tar_bytes(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tar"))}


@pytest.mark.slow
def test_one_and_two_workers_write_identical_shards(tmp_path, speech):
    r = _recipe(speech)
    simulate(r, num=12, out_dir=tmp_path / "w1", seed=3, workers=1, progress=False)
    simulate(r, num=12, out_dir=tmp_path / "w2", seed=3, workers=2, progress=False)
    simulate(r, num=12, out_dir=tmp_path / "w0", seed=3, workers=0, progress=False)
    one, two, inline = _tar_bytes(tmp_path / "w1"), _tar_bytes(tmp_path / "w2"), _tar_bytes(tmp_path / "w0")
    assert len(one) == 6 and one == two == inline  # train 3+3+3+1, valid 1, test 1
    i1 = json.loads((tmp_path / "w1" / "index.json").read_text())
    i2 = json.loads((tmp_path / "w2" / "index.json").read_text())
    assert i1 == i2 and sum(s["num_samples"] for s in i1["splits"].values()) == 12
    assert verify_corpus(tmp_path / "w2").ok


def test_a_different_seed_gives_a_different_corpus_and_mixing_them_is_refused(tmp_path, speech):
    r = _recipe(speech)
    simulate(r, num=4, out_dir=tmp_path / "a", seed=0, workers=0, progress=False, splits=["train"])
    with pytest.raises(ValueError, match="seed"):
        simulate(r, num=4, out_dir=tmp_path / "a", seed=1, workers=0, progress=False, splits=["train"])


def test_a_killed_run_resumes_with_no_sample_lost_or_doubled(tmp_path, speech):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "hubbub.cli", "simulate", "--recipe", "debug", "--num", "30", "--out", str(out),
           "--seed", "1", "--workers", "0", "--quiet", "--set", f"speech.corpus={speech}", "--set",
           "samples_per_shard=3"]
    proc = subprocess.Popen(cmd, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*.json"))) < 4:  # recipe.json + a few sidecars
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "index.json").exists(), "the run was killed before it finished"
    # A shard is finished once its sidecar exists (a tar renamed in place just before the kill,
    # its sidecar not yet written, is redone).
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar") if p.with_suffix(".json").exists()}
    assert main(cmd[3:]) == 0
    after = _tar_bytes(out)
    # shards finished before the kill are kept untouched
    assert all((out / n).stat().st_mtime_ns == t for n, t in before.items())
    simulate(_recipe(speech), num=30, out_dir=tmp_path / "clean", seed=1, workers=0, progress=False)
    assert after == _tar_bytes(tmp_path / "clean")
    index = json.loads((out / "index.json").read_text())
    sidecar_keys = [k for p in sorted(out.glob("*-*.json")) for k in json.loads(p.read_text())["keys"]]
    assert len(sidecar_keys) == len(set(sidecar_keys)) == 30
    assert not list(out.glob("*.tmp"))
    assert verify_corpus(out).ok and index["splits"]["train"]["num_samples"] == 24


def test_a_corpus_of_bad_files_finishes_and_reports_every_one(tmp_path):
    root = make_speech_folder(tmp_path / "speech", num_speakers=8, utterances_per_speaker=2)
    bad = make_bad_files(root)
    res = simulate(load_recipe("debug", [f"speech.corpus={root}"]), num=6, out_dir=tmp_path / "c", workers=0,
                   progress=False)
    report = json.loads((tmp_path / "c" / "report.json").read_text())
    assert {f["path"]: f["reason"] for f in report["skipped_files"]} == bad
    assert sum(s["num_samples"] for s in res.index["splits"].values()) == 6


def test_a_failing_sample_is_reported_not_fatal(tmp_path, speech, monkeypatch):
    import hubbub.simulate.sample as sample

    real = sample.render

    def flaky(params):
        if params["index"] == 1:
            raise RuntimeError("boom")
        return real(params)

    monkeypatch.setattr(sample, "render", flaky)
    res = simulate(_recipe(speech), num=4, out_dir=tmp_path / "c", workers=0, progress=False, splits=["train"])
    assert [f["index"] for f in res.failed_samples] == [1] and "boom" in res.failed_samples[0]["error"]
    assert res.index["splits"]["train"]["num_samples"] == 2 and res.index["splits"]["train"]["num_failed"] == 1


@pytest.mark.slow
def test_a_two_node_ray_cluster_runs_a_job(tmp_path, speech):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        cluster.wait_for_nodes()
        r = _recipe(speech)
        simulate(r, num=12, out_dir=tmp_path / "cluster", seed=3, address=cluster.address, progress=False,
                 shared_disk=True)
        import ray
        assert not ray.is_initialized()
    finally:
        cluster.shutdown()
    simulate(r, num=12, out_dir=tmp_path / "local", seed=3, workers=0, progress=False)
    assert _tar_bytes(tmp_path / "cluster") == _tar_bytes(tmp_path / "local")


def test_a_moved_corpus_gives_the_same_mixtures(tmp_path, speech):
    import shutil

    import webdataset as wds

    from hubbub.shards.format import decode_sample

    moved = tmp_path / "elsewhere" / "speech"
    shutil.copytree(speech, moved)
    simulate(_recipe(speech), num=4, out_dir=tmp_path / "a", seed=2, workers=0, progress=False, splits=["train"])
    simulate(_recipe(moved), num=4, out_dir=tmp_path / "b", seed=2, workers=0, progress=False, splits=["train"])

    def mixes(d):
        return [decode_sample(r)["mix"] for r in wds.WebDataset(str(d / "train-000000.tar"), shardshuffle=False,
                                                                 empty_check=False)]

    for x, y in zip(mixes(tmp_path / "a"), mixes(tmp_path / "b"), strict=True):
        assert (x == y).all()
    a = json.loads((tmp_path / "a" / "index.json").read_text())
    b = json.loads((tmp_path / "b" / "index.json").read_text())
    assert a["recipe_hash"] == b["recipe_hash"] and a["sources_hash"] == b["sources_hash"]


_FAULTS = """
import resource, sys
from hubbub.shards.writer import ShardPlan
from hubbub.simulate import load_recipe, runner
from hubbub.simulate.sample import Simulator
if sys.argv[1] == "off":
    runner.keep_freed_memory = lambda: False
r = load_recipe("whamr", [f"speech.corpus={sys.argv[2]}", "duration.mode=fixed", "duration.fixed_s=4.0"])
sim = Simulator(r, runner.prepare_sources(r, 0)[0], 0)
runner.write_shard(sim, ShardPlan("train", 0, 0, 2), sys.argv[3])
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
runner.write_shard(sim, ShardPlan("train", 1, 2, 6), sys.argv[3])
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(sys.platform != "linux" or os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc's mallopt")
def test_a_worker_reuses_freed_memory_instead_of_faulting_it_in_each_mixture(tmp_path, speech):
    faults = {}
    for mode in ("off", "on"):
        out = tmp_path / mode
        out.mkdir()
        run = subprocess.run([sys.executable, "-c", _FAULTS, mode, str(speech), str(out)], capture_output=True,
                             text=True, check=True)
        faults[mode] = int(run.stdout.split()[-1])
    # 6 mixtures of 4 s: ~1000 page faults each with glibc's defaults, ~100 once freed memory is kept
    assert faults["on"] * 4 < faults["off"], faults


def test_a_source_gone_at_render_time_fails_the_run_and_writes_no_shard(tmp_path, speech, monkeypatch):
    """An unreadable source is the machine's fault, not the sample's: no empty shard counted as complete."""
    from hubbub.simulate import runner

    copy = tmp_path / "speech"
    import shutil

    shutil.copytree(speech, copy)
    real = runner.prepare_sources

    def prepare_then_lose(recipe, seed):
        out = real(recipe, seed)
        shutil.rmtree(copy)  # indexed, then gone (a node without the driver's disk)
        return out

    monkeypatch.setattr(runner, "prepare_sources", prepare_then_lose)
    with pytest.raises(FileNotFoundError, match="not found on this machine"):
        simulate(_recipe(copy), num=4, out_dir=tmp_path / "out", seed=0, workers=0, progress=False, splits=["train"])
    assert not list((tmp_path / "out").glob("train-*"))


def test_a_full_disk_fails_the_run_with_one_line_and_a_rerun_finishes_it(tmp_path, speech, monkeypatch, capsys):
    """ENOSPC while a shard is written: not a failed sample, not a shard counted as complete; the
    command says the disk is full, and the same command afterwards gives the clean run's corpus."""
    import errno

    from hubbub.shards import writer

    real_write, shards = writer._HashingFile.write, []

    def write_until_full(self, data):
        if self not in shards:
            shards.append(self)
        if len(shards) == 3 and self.size > 10_000:  # two shards fit, the third fills the disk
            raise OSError(errno.ENOSPC, "No space left on device", str(self.file.name))
        return real_write(self, data)

    args = ["simulate", "--recipe", "debug", "--num", "12", "--out", str(tmp_path / "full"), "--workers", "0",
            "--quiet", "--set", f"speech.corpus={speech}", "--set", "samples_per_shard=3"]
    monkeypatch.setattr(writer._HashingFile, "write", write_until_full)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no space left on the device" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "full" / "index.json").exists()
    assert not list((tmp_path / "full").glob("*.tmp"))
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "full").glob("*.tar")}
    assert kept and all((tmp_path / "full" / n).with_suffix(".json").exists() for n in kept)
    monkeypatch.setattr(writer._HashingFile, "write", real_write)
    assert main(args) == 0
    assert all((tmp_path / "full" / n).stat().st_mtime_ns == t for n, t in kept.items())
    simulate(_recipe(speech), num=12, out_dir=tmp_path / "clean", seed=0, workers=0, progress=False)
    assert _tar_bytes(tmp_path / "full") == _tar_bytes(tmp_path / "clean")
    assert verify_corpus(tmp_path / "full").ok
