"""Corpora in an object store: an S3 server on 127.0.0.1 (moto in server mode, `s3_bucket` in
conftest.py), used through the same commands as a local folder."""
import json
import shutil

import fsspec
import pytest
import torch

from hubbub import storage
from hubbub.cli import main
from hubbub.finetune import PITStage, finetune_pit
from hubbub.shards.reader import ShardDataset
from hubbub.shards.stats import corpus_stats
from hubbub.shards.verify import verify_corpus
from hubbub.shards.writer import read_members_table
from hubbub.simulate import load_recipe, simulate
from hubbub.testing import make_speech_folder
from hubbub.train import load_train_config


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return make_speech_folder(tmp_path_factory.mktemp("speech"), num_speakers=6, utterances_per_speaker=2,
                              seconds=2.0)


def _recipe(speech):
    return load_recipe("debug", [f"speech.corpus={speech}", "samples_per_shard=4",
                                 "storage.codec=wav", "storage.bits=16"])


def _s3():
    return fsspec.filesystem("s3")


def _objects(url: str) -> dict[str, bytes]:
    fs = _s3()
    root = fs._strip_protocol(url)
    return {p.rsplit("/", 1)[1]: fs.cat_file(p) for p in fs.ls(root, refresh=True) if p.endswith(".tar")}


def test_simulate_to_s3_equals_a_local_run_and_verifies(tmp_path, speech, s3_bucket):
    url = f"{s3_bucket}/corpus"
    assert main(["simulate", "--recipe", "debug", "--num", "10", "--out", url, "--workers", "0", "--quiet",
                 "--set", f"speech.corpus={speech}", "--set", "samples_per_shard=4",
                 "--set", "storage.codec=wav", "--set", "storage.bits=16"]) == 0
    simulate(_recipe(speech), num=10, out_dir=tmp_path / "local", seed=0, workers=0, progress=False)
    local = {p.name: p.read_bytes() for p in sorted((tmp_path / "local").glob("*.tar"))}
    assert _objects(url) == local and len(local) == 4  # train 4+4, valid 1, test 1
    assert not (tmp_path / "s3:").exists()
    assert verify_corpus(url).ok
    assert main(["shards", "verify", url]) == 0
    index = storage.read_json(f"{url}/index.json")
    assert index["format_version"] == 2
    stats = corpus_stats(url)
    assert stats["splits"]["train"]["num_samples"] == index["splits"]["train"]["num_samples"]
    assert main(["shards", "stats", url]) == 0 and storage.exists(f"{url}/stats.png")


def test_a_rerun_keeps_complete_shards_and_rewrites_only_what_is_missing(speech, s3_bucket):
    url = f"{s3_bucket}/corpus"
    first = simulate(_recipe(speech), num=10, out_dir=url, seed=0, workers=0, progress=False)
    before = _objects(url)
    again = simulate(_recipe(speech), num=10, out_dir=url, seed=0, workers=0, progress=False)
    assert (again.written, again.skipped_complete) == (0, first.written)
    _s3().rm_file(_s3()._strip_protocol(f"{url}/train-000001.json"))    # a task killed before its sidecar
    third = simulate(_recipe(speech), num=10, out_dir=url, seed=0, workers=0, progress=False)
    assert third.written == 1 and _objects(url) == before
    assert third.index == first.index
    with pytest.raises(ValueError, match="holds a corpus made with different"):  # another seed
        simulate(_recipe(speech), num=10, out_dir=url, seed=1, workers=0, progress=False)


def test_the_reader_gives_the_same_tensors_from_s3_as_from_disk(tmp_path, speech, s3_bucket):
    url = f"{s3_bucket}/corpus"
    simulate(_recipe(speech), num=10, out_dir=url, seed=0, workers=0, progress=False)
    simulate(_recipe(speech), num=10, out_dir=tmp_path / "local", seed=0, workers=0, progress=False)
    kwargs = dict(targets=("reverberant", "dry"), crop_s=0.5, seed=3, batch_size=2)
    remote, local = list(ShardDataset(url, **kwargs)), list(ShardDataset(tmp_path / "local", **kwargs))
    assert [s["key"] for s in remote] == [s["key"] for s in local] and len(local) == 8
    for a, b in zip(remote, local):
        assert torch.equal(a["mix"], b["mix"])
        assert all(torch.equal(a["sources"][t], b["sources"][t]) for t in kwargs["targets"])
        assert a["meta"] == b["meta"]


