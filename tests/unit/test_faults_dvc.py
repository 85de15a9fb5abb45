"""DVC faults of the fault campaign (issue 17), provoked for real in a git + DVC repository with a remote.

- An object deleted from the remote: `geosem version pull` in a fresh clone fails naming the tracked file
  it cannot restore, its object hash and its .dvc file (DVC's own message names the hash only); the pull
  leaves no half-restored shard set, the original checkout keeps its data, and the repair the message
  gives (delete the folder's listing on the remote, push again) makes the clone pull byte for byte.
- A cache object damaged in place: truncated, `dvc status` flags its folder; flipped at the same size and
  time (bit rot), DVC sees nothing and checks the bytes out, but `geosem version check` names the file and
  the object, and `geosem verify` names the shard file on the checked-out set. The repair the check prints
  (delete the object and the file checked out from it, pull) restores the set from the remote.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from geosem.shards import verify_shards

from tests.helpers import cli_env

pytestmark = pytest.mark.slow  # git and dvc processes

SHARD_SET = "shards/synth_driving/64x96"
# The part whose object goes missing or bad: one of the middle two of the tiny set's four parts.
PART = f"{SHARD_SET}/part-00001.h5"
ENV = cli_env({"DVC_NO_ANALYTICS": "1"})  # no analytics daemon per dvc command


def _run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=ENV)
    if check:
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
    return result


def _dvc(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run([sys.executable, "-m", "dvc", *args], cwd, check)


def _geosem(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([str(Path(sys.executable).parent / "geosem"), *args], cwd, check=False)


def _object(root: Path, md5: str) -> Path:
    """Where DVC 3 keeps object ``md5`` under ``root`` (a cache or a local remote)."""
    return root / "files" / "md5" / md5[:2] / md5[2:]


def _part_md5(project: Path) -> str:
    """The object hash of PART, from the folder listing DVC wrote to the cache."""
    (out,) = yaml.safe_load((project / f"{SHARD_SET}.dvc").read_text())["outs"]
    listing = json.loads(_object(project / ".dvc" / "cache", out["md5"]).read_text())
    return next(entry["md5"] for entry in listing if entry["relpath"] == Path(PART).name)


@pytest.fixture(scope="module")
def template(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed project tracking the tiny shard set and a run's metrics file, pushed to ``remote/``
    beside it (a relative URL, so a copy of the folder is a working project with its own remote)."""
    base = tmp_path_factory.mktemp("dvc-faults")
    project = base / "project"
    project.mkdir()
    for command in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "test@geosem"],
        ["git", "config", "user.name", "test"],
    ):
        _run(command, project)
    _dvc(project, "init", "-q")
    _dvc(project, "remote", "add", "-d", "store", "../remote")  # DVC keeps it relative
    shutil.copytree(tiny_shards, project / SHARD_SET)
    (project / "results").mkdir()
    (project / "results" / "metrics.json").write_text('{"miou": 0.25}\n')
    _dvc(project, "add", "-q", SHARD_SET, "results/metrics.json")
    _run(["git", "add", "-A"], project)
    _run(["git", "commit", "-qm", "data"], project)
    _dvc(project, "push", "-q")
    return base


