"""The ``geosem`` command line: every workflow rule calls one of these subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _cmd_world(args: argparse.Namespace) -> int:
    from geosem.sources.synthetic import DrivingWorldConfig, write_driving_world

    config = DrivingWorldConfig(
        seed=args.seed, sequences=args.sequences, frames=args.frames, height=args.height, width=args.width
    )
    write_driving_world(config, Path(args.out))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from geosem.shards import verify_shards
    from geosem.sources import convert

    out = convert(
        args.dataset,
        Path(args.raw),
        Path(args.out),
        height=args.height,
        width=args.width,
        test_sequences=args.test_sequences,
        samples_per_part=args.samples_per_part,
    )
    count = verify_shards(out)
    print(f"wrote {count} samples to {out}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from geosem.shards import ShardVerificationError, verify_shards

    failed = False
    for path in args.shard_dirs:
        try:
            count = verify_shards(Path(path))
            print(f"ok {path}: {count} samples match the manifest")
        except (ShardVerificationError, FileNotFoundError, ValueError) as error:
            print(f"FAILED {error}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def _cmd_write_run(args: argparse.Namespace) -> int:
    from geosem.studies import write_run_snapshot

    snapshot = json.loads(args.json)
    if snapshot.get("run_id") != Path(args.out).parent.name:
        raise SystemExit(
            f"snapshot run_id {snapshot.get('run_id')!r} does not match the folder of {args.out}"
        )
    write_run_snapshot(snapshot, Path(args.out))
    return 0


def _cmd_train(args: argparse.Namespace, kind: str) -> int:
    from geosem.studies.plan import read_run_snapshot
    from geosem.train.jobs import run_job
    from geosem.train.loop import EXIT_RESUMABLE

    run = read_run_snapshot(Path(args.run))
    if run["kind"] != kind:
        raise SystemExit(f"{args.run} is a {run['kind']} run, not {kind}")
    result = run_job(Path(args.run), threads=args.threads, max_steps_this_call=args.max_steps)
    if result is None:
        return EXIT_RESUMABLE
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))
    return 0


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from geosem.aggregate import aggregate_study

    table = aggregate_study(
        args.study,
        [Path(p) for p in args.runs],
        table_csv=Path(args.table_csv),
        table_md=Path(args.table_md),
        metrics_path=Path(args.metrics),
        curves_plot=Path(args.plot),
        curves_csv=Path(args.curves_csv) if args.curves_csv else None,
    )
    print(Path(args.table_md).read_text())
    del table
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geosem", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="render the embedded synthetic driving world to raw files")
    world.add_argument("--out", required=True)
    world.add_argument("--seed", type=int, required=True)
    world.add_argument("--sequences", type=int, required=True)
    world.add_argument("--frames", type=int, required=True)
    world.add_argument("--height", type=int, required=True)
    world.add_argument("--width", type=int, required=True)
    world.set_defaults(func=_cmd_world)

    conv = sub.add_parser("convert", help="convert a raw dataset into a shard set (then verify it)")
    conv.add_argument("--dataset", required=True)
    conv.add_argument("--raw", required=True)
    conv.add_argument("--out", required=True)
    conv.add_argument("--height", type=int, required=True)
    conv.add_argument("--width", type=int, required=True)
    conv.add_argument("--test-sequences", type=int, required=True)
    conv.add_argument("--samples-per-part", type=int, default=256)
    conv.set_defaults(func=_cmd_convert)

    verify = sub.add_parser("verify", help="check shard sets against their manifests (exit 1 on mismatch)")
    verify.add_argument("shard_dirs", nargs="+")
    verify.set_defaults(func=_cmd_verify)

    write_run = sub.add_parser("write-run", help="write a resolved run snapshot (run.yaml) from JSON")
    write_run.add_argument("--out", required=True)
    write_run.add_argument("--json", required=True)
    write_run.set_defaults(func=_cmd_write_run)

    for kind in ("pretrain", "finetune"):
        job = sub.add_parser(kind, help=f"run a {kind} job from its run.yaml (resumes from its checkpoint)")
        job.add_argument(
            "--run", required=True, help="path of the run snapshot, runs/<kind>/<run_id>/run.yaml"
        )
        job.add_argument("--threads", type=int, default=1)
        job.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps")
        job.set_defaults(func=lambda a, k=kind: _cmd_train(a, k))

    agg = sub.add_parser("aggregate", help="aggregate a study's finished fine-tunes into tables and plots")
    agg.add_argument("--study", required=True)
    agg.add_argument("--runs", nargs="+", required=True, help="run directories")
    agg.add_argument("--table-csv", required=True)
    agg.add_argument("--table-md", required=True)
    agg.add_argument("--metrics", required=True)
    agg.add_argument("--plot", required=True)
    agg.add_argument("--curves-csv", default=None)
    agg.set_defaults(func=_cmd_aggregate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
