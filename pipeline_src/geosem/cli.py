"""The ``geosem`` command line: every workflow rule calls one of its subcommands (``geosem --help``).

Each package contributes the subcommands of its concern: the world jobs come from ``geosem.worlds``,
the rest are defined here, each importing what it needs only when it runs (a rule's job pays for the
imports of its own step, not for torch when it writes a world file).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


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


def _cmd_convert(args: argparse.Namespace) -> int:
    from geosem.shards import verify_shards
    from geosem.sources import convert

    # Passed only when given; convert() accepts "nearest" for every converter, "bicubic" only for kitti.
    extra = {} if args.label_interpolation is None else {"label_interpolation": args.label_interpolation}
    out = convert(
        args.converter,
        Path(args.raw),
        Path(args.out),
        height=args.height,
        width=args.width,
        dataset=args.dataset,
        samples_per_part=args.samples_per_part,
        **extra,
    )
    print(f"wrote {verify_shards(out)} samples to {out}")
    return 0


def _cmd_write_run(args: argparse.Namespace) -> int:
    from geosem.snapshot import write_snapshot

    write_snapshot(json.loads(args.json), Path(args.out))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from geosem.snapshot import read_snapshot
    from geosem.train.distributed import Distributed, default_procs, launch
    from geosem.train.jobs import run_job
    from geosem.train.loop import EXIT_RESUMABLE

    kind = args.command
    run = read_snapshot(Path(args.run))
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


def _cmd_auxdepth(args: argparse.Namespace) -> int:
    from geosem.train.auxdepth_job import run_auxdepth_job
    from geosem.train.loop import EXIT_RESUMABLE

    result = run_auxdepth_job(Path(args.run), threads=args.threads, max_steps_this_call=args.max_steps)
    if result is None:
        return EXIT_RESUMABLE
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}, indent=2))
    return 0


def _cmd_aggregate(args: argparse.Namespace) -> int:
    from geosem.aggregate import aggregate_study, render_study

    if args.from_table:  # markdown and metrics again from the committed csv: no runs needed
        render_study(
            args.study, Path(args.table_csv), table_md=Path(args.table_md), metrics_dir=Path(args.metrics)
        )
    elif not args.runs or not args.plot:
        raise SystemExit("geosem aggregate: --runs and --plot are required unless --from-table is given")
    else:
        aggregate_study(
            args.study,
            [Path(p) for p in args.runs],
            table_csv=Path(args.table_csv),
            table_md=Path(args.table_md),
            metrics_dir=Path(args.metrics),
            curves_plot=Path(args.plot),
            curves_csv=Path(args.curves_csv) if args.curves_csv else None,
            labels=json.loads(args.labels),
            unavailable=json.loads(args.unavailable),
        )
    print(Path(args.table_md).read_text())
    return 0


def _cmd_aggregate_pretrain(args: argparse.Namespace) -> int:
    from geosem.aggregate.pretrain import write_pretrain_table

    runs = [Path(r) for r in args.runs]
    write_pretrain_table(args.study, runs, Path(args.csv), Path(args.md), plot_path=Path(args.plot))
    print(Path(args.md).read_text())
    print(f"wrote {args.plot}")
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


def _cmd_version(args: argparse.Namespace) -> int:
    from geosem.versioning import main as versioning_main

    return int(versioning_main(args.rest) or 0)


def _cmd_tasks(args: argparse.Namespace) -> int:
    from geosem.tasks import get_task, list_tasks

    for name in list_tasks():
        task = get_task(name)
        print(f"{name} ({task.__module__}): {task.parameter_schema()['description']}")
        for key, value in task.parameters.items():
            print(f"    {key} = {json.dumps(value.default)}: {value.description}")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from geosem.sources import converter_spec
    from geosem.sources.catalog import datasets

    print(f"{'dataset':<16}{'converter':<12}{'version':<9}{'label space':<14}source")
    for name, spec in datasets().items():
        source = f"world {spec.world}" if spec.world else ", ".join(converter_spec(spec.converter).reads)
        print(f"{name:<16}{spec.converter:<12}{spec.converter_version:<9}{spec.label_space:<14}{source}")
    return 0


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    from geosem.sources.download_commands import add_download_commands
    from geosem.worlds.commands import add_world_commands

    add_world_commands(sub)
    add_download_commands(sub)
    conv = sub.add_parser("convert", help="convert a raw dataset layout into a shard set, then verify it")
    conv.add_argument("--converter", required=True, help="a converter of `geosem datasets`")
    conv.add_argument("--dataset", required=True, help="the name the shard set and its runs carry")
    conv.add_argument("--raw", required=True)
    conv.add_argument("--out", required=True)
    conv.add_argument("--height", type=int, required=True)
    conv.add_argument("--width", type=int, required=True)
    conv.add_argument("--samples-per-part", type=int, default=256)
    conv.add_argument(
        "--label-interpolation",
        choices=("nearest", "bicubic"),
        default=None,
        help="how labels are resized: nearest (default, every converter) or bicubic (kitti only: study "
        "A's published code, for the legacy protocol); kitti records it in the manifest",
    )
    conv.set_defaults(func=_cmd_convert)
    verify = sub.add_parser("verify", help="check shard sets against their manifests (exit 1 on mismatch)")
    verify.add_argument("shard_dirs", nargs="+")
    verify.set_defaults(func=_cmd_verify)
    sub.add_parser(
        "datasets", help="the datasets GeoSem knows: converter, version, label space, source"
    ).set_defaults(func=_cmd_datasets)
    version = sub.add_parser(
        "version",
        help="DVC versioning of data: add, push, pull, status (`geosem version --help`)",
        add_help=False,
    )
    version.add_argument("rest", nargs=argparse.REMAINDER)
    version.set_defaults(func=_cmd_version)


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    write_run = sub.add_parser("write-run", help="write a resolved run snapshot (run.yaml) from JSON")
    write_run.add_argument("--out", required=True)
    write_run.add_argument("--json", required=True)
    write_run.set_defaults(func=_cmd_write_run)
    for kind in ("pretrain", "finetune"):
        job = sub.add_parser(kind, help=f"run a {kind} job from its run.yaml (resumes from its checkpoint)")
        job.add_argument(
            "--run", required=True, help=f"path of the run snapshot, runs/{kind}/<run_id>/run.yaml"
        )
        job.add_argument("--threads", type=int, default=1)
        job.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps")
        job.add_argument(
            "--procs",
            type=int,
            default=None,
            help="data-parallel processes (default: one per visible GPU, 1 without GPUs; gloo on CPUs)",
        )
        job.set_defaults(func=_cmd_train)
    aux = sub.add_parser(
        "auxdepth",
        help="run a study-B job (depth on a frozen backbone, alternating auxiliary steps) from its "
        "run.yaml (resumes from its checkpoint)",
    )
    aux.add_argument("--run", required=True, help="path of the run snapshot, runs/auxdepth/<run_id>/run.yaml")
    aux.add_argument("--threads", type=int, default=1)
    aux.add_argument("--max-steps", type=int, default=None, help="stop (resumably) after this many steps")
    aux.set_defaults(func=_cmd_auxdepth)
    sub.add_parser("tasks", help="the training tasks and the parameters each declares").set_defaults(
        func=_cmd_tasks
    )


def _add_result_commands(sub: argparse._SubParsersAction) -> None:
    agg = sub.add_parser(
        "aggregate",
        help="aggregate a study's finished fine-tunes into tables, DVC metrics and plots "
        "(--from-table: render the markdown and metrics again from the table csv alone)",
    )
    agg.add_argument("--study", required=True)
    agg.add_argument("--runs", nargs="+", default=[], help="run directories (not with --from-table)")
    agg.add_argument("--table-csv", required=True, help="written; with --from-table read")
    agg.add_argument("--table-md", required=True)
    agg.add_argument("--metrics", required=True, help="folder: one <setting>/<init>.json per table cell")
    agg.add_argument("--plot", default=None, help="curves figure (required unless --from-table)")
    agg.add_argument("--curves-csv", default=None)
    agg.add_argument("--labels", default="{}", help="JSON: init -> row name in the table (the paper's names)")
    agg.add_argument(
        "--unavailable", default="[]", help="JSON list of {init, encoder, reason}: rows that cannot run here"
    )
    agg.add_argument(
        "--from-table",
        action="store_true",
        help="write --table-md and --metrics from --table-csv (its labels and unavailable rows) only",
    )
    agg.set_defaults(func=_cmd_aggregate)

    pre = sub.add_parser(
        "aggregate-pretrain",
        help="a study's pre-trainings and their own depth/flow/MAE scores, over seeds and against step",
    )
    pre.add_argument("--study", required=True)
    pre.add_argument("--runs", nargs="*", default=[], help="pre-training run directories")
    pre.add_argument("--csv", required=True)
    pre.add_argument("--md", required=True)
    pre.add_argument(
        "--plot", required=True, help="figure: each pre-training's scores against step (its curves.csv)"
    )
    pre.set_defaults(func=_cmd_aggregate_pretrain)

    plot = sub.add_parser(
        "plot", help="a study's figures from its table csv: sizes (Fig. 3), resolution (Fig. 5)"
    )
    plot.add_argument("kind", choices=["sizes", "resolution"])
    plot.add_argument("--table", required=True, help="results/tables/<study>.csv")
    plot.add_argument("--out", required=True)
    plot.add_argument("--labels", default="{}")
    plot.add_argument("--title", default="")
    plot.set_defaults(func=_cmd_plot)

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

    def _aggregate_auxdepth(args: argparse.Namespace) -> int:
        """Study B: finished auxdepth runs (or, with --from-table, a study csv) -> the asked outputs."""
        from geosem.aggregate.auxdepth import aggregate_auxdepth, render_auxdepth

        asked = {"table_md": args.md, "metrics_dir": args.metrics, "plot": args.plot}
        asked["sweep_csv"] = args.sweep_csv
        outputs = {key: Path(value) for key, value in asked.items() if value}
        spec = json.loads(args.spec)
        if args.from_table:
            render_auxdepth(args.study, Path(args.from_table), spec, **outputs)
        elif not args.csv:
            raise SystemExit("geosem aggregate-auxdepth: --csv is required unless --from-table is given")
        else:
            runs = [Path(r) for r in args.runs]
            aggregate_auxdepth(args.study, runs, spec, table_csv=Path(args.csv), **outputs)
        if args.md:
            print(Path(args.md).read_text())
        return 0

    aux = sub.add_parser(
        "aggregate-auxdepth",
        help="study B: a study's auxdepth runs -> table csv, markdown, DVC metrics; --from-table: its "
        "markdown, metrics or sweep plot from the csv alone",
    )
    aux.add_argument("--study", required=True)
    aux.add_argument("--runs", nargs="*", default=[], help="auxdepth run directories")
    aux.add_argument("--spec", required=True, help="JSON: layout, labels, mix6, depth rows, unavailable rows")
    aux.add_argument("--csv", default=None, help="the study csv to write (with --runs)")
    aux.add_argument("--from-table", default=None, help="a study csv to render from instead of runs")
    aux.add_argument("--md", default=None)
    aux.add_argument("--metrics", default=None, help="folder: one <row>/<column>.json per table cell")
    aux.add_argument("--plot", default=None, help="the sweep figure (layouts fig1, fig3, fig4, fig5)")
    aux.add_argument("--sweep-csv", default=None, help="the plotted points, for dvc plots")
    aux.set_defaults(func=_aggregate_auxdepth)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geosem", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<subcommand>")
    _add_data_commands(sub)
    _add_training_commands(sub)
    _add_result_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["version"]:  # everything after it, --help included, is geosem.versioning's own
        return _cmd_version(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
