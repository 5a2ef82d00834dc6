"""Speech to simulate from: ``hubbub voices`` (the built-in corpus) and ``hubbub real`` (split
real recordings into labelled speech and unlabelled recordings)."""
from __future__ import annotations


def add_voices(sub) -> None:
    v = sub.add_parser("voices", help="make the built-in speech corpus (espeak-ng + flite + Festival, no download)")
    v.add_argument("--out", required=True)
    v.add_argument("--speakers", type=int, default=240, help="split evenly between the synthesizer families")
    v.add_argument("--utterances", type=int, default=6, help="utterances per speaker")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--sample-rate-hz", type=int, default=16000)
    v.add_argument("--quiet", action="store_true")
    v.set_defaults(func=_cmd_voices)


def _cmd_voices(args) -> int:
    from hubbub.voices import make_voices

    manifest = make_voices(args.out, num_speakers=args.speakers, utterances_per_speaker=args.utterances,
                           seed=args.seed, sample_rate_hz=args.sample_rate_hz, progress=not args.quiet)
    print(f"built-in voices: {manifest}")
    return 0


def add_real(sub) -> None:
    rl = sub.add_parser("real", help="real recordings: split by files into labelled speech and unlabelled "
                                     "recordings").add_subparsers(dest="real_cmd", required=True)
    _add_real_split(rl)
    _add_real_check(rl)


def _add_real_split(rl) -> None:
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


def _cmd_real_split(args) -> int:
    from hubbub.sources.real import split_real

    res = split_real(args.folder, args.out, layout=args.layout, speaker_regex=args.speaker_regex, group=args.group,
                     labelled_fraction=args.labelled_fraction, seed=args.seed, min_duration_s=args.min_duration_s,
                     licence=args.licence)
    print(res.summary())
    return 0


def _add_real_check(rl) -> None:
    rc = rl.add_parser("check", help="prove a split disjoint, and that each corpus draws on one part only")
    rc.add_argument("dir")
    rc.add_argument("corpora", nargs="*", help="corpora made from the parts (simulate, pretrain mixit's recordings)")
    rc.set_defaults(func=_cmd_real_check)


def _cmd_real_check(args) -> int:
    from hubbub.sources.real import check_split

    report = check_split(args.dir, args.corpora)
    print(report.format())
    return 0 if report.ok else 1
