"""Training reader throughput and I/O: hubbub's ShardLoader beside loose WAV files read by a plain
torch DataLoader and beside webdataset's own pipeline on the same shards, in one run.

    python benchmarks/loader.py [--num 400] [--workers 0,2] [--grid 1x0,1x2,2x2,4x2] [--corpus DIR]
                                [--set KEY=VALUE ...] [--work-dir DIR] [--json]

1. Makes an 8 kHz LibriMix-style corpus (``librimix`` recipe, 16-bit WAV, ``--num`` train samples;
   or takes ``--corpus``) and exports its train samples as loose files, one folder per sample
   with ``mix.wav``, ``s1.wav``, ``s2.wav`` (the reverberant sources).
2. Throughput: samples/s of batches of 8 with 2 s random crops, target "reverberant", for each
   worker count (workers started afresh each epoch, and for each count above 0 also persistent
   workers, "N kept"), best of 2 epochs after a warm-up epoch (so every path reads from a warm
   page cache), for (a) hubbub's ShardLoader, (b) a torch Dataset over the loose files that reads
   only the crop with soundfile, (c) ``wds.WebDataset`` with split_by_node/split_by_worker,
   decoding the needed members with soundfile and cropping.
3. I/O of one epoch, summed over every rank and worker, for world sizes W and workers N: ranks
   are simulated in this process (``ShardDataset(rank=r, world_size=W)``, each read by a real
   DataLoader with N workers). Locally ``os.pread`` is counted (the reader's only data read);
   against an S3 server (moto on 127.0.0.1) the GET requests and their Range bytes are counted
   from the server's request recording. Both are set beside the bytes of the members the
   batches hold, what webdataset's split_by_node/split_by_worker reads (each shard whole, once)
   and what streaming every shard in every rank and worker reads (W x N x corpus).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import multiprocessing
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset

from hubbub import storage
from hubbub.shards.reader import ShardDataset, ShardLoader
from hubbub.shards.writer import load_index, read_members_table
from hubbub.testing import S3RequestLog, request_bytes, s3_server

SPLIT = "train"
TARGET = "reverberant"
BATCH_SIZE = 8
CROP_S = 2.0
PASSES = 2  # timed epochs after the warm-up; the best is reported
GRID = ((1, 0), (1, 2), (2, 2), (4, 2))  # (world size, workers per rank) of the I/O section
# The members a batch of mixtures + reverberant sources is made of (json: the reader needs the length).
WANTED = re.compile(rf"^(json|mix\.(wav|flac)|s\d+\.{TARGET}\.(wav|flac))$")
_SOURCE = re.compile(rf"^s(\d+)\.{TARGET}\.(wav|flac)$")


# ---- corpora ------------------------------------------------------------------------------------

def make_corpus(out_dir: Path, num: int, overrides: list[str]) -> Path:
    """``num`` train samples of the librimix recipe at 8 kHz in 16-bit WAV (as LibriMix ships)."""
    from hubbub.simulate import load_recipe, simulate

    recipe = load_recipe("librimix", ["sample_rate_hz=8000", "storage.codec=wav", "storage.bits=16",
                                      "splits={train: 1.0}", *overrides])
    simulate(recipe, num=num, out_dir=out_dir, workers=0, progress=False)
    return out_dir


def export_loose(corpus: Path, out_dir: Path) -> list[Path]:
    """Each train sample's mix and target sources as files of their own: ``KEY/mix.wav``,
    ``KEY/s1.wav``, ``KEY/s2.wav`` (1-based, as LibriMix names them). The stored bytes are copied,
    so both readers decode the very same WAV data."""
    table = read_members_table(corpus, SPLIT)
    names = [str(m) for m in table["member_names"]]
    if "mix.wav" not in names:
        raise ValueError(f"{corpus} does not store WAV: the loose baseline is WAV files (make it with "
                         "storage.codec=wav)")
    loose_name = {names.index("mix.wav"): "mix.wav"}
    for j, name in enumerate(names):
        if (m := _SOURCE.match(name)) and name.endswith(".wav"):
            loose_name[j] = f"s{int(m.group(1)) + 1}.wav"
    shards = [storage.join(corpus, s["name"]) for s in load_index(corpus)["shards"] if s["split"] == SPLIT]
    folders = []
    for row, key in enumerate(table["keys"]):
        folder = out_dir / key.decode()
        folder.mkdir(parents=True, exist_ok=True)
        with open(shards[table["shard"][row]], "rb") as tar:
            for j, name in loose_name.items():
                offset, size = int(table["offsets"][row, j]), int(table["sizes"][row, j])
                if offset >= 0:
                    (folder / name).write_bytes(os.pread(tar.fileno(), size, offset))
        folders.append(folder)
    return folders


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# ---- the three readers --------------------------------------------------------------------------

def random_crop(files: list, crop_s: float) -> dict:
    """The same random ``crop_s`` window of a mixture and its sources (paths or file objects),
    zero-padded when shorter, as {"mix": (1, T), "sources": (S, T)} float32. Only the window's
    frames are read. The start comes from torch's generator, which DataLoader seeds per worker."""
    with sf.SoundFile(files[0]) as f:
        length = round(crop_s * f.samplerate)
        start = int(torch.randint(0, max(f.frames - length, 0) + 1, ()))
        f.seek(start)
        mix = f.read(length, dtype="float32")
    crops = [mix]
    for source in files[1:]:
        with sf.SoundFile(source) as f:
            f.seek(start)
            crops.append(f.read(length, dtype="float32"))
    out = np.zeros((len(crops), length), np.float32)
    for i, c in enumerate(crops):
        out[i, :len(c)] = c
    return {"mix": torch.from_numpy(out[:1]), "sources": torch.from_numpy(out[1:])}


