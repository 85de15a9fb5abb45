"""Dataset versioning with DVC: track raw datasets and shard sets, push them to a remote, pull them back.

GeoSem drives DVC through its command line (``python -m dvc``) rather than its Python API: the command
line is DVC's stable interface, and it takes DVC's repository lock exactly as a user's command would.
Tracking happens in one workflow job at a time, because DVC refuses concurrent commands on one
repository (its ``rw.lock``).

Where DVC's own messages do not say which file is at fault, GeoSem reads the ``.dvc`` files and the
folder listings (``.dir`` objects) in the cache itself: a failed pull names each file it could not
restore with its object hash (DVC names the hash alone), and ``geosem version check`` re-hashes the cache
objects, which DVC trusts once hashed (a damaged object of unchanged size and time goes unnoticed by
``dvc status`` and is checked out as it is).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml


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
    """``dvc pull``; on failure a ``PullError`` that names each tracked file it could not restore."""
    root = Path(root)
    try:
        return _dvc(["pull", *(["--remote", remote] if remote else []), *targets], cwd=root)
    except VersioningError as error:
        # DVC says "failed to transfer '<md5>'": a hash, not the file. What the failed pull left out of
        # the cache is exactly what it could not fetch; the .dvc files and listings say whose it is.
        try:
            problems = cache_problems(root, targets, rehash=False, listings_from=remote or "")
        except VersioningError:  # e.g. a target inside a tracked folder: DVC's message is all there is
            raise error from None
        missing = [problem for problem in problems if problem.kind]
        if not missing:
            raise
        raise PullError(_pull_report(root, missing, remote, str(error)), missing) from None


def status(root: Path, targets: Sequence[str] = ()) -> str:
    """``dvc status`` of ``targets``: what differs between the workspace, the .dvc files and the cache."""
    return _dvc(["status", *targets], cwd=Path(root))


@dataclass(frozen=True)
class CacheProblem:
    """A tracked file whose object the local cache lacks (``kind`` "missing") or holds damaged
    ("corrupted"); ``kind`` is empty for a sound object. A folder's listing (``md5`` ending in ``.dir``)
    stands for the whole folder: without it DVC cannot know the folder's files."""

    path: str  # the file in the workspace, relative to the repository root
    md5: str  # DVC's object id
    dvc_file: str  # the .dvc file that tracks it, relative to the root
    object_path: Path
    kind: str = ""
    actual_md5: str = ""  # what a corrupted object hashes to
    listing: str = ""  # the .dir object of the tracked folder that holds the file; "" for a tracked file

    def describe(self) -> str:
        what = "the listing of folder" if self.md5.endswith(".dir") else "file"
        where = f"{what} {self.path} (object {self.md5}, tracked by {self.dvc_file})"
        if self.kind == "corrupted":
            return f"{where}: cache object {self.object_path} is corrupted (content md5 {self.actual_md5})"
        if self.kind == "missing":
            return f"{where}: not in the local cache ({self.object_path})"
        return f"{where}: sound"


def _md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_dvc_files(root: Path, targets: Sequence[str] = ()) -> list[Path]:
    """The .dvc files of ``targets`` (a .dvc file, or the path it tracks); all of the repository's without
    targets, found without descending into tracked folders or hidden ones (.git, .dvc, .snakemake)."""
    root = Path(root)
    if targets:
        found = []
        for target in targets:
            path = root / target
            dvc_file = path if path.suffix == ".dvc" else path.with_name(path.name + ".dvc")
            if not dvc_file.is_file():
                raise VersioningError(f"{target} is not tracked by DVC: there is no {dvc_file}")
            found.append(dvc_file)
        return found
    found = []
    for folder, dirs, files in os.walk(root):
        tracked = {name[: -len(".dvc")] for name in files if name.endswith(".dvc")}
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in tracked)
        found += [Path(folder) / name for name in sorted(files) if name.endswith(".dvc")]
    return found


def _remote_listing(root: Path, folder: str, remote: str | None) -> list[dict[str, str]] | None:
    """The listing of tracked ``folder`` as the remote has it (``dvc list``), in the .dir objects' form;
    None when DVC cannot read it. A failed pull keeps no listing in the cache: DVC stores a folder's
    listing only once every file of it arrived."""
    flags = ["--remote", remote] if remote else []
    try:
        listed = json.loads(_dvc(["list", "-R", "--json", "--show-hash", *flags, ".", folder], cwd=root))
    except (VersioningError, ValueError):
        return None
    return [{"md5": entry["md5"], "relpath": entry["path"]} for entry in listed if not entry["isdir"]]


