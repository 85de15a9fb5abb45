"""The world jobs' command line: one subcommand per job the workflow runs, for the ``geosem`` CLI.

World configs arrive as JSON (the workflow's ``world`` section for that world, seed included, see
:meth:`geosem.worlds.WorldSpec.config`), so a config edit changes the job's parameters and Snakemake
reruns exactly the jobs it touches::

    world-driving-calib     --config JSON --date DATE --root DIR
    world-driving-drive     --config JSON --drive NAME --root DIR
    world-driving-semantics --config JSON --root DIR
    world-indoor-batch      --config JSON --batch K --out FILE
    world-indoor-files      --config JSON --root DIR --batches FILE [FILE ...]
    world-ade               --config JSON --root DIR
    world-sun               --config JSON --root DIR

What each job writes is declared in :mod:`geosem.worlds`. The world modules are imported inside the
commands, so a job loads only what it needs and building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

Command = Callable[[argparse.Namespace], int]


def _driving_config(text: str) -> Any:
    from geosem.worlds.driving import DrivingWorldConfig

    return DrivingWorldConfig(**json.loads(text))


def _indoor_config(text: str) -> tuple[Any, int]:
    """The indoor world's config and its rooms per batch (a workflow setting, not part of the world)."""
    from geosem.worlds.indoor import IndoorWorldConfig

    values = json.loads(text)
    per_batch = values.pop("rooms_per_batch")
    return IndoorWorldConfig(**values), per_batch


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 1


def driving_calib(args: argparse.Namespace) -> int:
    from geosem.worlds.driving import DATES
    from geosem.worlds.kitti_writer import write_calibration

    keys = [k for k, date in DATES.items() if date == args.date]
    if not keys:
        return _fail(f"unknown recording date {args.date!r}; the world's dates: {sorted(DATES.values())}")
    write_calibration(_driving_config(args.config), keys[0], Path(args.root))
    return 0


def driving_drive(args: argparse.Namespace) -> int:
    from geosem.worlds.driving import drive_ids
    from geosem.worlds.kitti_writer import write_drive

    config = _driving_config(args.config)
    drives = {d.name: d for d in drive_ids(config)}
    if args.drive not in drives:
        return _fail(f"drive {args.drive!r} is not in the world; its drives: {sorted(drives)}")
    start = time.perf_counter()
    write_drive(config, drives[args.drive], Path(args.root))
    seconds = time.perf_counter() - start
    print(f"{args.drive}: {config.frames} frames in {seconds:.2f} s ({config.frames / seconds:.1f} frames/s)")
    return 0


def driving_semantics(args: argparse.Namespace) -> int:
    from geosem.worlds.kitti_writer import write_semantics

    write_semantics(_driving_config(args.config), Path(args.root))
    return 0


def indoor_batch(args: argparse.Namespace) -> int:
    from geosem.worlds.nyu_writer import write_batch

    config, per_batch = _indoor_config(args.config)
    write_batch(config, args.batch, per_batch, Path(args.out))
    return 0


def indoor_files(args: argparse.Namespace) -> int:
    from geosem.worlds.nyu_writer import write_nyu_files

    config, _ = _indoor_config(args.config)
    write_nyu_files(config, [Path(p) for p in args.batches], Path(args.root))
    return 0


def ade(args: argparse.Namespace) -> int:
    from geosem.worlds.aux_writer import AuxWorldConfig, write_ade

    write_ade(AuxWorldConfig(**json.loads(args.config)), Path(args.root))
    return 0


def sun(args: argparse.Namespace) -> int:
    from geosem.worlds.aux_writer import AuxWorldConfig, write_sun

    write_sun(AuxWorldConfig(**json.loads(args.config)), Path(args.root))
    return 0


_ROOT = ("--root", {"required": True, "help": "the dataset's raw folder (raw/<dataset>)"})

# name -> (function, help, options besides --config)
COMMANDS: dict[str, tuple[Command, str, tuple[tuple[str, dict[str, Any]], ...]]] = {
    "world-driving-calib": (
        driving_calib,
        "write the driving world's calibration files of one recording date",
        (("--date", {"required": True, "help": "recording date, e.g. 2011_09_26"}), _ROOT),
    ),
    "world-driving-drive": (
        driving_drive,
        "render one drive of the driving world into its KITTI raw folder",
        (
            ("--drive", {"required": True, "help": "drive folder name, e.g. 2011_09_26_drive_0001_sync"}),
            _ROOT,
        ),
    ),
    "world-driving-semantics": (
        driving_semantics,
        "write the driving world's labelled set and marker from its rendered held-out drives",
        (_ROOT,),
    ),
    "world-indoor-batch": (
        indoor_batch,
        "render one batch of the indoor world's rooms into a temporary HDF5 file",
        (
            ("--batch", {"required": True, "type": int, "help": "batch index, from 0"}),
            ("--out", {"required": True, "help": "the batch file to write"}),
        ),
    ),
    "world-indoor-files": (
        indoor_files,
        "gather the indoor world's batches into NYUv2's labelled .mat, splits and class mapping",
        (_ROOT, ("--batches", {"required": True, "nargs": "+", "help": "every batch file, any order"})),
    ),
    "world-ade": (ade, "write the ADE20K-like auxiliary set in ADEChallengeData2016's layout", (_ROOT,)),
    "world-sun": (
        sun,
        "write the SUN RGB-D-like auxiliary set in the sunrgbd-meta-data mirror's layout",
        (_ROOT,),
    ),
}


def add_world_commands(subparsers: argparse._SubParsersAction) -> None:
    """Add every world job's subcommand to ``subparsers``; each sets ``func`` (Namespace -> exit code)."""
    for name, (function, help_text, options) in COMMANDS.items():
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--config", required=True, help="the world's config as JSON (seed included)")
        for flag, kwargs in options:
            parser.add_argument(flag, **kwargs)
        parser.set_defaults(func=function)
