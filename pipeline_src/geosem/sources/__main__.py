"""``python -m geosem.sources``: the world-generation and conversion steps the workflow runs, one job each.

World configs arrive as JSON (the workflow's ``world`` section for that world, seed included), so a
config edit changes the job's parameters and Snakemake reruns exactly the jobs it touches.

    python -m geosem.sources driving-calib     --config JSON --date DATE --root DIR
    python -m geosem.sources driving-drive     --config JSON --drive NAME --root DIR
    python -m geosem.sources driving-semantics --config JSON --root DIR
    python -m geosem.sources indoor-batch      --config JSON --batch K --out FILE
    python -m geosem.sources indoor-files      --config JSON --root DIR --batches FILE ...
    python -m geosem.sources ade|sun           --config JSON --root DIR
    python -m geosem.sources convert --converter NAME --dataset NAME --raw DIR --out DIR --height H --width W
                                     [--label-interpolation nearest|bicubic]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _driving(text: str):  # world classes are imported lazily: a job loads only what it needs
    from geosem.sources.synthetic.driving import DrivingWorldConfig

    return DrivingWorldConfig(**json.loads(text))


def _indoor(text: str) -> tuple:
    from geosem.sources.synthetic.indoor import IndoorWorldConfig

    values = json.loads(text)
    per_batch = values.pop("rooms_per_batch")
    return IndoorWorldConfig(**values), per_batch


def _cmd_driving_calib(args: argparse.Namespace) -> None:
    from geosem.sources.synthetic.driving import DATES
    from geosem.sources.synthetic.kitti_writer import write_calibration

    keys = [k for k, date in DATES.items() if date == args.date]
    if not keys:
        raise SystemExit(f"unknown recording date {args.date!r}; the world's dates: {sorted(DATES.values())}")
    write_calibration(_driving(args.config), keys[0], Path(args.root))


def _cmd_driving_drive(args: argparse.Namespace) -> None:
    from geosem.sources.synthetic.driving import drive_ids
    from geosem.sources.synthetic.kitti_writer import write_drive

    config = _driving(args.config)
    drives = {d.name: d for d in drive_ids(config)}
    if args.drive not in drives:
        raise SystemExit(f"drive {args.drive!r} is not in the world; its drives: {sorted(drives)}")
    start = time.perf_counter()
    write_drive(config, drives[args.drive], Path(args.root))
    seconds = time.perf_counter() - start
    print(f"{args.drive}: {config.frames} frames in {seconds:.2f} s ({config.frames / seconds:.1f} frames/s)")


def _cmd_driving_semantics(args: argparse.Namespace) -> None:
    from geosem.sources.synthetic.kitti_writer import write_semantics

    write_semantics(_driving(args.config), Path(args.root))


def _cmd_indoor_batch(args: argparse.Namespace) -> None:
    from geosem.sources.synthetic.nyu_writer import write_batch

    config, per_batch = _indoor(args.config)
    write_batch(config, args.batch, per_batch, Path(args.out))


def _cmd_indoor_files(args: argparse.Namespace) -> None:
    from geosem.sources.synthetic.nyu_writer import write_nyu_files

    config, _ = _indoor(args.config)
    write_nyu_files(config, [Path(p) for p in args.batches], Path(args.root))


def _cmd_aux(args: argparse.Namespace) -> None:
    from geosem.sources.synthetic.aux_writer import AuxWorldConfig, write_ade, write_sun

    config = AuxWorldConfig(**json.loads(args.config))
    (write_ade if args.command == "ade" else write_sun)(config, Path(args.root))


def _cmd_convert(args: argparse.Namespace) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m geosem.sources", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, func: object, *options: tuple[str, dict]) -> None:
        p = sub.add_parser(name)
        p.add_argument("--config", required=True, help="the world's config as JSON")
        for flag, kwargs in options:
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)

    add("driving-calib", _cmd_driving_calib, ("--date", {"required": True}), ("--root", {"required": True}))
    add("driving-drive", _cmd_driving_drive, ("--drive", {"required": True}), ("--root", {"required": True}))
    add("driving-semantics", _cmd_driving_semantics, ("--root", {"required": True}))
    batch = ("--batch", {"required": True, "type": int})
    add("indoor-batch", _cmd_indoor_batch, batch, ("--out", {"required": True}))
    batches = ("--batches", {"required": True, "nargs": "+"})
    add("indoor-files", _cmd_indoor_files, ("--root", {"required": True}), batches)
    add("ade", _cmd_aux, ("--root", {"required": True}))
    add("sun", _cmd_aux, ("--root", {"required": True}))

    conv = sub.add_parser("convert", help="convert a raw dataset layout into a shard set, then verify it")
    conv.add_argument("--converter", required=True)
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
