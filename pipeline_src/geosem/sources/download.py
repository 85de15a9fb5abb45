"""Hash-checked, resumable downloads of registry archives through pooch, and the lock file of
first-download checksums (``config/datasets.lock.yaml``); the registry itself is
:mod:`geosem.sources.archive_registry`. docs/downloads.md.

One call of :func:`download_archive` fetches one archive to ``<downloads>/<dataset>/<file>``: bytes go to
a ``.part`` file in a private staging folder, the finished file is checked by pooch against the
published checksum (or the one the lock file recorded at the first download), and only then renamed
into place. A killed download resumes with an HTTP Range request; a wrong checksum deletes the bytes and
names the file and both checksums. Credentials (Cityscapes) are read inside the job, never passed on a
command line, and no URL is written anywhere with a password in it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from geosem.atomic import atomic_write_json, atomic_write_text
from geosem.sources.archive_registry import Archive, redact_url, resolve_url, site_of

LOCK = Path("config/datasets.lock.yaml")
PART_SUFFIX = ".part"
STAGING = ".partial"  # <downloads>/<dataset>/.partial/<file>/: the .part file and pooch's temporary file
RECEIPT_SUFFIX = ".verified.json"  # written after the checksum matched: what the workflow waits for
# Read size: when a connection breaks, urllib3 drops the chunk it was filling, so a resume re-fetches at
# most this much; small enough for that, large enough that Python's per-chunk cost is invisible.
CHUNK = 1 << 16
LOCK_HEADER = (
    "# sha256 of every archive whose publisher gives no checksum, recorded by `geosem download` at its\n"
    "# first download and checked on every later one (docs/downloads.md). Commit this file: it is what\n"
    "# makes a second machine's download of the same archive provably the same bytes.\n"
)
Report = Callable[[str], None]
log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download that cannot complete; the message names the file and what to do."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the published (or recorded) ones."""


class _Transient(Exception):
    """A 5xx answer or a body cut short: worth another try (resumed from the .part)."""


