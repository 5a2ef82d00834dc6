"""What a trained run is for: ``hubbub evaluate``, ``hubbub separate``, ``hubbub publish``."""
from __future__ import annotations

import json


def add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="SI-SNRi, SDRi, PESQ, STOI overall and by RT60, SNR, overlap, speakers")
    ev.add_argument("run")
    ev.add_argument("--shards", required=True)
    ev.add_argument("--split", default="test")
    ev.add_argument("--max-samples", type=int, default=None)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from hubbub.evaluate import evaluate_run, format_markdown

    results = evaluate_run(args.run, args.shards, split=args.split, max_samples=args.max_samples)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        print(format_markdown(results))
        print(f"written to {results['out_dir']}")
    return 0


def add_separate(sub) -> None:
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


def _cmd_separate(args) -> int:
    from hubbub.separate import separate_file

    for path in separate_file(args.run, args.input, args.out, chunk_s=args.chunk_s, overlap_s=args.overlap_s,
                              sample_rate_hz=args.sample_rate_hz, lips=args.lips):
        print(path)
    return 0


def add_publish(sub) -> None:
    pu = sub.add_parser("publish", help="save a run as a pretrained model with its data card (and upload)")
    pu.add_argument("run")
    pu.add_argument("--to", required=True)
    pu.add_argument("--repo-id", default=None, help="also upload to the Hugging Face Hub")
    pu.add_argument("--public", action="store_true")
    pu.add_argument("--license", default=None)
    pu.set_defaults(func=_cmd_publish)


def _cmd_publish(args) -> int:
    from hubbub.publish import publish_run

    out = publish_run(args.run, args.to, repo_id=args.repo_id, private=not args.public, license=args.license)
    print(f"published {args.run} to {out}" + (f" and {args.repo_id}" if args.repo_id else ""))
    return 0
