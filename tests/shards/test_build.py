"""The corpus-building skeleton on its own (identity, plan, write, report, index): a writer of tiny
JSON-only shards stands in for simulate and ingest, on a local disk and in S3 (moto)."""
import json

import pytest

from hubbub import storage
from hubbub.shards.build import build_corpus
from hubbub.shards.format import sample_key
from hubbub.shards.writer import LOCK_NAME, ShardRecord, plan_split, write_sidecar, writing_shard

IDENTITY = {"kind": "test", "seed": 0, "samples_per_shard": 2, "recipe": {"kind": "test", "note": "tiny"}}
PLANS = plan_split("train", 5, 2) + plan_split("valid", 2, 2)  # train 2+2+1, valid 2
NAMES = [p.name for p in PLANS]


class TinyWriter:
    """Writes the pending shards it is given, one JSON member per sample; samples in ``bad`` fail,
    and with ``fail_at`` the run dies (an OSError) when it reaches that many shards."""

    def __init__(self, out_dir, bad=(), fail_at=None):
        self.out_dir, self.bad, self.fail_at = out_dir, set(bad), fail_at
        self.calls: list[list[str]] = []

    def __call__(self, pending):
        self.calls.append([p.name for p in pending])
        records = []
        for plan in pending:
            if len(records) == self.fail_at:
                raise OSError("the disk is full")
            rec = ShardRecord(name=plan.name, split=plan.split, shard_index=plan.shard_index,
                              first_sample=plan.first_sample, num_planned=plan.num_samples)
            with writing_shard(self.out_dir, plan.name) as writer:
                for index in range(plan.first_sample, plan.first_sample + plan.num_samples):
                    if index in self.bad:
                        rec.failed.append({"index": index, "split": plan.split, "error": "bad draw"})
                        continue
                    key = sample_key(plan.split, index)
                    writer.write({"__key__": key, "json": json.dumps({"index": index}).encode()})
                    rec.keys.append(key)
                    rec.durations_s.append(0.5)
            write_sidecar(rec, self.out_dir, writer)
            records.append(rec)
        return records


def _build(out, writer, identity=IDENTITY, **kwargs):
    return build_corpus(out, identity, PLANS, write=writer, what="a test build",
                        report=lambda records: {"shards": [r.name for r in records],
                                                "failed": [f for r in records for f in r.failed]},
                        index_extra=lambda records, report: {"kind": "test", "num_failed": len(report["failed"])},
                        **kwargs)


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    return str(tmp_path / "corpus") if request.param == "local" else f"{request.getfixturevalue('s3_bucket')}/corpus"


def _read(out, name):
    return storage.read_json(storage.join(out, name))


def test_a_new_corpus_gets_its_identity_every_shard_a_report_and_an_index(out):
    writer = TinyWriter(out)
    built = _build(out, writer)
    assert writer.calls == [NAMES] and (built.written, built.kept) == (4, 0)
    assert _read(out, "recipe.json") == IDENTITY
    assert _read(out, "report.json") == built.report == {"shards": NAMES, "failed": []}
    index = _read(out, "index.json")
    assert index == built.index and index["recipe"] == IDENTITY["recipe"] and index["kind"] == "test"
    assert [s["name"] for s in index["shards"]] == NAMES
    assert {s: v["num_samples"] for s, v in index["splits"].items()} == {"train": 5, "valid": 2}
    assert [r.name for r in built.records] == NAMES


def test_the_index_is_written_last(tmp_path):
    out = tmp_path / "corpus"
    _build(str(out), TinyWriter(str(out)))
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != LOCK_NAME}
    assert max(written.values()) == written["index.json"]
    assert written["report.json"] >= max(t for n, t in written.items() if n.endswith(".tar"))


def test_a_rerun_keeps_complete_shards_and_writes_only_the_others(out):
    _build(out, TinyWriter(out))
    kept = {n: storage.read_bytes(storage.join(out, n)) for n in NAMES if n != "train-000001.tar"}
    storage.remove(storage.join(out, "train-000001.tar"))
    again = TinyWriter(out)
    built = _build(out, again)
    assert again.calls == [["train-000001.tar"]] and (built.written, built.kept) == (1, 3)
    assert {n: storage.read_bytes(storage.join(out, n)) for n in kept} == kept
    assert [s["name"] for s in _read(out, "index.json")["shards"]] == NAMES

    finished = TinyWriter(out)
    built = _build(out, finished)
    assert finished.calls == [] and (built.written, built.kept) == (0, 4)  # nothing pending: no write at all


