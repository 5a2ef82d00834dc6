"""Mixtures and rooms: ``hubbub recipes``, ``hubbub simulate``, ``hubbub rirs``."""
from __future__ import annotations

import argparse


def add_recipes(sub) -> None:
    r = sub.add_parser("recipes", help="list the preset recipes, or print one resolved")
    r.add_argument("name", nargs="?")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.set_defaults(func=_cmd_recipes)


def _cmd_recipes(args) -> int:
    from hubbub.config import to_dict
    from hubbub.simulate.recipe import load_recipe, preset_names

    if args.name:
        import yaml

        print(yaml.safe_dump(to_dict(load_recipe(args.name, args.set)), sort_keys=False), end="")
    else:
        for name in preset_names():
            print(f"{name:16s} {load_recipe(name).description}")
    return 0


def add_simulate(sub) -> None:
    s = sub.add_parser("simulate", help="simulate mixtures into WebDataset shards (Ray)")
    s.add_argument("--recipe", required=True, help="preset name (hubbub recipes) or YAML file")
    s.add_argument("--num", type=int, required=True, help="samples in all splits together")
    s.add_argument("--out", required=True, help="a folder or an object-store URL (s3://, gs://, az://, ...)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="tasks at once (0: no Ray, in this process)")
    s.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray)")
    s.add_argument("--shared-disk", action=argparse.BooleanOptionalAction, default=None,
                   help="every Ray node reads and writes this machine's paths (default: yes on one node; on "
                        "several, sources travel through Ray and --out must be an object store)")
    s.add_argument("--splits", nargs="+", default=None, help="only these splits")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args) -> int:
    from hubbub.simulate import load_recipe, simulate

    recipe = load_recipe(args.recipe, args.set)
    res = simulate(recipe, num=args.num, out_dir=args.out, seed=args.seed, workers=args.workers,
                   address=args.address, splits=args.splits, progress=not args.quiet, shared_disk=args.shared_disk)
    splits = ", ".join(f"{k}: {v['num_samples']}" for k, v in res.index["splits"].items())
    print(f"{res.out_dir}: {splits} samples; {res.written} shards written, {res.skipped_complete} already "
          f"complete; {len(res.skipped_files)} source files skipped, {len(res.failed_samples)} samples failed "
          f"(see report.json)")
    return 0


def add_rirs(sub) -> None:
    b = sub.add_parser("rirs", help="simulate a RIR bank: rooms once, reused by many mixtures")
    b.add_argument("--recipe", required=True, help="its room, mics and sample rate are used")
    b.add_argument("--rooms", type=int, required=True, help="rooms in all splits together")
    b.add_argument("--positions", type=int, default=6, help="source positions per room")
    b.add_argument("--out", required=True, help="a folder or an object-store URL")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=None)
    b.add_argument("--address", default=None)
    b.add_argument("--shared-disk", action=argparse.BooleanOptionalAction, default=None,
                   help="as for simulate")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=_cmd_rirs)


def _cmd_rirs(args) -> int:
    from hubbub.simulate import load_recipe, simulate_rir_bank

    recipe = load_recipe(args.recipe, args.set)
    res = simulate_rir_bank(recipe, num_rooms=args.rooms, positions=args.positions, out_dir=args.out,
                            seed=args.seed, workers=args.workers, address=args.address, progress=not args.quiet,
                            shared_disk=args.shared_disk)
    rooms = ", ".join(f"{k}: {v['num_samples']}" for k, v in res.index["splits"].items())
    print(f"{res.out_dir}: RIR bank of {rooms} rooms x {args.positions} positions; use it with "
          f"--set room.rir_bank={res.out_dir}")
    return 0