def stderr_report(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the lock file -------------------------------------------------------------------------------------


def read_lock(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    if not Path(path).is_file():
        return {}
    return yaml.safe_load(Path(path).read_text()) or {}


def record_lock(path: Path, archive: Archive, sha256: str, size: int, url: str) -> None:
    """Add ``archive``'s sha256 to the lock file. Download jobs run side by side (the ``downloads``
    resource), so the read-modify-write holds an exclusive lock on the lock file's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        lock = read_lock(path)
        lock.setdefault(archive.dataset, {})[archive.file] = {
            "sha256": sha256,
            "size": size,
            "url": redact_url(url),
            "recorded": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        atomic_write_text(path, LOCK_HEADER + yaml.safe_dump(lock, sort_keys=True))
    finally:
        fcntl.flock(folder, fcntl.LOCK_UN)
        os.close(folder)


# --- the resumable downloader ---------------------------------------------------------------------------


class _Progress:
    """A line every ``interval`` seconds and one at the end: readable in a Snakemake log file, where a
    redrawn progress bar would be thousands of lines."""

    def __init__(self, name: str, done: int, total: int | None, report: Report, interval: float = 10.0):
        self.name, self.done, self.total, self.report, self.interval = name, done, total, report, interval
        self.start = self.last = time.monotonic()
        self.first = done

    def update(self, count: int, final: bool = False) -> None:
        self.done += count
        now = time.monotonic()
        if not final and now - self.last < self.interval:
            return
        self.last = now
        rate = (self.done - self.first) / max(now - self.start, 1e-6) / 1e6
        of = f" of {self.total / 1e6:.1f} MB ({100 * self.done / self.total:.0f} %)" if self.total else " MB"
        self.report(f"{self.name}: {self.done / 1e6:.1f}{of}, {rate:.1f} MB/s")


class RangeResumeDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch)``) that resumes.

    Why not pooch's HTTPDownloader: it streams into a fresh temporary file that it deletes on any error,
    so a dropped connection 100 GB into KITTI starts again from byte 0. This one keeps the bytes in a
    stable ``.part`` file, continues it with ``Range: bytes=<size>-`` (``If-Range`` with the first
    response's ETag or Last-Modified, so a file changed on the server restarts instead of being spliced),
    retries dropped connections and 5xx answers, and hands the finished file to pooch, which checks the
    hash and moves it into place. The ``.part`` stays (hard-linked) until that check is done, so a job
    killed while hashing resumes with nothing left to fetch.
    """

    def __init__(
        self,
        part: Path,
        *,
        session: Any = None,
        expected_size: int | None = None,
        retries: int = 3,
        follow_redirects: bool = True,
        report: Report = stderr_report,
        timeout: float = 60.0,
    ):
        self.part, self.session, self.expected_size = Path(part), session, expected_size
        self.retries, self.follow_redirects, self.report, self.timeout = (
            retries,
            follow_redirects,
            report,
            timeout,
        )
        self.meta = self.part.with_name(self.part.name + ".json")

    def __call__(self, url: str, output_file: str, pooch: Any, check_only: bool = False) -> None:
        import requests
        import urllib3

        session = self.session or requests.Session()
        for attempt in range(self.retries + 1):
            try:
                if self._fetch(session, url):
                    break
            except (requests.RequestException, urllib3.exceptions.HTTPError, _Transient) as error:
                reason = str(error) if isinstance(error, _Transient) else type(error).__name__
                if attempt == self.retries:
                    raise DownloadError(
                        f"{self.part.name[: -len(PART_SUFFIX)]}: the connection to {redact_url(url)} failed "
                        f"{attempt + 1} time(s) ({reason}); the {self._size()} bytes fetched so far are "
                        f"kept in {self.part} and the next run resumes from there"
                    ) from None
                self.report(f"{reason} after {self._size()} bytes; trying again (try {attempt + 2})")
                time.sleep(min(2**attempt, 30))
        try:  # a hard link keeps the .part until pooch has checked and moved the file
            tmp = f"{output_file}.link"
            os.link(self.part, tmp)
            os.replace(tmp, output_file)
        except OSError:  # filesystems without hard links: hand over the file itself
            os.replace(self.part, output_file)

    def _size(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def _restart(self) -> None:
        self.part.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def _fetch(self, session: Any, url: str) -> bool:
        """One request; True when the .part holds the whole file, False to try again."""
        offset = self._size()
        # identity: a server that gzips a .tar.gz on the fly would otherwise hand over other bytes
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self.meta.is_file():
                validator = json.loads(self.meta.read_text()).get("validator")
                if validator:
                    headers["If-Range"] = validator
        with session.get(
            url, headers=headers, stream=True, timeout=self.timeout, allow_redirects=self.follow_redirects
        ) as response:
            name = self.part.name[: -len(PART_SUFFIX)]
            if response.status_code == 416 and offset:  # nothing left to send: complete, or a changed file
                total = response.headers.get("Content-Range", "").rpartition("/")[2]
                if total.isdigit() and int(total) == offset:
                    return True
                self.report(
                    f"{name}: the server's file no longer matches the partial download; starting over"
                )
                self._restart()
                return False
            if response.status_code >= 500:
                raise _Transient(f"HTTP {response.status_code} {response.reason}")
            if response.status_code not in (200, 206):
                hint = " (a login page: the session was refused)" if 300 <= response.status_code < 400 else ""
                raise DownloadError(
                    f"{name}: HTTP {response.status_code} {response.reason} from {redact_url(url)}{hint}; "
                    "nothing was written in its place"
                )
            if response.status_code == 206:
                start = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
                if start is None or int(start.group(1)) != offset:
                    raise DownloadError(
                        f"{name}: {redact_url(url)} answered the Range request with the wrong bytes"
                    )
                self.report(f"{name}: resuming at byte {offset}")
            elif offset:
                self.report(
                    f"{name}: the server ignored the Range request (or the file changed); starting over"
                )
                offset = 0
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            self._check_size(name, total, offset)
            if offset == 0:
                validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
                atomic_write_json(self.meta, {"url": redact_url(url), "validator": validator})
            progress = _Progress(name, offset, total, self.report)
            with open(self.part, "ab" if offset else "wb") as out:
                # The raw bytes, never decoded: the archive exactly as the server stores it.
                for chunk in response.raw.stream(CHUNK, decode_content=False):
                    out.write(chunk)
                    progress.update(len(chunk))
            progress.update(0, final=True)
            if total is not None and self._size() != total:
                raise _Transient(f"the server sent {self._size()} of {total} bytes and stopped")
            return True

    def _check_size(self, name: str, total: int | None, offset: int) -> None:
        if total is not None and self.expected_size is not None and total != self.expected_size:
            raise DownloadError(
                f"{name}: the server offers {total} bytes, the registry says {self.expected_size}; "
                "not downloading (a changed file or a wrong URL)"
            )
        needed = (total or self.expected_size or 0) - offset
        free = shutil.disk_usage(self.part.parent).free
        if needed > free:
            raise DownloadError(
                f"{name}: needs {needed / 1e9:.2f} GB more in {self.part.parent}, which has "
                f"{free / 1e9:.2f} GB free; free space (or point downloads.dir elsewhere) and rerun"
            )


# --- one archive ---------------------------------------------------------------------------------------


def _got_hash(message: str) -> str:
    found = re.search(r"but got (\w+)", message)  # pooch's wording (pinned in envs/requirements.txt)
    return found.group(1) if found else "(see pooch's message)"


def _verify_existing(dest: Path, known: str) -> None:
    import pooch

    algorithm, _, expected = known.partition(":")
    got = pooch.file_hash(str(dest), alg=algorithm)
    if got != expected:
        raise ChecksumError(
            f"{dest} is already there but its {algorithm} is {got}, not the expected {expected}: "
            "it is another file (or damaged); move it away and rerun to download the right one"
        )


def download_archive(
    archive: Archive,
    downloads: Path,
    *,
    lock: Path = LOCK,
    mirror: str = "",
    base_urls: Mapping[str, str] | None = None,
    retries: int = 3,
    report: Report = stderr_report,
) -> dict[str, Any]:
    """Fetch ``archive`` to ``<downloads>/<dataset>/<file>`` and return its receipt (what was checked
    against what). An existing file is verified instead of fetched again."""
    import pooch

    dest = Path(downloads) / archive.dataset / archive.file
    url = resolve_url(archive, mirror, base_urls)
    base = (base_urls or {}).get(archive.dataset, "")
    session, follow = None, True
    known, source = archive.checksum, "registry"
    if archive.credentials == "cityscapes" and (base or not mirror):  # a mirror serves plain files
        from geosem.sources.cityscapes_login import cityscapes_package

        session, url, site_md5 = cityscapes_package(archive, site_of(archive.url, base))
        follow = False  # a redirect from the file endpoint means the login did not hold
        if known is None and site_md5:
            known, source = f"md5:{site_md5}", "the Cityscapes site's md5 list"
    if known is None:
        entry = read_lock(lock).get(archive.dataset, {}).get(archive.file)
        if entry is not None:
            known, source = f"sha256:{entry['sha256']}", f"{lock} (recorded at the first download)"
    if dest.exists() and known is not None:
        report(f"{dest} exists: checking its {known.partition(':')[0]}")
        _verify_existing(dest, known)
    elif not dest.exists():
        staging = dest.parent / STAGING / archive.file
        staging.mkdir(parents=True, exist_ok=True)
        # pooch's temporary files left by a killed run: this job owns the folder (one job per archive)
        for stale in staging.glob("tmp*"):
            stale.unlink()
        part = staging / (archive.file + PART_SUFFIX)
        downloader = RangeResumeDownloader(
            part,
            session=session,
            expected_size=archive.size,
            retries=retries,
            follow_redirects=follow,
            report=report,
        )
        report(f"downloading {archive.dataset}/{archive.file} from {redact_url(url)} to {dest}")
        pooch.get_logger().setLevel(logging.WARNING)  # it would log the URL as given, userinfo included
        try:
            pooch.retrieve(url, known_hash=known, fname=archive.file, path=staging, downloader=downloader)
        except ValueError as error:  # pooch's hash check; it has deleted its copy, the .part goes too
            downloader._restart()
            algorithm = (known or "sha256").partition(":")[0]
            changed = (
                f" (the file changed since its first download: if that is expected, delete its entry "
                f"{archive.dataset}/{archive.file} in {lock})"
                if source.startswith(str(lock))
                else ""
            )
            raise ChecksumError(
                f"{dest}: checksum mismatch, expected {known} ({source}) but got "
                f"{algorithm}:{_got_hash(str(error))}; the download was deleted, nothing was put in its "
                f"place{changed}"
            ) from None
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise DownloadError(
                    f"{dest}: no space left in {staging}; the partial download is kept"
                ) from None
            raise
        os.replace(staging / archive.file, dest)
        shutil.rmtree(staging, ignore_errors=True)
        with contextlib.suppress(OSError):  # still holds another job's download of this dataset
            (dest.parent / STAGING).rmdir()
    size = dest.stat().st_size
    if known is None:  # nothing published: the first download defines the bytes, the lock file keeps them
        sha256 = pooch.file_hash(str(dest))
        record_lock(lock, archive, sha256, size, url)
        known, source = f"sha256:{sha256}", f"{lock} (recorded now, first download)"
        report(f"{archive.file}: no published checksum; recorded sha256 {sha256} in {lock}")
    report(f"ok {dest}: {size} bytes, {known} ({source})")
    return {
        "dataset": archive.dataset,
        "file": archive.file,
        "path": str(dest),
        "size": size,
        "url": redact_url(url),
        "checksum": known,
        "checksum_source": source,
    }


def write_receipt(path: Path, receipt: dict[str, Any]) -> None:
    atomic_write_json(Path(path), receipt)
