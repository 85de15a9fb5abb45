"""The ``geosem`` command line: every workflow rule calls one of these subcommands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _cmd_data(args: argparse.Namespace) -> int:
    from geosem.sources.__main__ import main as sources_main

    return int(sources_main(args.rest) or 0)


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
    from geosem.train.distributed import Distributed, default_procs, launch
    from geosem.train.jobs import run_job
    from geosem.train.loop import EXIT_RESUMABLE

    run = read_run_snapshot(Path(args.run))
    if run["kind"] != kind:
        raise SystemExit(f"{args.run} is a {run['kind']} run, not {kind}")
    dist = Distributed.from_env()
    if not dist.active:
        procs = default_procs() if args.procs is None else args.procs
        if procs > 1:
            # This process only launches and supervises; each worker gets its share of the threads.
            worker = [kind, "--run", args.run, "--threads", str(max(1, args.threads // procs))]
            if args.max_steps is not None:
                worker += ["--max-steps", str(args.max_steps)]
            return launch(["-v", *worker] if args.verbose else worker, procs)
    elif not dist.is_main:
        logging.getLogger().setLevel(logging.WARNING)  # rank 0 logs the progress for all ranks
    try:
        result = run_job(Path(args.run), threads=args.threads, max_steps_this_call=args.max_steps, dist=dist)
    finally:
        dist.close()
    if result is None:
        return EXIT_RESUMABLE
    if dist.is_main:
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
        labels=json.loads(args.labels),
        unavailable=json.loads(args.unavailable),
    )
    print(Path(args.table_md).read_text())
    del table
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    import pandas as pd

    from geosem.aggregate.plots import plot_resolution, plot_sizes

    table = pd.read_csv(args.table)
    plotter = plot_sizes if args.kind == "sizes" else plot_resolution
    plotter(table, Path(args.out), title=args.title, labels=json.loads(args.labels))
    print(f"wrote {args.out}")
    return 0


def _cmd_gradcam(args: argparse.Namespace) -> int:
    from geosem.analysis import gradcam_figure

    figure = gradcam_figure(
        [Path(p) for p in args.runs], Path(args.out), num_images=args.images, layer=args.layer
    )
    rows, cols = figure.grid
    titles = ", ".join(title.replace("\n", " ") for title in figure.titles.values())
    print(f"wrote {args.out}: {rows} test images x {cols} panels ({titles})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geosem", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    # World generation and conversion steps live in geosem.sources (one job per drive, room batch or
    # shard set); `geosem data ...` is the same command line as `python -m geosem.sources ...`.
    data = sub.add_parser(
        "data", help="world generation and conversion (see `geosem data --help`)", add_help=False
    )
    data.add_argument("rest", nargs=argparse.REMAINDER)
    data.set_defaults(func=_cmd_data)

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
        job.add_argument(
            "--procs",
            type=int,
            default=None,
            help="data-parallel processes (default: one per visible GPU, 1 without GPUs; gloo on CPUs)",
        )
        job.set_defaults(func=lambda a, k=kind: _cmd_train(a, k))

    agg = sub.add_parser("aggregate", help="aggregate a study's finished fine-tunes into tables and plots")
    agg.add_argument("--study", required=True)
    agg.add_argument("--runs", nargs="+", required=True, help="run directories")
    agg.add_argument("--table-csv", required=True)
    agg.add_argument("--table-md", required=True)
    agg.add_argument("--metrics", required=True)
    agg.add_argument("--plot", required=True)
    agg.add_argument("--curves-csv", default=None)
    agg.add_argument("--labels", default="{}", help="JSON: init -> row name in the table (the paper's names)")
    agg.add_argument(
        "--unavailable", default="[]", help="JSON list of {init, encoder, reason}: rows that cannot run here"
    )
    agg.set_defaults(func=_cmd_aggregate)

    plot = sub.add_parser(
        "plot", help="a study's figures from its table csv: sizes (Fig. 3), resolution (Fig. 5)"
    )
    plot.add_argument("kind", choices=["sizes", "resolution"])
    plot.add_argument("--table", required=True, help="results/tables/<study>.csv")
    plot.add_argument("--out", required=True)
    plot.add_argument("--labels", default="{}")
    plot.add_argument("--title", default="")
    plot.set_defaults(func=_cmd_plot)

    version = sub.add_parser(
        "version",
        help="DVC versioning of data: add, push, pull, status (see `geosem version --help`)",
        add_help=False,
    )
    version.add_argument("rest", nargs=argparse.REMAINDER)

    gradcam = sub.add_parser(
        "gradcam", help="Grad-CAM of a shallow encoder layer next to the predictions, one column pair per run"
    )
    gradcam.add_argument("--runs", nargs="+", required=True, help="fine-tuned segmentation run directories")
    gradcam.add_argument("--out", required=True, help="output PNG")
    gradcam.add_argument("--images", type=int, default=4, help="number of test images (rows)")
    gradcam.add_argument(
        "--layer", default=None, help="module name to visualise (default: the encoder's first stage, layer1)"
    )
    gradcam.set_defaults(func=_cmd_gradcam)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["data"]:  # hand everything after `data` (including --help) to geosem.sources
        from geosem.sources.__main__ import main as sources_main

        return int(sources_main(argv[1:]) or 0)
    if argv[:1] == ["version"]:  # likewise `version` -> geosem.versioning
        from geosem.versioning import main as versioning_main

        return int(versioning_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