class LooseWavs(Dataset):
    """The plain baseline: one folder per sample (mix.wav, s1.wav, ...) read with soundfile, only
    the crop's frames (``whole=False``, a careful loader) or whole files cropped after reading
    (``whole=True``, what most recipes' loaders do)."""

    def __init__(self, folders: list[Path], crop_s: float, whole: bool = False):
        self.files = [[f / "mix.wav", *sorted(f.glob("s[0-9]*.wav"))] for f in folders]
        self.crop_s, self.whole = crop_s, whole

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        if not self.whole:
            return random_crop(self.files[i], self.crop_s)
        signals = [sf.read(str(f), dtype="float32")[0] for f in self.files[i]]
        length = round(self.crop_s * sf.info(str(self.files[i][0])).samplerate)
        start = int(torch.randint(0, max(len(signals[0]) - length, 0) + 1, ()))
        out = np.zeros((len(signals), length), np.float32)
        for k, x in enumerate(signals):
            crop = x[start:start + length]
            out[k, :len(crop)] = crop
        return {"mix": torch.from_numpy(out[:1]), "sources": torch.from_numpy(out[1:])}


def webdataset_pipeline(shards: list[str], crop_s: float) -> wds.WebDataset:
    """webdataset's own reading of the shards: whole tars, split by node then by worker, samples
    shuffled in a buffer as large as hubbub's default, the wanted members decoded and cropped."""
    def decode(sample: dict) -> dict:
        sources = sorted((int(m.group(1)), k) for k in sample if (m := _SOURCE.match(k)))
        mix = next(k for k in sample if k.startswith("mix."))
        return random_crop([io.BytesIO(sample[k]) for k in (mix, *(k for _, k in sources))], crop_s)

    return (wds.WebDataset(shards, shardshuffle=len(shards), nodesplitter=wds.split_by_node,
                           workersplitter=wds.split_by_worker, empty_check=False)
            .shuffle(256).map(decode))


def epoch_rate(batches) -> float:
    """Samples/s of one epoch, from the loader's creation (worker start-up is part of each epoch)."""
    start, n = time.perf_counter(), 0
    for batch in batches():
        n += batch["mix"].shape[0]
    return n / (time.perf_counter() - start)


