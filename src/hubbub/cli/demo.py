"""``hubbub demo``: the main job on the built-in default (:mod:`hubbub.demo`)."""
from __future__ import annotations


def add_demo(sub) -> None:
    d = sub.add_parser("demo", help="the main job on the built-in default: voices, simulate, verify, stats, train, evaluate")
    d.add_argument("--out", default="demo")
    d.add_argument("--num", type=int, default=200, help="WHAMR!-style mixtures")
    d.add_argument("--train-num", type=int, default=2000, help="LibriMix-style mixtures (80%% train, 10%% valid, 10%% test)")
    d.add_argument("--steps", type=int, default=1200, help="PIT training steps of the small Conv-TasNet (pit_small)")
    d.add_argument("--workers", type=int, default=None)
    d.set_defaults(func=_cmd_demo)


def _cmd_demo(args) -> int:
    from hubbub.demo import run_demo

    return run_demo(args.out, num=args.num, train_num=args.train_num, steps=args.steps, workers=args.workers)
