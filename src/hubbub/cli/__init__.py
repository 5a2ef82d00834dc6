"""The ``hubbub`` command: thin subcommands over library functions.

Each module holds one group of commands, every command's options next to the handler that
calls its one library function (lhotse's ``bin/modes``): :mod:`~hubbub.cli.sources` (voices,
real), :mod:`~hubbub.cli.simulate` (recipes, simulate, rirs), :mod:`~hubbub.cli.shards`,
:mod:`~hubbub.cli.train` (finetune, pretrain), :mod:`~hubbub.cli.runs` (evaluate, separate,
publish) and :mod:`~hubbub.cli.demo`. Handlers import the library when they run, so that
``hubbub --help`` and a mistyped option answer without loading torch.

``main(argv)`` is callable from tests; ``python -m hubbub.cli`` runs it.
"""
from __future__ import annotations

import argparse
import errno
import logging
import sys

from hubbub.cli import demo, runs, shards, simulate, sources, train

# The commands in the order ``hubbub --help`` lists them: the order a user meets them.
COMMANDS = (sources.add_voices, simulate.add_recipes, simulate.add_simulate, simulate.add_rirs, shards.add_shards,
            train.add_finetune, train.add_pretrain, runs.add_evaluate, runs.add_separate, runs.add_publish,
            sources.add_real, demo.add_demo)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hubbub", description="speech-separation data generation and pretraining")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from hubbub.config import ConfigError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"hubbub: bad recipe/config: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"hubbub: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"hubbub: no space left on the device{where}: free some and rerun the same command "
              "(what was complete is kept, nothing partial counts)", file=sys.stderr)
        return 2
