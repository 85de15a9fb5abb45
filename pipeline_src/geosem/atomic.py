"""Atomic writes: a temporary file (or folder) beside the target, then renamed over the target.

A reader (or a workflow engine checking outputs) sees the old file or the complete new one, never a
half-written file, even when the writer is killed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux reports it (``os.umask`` can only be
    read by setting it, which races with other threads creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_name_prefix(path: Path) -> str:
    """The prefix of ``atomic_write_with``'s temporary files for ``path``: a killed writer leaves one
    behind, and the owner of ``path`` may remove files with this prefix when it starts again."""
    return f".{Path(path).name}."


def disk_full_error(path: Path, error: OSError) -> OSError:
    """ENOSPC with the file being written named and what to do, in place of the bare errno text."""
    return OSError(
        errno.ENOSPC,
        f"no space left on the device holding {path.parent} while writing {path} "
        f"({error.strerror}); the previous {path.name}, if any, is untouched: free space there "
        "(or point the output elsewhere) and rerun",
    )


def atomic_write_with(
    path: Path, write: Callable[[str], None], before_replace: Callable[[], None] | None = None
) -> None:
    """Call ``write(tmp_path)`` and rename the result onto ``path``; remove the temp file on failure.

    The file gets the mode a plain ``open`` would give it (0666 less the umask): ``mkstemp`` creates
    0600, which would keep colleagues in a shared project directory from reading results. The data is
    fsynced before the rename, so a crash of the machine cannot leave a renamed but empty file.
    ``before_replace`` runs once the new file is complete, just before it is renamed onto ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_name_prefix(path), suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.errno == errno.ENOSPC:
            raise disk_full_error(path, error) from error
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    atomic_write_with(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def swap_in(staging: Path, final: Path) -> None:
    """Move a finished staging folder onto ``final``; an old ``final`` is renamed away first and removed
    only after the new one is in place, so a reader never finds the folder missing or half written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        retired = final.with_name(f".{final.name}.old-{os.getpid()}")
        if retired.exists():
            shutil.rmtree(retired)
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired)
    else:
        os.replace(staging, final)


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """An empty staging folder beside ``final`` to write into; swapped in when the block ends, removed
    (and ``final`` left as it was) when it raises."""
    final = Path(final)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
