"""Training stages: ``hubbub finetune pit|av`` and ``hubbub pretrain mixit|codec``.

Each trains its stage's ``*_small`` config unless ``--config`` names another: a model that
learns on a CPU. The ``*_debug`` configs (seconds, for tests) run only when asked for.
"""
from __future__ import annotations

import json


def _train_config(args, default: str):
    from hubbub.train import load_train_config

    overrides = list(args.set)
    if getattr(args, "shards", None):
        overrides.append(f"data.shards={args.shards}")
    if args.model:
        overrides.append(f"model.name={args.model}")
    if getattr(args, "init", None):
        overrides.append(f"init={args.init}")
    return load_train_config(args.config or default, overrides)


def _train(stage, args, default: str, *overrides: str) -> int:
    """Run a training stage function on the config from ``args`` and print its final metrics."""
    args.set = [*overrides, *args.set]
    metrics = stage(_train_config(args, default), args.out)
    print(json.dumps({"run": args.out, **metrics}))
    return 0


def _add_run_options(parser, stage: str, init_help: str) -> None:
    """--config, --init, --out and --set, as every training command has them."""
    parser.add_argument("--config", default=None, help=f"built-in config ({stage}, {stage}_small, {stage}_debug) "
                                                        f"or YAML (default {stage}_small)")
    parser.add_argument("--init", default=None, help=init_help)
    parser.add_argument("--out", required=True,
                        help="run directory or object-store URL (rerun the same command to resume)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")


def add_finetune(sub) -> None:
    ft = sub.add_parser("finetune", help="supervised stages").add_subparsers(dest="finetune_cmd", required=True)
    _add_finetune_pit(ft)
    _add_finetune_av(ft)


def _add_finetune_pit(ft) -> None:
    fp = ft.add_parser("pit", help="permutation-invariant training on a corpus (alone or under accelerate launch)")
    fp.add_argument("--shards", required=True, help="a corpus made by hubbub simulate")
    fp.add_argument("--model", default=None, help="convtasnet, dprnn, tfgridnet, glaunet")
    _add_run_options(fp, "pit", "a pretrained run or model dir: its backbone starts this run")
    fp.add_argument("--unlabelled", default=None,
                    help="semi-supervised: a corpus of unlabelled mixtures for MixIT in the same step")
    fp.set_defaults(func=_cmd_finetune_pit)


def _cmd_finetune_pit(args) -> int:
    from hubbub.finetune import finetune_pit

    return _train(finetune_pit, args, "pit_small",
                  *([f"semi.unlabelled={args.unlabelled}"] if args.unlabelled else []))


def _add_finetune_av(ft) -> None:
    fa = ft.add_parser("av", help="audio-visual target-speaker extraction from the target's lips (Dolphin-style)")
    fa.add_argument("--shards", required=True, help="a corpus with lip streams (hubbub simulate --recipe av)")
    _add_run_options(fa, "av", "a pretrained glaunet run or model dir (its backbone is the audio path), or an AV run")
    fa.set_defaults(func=_cmd_finetune_av, model=None)


def _cmd_finetune_av(args) -> int:
    from hubbub.finetune import finetune_av

    return _train(finetune_av, args, "av_small")


def add_pretrain(sub) -> None:
    pt = sub.add_parser("pretrain", help="self-supervised stages").add_subparsers(dest="pretrain_cmd", required=True)
    _add_pretrain_mixit(pt)
    _add_pretrain_codec(pt)


def _add_pretrain_mixit(pt) -> None:
    pm = pt.add_parser("mixit", help="MixIT on unlabelled mixtures (alone or under accelerate launch)")
    pm.add_argument("--shards", default=None, help="a hubbub corpus (its sources are ignored)")
    pm.add_argument("--recordings", default=None, help="or a folder of unlabelled recordings, cut into segments")
    pm.add_argument("--model", default=None, help="convtasnet, dprnn, tfgridnet, glaunet")
    _add_run_options(pm, "mixit", "a run or model dir whose backbone starts this run")
    pm.set_defaults(func=_cmd_pretrain_mixit)


def _cmd_pretrain_mixit(args) -> int:
    from hubbub.pretrain import pretrain_mixit

    if bool(args.shards) == bool(args.recordings):
        raise ValueError("give one input: --shards (a hubbub corpus) or --recordings (a folder of recordings)")
    return _train(pretrain_mixit, args, "mixit_small",
                  *([f"mixit.recordings={args.recordings}"] if args.recordings else []))


def _add_pretrain_codec(pt) -> None:
    pc = pt.add_parser("codec", help="predict EnCodec tokens: masked mixture spans, or per-source with PIT")
    pc.add_argument("--shards", required=True, help="a hubbub corpus")
    pc.add_argument("--codec", default=None, help="EnCodec: local directory or hub id (facebook/encodec_24khz)")
    pc.add_argument("--model", default=None, help="convtasnet, dprnn, tfgridnet, glaunet")
    _add_run_options(pc, "codec", "a run or model dir whose backbone starts this run")
    pc.set_defaults(func=_cmd_pretrain_codec)


def _cmd_pretrain_codec(args) -> int:
    from hubbub.pretrain import pretrain_codec

    return _train(pretrain_codec, args, "codec_small", *([f"codec.model={args.codec}"] if args.codec else []))