def cache_problems(
    root: Path,
    targets: Sequence[str] = (),
    rehash: bool = True,
    listings_from: str | None = None,
) -> list[CacheProblem]:
    """Every object the .dvc files of ``targets`` (default: all) need, checked in the local cache: present,
    and with ``rehash`` its content re-hashed (a whole read of the data). A sound object has an empty
    ``kind``. A folder whose listing the cache lacks or holds damaged is one problem, its files unknown,
    unless ``listings_from`` (a remote name, or "" for the default remote) may supply the listing."""
    root = Path(root).resolve()
    cache = Path(_dvc(["cache", "dir"], cwd=root).strip())
    checked: list[CacheProblem] = []

    def check(path: str, md5: str, dvc_file: str, legacy: bool, listing: str = "") -> CacheProblem:
        # DVC 3 keeps objects under files/md5/; a .dvc file without `hash: md5` is DVC 2's, at the top.
        base = cache if legacy else cache / "files" / "md5"
        found = CacheProblem(path, md5, dvc_file, base / md5[:2] / md5[2:], listing=listing)
        if not found.object_path.is_file():
            return replace(found, kind="missing")
        if rehash and (actual := _md5_of(found.object_path)) != md5.removesuffix(".dir"):
            return replace(found, kind="corrupted", actual_md5=actual)
        return found

    for dvc_file in find_dvc_files(root, targets):
        relative_dvc = str(dvc_file.resolve().relative_to(root))
        for out in (yaml.safe_load(dvc_file.read_text()) or {}).get("outs", []):
            legacy = out.get("hash") != "md5"
            out_path = str((dvc_file.parent / out["path"]).resolve().relative_to(root))
            top = check(out_path, out["md5"], relative_dvc, legacy)
            if not out["md5"].endswith(".dir"):
                checked.append(top)
                continue
            listing = None
            if not top.kind:
                listing = json.loads(top.object_path.read_text())
            elif top.kind == "missing" and listings_from is not None:
                listing = _remote_listing(root, out_path, listings_from or None)
            if listing is None or not top.kind:
                checked.append(top)  # with the remote's listing, the folder's files tell the rest
            for entry in listing or []:
                path = f"{out_path}/{entry['relpath']}"
                checked.append(check(path, entry["md5"], relative_dvc, legacy, out["md5"]))
    return checked


class PullError(VersioningError):
    """``dvc pull`` failed; the message names each tracked file it could not restore and its object."""

    def __init__(self, message: str, missing: Sequence[CacheProblem]) -> None:
        super().__init__(message)
        self.missing = list(missing)


def _remote_description(root: Path, remote: str | None) -> str:
    """``remote 'store' (URL)``, for messages; "the remote" where DVC cannot say which."""
    try:
        name = remote or _dvc(["remote", "default"], cwd=root).strip()
        url = _dvc(["config", f"remote.{name}.url"], cwd=root).strip()
    except VersioningError:
        return "the remote"
    return f"remote {name!r} ({url})"


def _pull_report(root: Path, missing: Sequence[CacheProblem], remote: str | None, dvc_output: str) -> str:
    lines = "\n".join(f"  {problem.path}: object {problem.md5} ({problem.dvc_file})" for problem in missing)
    plural = "s" if len(missing) > 1 else ""
    report = (
        f"dvc pull could not restore {len(missing)} tracked file{plural}, whose object{plural} neither the "
        f"local cache nor {_remote_description(root, remote)} could supply:\n{lines}\n"
        "To repair the remote, on a machine whose cache holds the data (`geosem version check` there says it "
        "is sound): "
    )
    listings = sorted({problem.listing for problem in missing if problem.listing})
    if listings:
        # DVC's push asks the remote for a folder's listing only, and takes the files as present if it is
        # there: deleting it makes the next push send every file the remote lacks (treeverse/dvc#11011).
        objects = ", ".join(f"files/md5/{md5[:2]}/{md5[2:]}" for md5 in listings)
        report += (
            f"delete the folder listing{'s' if len(listings) > 1 else ''} {objects} from the remote, then "
        )
    return report + f"`dvc push`; or rebuild the data with the workflow.\nDVC's output: {dvc_output}"


def check(root: Path, targets: Sequence[str] = ()) -> list[CacheProblem]:
    """The tracked files whose cache objects are missing or damaged (every object re-hashed)."""
    return [problem for problem in cache_problems(root, targets, rehash=True) if problem.kind]


def main(argv: Sequence[str] | None = None) -> int:
    """``geosem version add|push|pull|status|check``; the workflow's versioning rule calls ``add``."""
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
    check_cmd = sub.add_parser(
        "check",
        help="re-hash the local cache objects of the tracked data (or the given .dvc targets); exit 1 "
        "naming each missing or corrupted one",
    )
    check_cmd.add_argument("targets", nargs="*")
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
        try:
            print(pull(root, args.targets, args.remote))
        except PullError as error:
            print(f"geosem version pull: {error}", file=sys.stderr)
            return 1
    elif args.command == "check":
        problems = check(root, args.targets)
        for problem in problems:
            print(f"FAILED {problem.describe()}", file=sys.stderr)
        if problems:
            print(
                "delete each damaged object (rm -f PATH) and every checked-out file that `geosem verify` "
                "finds damaged (DVC copies an object's bytes without re-hashing them), then `geosem version "
                "pull` fetches the remote's copies",
                file=sys.stderr,
            )
            return 1
        count = len(find_dvc_files(root, args.targets))
        print(f"ok: every cache object of {count} .dvc file(s) matches its hash")
    else:
        print(status(root, args.targets))
    return 0