def throughput(corpus: Path, folders: list[Path], workers: list[int], passes: int) -> dict:
    """Best samples/s of each reader over ``passes`` epochs after an untimed warm-up epoch. The
    readers take turns epoch by epoch, so a change in the machine's load hits all of them alike.
    Each worker count is timed with workers started afresh every epoch and, labelled "N kept",
    with persistent workers (one loader per reader kept from epoch to epoch)."""
    shards = [str(corpus / s["name"]) for s in load_index(corpus)["shards"] if s["split"] == SPLIT]
    hubbub_ds = ShardDataset(corpus, SPLIT, targets=(TARGET,), crop_s=CROP_S, batch_size=BATCH_SIZE)
    loose_ds, whole_ds = LooseWavs(folders, CROP_S), LooseWavs(folders, CROP_S, whole=True)
    wds_ds = webdataset_pipeline(shards, CROP_S)

    def torch_loader(ds, **kwargs):
        return lambda w, kept: DataLoader(ds, batch_size=BATCH_SIZE, num_workers=w, persistent_workers=kept, **kwargs)

    makers = {"hubbub": lambda w, kept: ShardLoader(hubbub_ds, num_workers=w, persistent_workers=kept),
              "loose": torch_loader(loose_ds, shuffle=True),
              "loose-whole": torch_loader(whole_ds, shuffle=True),
              "webdataset": torch_loader(wds_ds)}
    rates: dict[str, dict[str, float]] = {name: {} for name in makers}
    for w, kept in [(w, False) for w in workers] + [(w, True) for w in workers if w > 0]:
        label, loaders = f"{w} kept" if kept else str(w), {}
        for epoch in range(passes + 1):
            for name, make in makers.items():
                loader = loaders[name] if name in loaders else make(w, kept)
                if kept:
                    loaders[name] = loader
                if isinstance(loader, ShardLoader):
                    loader.set_epoch(epoch)  # new crops and order, as a training loop has each epoch
                rate = epoch_rate(lambda: loader)
                if epoch:  # epoch 0 warms the page cache and the imports (and starts kept workers)
                    rates[name][label] = max(rate, rates[name].get(label, 0.0))
        loaders.clear()  # kept workers end with their loaders
    return {"batch_size": BATCH_SIZE, "crop_s": CROP_S, "passes": passes, "samples_per_s": rates,
            "hubbub_vs_loose": {w: rates["hubbub"][w] / rates["loose"][w] for w in rates["hubbub"]},
            "hubbub_vs_loose_whole": {w: rates["hubbub"][w] / rates["loose-whole"][w] for w in rates["hubbub"]},
            "hubbub_vs_webdataset": {w: rates["hubbub"][w] / rates["webdataset"][w] for w in rates["hubbub"]}}


# ---- I/O per epoch ------------------------------------------------------------------------------

def epoch_keys(corpus: str, world_size: int, workers: int) -> list[str]:
    """Read one epoch as ``world_size`` ranks of ``workers`` DataLoader workers each; the keys of
    every batch yielded. Workers are forked so that they inherit this process's counting."""
    keys = []
    for rank in range(world_size):
        # Each rank is a process of its own in a real job: no listing cached by another rank helps it.
        storage.filesystem(corpus)[0].invalidate_cache()
        ds = ShardDataset(corpus, SPLIT, targets=(TARGET,), crop_s=CROP_S, batch_size=BATCH_SIZE,
                          rank=rank, world_size=world_size)
        loader = ShardLoader(ds, num_workers=workers, multiprocessing_context="fork" if workers else None)
        keys += [k for batch in loader for k in batch["keys"]]
    return keys


@contextlib.contextmanager
def counting_preads():
    """``[calls, bytes]`` of os.pread in this process and in processes forked from it (shared
    memory, so DataLoader workers add to the same counters)."""
    counts = multiprocessing.get_context("fork").Array("q", 2)
    real = os.pread

    def pread(fd, n, offset):
        data = real(fd, n, offset)
        with counts.get_lock():
            counts[0] += 1
            counts[1] += len(data)
        return data

    with mock.patch.object(os, "pread", pread):
        yield counts


def io_per_epoch(corpus: Path, grid: list[tuple[int, int]], work: Path) -> dict:
    index = load_index(corpus)
    shard_sizes = [s["size_bytes"] for s in index["shards"] if s["split"] == SPLIT]
    corpus_bytes, num_shards = sum(shard_sizes), len(shard_sizes)
    table = read_members_table(corpus, SPLIT)
    wanted = [j for j, m in enumerate(table["member_names"]) if WANTED.match(str(m))]
    member_bytes = dict(zip((k.decode() for k in table["keys"]),
                            np.where(table["offsets"][:, wanted] >= 0, table["sizes"][:, wanted], 0).sum(axis=1)))

    def yielded(keys: list[str]) -> dict:
        return {"yielded_samples": len(keys), "yielded_bytes": int(sum(member_bytes[k] for k in keys))}

    rows = [{"world_size": w, "workers": n,
             # webdataset's splitters hand each shard whole to one worker of one rank; a reader that
             # splits samples rather than shards streams every shard in every rank and worker.
             "webdataset": {"requests": num_shards, "bytes": corpus_bytes},
             "stream_all": {"requests": w * max(n, 1) * num_shards, "bytes": w * max(n, 1) * corpus_bytes}}
            for w, n in grid]
    for row in rows:
        with counting_preads() as counts:
            keys = epoch_keys(str(corpus), row["world_size"], row["workers"])
        row["local"] = {"requests": counts[0], "bytes": counts[1], **yielded(keys)}

    with s3_server() as bucket:
        url = f"{bucket}/corpus"
        for p in sorted(corpus.iterdir()):
            storage.put_file(p, f"{url}/{p.name}")
        fs, root = storage.filesystem(url)
        sizes = {e["name"].rsplit("/", 1)[-1]: e["size"] for e in fs.ls(root, detail=True, refresh=True)}
        for row in rows:
            with S3RequestLog() as log:
                keys = epoch_keys(url, row["world_size"], row["workers"])
            # Shard reads are the epoch's cost; the rest (index.json, the members table, HEADs) is
            # paid once per rank and does not grow with the corpus' audio.
            other = [e for e in log.entries if ".tar" not in e["url"].split("?")[0]]
            row["s3"] = {"requests": len(log.gets(".tar")), "bytes": log.bytes_read(".tar", sizes),
                         "other_requests": len(other),
                         "other_bytes": sum(request_bytes(e, sizes) for e in other if e["method"] == "GET"),
                         **yielded(keys)}
    return {"corpus_bytes": corpus_bytes, "num_shards": num_shards, "rows": rows}