def test_another_corpus_is_refused_before_anything_is_written(tmp_path):
    out = str(tmp_path / "corpus")
    _build(out, TinyWriter(out))
    other = TinyWriter(out)
    with pytest.raises(ValueError, match=r"made with different dice \(0 vs 1\)"):
        _build(out, other, identity=dict(IDENTITY, seed=1), labels={"seed": "dice"})
    assert other.calls == [] and _read(out, "recipe.json") == IDENTITY


def test_a_run_of_some_shards_keeps_the_others_listed(tmp_path):
    out = str(tmp_path / "corpus")
    train = [p for p in PLANS if p.split == "train"]
    valid = [p for p in PLANS if p.split == "valid"]
    first = _build(out, TinyWriter(out), run_plans=train)
    assert [s["name"] for s in first.index["shards"]] == [p.name for p in train]  # valid is not written yet
    writer = TinyWriter(out)
    built = _build(out, writer, run_plans=valid)
    assert writer.calls == [["valid-000000.tar"]] and (built.written, built.kept) == (1, 0)
    assert [s["name"] for s in built.index["shards"]] == NAMES
    assert built.report["shards"] == NAMES


def test_a_run_that_dies_leaves_no_index_and_the_rerun_finishes_it(tmp_path):
    out = str(tmp_path / "corpus")
    with pytest.raises(OSError, match="disk is full"):
        _build(out, TinyWriter(out, fail_at=2))
    names = {p.name for p in (tmp_path / "corpus").iterdir()}
    assert {"train-000000.tar", "train-000001.tar"} <= names
    assert not names & {"index.json", "report.json", "train-000002.tar"}
    writer = TinyWriter(out)
    built = _build(out, writer)
    assert writer.calls == [["train-000002.tar", "valid-000000.tar"]] and (built.written, built.kept) == (2, 2)


def test_a_second_run_while_one_holds_the_corpus_is_refused(tmp_path):
    out = str(tmp_path / "corpus")
    storage.makedirs(out)
    writer = TinyWriter(out)
    with storage.exclusive(storage.join(out, LOCK_NAME), "the first run"):
        with pytest.raises(storage.LockedError, match="in use by the first run"):
            _build(out, writer)
    assert writer.calls == [] and not (tmp_path / "corpus" / "recipe.json").exists()


def test_nothing_usable_removes_the_folder_the_run_made(tmp_path):
    out = str(tmp_path / "corpus")
    with pytest.raises(ValueError, match="^nothing usable: 7 failed$"):
        _build(out, TinyWriter(out, bad=range(5)), nothing_usable=lambda r: f"nothing usable: {len(r['failed'])} failed")
    assert not (tmp_path / "corpus").exists()


def test_nothing_usable_in_a_folder_of_other_files_removes_only_what_the_run_wrote(out):
    storage.makedirs(out)
    storage.write_bytes(storage.join(out, "notes.txt"), b"mine")
    with pytest.raises(ValueError, match="nothing usable"):
        _build(out, TinyWriter(out, bad=range(5)), nothing_usable=lambda r: "nothing usable")
    assert set(storage.list_sizes(out)) - {LOCK_NAME} == {"notes.txt"}


def test_without_the_nothing_usable_rule_an_empty_corpus_is_indexed_with_its_failures(tmp_path):
    out = str(tmp_path / "corpus")
    built = _build(out, TinyWriter(out, bad=range(5)))
    assert len(built.report["failed"]) == 7 and built.index["num_failed"] == 7
    assert sum(v["num_samples"] for v in built.index["splits"].values()) == 0


def test_a_writer_that_skips_a_pending_shard_fails_the_run(tmp_path):
    out = str(tmp_path / "corpus")
    with pytest.raises(RuntimeError, match="no record for valid-000000.tar"):
        _build(out, lambda pending: TinyWriter(out)(pending[:-1]))
    assert not (tmp_path / "corpus" / "index.json").exists()
