"""``geosem download`` and ``geosem extract``: the download rules' commands (workflow/rules/download.smk),
also usable by hand (docs/downloads.md)::

    geosem download --dataset kitti --file data_semantics.zip     # one archive, checked, resumable
    geosem download --dataset nyuv2                               # every non-optional archive
    geosem extract  --dataset kitti --file data_semantics.zip     # into raw/kitti/, all or nothing

A failure prints one line naming the file and what to do, and exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from geosem.sources.archive_registry import Archive

DOWNLOADS = "raw/downloads"


def _archives(args: argparse.Namespace) -> list[Archive]:
    from geosem.sources.archive_registry import load_registry, registry_archive

    registry = load_registry(Path(args.registry))
    if args.file:
        return [registry_archive(registry, args.dataset, name) for name in args.file]
    if args.dataset not in registry:
        raise KeyError(f"no dataset {args.dataset!r} in the download registry; known: {sorted(registry)}")
    return registry[args.dataset].selected()


def _cmd_download(args: argparse.Namespace) -> int:
    from geosem.sources.download import RECEIPT_SUFFIX, download_archive, write_receipt

    base_urls = {args.dataset: args.base_url} if args.base_url else {}
    for archive in _archives(args):
        receipt = download_archive(
            archive,
            Path(args.downloads),
            lock=Path(args.lock),
            mirror=args.mirror,
            base_urls=base_urls,
            retries=args.retries,
        )
        write_receipt(Path(args.downloads) / archive.dataset / f"{archive.file}{RECEIPT_SUFFIX}", receipt)
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from geosem.sources.extract import extract_archive

    root = Path(args.root or Path(args.downloads).parent / args.dataset)
    for archive in _archives(args):
        extract_archive(
            Path(args.downloads) / archive.dataset / archive.file, root, archive.provides, archive.into
        )
    return 0


def _guarded(command: argparse.Namespace) -> int:
    """Run a command; the errors a user can act on become one line (no traceback) and exit 1."""
    from geosem.sources.download import DownloadError
    from geosem.sources.extract import ExtractionError

    try:
        return command.run(command)
    except (DownloadError, ExtractionError, KeyError, ValueError) as error:
        text = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"FAILED geosem {command.command}: {text}", file=sys.stderr)
        return 1


def _common(parser: argparse.ArgumentParser) -> None:
    from geosem.sources.archive_registry import REGISTRY

    parser.add_argument("--dataset", required=True, help="a dataset of the registry (kitti, cityscapes, ...)")
    parser.add_argument(
        "--file",
        action="append",
        help="an archive of that dataset (repeatable); default: its non-optional ones",
    )
    parser.add_argument("--registry", default=str(REGISTRY), help="the dataset registry (YAML)")
    parser.add_argument("--downloads", default=DOWNLOADS, help="archives go to <downloads>/<dataset>/<file>")


def add_download_commands(sub: argparse._SubParsersAction) -> None:
    from geosem.sources.download import LOCK

    download = sub.add_parser(
        "download",
        help="download registry archives, checksum-checked and resumable, to <downloads>/<dataset>/<file>",
    )
    _common(download)
    download.add_argument("--lock", default=str(LOCK), help="sha256s recorded where none is published")
    download.add_argument("--mirror", default="", help="fetch <mirror>/<dataset>/<file> instead (no login)")
    download.add_argument(
        "--base-url", default="", help="replaces the host of the dataset's URLs (Cityscapes: the login site)"
    )
    download.add_argument("--retries", type=int, default=3, help="resumes after dropped connections")
    download.set_defaults(func=_guarded, run=_cmd_download)
    extract = sub.add_parser(
        "extract", help="extract downloaded archives into raw/<dataset>/, all or nothing, with a marker file"
    )
    _common(extract)
    extract.add_argument("--root", default=None, help="the dataset's raw folder (default: raw/<dataset>)")
    extract.set_defaults(func=_guarded, run=_cmd_extract)
