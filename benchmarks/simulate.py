"""Simulation speed: hubbub vs the plain pyroomacoustics path, and Ray scaling, in one run.

    python benchmarks/simulate.py [--json] [--num-plain 12] [--workers N]

Same as `hubbub bench simulate`; see hubbub.simulate.bench for what each path does.
"""
import sys

from hubbub.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "simulate", *sys.argv[1:]]))