def test_train_from_s3_and_resume_from_it(tmp_path, speech, s3_bucket, monkeypatch):
    url = f"{s3_bucket}/corpus"
    simulate(_recipe(speech), num=12, out_dir=url, seed=0, workers=0, progress=False)
    simulate(_recipe(speech), num=12, out_dir=tmp_path / "local", seed=0, workers=0, progress=False)

    def cfg(shards, steps):
        return load_train_config("pit_debug", [f"data.shards={shards}", "data.crop_s=0.5", "log_every=1",
                                               "ckpt_every=3", "keep_checkpoints=3", f"steps={steps}",
                                               "eval_every=0"])

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in rows if "loss" in r]

    finetune_pit(cfg(tmp_path / "local", 8), tmp_path / "from-disk")
    run_dir = tmp_path / "from-s3"
    finetune_pit(cfg(url, 8), run_dir)
    assert losses(run_dir) == losses(tmp_path / "from-disk")
    # as if killed after the checkpoint of step 3: the same command resumes there, reading from S3
    assert (run_dir / "checkpoints" / "step_00000003").is_dir()
    for later in ("step_00000006", "step_00000008"):
        shutil.rmtree(run_dir / "checkpoints" / later)
    shutil.rmtree(run_dir / "model")
    steps_taken = []
    real_step = PITStage.run_step
    monkeypatch.setattr(PITStage, "run_step",
                        lambda self, m, b, train: steps_taken.append(train) or real_step(self, m, b, train))
    finetune_pit(cfg(url, 8), run_dir)
    assert sum(steps_taken) == 5  # steps 4..8 only
    assert losses(run_dir) == losses(tmp_path / "from-disk")
    run = json.loads((tmp_path / "from-s3" / "run.json").read_text())
    assert run["data_card"]["corpus"] == url


def test_a_damaged_member_table_or_shard_is_a_clear_error(speech, s3_bucket):
    url = f"{s3_bucket}/corpus"
    simulate(_recipe(speech), num=10, out_dir=url, seed=0, workers=0, progress=False)
    fs = _s3()
    tar = fs._strip_protocol(f"{url}/train-000000.tar")
    fs.pipe_file(tar, fs.cat_file(tar)[:5000])  # truncated after it was written
    report = verify_corpus(url)
    assert not report.ok and any("train-000000.tar" in str(f) for f in report.faults)
    with pytest.raises(storage.StorageError, match="train-000000.tar"):
        list(ShardDataset(url, shuffle=False))


@pytest.mark.parametrize("url, message", [("s4://bucket/x", "unknown storage scheme s4://"),
                                          ("oci://bucket/x", "needs a package that is not installed")])
