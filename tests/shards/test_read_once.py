"""Each byte read at most once per epoch across the whole job, counted by the S3 server itself.

Training runs under `accelerate launch` with 1, 2 and 4 CPU processes and 0 or 2 DataLoader
workers read a corpus from an S3 server on 127.0.0.1 (moto); the server's request log gives the
bytes every process and worker asked for, which must be the bytes of the members the runs
yielded (plus at most 5%: tar headers between two wanted members read in one request), and
every run must see the same global batches.
"""
import json
import os
import subprocess
from pathlib import Path

import fsspec
import pytest

from hubbub.shards.writer import read_members_table
from hubbub.testing import S3RequestLog, hubbub_launch, make_dummy_corpus

CONFIG = Path(__file__).parents[2] / "cluster" / "accelerate" / "cpu-2proc.yaml"
GLOBAL_BATCH, TRAIN = 4, 16  # four steps are one epoch


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, _s3_server):
    local = make_dummy_corpus(tmp_path_factory.mktemp("corpus"), splits={"train": TRAIN, "valid": 4},
                              samples_per_shard=5, num_speakers=[1, 2], seconds=1.0)
    url = f"{_s3_server}/read-once"
    fs = fsspec.filesystem("s3")
    for p in Path(local).iterdir():
        fs.put_file(str(p), f"{url}/{p.name}".removeprefix("s3://"))
    return url


def _yielded_bytes(url: str, keys: list[str]) -> tuple[int, int]:
    """(bytes, members) of the members a PIT run reads for these samples (repeats counted)."""
    table = read_members_table(url, "train", wanted=lambda m: m == "json" or m.startswith("mix.")
                               or (m.startswith("s") and ".reverberant." in m))
    row = {k.decode(): i for i, k in enumerate(table["keys"])}
    total = members = 0
    for k in keys:
        sizes = table["sizes"][row[k]]
        total += int(sizes[sizes >= 0].sum())
        members += int((sizes >= 0).sum())
    return total, members


def _run(url: str, out: Path, processes: int, workers: int) -> list[list[str]]:
    args = ["finetune", "pit", "--shards", url, "--config", "pit_debug", "--out", str(out), "--set", "data.crop_s=0.5",
            "--set", f"steps={TRAIN // GLOBAL_BATCH}", "--set", f"data.batch_size={GLOBAL_BATCH // processes}",
            "--set", f"data.num_workers={workers}", "--set", "log_sample_keys=true", "--set", "eval_every=0"]
    res = subprocess.run(hubbub_launch(CONFIG, *args, num_processes=processes), capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [[json.loads(line) for line in (out / f"samples_rank{r}.jsonl").read_text().splitlines()]
            for r in range(processes)]
    return [sorted(k for rank in rows for k in rank[step]["keys"]) for step in range(TRAIN // GLOBAL_BATCH)]


@pytest.mark.slow
def test_each_byte_is_read_once_per_epoch_for_any_world_size(tmp_path, corpus):
    reference = None
    for processes, workers in [(1, 0), (2, 2), (4, 0)]:
        with S3RequestLog() as log:
            batches = _run(corpus, tmp_path / f"run-{processes}x{workers}", processes, workers)
        keys = [k for batch in batches for k in batch]
        assert sorted(keys) == sorted(set(keys)) and len(keys) == TRAIN  # one epoch, each sample once
        yielded, members = _yielded_bytes(corpus, keys)
        read = log.bytes_read("/train-")
        assert yielded <= read <= 1.05 * yielded, (processes, workers, read, yielded)
        assert len(log.gets("/train-")) <= members
        reference = reference or batches
        assert batches == reference  # the same global batches as one process
