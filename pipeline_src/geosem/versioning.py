"""Dataset versioning with DVC: track raw datasets and shard sets, push them to a remote, pull them back.

GeoSem drives DVC through its command line (``python -m dvc``) rather than its Python API: the command
line is DVC's stable interface, and it takes DVC's repository lock exactly as a user's command would.
Tracking happens in one workflow job at a time, because DVC refuses concurrent commands on one
repository (its ``rw.lock``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


class VersioningError(RuntimeError):
    """A DVC command failed; the message holds the command and DVC's own output."""


def _dvc(args: Sequence[str], cwd: Path) -> str:
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise VersioningError(
            f"`dvc {' '.join(args)}` failed in {cwd} (exit {result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
    return result.stdout


def find_dvc_root(start: Path) -> Path:
    """The folder holding ``.dvc/`` at or above ``start``; a clear error when there is none."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    raise VersioningError(
        f"{start} is not inside a DVC repository (no .dvc/ folder above it): run `dvc init` at the "
        "repository root, or set versioning.dvc: false in the config"
    )


def track(paths: Sequence[Path], root: Path | None = None) -> list[Path]:
    """``dvc add`` each path (file or folder); returns the ``.dvc`` files to commit to git."""
    paths = [Path(p).resolve() for p in paths]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"cannot version {path}: it does not exist")
    root = find_dvc_root(root or paths[0].parent)
    relative = [str(p.relative_to(root)) for p in paths]
    _dvc(["add", "--quiet", *relative], cwd=root)
    return [p.with_name(p.name + ".dvc") for p in paths]


def push(root: Path, targets: Sequence[str] = (), remote: str | None = None) -> str:
    return _dvc(["push", *(["--remote", remote] if remote else []), *targets], cwd=Path(root))


def pull(root: Path, targets: Sequence[str] = (), remote: str | None = None) -> str:
    return _dvc(["pull", *(["--remote", remote] if remote else []), *targets], cwd=Path(root))


def status(root: Path, targets: Sequence[str] = ()) -> str:
    """``dvc status`` of ``targets``: what differs between the workspace, the .dvc files and the cache."""
    return _dvc(["status", *targets], cwd=Path(root))


def main(argv: Sequence[str] | None = None) -> int:
    """``geosem version add|push|pull|status``; the workflow's versioning rule calls ``add``."""
    import argparse

    parser = argparse.ArgumentParser(prog="geosem version", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="dvc add raw datasets and shard sets (writes PATH.dvc next to each)")
    add.add_argument("paths", nargs="+")
    add.add_argument("--push", action="store_true", help="dvc push what was added")
    add.add_argument("--remote", default=None, help="DVC remote to push to (default: DVC's default remote)")
    for name in ("push", "pull", "status"):
        cmd = sub.add_parser(name, help=f"dvc {name} (all tracked data, or the given .dvc targets)")
        cmd.add_argument("targets", nargs="*")
        if name != "status":
            cmd.add_argument("--remote", default=None)
    args = parser.parse_args(argv)
    root = find_dvc_root(Path.cwd())
    if args.command == "add":
        dvc_files = track([Path(p) for p in args.paths], root)
        for dvc_file in dvc_files:
            print(dvc_file.relative_to(root))
        if args.push:
            print(push(root, [str(f.relative_to(root)) for f in dvc_files], args.remote))
    elif args.command == "push":
        print(push(root, args.targets, args.remote))
    elif args.command == "pull":
        print(pull(root, args.targets, args.remote))
    else:
        print(status(root, args.targets))
    return 0
