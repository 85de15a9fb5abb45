"""Extraction of a downloaded archive into ``raw/<dataset>/``, all or nothing (docs/downloads.md).

The archive is unpacked into a staging folder beside its destination (``raw/<dataset>/.extracting-<file>``,
same filesystem, so the moves below are renames), the paths the registry says it provides are checked,
and only then renamed into place, one rename per path; a marker file (``raw/<dataset>/.extracted/
<file>.json``) is written last. A failed or killed extraction therefore leaves no provided path behind
that was not complete, and no marker: the next run removes the staging folder and extracts again.
Anything else the archive holds (licence files, READMEs) is dropped with the staging folder.
"""

from __future__ import annotations

import errno
import os
import shutil
import tarfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from geosem.atomic import atomic_write_json, swap_in
from geosem.sources.download import Report, stderr_report

MARKERS = ".extracted"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class ExtractionError(RuntimeError):
    """An archive that cannot be extracted as the registry describes it; nothing was put in place."""


def archive_format(name: str) -> str:
    """``zip``, ``tar`` (any compression tarfile reads) or ``file`` (used as it is, e.g. a .mat)."""
    lower = name.lower()
    if lower.endswith(".zip"):
        return "zip"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    return "file"


def marker_path(root: Path, file: str) -> Path:
    return Path(root) / MARKERS / f"{file}.json"


def is_extracted(root: Path, provides: Sequence[str]) -> bool:
    """Whether every path an archive provides is there (moved in by an extraction, or brought by hand).
    Each path is renamed into place whole, so one that exists is complete."""
    return all((Path(root) / path.rstrip("/")).exists() for path in provides)


class _Ticker:
    def __init__(self, name: str, report: Report, interval: float = 10.0):
        self.name, self.report, self.interval = name, report, interval
        self.count, self.last = 0, time.monotonic()

    def tick(self, member: str) -> None:
        self.count += 1
        if time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            self.report(f"{self.name}: {self.count} members extracted (at {member})")


def _safe_member(name: str, archive: Path) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise ExtractionError(f"{archive}: member {name!r} would land outside the dataset folder; refused")


def _unzip(archive: Path, target: Path, ticker: _Ticker) -> None:
    with zipfile.ZipFile(archive) as handle:
        members = handle.infolist()
        needed = sum(member.file_size for member in members)
        free = shutil.disk_usage(target).free
        if needed > free:
            raise OSError(errno.ENOSPC, f"needs {needed / 1e9:.2f} GB, {free / 1e9:.2f} GB free")
        for member in members:
            _safe_member(member.filename, archive)
            handle.extract(member, target)  # a bad CRC raises here, naming the member
            ticker.tick(member.filename)


def _untar(archive: Path, target: Path, ticker: _Ticker) -> None:
    def members(handle: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
        for member in handle:
            _safe_member(member.name, archive)
            ticker.tick(member.name)
            yield member

    with tarfile.open(archive, "r:*") as handle:
        # The "data" filter refuses links that leave the folder, device files and absolute names.
        handle.extractall(target, members=members(handle), filter="data")


def _place_file(archive: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:  # a hard link costs no space; across filesystems (a brought-in raw path), a copy
        os.link(archive, target)
    except OSError:
        shutil.copyfile(archive, target)


def _missing(staging: Path, provides: Sequence[str]) -> list[str]:
    missing = []
    for path in provides:
        found = staging / path.rstrip("/")
        if not found.exists() or (path.endswith("/") and not found.is_dir()):
            missing.append(path)
    return missing


def _move_into_place(source: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.is_dir() and not destination.is_symlink():
        swap_in(source, destination)  # an old copy (or folders Snakemake made for outputs) goes after
    else:
        os.replace(source, destination)


def extract_archive(
    archive: Path,
    root: Path,
    provides: Sequence[str],
    into: str = "",
    *,
    marker: Path | None = None,
    report: Report = stderr_report,
) -> dict[str, Any]:
    """Extract ``archive`` so that each of ``provides`` (relative to ``root``) appears whole or not at
    all; ``into`` is the folder under ``root`` the archive's own top level lands in. Returns the marker's
    content (also written to ``marker``, by default ``root/.extracted/<archive name>.json``)."""
    archive, root = Path(archive), Path(root)
    if not archive.is_file():
        raise ExtractionError(f"{archive} is missing: download it first (`geosem download`)")
    kind = archive_format(archive.name)
    staging = root / f".extracting-{archive.name}"
    if staging.exists():
        report(f"removing {staging}, the remains of an interrupted extraction")
        shutil.rmtree(staging)
    target = staging / into if into else staging
    target.mkdir(parents=True)
    ticker = _Ticker(archive.name, report)
    report(f"extracting {archive} ({kind}) into {root}")
    try:
        if kind == "zip":
            _unzip(archive, target, ticker)
        elif kind == "tar":
            _untar(archive, target, ticker)
        else:
            _place_file(archive, staging / provides[0].rstrip("/"))
        missing = _missing(staging, provides)
        if missing:
            found = sorted(str(p.relative_to(staging)) for p in target.iterdir())[:12]
            raise ExtractionError(
                f"{archive} does not hold {missing} where the registry expects them (under "
                f"{into or 'the top level'!r}); its top level holds {found}: correct 'provides' / 'into' in "
                "the registry"
            )
        for path in provides:
            _move_into_place(staging / path.rstrip("/"), root / path.rstrip("/"))
    except ExtractionError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno == errno.ENOSPC:
            raise ExtractionError(
                f"no space left on the device of {root} while extracting {archive} ({error.strerror}): "
                "nothing was extracted; free space there and rerun"
            ) from None
        raise ExtractionError(f"cannot extract {archive}: {error}; nothing was extracted") from None
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, ValueError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExtractionError(
            f"cannot extract {archive}: {type(error).__name__}: {error}; nothing was extracted (a damaged "
            f"or truncated archive: delete it and its .verified.json and download it again)"
        ) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(staging, ignore_errors=True)
    done = {
        "archive": archive.name,
        "size": archive.stat().st_size,
        "into": into,
        "provides": list(provides),
        "members": ticker.count,
        "extracted": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    atomic_write_json(marker or marker_path(root, archive.name), done)
    report(f"ok {archive.name}: {ticker.count} members, provides {list(provides)}")
    return done
