"""The ``hubbub`` command: thin subcommands over library functions.

``main(argv)`` is callable from tests; each ``_cmd_*`` parses nothing itself and calls one library
function.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import sys


def _cmd_voices(args) -> int:
    from hubbub.voices import make_voices

    manifest = make_voices(args.out, num_speakers=args.speakers, utterances_per_speaker=args.utterances,
                           seed=args.seed, sample_rate_hz=args.sample_rate_hz, progress=not args.quiet)
    print(f"built-in voices: {manifest}")
    return 0


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


def _cmd_shards_verify(args) -> int:
    from hubbub.shards.verify import verify_corpus

    report = verify_corpus(args.dir, check_audio=not args.quick)
    print(report.format())
    return 0 if report.ok else 1


def _cmd_shards_index(args) -> int:
    from hubbub.shards.writer import index_members

    index = index_members(args.dir, progress=not args.quiet)
    print(f"{args.dir}: member byte ranges of {len(index['shards'])} shards recorded "
          f"(format version {index['format_version']})")
    return 0


def _cmd_shards_stats(args) -> int:
    from hubbub.shards.stats import corpus_stats, format_stats, plot_stats

    from hubbub import storage

    stats = corpus_stats(args.dir)
    png = args.png or storage.join(args.dir, "stats.png")
    plot_stats(stats, png)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        print(format_stats(stats))
        print(f"plot: {png}")
    return 0


def _cmd_bench_simulate(args) -> int:
    from hubbub.simulate.bench import bench_simulate, format_bench

    res = bench_simulate(num_hubbub=args.num_hubbub, num_plain=args.num_plain, ray_num=args.ray_num,
                         workers=args.workers, recipe=args.recipe, overrides=tuple(args.set),
                         bank_rooms=args.bank_rooms, mixtures_per_room=args.mixtures_per_room)
    print(json.dumps(res) if args.json else format_bench(res))
    return 0


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


def _cmd_finetune_pit(args) -> int:
    from hubbub.finetune import finetune_pit

    return _train(finetune_pit, args, "pit_debug", *([f"semi.unlabelled={args.unlabelled}"] if args.unlabelled else []))


def _cmd_finetune_av(args) -> int:
    from hubbub.finetune import finetune_av

    return _train(finetune_av, args, "av_debug")


def _cmd_pretrain_mixit(args) -> int:
    from hubbub.pretrain import pretrain_mixit

    if bool(args.shards) == bool(args.recordings):
        raise ValueError("give one input: --shards (a hubbub corpus) or --recordings (a folder of recordings)")
    return _train(pretrain_mixit, args, "mixit_debug",
                  *([f"mixit.recordings={args.recordings}"] if args.recordings else []))


def _cmd_pretrain_codec(args) -> int:
    from hubbub.pretrain import pretrain_codec

    return _train(pretrain_codec, args, "codec_debug", *([f"codec.model={args.codec}"] if args.codec else []))


def _cmd_shards_tokens(args) -> int:
    from hubbub.codec import load_codec
    from hubbub.shards.tokens import add_codec_tokens

    codec = load_codec(args.codec, bandwidth_kbps=args.bandwidth_kbps, device=args.device)
    summary = add_codec_tokens(args.dir, codec, source_target=args.source_target, batch_size=args.batch_size,
                               progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _cmd_shards_ingest(args) -> int:
    from hubbub.shards.ingest import ingest_folder

    res = ingest_folder(args.folder, args.out, layout=args.layout, sample_rate_hz=args.sample_rate_hz,
                        segment_s=args.segment_s, seed=args.seed, mixture=args.mixture, mode=args.mode,
                        splits=args.splits, targets=args.targets, codec=args.codec, bits=args.bits,
                        progress=not args.quiet)
    print(res.summary())
    return 0


def _cmd_evaluate(args) -> int:
    from hubbub.evaluate import evaluate_run, format_markdown

    results = evaluate_run(args.run, args.shards, split=args.split, max_samples=args.max_samples)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(format_markdown(results))
        print(f"written to {results['out_dir']}")
    return 0


def _cmd_separate(args) -> int:
    from hubbub.separate import separate_file

    for path in separate_file(args.run, args.input, args.out, chunk_s=args.chunk_s, overlap_s=args.overlap_s,
                              sample_rate_hz=args.sample_rate_hz, lips=args.lips):
        print(path)
    return 0


def _cmd_publish(args) -> int:
    from hubbub.publish import publish_run

    out = publish_run(args.run, args.to, repo_id=args.repo_id, private=not args.public, license=args.license)
    print(f"published {args.run} to {out}" + (f" and {args.repo_id}" if args.repo_id else ""))
    return 0


def _cmd_real_split(args) -> int:
    from hubbub.sources.real import split_real

    res = split_real(args.folder, args.out, layout=args.layout, speaker_regex=args.speaker_regex, group=args.group,
                     labelled_fraction=args.labelled_fraction, seed=args.seed, min_duration_s=args.min_duration_s,
                     licence=args.licence)
    print(res.summary())
    return 0


def _cmd_real_check(args) -> int:
    from hubbub.sources.real import check_split

    report = check_split(args.dir, args.corpora)
    print(report.format())
    return 0 if report.ok else 1


def _cmd_demo(args) -> int:
    from hubbub.demo import run_demo

    return run_demo(args.out, num=args.num, train_num=args.train_num, steps=args.steps, workers=args.workers)


def build_parser() -> argparse.ArgumentParser:
    from hubbub.shards.format import BITS, CODECS

    p = argparse.ArgumentParser(prog="hubbub", description="speech-separation data generation and pretraining")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("voices", help="make the built-in speech corpus (espeak-ng + flite + Festival, no download)")
    v.add_argument("--out", required=True)
    v.add_argument("--speakers", type=int, default=240, help="split evenly between the synthesizer families")
    v.add_argument("--utterances", type=int, default=6, help="utterances per speaker")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--sample-rate-hz", type=int, default=16000)
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=_cmd_voices)

    r = sub.add_parser("recipes", help="list the preset recipes, or print one resolved")
    r.add_argument("name", nargs="?")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.set_defaults(func=_cmd_recipes)

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

    sh = sub.add_parser("shards", help="check and describe a corpus").add_subparsers(dest="shards_cmd", required=True)
    sv = sh.add_parser("verify", help="checksums, decoding, schema; non-zero exit on any fault")
    sv.add_argument("dir")
    sv.add_argument("--quick", action="store_true", help="checksums and schema only, no audio decoding")
    sv.set_defaults(func=_cmd_shards_verify)
    st = sh.add_parser("stats", help="distributions of RT60, SNR, SIR, overlap, duration, speakers (+ PNG)")
    st.add_argument("dir")
    st.add_argument("--json", action="store_true")
    st.add_argument("--png", default=None, help="plot path (default DIR/stats.png)")
    st.set_defaults(func=_cmd_shards_stats)
    ix = sh.add_parser("index", help="record each member's byte range (corpora of format 1; after rewrites)")
    ix.add_argument("dir")
    ix.add_argument("--quiet", action="store_true")
    ix.set_defaults(func=_cmd_shards_index)
    tk = sh.add_parser("tokens", help="cache EnCodec tokens of mixtures and sources into the shards")
    tk.add_argument("dir")
    tk.add_argument("--codec", required=True, help="EnCodec: local directory or hub id (facebook/encodec_24khz)")
    tk.add_argument("--bandwidth-kbps", type=float, default=None, help="sets the number of codebooks")
    tk.add_argument("--source-target", default=None, help="source image to tokenise (default: reverberant)")
    tk.add_argument("--batch-size", type=int, default=16)
    tk.add_argument("--device", default="cpu")
    tk.add_argument("--quiet", action="store_true")
    tk.set_defaults(func=_cmd_shards_tokens)
    ig = sh.add_parser("ingest", help="a standard set's tree (LibriMix, WHAM!, WHAMR!, wsj0-mix) into a labelled "
                                      "corpus, or a folder of recordings cut into an unlabelled one (for MixIT)")
    ig.add_argument("folder")
    ig.add_argument("--out", required=True)
    ig.add_argument("--layout", default="auto",
                    help="auto (default: from the folder names), recordings, librimix, wham, whamr, wsj0mix")
    ig.add_argument("--sample-rate-hz", type=int, default=None,
                    help="recordings: resample to (default 16000); sets: the wav8k or wav16k variant")
    ig.add_argument("--mode", choices=("min", "max"), default=None, help="sets: the min or max variant")
    ig.add_argument("--mixture", default=None, help="sets: mix_clean, mix_both, mix_single (WHAMR!: "
                                                    "mix_both_reverb, ...; wsj0-mix: mix)")
    ig.add_argument("--splits", default=None, metavar="SET=HUBBUB,...",
                    help="sets: split folders to read and their names (default e.g. dev=valid,test=test,...)")
    ig.add_argument("--targets", default=None, help="sets: targets to store (default dry,reverberant,noise)")
    ig.add_argument("--segment-s", type=float, default=None, help="recordings: segment length (default 4.0)")
    ig.add_argument("--seed", type=int, default=None, help="recordings: split assignment seed (default 0)")
    ig.add_argument("--codec", choices=CODECS, default="flac", help="storage of the segments (default: flac)")
    ig.add_argument("--bits", type=int, choices=BITS, default=24, help="bit depth of the segments (default: 24)")
    ig.add_argument("--quiet", action="store_true")
    ig.set_defaults(func=_cmd_shards_ingest)

    bench = sub.add_parser("bench", help="speed benchmarks").add_subparsers(dest="bench_cmd", required=True)
    bs = bench.add_parser("simulate", help="mixtures/s/core: hubbub vs plain pyroomacoustics; Ray 1 -> N")
    bs.add_argument("--json", action="store_true")
    bs.add_argument("--recipe", default="whamr")
    bs.add_argument("--num-hubbub", type=int, default=60)
    bs.add_argument("--num-plain", type=int, default=12)
    bs.add_argument("--ray-num", type=int, default=200, help="mixtures per Ray timing")
    bs.add_argument("--workers", type=int, default=None, help="N for the Ray scaling (default: all cores)")
    bs.add_argument("--bank-rooms", type=int, default=24, help="rooms of the RIR bank built and timed")
    bs.add_argument("--mixtures-per-room", type=int, default=10,
                    help="mixtures sharing each bank room's cost in the bank figure")
    bs.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    bs.set_defaults(func=_cmd_bench_simulate)

    ft = sub.add_parser("finetune", help="supervised stages").add_subparsers(dest="finetune_cmd", required=True)
    fp = ft.add_parser("pit", help="permutation-invariant training on a corpus (alone or under accelerate launch)")
    fp.add_argument("--shards", required=True, help="a corpus made by hubbub simulate")
    fp.add_argument("--model", default=None, help="convtasnet, dprnn, tfgridnet, glaunet")
    fp.add_argument("--config", default=None, help="built-in config (pit, pit_debug) or YAML (default pit_debug)")
    fp.add_argument("--init", default=None, help="a pretrained run or model dir: its backbone starts this run")
    fp.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    fp.add_argument("--unlabelled", default=None,
                    help="semi-supervised: a corpus of unlabelled mixtures for MixIT in the same step")
    fp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    fp.set_defaults(func=_cmd_finetune_pit)
    fa = ft.add_parser("av", help="audio-visual target-speaker extraction from the target's lips (Dolphin-style)")
    fa.add_argument("--shards", required=True, help="a corpus with lip streams (hubbub simulate --recipe av)")
    fa.add_argument("--config", default=None, help="built-in config (av, av_debug) or YAML (default av_debug)")
    fa.add_argument("--init", default=None, help="a pretrained glaunet run or model dir (its backbone is the "
                                                 "audio path), or an AV run")
    fa.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    fa.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    fa.set_defaults(func=_cmd_finetune_av, model=None)

    pt = sub.add_parser("pretrain", help="self-supervised stages").add_subparsers(dest="pretrain_cmd", required=True)
    pm = pt.add_parser("mixit", help="MixIT on unlabelled mixtures (alone or under accelerate launch)")
    pm.add_argument("--shards", default=None, help="a hubbub corpus (its sources are ignored)")
    pm.add_argument("--recordings", default=None, help="or a folder of unlabelled recordings, cut into segments")
    pm.add_argument("--model", default=None, help="convtasnet, dprnn, tfgridnet, glaunet")
    pm.add_argument("--config", default=None, help="built-in config (mixit, mixit_debug) or YAML (default mixit_debug)")
    pm.add_argument("--init", default=None, help="a run or model dir whose backbone starts this run")
    pm.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    pm.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pm.set_defaults(func=_cmd_pretrain_mixit)
    pc = pt.add_parser("codec", help="predict EnCodec tokens: masked mixture spans, or per-source with PIT")
    pc.add_argument("--shards", required=True, help="a hubbub corpus")
    pc.add_argument("--codec", default=None, help="EnCodec: local directory or hub id (facebook/encodec_24khz)")
    pc.add_argument("--model", default=None, help="convtasnet, dprnn, tfgridnet, glaunet")
    pc.add_argument("--config", default=None, help="built-in config (codec, codec_debug) or YAML (default codec_debug)")
    pc.add_argument("--init", default=None, help="a run or model dir whose backbone starts this run")
    pc.add_argument("--out", required=True, help="run directory (rerun the same command to resume)")
    pc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pc.set_defaults(func=_cmd_pretrain_codec)

    ev = sub.add_parser("evaluate", help="SI-SNRi, SDRi, PESQ, STOI overall and by RT60, SNR, overlap, speakers")
    ev.add_argument("run")
    ev.add_argument("--shards", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--max-samples", type=int, default=None)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)

    se = sub.add_parser("separate", help="separate a recording of any length (chunked, bounded memory)")
    se.add_argument("run", help="a run, or a model/published directory")
    se.add_argument("input")
    se.add_argument("--out", required=True)
    se.add_argument("--chunk-s", type=float, default=8.0)
    se.add_argument("--overlap-s", type=float, default=2.0)
    se.add_argument("--sample-rate-hz", type=int, default=None, help="for a bare model directory")
    se.add_argument("--lips", default=None, help="AV models: the target speaker's mouth ROIs over the recording "
                                                 "(.npy/.npz of (frames, H, W) at 25 fps, or a folder of frame images)")
    se.set_defaults(func=_cmd_separate)

    pu = sub.add_parser("publish", help="save a run as a pretrained model with its data card (and upload)")
    pu.add_argument("run")
    pu.add_argument("--to", required=True)
    pu.add_argument("--repo-id", default=None, help="also upload to the Hugging Face Hub")
    pu.add_argument("--public", action="store_true")
    pu.add_argument("--license", default=None)
    pu.set_defaults(func=_cmd_publish)

    rl = sub.add_parser("real", help="real recordings: split by files into labelled speech and unlabelled "
                                     "recordings").add_subparsers(dest="real_cmd", required=True)
    rs = rl.add_parser("split", help="FOLDER -> OUT/labelled (a speech corpus for simulate) and OUT/unlabelled "
                                     "(recordings for pretrain mixit), disjoint files, recorded in OUT/split.json")
    rs.add_argument("folder")
    rs.add_argument("--out", required=True)
    rs.add_argument("--layout", default=None, help="a preset speaker rule: fillets (Debian fillets-ng-data-nl)")
    rs.add_argument("--speaker-regex", default=None, help="the speaker rule: a regex with (?P<speaker>...), "
                                                          "searched in paths relative to FOLDER")
    rs.add_argument("--group", choices=("file", "folder"), default=None,
                    help="what stays on one side: each file, or each folder's files (default: the preset's, or file)")
    rs.add_argument("--labelled-fraction", type=float, default=0.5)
    rs.add_argument("--seed", type=int, default=0)
    rs.add_argument("--min-duration-s", type=float, default=1.0, help="shorter files are left out")
    rs.add_argument("--licence", default=None, help="the recordings' licence (default: the preset's)")
    rs.set_defaults(func=_cmd_real_split)
    rc = rl.add_parser("check", help="prove a split disjoint, and that each corpus draws on one part only")
    rc.add_argument("dir")
    rc.add_argument("corpora", nargs="*", help="corpora made from the parts (simulate, pretrain mixit's recordings)")
    rc.set_defaults(func=_cmd_real_check)

    d = sub.add_parser("demo", help="the main job on the built-in default: voices, simulate, verify, stats, train, evaluate")
    d.add_argument("--out", default="demo")
    d.add_argument("--num", type=int, default=200, help="WHAMR!-style mixtures")
    d.add_argument("--train-num", type=int, default=2000, help="LibriMix-style mixtures (80%% train, 10%% valid, 10%% test)")
    d.add_argument("--steps", type=int, default=1200, help="PIT training steps of the small Conv-TasNet (pit_small)")
    d.add_argument("--workers", type=int, default=None)
    d.set_defaults(func=_cmd_demo)
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


if __name__ == "__main__":
    sys.exit(main())