def test_an_unusable_url_is_one_line_before_any_work(tmp_path, speech, capsys, url, message):
    assert main(["simulate", "--recipe", "debug", "--num", "2", "--out", url, "--workers", "0", "--quiet",
                 "--set", f"speech.corpus={speech}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert main(["shards", "verify", url]) == 2
    assert not list(tmp_path.glob("*:*"))


def test_the_members_table_matches_the_sidecars(speech, s3_bucket):
    url = f"{s3_bucket}/corpus"
    simulate(_recipe(speech), num=10, out_dir=url, seed=0, workers=0, progress=False)
    table = read_members_table(url, "train")
    names = list(table["member_names"])
    side = storage.read_json(f"{url}/train-000000.json")
    for i, key in enumerate(side["keys"]):
        assert table["keys"][i].decode() == key
        for member, (offset, size) in side["members"][key].items():
            j = names.index(member)
            assert (table["offsets"][i, j], table["sizes"][i, j]) == (offset, size)
    mix_only = read_members_table(url, "train", wanted=lambda m: m.startswith("mix."))
    assert list(mix_only["member_names"]) == ["mix.wav"] and mix_only["offsets"].shape == (len(table["keys"]), 1)


@pytest.mark.slow
def test_a_ray_cluster_without_a_shared_disk_writes_the_same_corpus_to_s3(tmp_path, speech, s3_bucket, monkeypatch):
    """Two Ray nodes on this machine, each with its own scratch folder; the speech corpus exists on
    the driver only until it has been shipped through Ray's object store, then it is moved away:
    the workers can only read it from there. The corpus equals a one-process run byte for byte."""
    from ray.cluster_utils import Cluster

    from hubbub.simulate import runner

    scratch = {node: tmp_path / f"scratch-{node}" for node in ("head", "worker")}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "env_vars": {"HUBBUB_SCRATCH": str(scratch["head"])}})
    cluster.add_node(num_cpus=1, env_vars={"HUBBUB_SCRATCH": str(scratch["worker"])})
    hidden = tmp_path / "hidden"
    real_ship = runner.ship_sources

    def ship_then_hide(job):
        shipped = real_ship(job)
        speech.rename(hidden)
        return shipped

    monkeypatch.setattr(runner, "ship_sources", ship_then_hide)
    url = f"{s3_bucket}/corpus"
    try:
        cluster.wait_for_nodes()
        with pytest.raises(ValueError, match="do not share its disk"):
            simulate(_recipe(speech), num=16, out_dir=tmp_path / "local-on-cluster", seed=0,
                     address=cluster.address, progress=False)
        simulate(_recipe(speech), num=16, out_dir=url, seed=0, address=cluster.address, progress=False)
    finally:
        if hidden.exists():
            hidden.rename(speech)
        cluster.shutdown()
    simulate(_recipe(speech), num=16, out_dir=tmp_path / "one-process", seed=0, workers=0, progress=False)
    local = {p.name: p.read_bytes() for p in sorted((tmp_path / "one-process").glob("*.tar"))}
    assert _objects(url) == local and len(local) == 6  # train: 4 shards, valid and test: 1 each
    assert verify_corpus(url).ok
    # both nodes made shards in their own scratch, and left nothing there
    assert all(d.is_dir() and not list(d.iterdir()) for d in scratch.values())


def test_a_rir_bank_in_s3_serves_mixtures_as_a_local_one(tmp_path, speech, s3_bucket):
    from hubbub.simulate import simulate_rir_bank

    bank_recipe = load_recipe("debug", ["samples_per_shard=2"])
    simulate_rir_bank(bank_recipe, num_rooms=4, positions=3, out_dir=f"{s3_bucket}/bank", seed=0, workers=0,
                      progress=False)
    simulate_rir_bank(bank_recipe, num_rooms=4, positions=3, out_dir=tmp_path / "bank", seed=0, workers=0,
                      progress=False)
    assert _objects(f"{s3_bucket}/bank") == {p.name: p.read_bytes() for p in (tmp_path / "bank").glob("*.tar")}

    def mixtures(bank, out):
        """Every member of every sample; in the JSON, the bank's location (provenance) left out."""
        import webdataset as wds

        recipe = load_recipe("debug", [f"speech.corpus={speech}", "samples_per_shard=4", f"room.rir_bank={bank}"])
        simulate(recipe, num=6, out_dir=out, seed=0, workers=0, progress=False, splits=["train"])
        samples = list(wds.WebDataset([str(p) for p in sorted(out.glob("train-*.tar"))], shardshuffle=False,
                                      empty_check=False))
        for sample in samples:
            sample["json"] = sample["json"].replace(str(bank).encode(), b"BANK")
        return [{k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")} for sample in samples]

    remote, local = mixtures(f"{s3_bucket}/bank", tmp_path / "a"), mixtures(tmp_path / "bank", tmp_path / "b")
    assert remote == local and len(local) == 5 and b"BANK" in local[0]["json"]


def test_evaluate_reads_a_corpus_in_s3(tmp_path, speech, s3_bucket):
    from hubbub.evaluate import evaluate_run
    from hubbub.testing import make_dummy_run

    url = f"{s3_bucket}/corpus"
    simulate(_recipe(speech), num=10, out_dir=url, seed=0, workers=0, progress=False)
    simulate(_recipe(speech), num=10, out_dir=tmp_path / "corpus", seed=0, workers=0, progress=False)
    run = make_dummy_run(tmp_path / "run", tmp_path / "corpus")
    remote = evaluate_run(run, url, split="train", out_dir=tmp_path / "eval-s3", metrics=("si_snri",))
    local = evaluate_run(run, tmp_path / "corpus", split="train", out_dir=tmp_path / "eval-local",
                         metrics=("si_snri",))
    assert remote["overall"] == local["overall"] and remote["corpus"] == "corpus"