# ---- report -------------------------------------------------------------------------------------

def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
               platform.processor())
    return {"cores": len(os.sched_getaffinity(0)), "cpu": cpu, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "webdataset": wds.__version__,
            "soundfile": sf.__version__}


def describe_corpus(corpus: Path) -> dict:
    index = load_index(corpus)
    split = index["splits"][SPLIT]
    return {"path": str(corpus), "num_samples": split["num_samples"], "num_shards": split["shards"],
            "bytes": sum(s["size_bytes"] for s in index["shards"] if s["split"] == SPLIT),
            "mean_duration_s": split["duration_s"] / split["num_samples"],
            "sample_rate_hz": index["recipe"]["sample_rate_hz"], "storage": index["recipe"]["storage"]}


def format_report(res: dict) -> str:
    mb = 1e6
    m, c, lo, t = res["machine"], res["corpus"], res["loose"], res["throughput"]
    load = res["load_average"]
    lines = [
        f"hubbub loader benchmark, {res['date']}",
        f"command: {res['command']}",
        f"machine: {m['cores']} cores ({m['cpu']}), {m['platform']}; Python {m['python']}, torch {m['torch']}, "
        f"webdataset {m['webdataset']}, soundfile {m['soundfile']}",
        f"load average (1 min) before / after the timings: {load['start']:.2f} / {load['after_throughput']:.2f}",
        "",
        f"corpus: {c['path']}: {c['num_samples']} {SPLIT} samples (mean {c['mean_duration_s']:.2f} s at "
        f"{c['sample_rate_hz']} Hz, {c['storage']['bits']}-bit {c['storage']['codec'].upper()}) in "
        f"{c['num_shards']} shards, {c['bytes'] / mb:.1f} MB",
        f"loose:  {lo['num_samples']} folders of mix.wav + {lo['num_sources']} source WAVs, {lo['bytes'] / mb:.1f} MB",
        "",
        f"Throughput, samples/s: batches of {t['batch_size']}, {t['crop_s']} s random crops of the mix and its "
        f"{TARGET} sources;",
        f"best of {t['passes']} epochs after a warm-up epoch (page cache warm), readers taking turns; DataLoader "
        "workers start afresh each epoch, or persist (kept)",
        "(loose: only the crop's frames read with seek; loose-whole: whole files read, then cropped)",
        f"{'workers':>7} {'hubbub':>9} {'loose':>9} {'loose-whole':>12} {'webdataset':>11} {'hubbub/loose':>13} "
        f"{'hubbub/whole':>13} {'hubbub/webdataset':>18}",
    ]
    rates = t["samples_per_s"]
    for w in rates["hubbub"]:
        lines.append(f"{w:>7} {rates['hubbub'][w]:9.1f} {rates['loose'][w]:9.1f} {rates['loose-whole'][w]:12.1f} "
                     f"{rates['webdataset'][w]:11.1f} {t['hubbub_vs_loose'][w]:13.2f} "
                     f"{t['hubbub_vs_loose_whole'][w]:13.2f} {t['hubbub_vs_webdataset'][w]:18.2f}")
    lines.append(f"goal: hubbub >= 3x the loose files on {m['cores']} cores; it is "
                 + ", ".join(f"{t['hubbub_vs_loose'][w]:.2f}x" for w in rates["hubbub"])
                 + " the crop-reading loader and "
                 + ", ".join(f"{t['hubbub_vs_loose_whole'][w]:.2f}x" for w in rates["hubbub"])
                 + f" the whole-file one ({', '.join(rates['hubbub'])} workers)")
    rows = res["io"]["rows"]
    lines += [
        "",
        "I/O of one epoch by hubbub's reader, summed over W ranks x N workers per rank. yielded: the bytes of the",
        f"json, mix and {TARGET} members of the samples in the epoch's batches; local: os.pread calls; S3: requests",
        "recorded by the server (shard GETs, and the rest: index.json, members table, HEADs, paid once per rank).",
        f"{'W':>2} {'N':>2} {'samples':>8} {'yielded MB':>11} {'local reads':>12} {'local MB':>9} {'/yielded':>9} "
        f"{'S3 GETs':>8} {'S3 MB':>8} {'/yielded':>9} {'S3 other':>9} {'other KB':>9}",
    ]
    for r in rows:
        loc, s3 = r["local"], r["s3"]
        lines.append(
            f"{r['world_size']:>2} {r['workers']:>2} {loc['yielded_samples']:>8} {loc['yielded_bytes'] / mb:11.2f} "
            f"{loc['requests']:>12} {loc['bytes'] / mb:9.2f} {loc['bytes'] / loc['yielded_bytes']:9.3f} "
            f"{s3['requests']:>8} {s3['bytes'] / mb:8.2f} {s3['bytes'] / s3['yielded_bytes']:9.3f} "
            f"{s3['other_requests']:>9} {s3['other_bytes'] / 1e3:9.1f}")
    lines += [
        "",
        f"Per epoch beside other readers of the same {res['io']['num_shards']} shards "
        f"({res['io']['corpus_bytes'] / mb:.1f} MB): webdataset's split_by_node/split_by_worker",
        "reads each shard whole once; a reader that splits samples (not shards) streams every shard in every rank and worker.",
        f"{'W':>2} {'N':>2} {'hubbub S3 requests':>19} {'MB':>8} {'webdataset requests':>20} {'MB':>8} "
        f"{'stream-all requests':>20} {'MB':>8}",
    ]
    for r in rows:
        lines.append(
            f"{r['world_size']:>2} {r['workers']:>2} {r['s3']['requests'] + r['s3']['other_requests']:>19} "
            f"{(r['s3']['bytes'] + r['s3']['other_bytes']) / mb:8.2f} {r['webdataset']['requests']:>20} "
            f"{r['webdataset']['bytes'] / mb:8.2f} {r['stream_all']['requests']:>20} {r['stream_all']['bytes'] / mb:8.1f}")
    return "\n".join(lines)