@pytest.fixture
def project(template: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template's project and remote."""
    shutil.copytree(template, tmp_path / "copy", symlinks=True)
    return tmp_path / "copy" / "project"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_pull_with_an_object_missing_on_the_remote_names_the_file(project: Path, tiny_shards: Path) -> None:
    remote = project.parent / "remote"
    md5 = _part_md5(project)
    _object(remote, md5).unlink()  # lost on the remote: a pruned bucket, a push cut short
    clone = project.parent / "clone"
    _run(["git", "clone", "-q", str(project), str(clone)], project.parent)

    pulled = _geosem(clone, "version", "pull")
    assert pulled.returncode == 1
    message = pulled.stderr
    assert f"{PART}: object {md5} ({SHARD_SET}.dvc)" in message, message
    assert "could not restore 1 tracked file" in message and "remote 'store'" in message, message
    (out,) = yaml.safe_load((project / f"{SHARD_SET}.dvc").read_text())["outs"]
    listing = f"files/md5/{out['md5'][:2]}/{out['md5'][2:]}"
    assert f"delete the folder listing {listing} from the remote, then `dvc push`" in message, message
    # Nothing half-restored: DVC checks out none of the set (nor the metrics file: all or nothing).
    assert not (clone / SHARD_SET).exists() and not (clone / "results" / "metrics.json").exists()
    # The original checkout lost nothing: its workspace and cache are whole.
    assert verify_shards(project / SHARD_SET) == 16
    assert _geosem(project, "version", "check").returncode == 0

    # `dvc push` alone does not repair it: the remote has the folder's listing, so DVC asks for no file of
    # it ("Everything is up to date"). The message's repair: delete the listing, then push.
    assert "Everything is up to date" in _dvc(project, "push").stdout
    assert not _object(remote, md5).exists()
    (remote / listing).unlink()
    _dvc(project, "push", "-q")
    assert _object(remote, md5).is_file()
    repaired = _geosem(clone, "version", "pull")
    assert repaired.returncode == 0, repaired.stderr
    assert _files(clone / SHARD_SET) == _files(tiny_shards) and verify_shards(clone / SHARD_SET) == 16


def _rot(path: Path) -> None:
    """Flip one byte in the middle of ``path`` in place, keeping its size and times: bit rot."""
    stat = path.stat()
    path.chmod(0o644)  # DVC leaves cache objects read-only
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    path.chmod(stat.st_mode)


def test_a_truncated_cache_object_is_flagged_by_dvc_status(project: Path) -> None:
    cached = _object(project / ".dvc" / "cache", _part_md5(project))
    cached.chmod(0o644)
    cached.write_bytes(cached.read_bytes()[:100])  # cut short: a full disk, a killed copy
    status = _dvc(project, "status")
    assert f"not in cache:       {SHARD_SET}" in status.stdout, status.stdout
    check = _geosem(project, "version", "check")
    assert check.returncode == 1 and f"file {PART} (object {_part_md5(project)}" in check.stderr
    assert verify_shards(project / SHARD_SET) == 16  # the checked-out copy is a separate file: intact


def test_a_rotten_cache_object_is_named_by_check_and_verify_and_restored_from_the_remote(
    project: Path, tiny_shards: Path
) -> None:
    md5 = _part_md5(project)
    cached = _object(project / ".dvc" / "cache", md5)
    _rot(cached)
    # DVC trusts a cache object of unchanged size and time: it neither sees nor refuses it.
    assert "Data and pipelines are up to date" in _dvc(project, "status").stdout
    check = _geosem(project, "version", "check")
    assert check.returncode == 1
    assert f"FAILED file {PART} (object {md5}, tracked by {SHARD_SET}.dvc): cache object {cached}" in (
        check.stderr
    ), check.stderr
    assert "is corrupted" in check.stderr and "delete each damaged object" in check.stderr

    # A checkout from that cache copies the bad bytes; `geosem verify` names the shard file.
    shutil.rmtree(project / SHARD_SET)
    _dvc(project, "checkout", "-q")
    verify = _geosem(project, "verify", SHARD_SET)
    assert verify.returncode == 1 and f"{SHARD_SET}/part-00001.h5: sha256" in verify.stderr, verify.stderr

    # The repair the check prints (the remote still has the good object): delete the bad object and the
    # file checked out from it (DVC took its hash from the listing, so `checkout --force` keeps it), pull.
    cached.unlink()
    (project / PART).unlink()
    pulled = _geosem(project, "version", "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert _geosem(project, "version", "check").returncode == 0
    assert _files(project / SHARD_SET) == _files(tiny_shards) and verify_shards(project / SHARD_SET) == 16
