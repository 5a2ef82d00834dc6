"""Corpora: ``hubbub shards verify|stats|index|tokens|ingest``."""
from __future__ import annotations

import json


def add_shards(sub) -> None:
    sh = sub.add_parser("shards", help="check and describe a corpus").add_subparsers(dest="shards_cmd", required=True)
    for add in (_add_verify, _add_stats, _add_index, _add_tokens, _add_ingest):
        add(sh)


def _add_verify(sh) -> None:
    sv = sh.add_parser("verify", help="checksums, decoding, schema; non-zero exit on any fault")
    sv.add_argument("dir")
    sv.add_argument("--quick", action="store_true", help="checksums and schema only, no audio decoding")
    sv.set_defaults(func=_cmd_verify)


def _cmd_verify(args) -> int:
    from hubbub.shards.verify import verify_corpus

    report = verify_corpus(args.dir, check_audio=not args.quick)
    print(report.format())
    return 0 if report.ok else 1


def _add_stats(sh) -> None:
    st = sh.add_parser("stats", help="distributions of RT60, SNR, SIR, overlap, duration, speakers (+ PNG)")
    st.add_argument("dir")
    st.add_argument("--json", action="store_true")
    st.add_argument("--png", default=None, help="plot path (default DIR/stats.png)")
    st.set_defaults(func=_cmd_stats)


def _cmd_stats(args) -> int:
    from hubbub import storage
    from hubbub.shards.stats import corpus_stats, format_stats, plot_stats

    stats = corpus_stats(args.dir)
    png = args.png or storage.join(args.dir, "stats.png")
    plot_stats(stats, png)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        print(format_stats(stats))
        print(f"plot: {png}")
    return 0


def _add_index(sh) -> None:
    ix = sh.add_parser("index", help="record each member's byte range (corpora of format 1; after rewrites)")
    ix.add_argument("dir")
    ix.add_argument("--quiet", action="store_true")
    ix.set_defaults(func=_cmd_index)


def _cmd_index(args) -> int:
    from hubbub.shards.writer import index_members

    index = index_members(args.dir, progress=not args.quiet)
    print(f"{args.dir}: member byte ranges of {len(index['shards'])} shards recorded "
          f"(format version {index['format_version']})")
    return 0


def _add_tokens(sh) -> None:
    tk = sh.add_parser("tokens", help="cache EnCodec tokens of mixtures and sources into the shards")
    tk.add_argument("dir")
    tk.add_argument("--codec", required=True, help="EnCodec: local directory or hub id (facebook/encodec_24khz)")
    tk.add_argument("--bandwidth-kbps", type=float, default=None, help="sets the number of codebooks")
    tk.add_argument("--source-target", default=None, help="source image to tokenise (default: reverberant)")
    tk.add_argument("--batch-size", type=int, default=16)
    tk.add_argument("--device", default="cpu")
    tk.add_argument("--quiet", action="store_true")
    tk.set_defaults(func=_cmd_tokens)


def _cmd_tokens(args) -> int:
    from hubbub.codec import load_codec
    from hubbub.shards.tokens import add_codec_tokens

    codec = load_codec(args.codec, bandwidth_kbps=args.bandwidth_kbps, device=args.device)
    summary = add_codec_tokens(args.dir, codec, source_target=args.source_target, batch_size=args.batch_size,
                               progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def _add_ingest(sh) -> None:
    from hubbub.shards.format import BITS, CODECS

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
    ig.set_defaults(func=_cmd_ingest)


def _cmd_ingest(args) -> int:
    from hubbub.shards.ingest import ingest_folder

    res = ingest_folder(args.folder, args.out, layout=args.layout, sample_rate_hz=args.sample_rate_hz,
                        segment_s=args.segment_s, seed=args.seed, mixture=args.mixture, mode=args.mode,
                        splits=args.splits, targets=args.targets, codec=args.codec, bits=args.bits,
                        progress=not args.quiet)
    print(res.summary())
    return 0