def parse_grid(text: str) -> list[tuple[int, int]]:
    return [tuple(int(x) for x in cell.split("x")) for cell in text.split(",")]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--num", type=int, default=400, help="train samples of the corpus made (default 400)")
    p.add_argument("--workers", default="0,2", help="DataLoader workers to time, comma-separated (default 0,2)")
    p.add_argument("--grid", default=",".join(f"{w}x{n}" for w, n in GRID),
                   help="world size x workers per rank of the I/O section (default %(default)s)")
    p.add_argument("--corpus", type=Path, help="an existing local corpus with a train split (default: make one)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="recipe override for the corpus made (e.g. speech.corpus=DIR, samples_per_shard=50)")
    p.add_argument("--work-dir", type=Path, help="where the corpus and loose files go (default: a temporary folder)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = p.parse_args(argv)
    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
           "command": shlex.join(["python", "benchmarks/loader.py", *(sys.argv[1:] if argv is None else argv)]),
           "machine": machine(), "load_average": {"start": os.getloadavg()[0]}}
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hubbub-loader-")))
        corpus = (args.corpus or make_corpus(work / "corpus", args.num, args.overrides)).resolve()
        folders = export_loose(corpus, work / "loose")
        res["corpus"] = describe_corpus(corpus)
        res["loose"] = {"path": str(work / "loose"), "num_samples": len(folders),
                        "num_sources": len(list(folders[0].glob("s[0-9]*.wav"))),
                        "bytes": folder_bytes(work / "loose")}
        res["throughput"] = throughput(corpus, folders, [int(w) for w in args.workers.split(",")], PASSES)
        res["load_average"]["after_throughput"] = os.getloadavg()[0]
        res["io"] = io_per_epoch(corpus, parse_grid(args.grid), work)
    print(json.dumps(res, indent=1) if args.json else format_report(res))
    return res


if __name__ == "__main__":
    main()
