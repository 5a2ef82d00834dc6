"""Figures for docs/scale.md: bytes per second of mixture of each member (the `whamr` preset, 8 kHz,
2 mics, 16-bit WAV, all targets), GETs per sample and time to first batch, against an S3 server on
127.0.0.1 (moto, started here; nothing leaves the machine).

    python benchmarks/scale_probe.py [--num 200]
"""
import argparse
import datetime
import time

from hubbub.shards.reader import ShardDataset, ShardLoader
from hubbub.shards.writer import load_index, read_members_table
from hubbub.simulate import load_recipe, simulate
from hubbub.testing import S3RequestLog, s3_server

READ_BY_PIT = ("json", "mix.wav", "s0.reverberant.wav", "s1.reverberant.wav")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=200)
    args = parser.parse_args()
    print(f"{datetime.date.today()}  python benchmarks/scale_probe.py --num {args.num}")
    with s3_server() as bucket:
        url = f"{bucket}/whamr"
        start = time.perf_counter()
        simulate(load_recipe("whamr", ["samples_per_shard=50"]), num=args.num, out_dir=url, seed=0, workers=0,
                 progress=False)
        print(f"simulated {args.num} mixtures to {url} in {time.perf_counter() - start:.1f} s (one process)")
        table, index = read_members_table(url, "train"), load_index(url)
        seconds = index["splits"]["train"]["duration_s"]
        per_s = {m: table["sizes"][:, j][table["sizes"][:, j] >= 0].sum() / seconds
                 for j, m in enumerate(table["member_names"])}
        print(f"train: {len(table['keys'])} mixtures, {seconds / len(table['keys']):.2f} s mean, "
              f"{sum(per_s.values()) / 1e3:.1f} kB per second of mixture in all")
        for member, rate in sorted(per_s.items()):
            print(f"  {member:24s} {rate / 1e3:7.1f} kB/s")
        print(f"  read by PIT on reverberant targets: {sum(per_s[m] for m in READ_BY_PIT) / 1e3:.1f} kB/s")

        def dataset():
            return ShardDataset(url, "train", targets=("reverberant",), crop_s=2.0, batch_size=8)

        for _ in range(2):
            with S3RequestLog() as log:
                start = time.perf_counter()
                ds = dataset()
                loaded = time.perf_counter() - start
                next(iter(ShardLoader(ds)))
                first = time.perf_counter() - start
            print(f"time to first batch {first * 1e3:.0f} ms (index and members table {loaded * 1e3:.0f} ms), "
                  f"{len(log.entries)} requests")
        with S3RequestLog() as log:
            n = sum(len(batch["keys"]) for batch in ShardLoader(dataset()))
        gets = len(log.gets("/train-"))
        print(f"one epoch: {n} samples, {gets} GETs of shards ({gets / n:.2f} per sample)")


if __name__ == "__main__":
    main()
