"""Downloads and extraction against a real HTTP server on 127.0.0.1 that the tests start and stop:
fabricated archives, Range requests, dropped connections, a Cityscapes-like login, and the faults a
user meets (a wrong checksum, a changed file, HTTP 404, a damaged archive, a refused login)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import subprocess
import sys
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import yaml
from geosem.sources.archive_registry import Archive, load_registry, redact_url, resolve_url
from geosem.sources.cityscapes_login import CREDENTIALS_VARIABLE, CredentialsError, read_credentials
from geosem.sources.download import (
    CHUNK,
    PART_SUFFIX,
    STAGING,
    ChecksumError,
    DownloadError,
    download_archive,
    read_lock,
)
from geosem.sources.download_plan import link_dataset_path, plan_downloads
from geosem.sources.extract import ExtractionError, extract_archive, marker_path

from tests.helpers import REPO, cli_env

PASSWORD = "s3cret-Pa55word-never-logged"


# --- the server ------------------------------------------------------------------------------------------


class ArchiveServer:
    """Serves ``files`` (URL path -> bytes) with Range support; ``drop_after[path] = n`` sends n bytes of
    the next answer for ``path`` and then drops the connection; ``status[path]`` answers with that code.
    ``packages`` (id -> (name, bytes)) and ``users`` emulate the Cityscapes site's login flow. Every
    answer is logged in ``log`` with the Range header it got and the body bytes it sent."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.drop_after: dict[str, int] = {}
        self.status: dict[str, int] = {}
        self.ignore_range: set[str] = set()  # paths answered whole, as servers without Range support do
        self.packages: dict[int, tuple[str, bytes]] = {}
        self.users: dict[str, str] = {}
        self.log: list[dict[str, Any]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.archive_server = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> ArchiveServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def sent(self, path: str) -> int:
        return sum(entry["sent"] for entry in self.log if entry["path"] == path)

    def requests_for(self, path: str) -> list[dict[str, Any]]:
        return [entry for entry in self.log if entry["path"] == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests read ArchiveServer.log
        pass

    @property
    def site(self) -> ArchiveServer:
        return self.server.archive_server  # type: ignore[attr-defined]

    def _answer(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self._record(code, len(body))  # before the headers: the client may act on them at once
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self, code: int, sent: int) -> None:
        entry = {"path": self.path, "range": self.headers.get("Range"), "sent": sent, "code": code}
        self.site.log.append(entry)

    def _logged_in(self) -> bool:
        return "session=ok" in (self.headers.get("Cookie") or "")

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        package = parse_qs(query).get("packageID", [None])[0]
        if path == "/login":
            self._answer(200, b"<form>login</form>")
        elif path == "/downloads/" and query == "list":
            if not self._logged_in():
                self._answer(302, headers={"Location": "/login"})
                return
            listing = [
                {"name": n, "packageID": str(i), "size": "1MB", "thirdparty": "0"}
                for i, (n, _) in self.site.packages.items()
            ]
            self._answer(200, json.dumps(listing).encode(), {"Content-Type": "application/json"})
        elif path == "/md5-sum/" and package is not None:
            name, data = self.site.packages[int(package)]
            self._answer(200, f"{hashlib.md5(data).hexdigest()}  {name}\n".encode())
        elif path == "/file-handling/" and package is not None:
            if not self._logged_in():
                self._answer(302, headers={"Location": "/login"})
                return
            self._serve(self.site.packages[int(package)][1])
        elif path in self.site.files:
            self._serve(self.site.files[path])
        else:
            self._answer(404, b"not found")

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
        user, password = form.get("username", [""])[0], form.get("password", [""])[0]
        if (
            self.path == "/login"
            and self.site.users.get(user) == password
            and form.get("submit") == ["Login"]
        ):
            self._answer(302, headers={"Location": "/", "Set-Cookie": "session=ok; Path=/"})
        else:
            self._answer(200, b"<form>bad credentials</form>")

    def _serve(self, data: bytes) -> None:
        if self.path in self.site.status:
            self._answer(self.site.status[self.path], b"scripted failure")
            return
        etag = f'"{hashlib.md5(data).hexdigest()}"'
        start, code = 0, 200
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if asked and self.path not in self.site.ignore_range and self.headers.get("If-Range") in (None, etag):
            start, code = int(asked.group(1)), 206
            if start >= len(data):
                self._answer(416, headers={"Content-Range": f"bytes */{len(data)}"})
                return
        full = data[start:]
        limit = self.site.drop_after.pop(self.path, None)
        # With a limit the connection dies mid-body, as a flaky link or a killed proxy does.
        body = full if limit is None else full[:limit]
        self._record(code, len(body))
        self.send_response(code)
        self.send_header("Content-Length", str(len(full)))
        self.send_header("ETag", etag)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(body)
        if limit is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True


@pytest.fixture()
def server() -> Iterator[ArchiveServer]:
    site = ArchiveServer().start()
    try:
        yield site
    finally:
        site.stop()


# --- fabricated archives --------------------------------------------------------------------------------


def make_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    return buffer.getvalue()


def make_tgz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as handle:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def noise(size: int, seed: int = 0) -> bytes:
    """Incompressible bytes, so an archive's size is what the test asks for."""
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def archive(url: str, file: str = "pack.zip", checksum: str | None = None, **extra: Any) -> Archive:
    return Archive(
        dataset="toy",
        file=file,
        url=url,
        provides=extra.pop("provides", ("pack/",)),
        checksum=checksum,
        **extra,
    )


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# --- downloads -----------------------------------------------------------------------------------------


def test_download_checks_the_published_checksum(server: ArchiveServer, tmp_path: Path) -> None:
    data = make_zip({"pack/a.txt": b"alpha", "pack/b.bin": noise(200_000)})
    server.files["/toy/pack.zip"] = data
    spec = archive(f"{server.url}/toy/pack.zip", checksum=f"md5:{md5(data)}", size=len(data))
    receipt = download_archive(
        spec, tmp_path / "downloads", lock=tmp_path / "lock.yaml", report=lambda m: None
    )
    dest = tmp_path / "downloads" / "toy" / "pack.zip"
    assert dest.read_bytes() == data
    assert receipt["checksum"] == f"md5:{md5(data)}" and receipt["checksum_source"] == "registry"
    assert not (dest.parent / STAGING).exists()  # the .part and pooch's temporary file are gone
    assert not (tmp_path / "lock.yaml").exists()  # a published checksum needs no lock entry
    # A second call finds the file, checks it, and fetches nothing.
    before = len(server.log)
    download_archive(spec, tmp_path / "downloads", lock=tmp_path / "lock.yaml", report=lambda m: None)
    assert len(server.log) == before


def test_a_wrong_checksum_names_the_file_and_both_checksums_and_keeps_nothing(
    server: ArchiveServer, tmp_path: Path
) -> None:
    data = make_zip({"pack/a.txt": b"the server's bytes"})
    server.files["/toy/pack.zip"] = data
    expected = md5(b"the bytes the publisher announced")
    spec = archive(f"{server.url}/toy/pack.zip", checksum=f"md5:{expected}")
    with pytest.raises(ChecksumError) as error:
        download_archive(spec, tmp_path / "downloads", lock=tmp_path / "lock.yaml", report=lambda m: None)
    message = str(error.value)
    assert "pack.zip" in message and expected in message and md5(data) in message, message
    dest = tmp_path / "downloads" / "toy" / "pack.zip"
    assert not dest.exists()
    leftovers = list((dest.parent / STAGING).rglob("*")) if (dest.parent / STAGING).exists() else []
    assert [p for p in leftovers if p.is_file()] == []  # no .part to resume from, no temporary copy


def test_a_dropped_connection_resumes_with_a_range_request(server: ArchiveServer, tmp_path: Path) -> None:
    data = noise(12 * CHUNK + 123, seed=1)
    server.files["/toy/pack.zip"] = data
    server.drop_after["/toy/pack.zip"] = 5 * CHUNK  # the first answer dies after 5 chunks
    spec = archive(f"{server.url}/toy/pack.zip", checksum=f"md5:{md5(data)}")
    downloads = tmp_path / "downloads"
    with pytest.raises(DownloadError, match="next run resumes"):  # the job dies: no retries left
        download_archive(spec, downloads, lock=tmp_path / "lock.yaml", retries=0, report=lambda m: None)
    part = downloads / "toy" / STAGING / "pack.zip" / f"pack.zip{PART_SUFFIX}"
    assert part.stat().st_size == 5 * CHUNK and not (downloads / "toy" / "pack.zip").exists()
    # The next job resumes where the .part ends and fetches every byte exactly once in all.
    download_archive(spec, downloads, lock=tmp_path / "lock.yaml", retries=0, report=lambda m: None)
    assert (downloads / "toy" / "pack.zip").read_bytes() == data
    ranges = [entry["range"] for entry in server.requests_for("/toy/pack.zip")]
    assert ranges == [None, f"bytes={5 * CHUNK}-"], ranges
    assert server.sent("/toy/pack.zip") == len(data)
    assert not part.exists()


def test_a_dropped_connection_is_resumed_within_the_same_job(server: ArchiveServer, tmp_path: Path) -> None:
    data = noise(6 * CHUNK, seed=2)
    server.files["/toy/pack.zip"] = data
    server.drop_after["/toy/pack.zip"] = 2 * CHUNK
    spec = archive(f"{server.url}/toy/pack.zip", checksum=f"sha256:{hashlib.sha256(data).hexdigest()}")
    messages: list[str] = []
    download_archive(spec, tmp_path / "d", lock=tmp_path / "lock.yaml", retries=2, report=messages.append)
    assert (tmp_path / "d" / "toy" / "pack.zip").read_bytes() == data
    assert server.sent("/toy/pack.zip") == len(data)
    assert any("trying again" in m for m in messages) and any("resuming at byte" in m for m in messages)


def test_a_job_killed_while_hashing_resumes_with_nothing_left_to_fetch(
    server: ArchiveServer, tmp_path: Path
) -> None:
    data = noise(3 * CHUNK, seed=4)
    server.files["/toy/pack.zip"] = data
    part = tmp_path / "d" / "toy" / STAGING / "pack.zip" / f"pack.zip{PART_SUFFIX}"
    part.parent.mkdir(parents=True)
    part.write_bytes(data)  # every byte arrived, then the job died before the checksum was checked
    (part.parent / "tmpleftover").write_bytes(data)  # pooch's temporary copy of that killed job
    spec = archive(f"{server.url}/toy/pack.zip", checksum=f"md5:{md5(data)}")
    download_archive(spec, tmp_path / "d", lock=tmp_path / "lock.yaml", report=lambda m: None)
    assert (tmp_path / "d" / "toy" / "pack.zip").read_bytes() == data
    assert [(e["range"], e["code"], e["sent"]) for e in server.log] == [(f"bytes={len(data)}-", 416, 0)]
    assert not (tmp_path / "d" / "toy" / STAGING).exists()


def test_a_server_without_range_support_restarts_the_download(server: ArchiveServer, tmp_path: Path) -> None:
    data = noise(4 * CHUNK, seed=5)
    server.files["/toy/pack.zip"] = data
    server.drop_after["/toy/pack.zip"] = CHUNK
    server.ignore_range.add("/toy/pack.zip")
    spec = archive(f"{server.url}/toy/pack.zip", checksum=f"md5:{md5(data)}")
    messages: list[str] = []
    download_archive(spec, tmp_path / "d", lock=tmp_path / "lock.yaml", retries=1, report=messages.append)
    assert (tmp_path / "d" / "toy" / "pack.zip").read_bytes() == data  # not the first chunk twice
    assert any("ignored the Range request" in m for m in messages)


def test_the_lock_file_records_the_first_download_and_refuses_a_changed_file(
    server: ArchiveServer, tmp_path: Path
) -> None:
    first = make_tgz({"pack/data.txt": b"version one"})
    server.files["/toy/pack.tgz"] = first
    spec = archive(f"{server.url}/toy/pack.tgz", file="pack.tgz")  # nothing published
    lock = tmp_path / "config" / "datasets.lock.yaml"
    receipt = download_archive(spec, tmp_path / "a", lock=lock, report=lambda m: None)
    recorded = read_lock(lock)["toy"]["pack.tgz"]
    assert recorded["sha256"] == hashlib.sha256(first).hexdigest() and recorded["size"] == len(first)
    assert receipt["checksum"] == f"sha256:{recorded['sha256']}"
    assert lock.read_text().startswith("# sha256 of every archive")
    # Another machine downloads the same bytes: checked against the lock, which stays as it was.
    download_archive(spec, tmp_path / "b", lock=lock, report=lambda m: None)
    assert read_lock(lock)["toy"]["pack.tgz"] == recorded
    # The publisher swaps the file: refused, naming the lock file and both checksums, nothing kept.
    changed = make_tgz({"pack/data.txt": b"version two"})
    server.files["/toy/pack.tgz"] = changed
    with pytest.raises(ChecksumError) as error:
        download_archive(spec, tmp_path / "c", lock=lock, report=lambda m: None)
    message = str(error.value)
    assert str(lock) in message and recorded["sha256"] in message
    assert hashlib.sha256(changed).hexdigest() in message
    assert not (tmp_path / "c" / "toy" / "pack.tgz").exists()


def test_http_errors_name_the_status_and_write_nothing(server: ArchiveServer, tmp_path: Path) -> None:
    spec = archive(f"{server.url}/toy/missing.zip", file="missing.zip", checksum="md5:" + "0" * 32)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_archive(spec, tmp_path / "d", lock=tmp_path / "lock.yaml", report=lambda m: None)
    server.files["/toy/broken.zip"] = b"x"
    server.status["/toy/broken.zip"] = 500
    spec = archive(f"{server.url}/toy/broken.zip", file="broken.zip")
    messages: list[str] = []
    with pytest.raises(DownloadError, match="HTTP 500"):  # retried (a 5xx may pass), then given up
        download_archive(spec, tmp_path / "d", lock=tmp_path / "lock.yaml", retries=1, report=messages.append)
    assert len(server.requests_for("/toy/broken.zip")) == 2, (messages, server.log)
    assert not (tmp_path / "d" / "toy" / "missing.zip").exists()
    assert not (tmp_path / "d" / "toy" / "broken.zip").exists() and not (tmp_path / "lock.yaml").exists()


def test_mirror_and_base_url_replace_the_host_and_userinfo_never_reaches_the_receipt(
    server: ArchiveServer, tmp_path: Path
) -> None:
    spec = archive("https://publisher.example/data/v1/pack.zip")
    assert resolve_url(spec, mirror="https://m.example/geosem/") == "https://m.example/geosem/toy/pack.zip"
    assert (
        resolve_url(spec, "https://m.example", {"toy": "http://h:8080"}) == "http://h:8080/data/v1/pack.zip"
    )
    assert redact_url("https://user:pw@m.example/x") == "https://***@m.example/x"
    data = make_zip({"pack/a": b"a"})
    server.files["/toy/pack.zip"] = data
    mirror = server.url.replace("http://", f"http://someone:{PASSWORD}@")
    messages: list[str] = []
    receipt = download_archive(
        spec, tmp_path / "d", lock=tmp_path / "lock.yaml", mirror=mirror, report=messages.append
    )
    assert (tmp_path / "d" / "toy" / "pack.zip").read_bytes() == data
    written = json.dumps(receipt) + (tmp_path / "lock.yaml").read_text() + "\n".join(messages)
    assert PASSWORD not in written and "***@127.0.0.1" in written


# --- extraction ----------------------------------------------------------------------------------------


def _downloaded(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "downloads" / "toy" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_extraction_moves_only_the_provided_paths_and_writes_a_marker(tmp_path: Path) -> None:
    zipped = _downloaded(tmp_path, "semantics.zip", make_zip({"training/a.png": b"a", "README": b"r"}))
    root = tmp_path / "raw" / "toy"
    done = extract_archive(zipped, root, ["semantics/"], into="semantics", report=lambda m: None)
    assert (root / "semantics" / "training" / "a.png").read_bytes() == b"a"
    assert not (root / "README").exists() and not (root / "semantics" / "README").is_dir()
    assert json.loads(marker_path(root, "semantics.zip").read_text()) == done
    tgz = _downloaded(tmp_path, "calib.tgz", make_tgz({"2011/calib.txt": b"P", "2011/drive/x": b"x"}))
    extract_archive(tgz, root, ["2011/calib.txt", "2011/drive/"], report=lambda m: None)
    assert (root / "2011" / "calib.txt").read_bytes() == b"P" and (root / "2011" / "drive" / "x").is_file()
    mat = _downloaded(tmp_path, "labels.mat", b"MATLAB 7.3")
    extract_archive(mat, root, ["labels.mat"], report=lambda m: None)
    assert (root / "labels.mat").read_bytes() == b"MATLAB 7.3"
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [".extracted"]


def test_a_failed_extraction_leaves_no_extracted_folder(tmp_path: Path) -> None:
    good = make_zip({"pack/a.bin": noise(50_000), "pack/b.bin": noise(50_000, seed=3)})
    root = tmp_path / "raw" / "toy"
    truncated = _downloaded(tmp_path, "pack.zip", good[: len(good) // 2])
    with pytest.raises(ExtractionError, match="nothing was extracted"):
        extract_archive(truncated, root, ["pack/"], report=lambda m: None)
    assert not (root / "pack").exists() and not marker_path(root, "pack.zip").exists()
    assert [p.name for p in root.iterdir()] == []  # no staging folder either
    # A damaged member (bad CRC): refused naming the member.
    corrupt = _downloaded(tmp_path, "corrupt.zip", make_zip_stored({"pack/img.png": b"A" * 1000}, flip=True))
    with pytest.raises(ExtractionError, match=r"img\.png"):
        extract_archive(corrupt, root, ["pack/"], report=lambda m: None)
    assert not (root / "pack").exists()
    # An archive that does not hold what the registry says: nothing moved, and what it holds is named.
    other = _downloaded(tmp_path, "other.zip", make_zip({"elsewhere/a": b"a"}))
    with pytest.raises(ExtractionError, match="elsewhere"):
        extract_archive(other, root, ["pack/"], report=lambda m: None)
    # A member that climbs out of the folder.
    evil = _downloaded(tmp_path, "evil.tgz", make_tgz({"../../outside.txt": b"x"}))
    with pytest.raises(ExtractionError, match="outside"):
        extract_archive(evil, root, ["pack/"], report=lambda m: None)
    assert not (tmp_path / "outside.txt").exists()
    assert [p.name for p in root.iterdir()] == []


def make_zip_stored(members: dict[str, bytes], flip: bool = False) -> bytes:
    """A zip whose members are stored uncompressed; ``flip`` damages the first member's data (its CRC no
    longer matches), as a bad disk or a bad copy does."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as handle:
        for name, data in members.items():
            handle.writestr(name, data)
    raw = bytearray(buffer.getvalue())
    if flip:
        first = next(iter(members.values()))
        raw[raw.index(first) + 10] ^= 0xFF
    return bytes(raw)


def test_a_killed_extraction_is_redone(tmp_path: Path) -> None:
    zipped = _downloaded(tmp_path, "pack.zip", make_zip({"pack/a": b"new"}))
    root = tmp_path / "raw" / "toy"
    staging = root / ".extracting-pack.zip" / "pack"
    staging.mkdir(parents=True)
    (staging / "half").write_bytes(b"half-written by a killed job")
    messages: list[str] = []
    extract_archive(zipped, root, ["pack/"], report=messages.append)
    assert (root / "pack" / "a").read_bytes() == b"new" and not (root / ".extracting-pack.zip").exists()
    assert any("interrupted extraction" in m for m in messages)


# --- Cityscapes' login -----------------------------------------------------------------------------------


def _cityscapes_registry(tmp_path: Path, server: ArchiveServer) -> Path:
    registry = {
        "datasets": {
            "cityscapes": {
                "credentials": "cityscapes",
                "archives": [
                    {
                        "package": "gtFine_trainvaltest.zip",
                        "package_id": 1,
                        "provides": ["gtFine/"],
                        "url": "https://www.cityscapes-dataset.com/file-handling/?packageID=1",
                    },
                ],
            }
        }
    }
    server.packages[1] = ("gtFine_trainvaltest.zip", make_zip({"gtFine/train/a.png": b"label"}))
    path = tmp_path / "datasets.yaml"
    path.write_text(yaml.safe_dump(registry))
    return path


def _geosem_download(tmp_path: Path, server: ArchiveServer, credentials: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "geosem.cli",
        "-v",
        "download",
        "--registry",
        str(tmp_path / "datasets.yaml"),
        "--dataset",
        "cityscapes",
        "--downloads",
        str(tmp_path / "downloads"),
        "--lock",
        str(tmp_path / "lock.yaml"),
        "--base-url",
        server.url,
    ]
    env = cli_env({CREDENTIALS_VARIABLE: str(credentials)})
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def _files_without_password(root: Path, credentials: Path) -> list[Path]:
    return [
        p for p in root.rglob("*") if p.is_file() and p != credentials and PASSWORD.encode() in p.read_bytes()
    ]


def test_cityscapes_missing_credentials_say_where_they_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CREDENTIALS_VARIABLE, raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))
    with pytest.raises(CredentialsError) as error:
        read_credentials()
    standard = tmp_path / "share" / "cityscapesscripts" / "credentials.json"
    assert str(standard) in str(error.value) and CREDENTIALS_VARIABLE in str(error.value)
    named = tmp_path / "elsewhere.json"
    monkeypatch.setenv(CREDENTIALS_VARIABLE, str(named))
    named.write_text(json.dumps({"username": "someone"}))
    with pytest.raises(CredentialsError, match="lacks a username or a password") as error:
        read_credentials()
    assert str(named) in str(error.value)
    named.write_text(f'{{"username": "someone", "password": "{PASSWORD}"')  # broken JSON
    with pytest.raises(CredentialsError) as error:
        read_credentials()
    assert PASSWORD not in str(error.value)


def test_cityscapes_login_refused_and_accepted_never_shows_the_password(
    server: ArchiveServer, tmp_path: Path
) -> None:
    _cityscapes_registry(tmp_path, server)
    server.users["someone@example.org"] = PASSWORD
    credentials = tmp_path / "credentials.json"
    credentials.write_text(json.dumps({"username": "someone@example.org", "password": PASSWORD + "-typo"}))
    refused = _geosem_download(tmp_path, server, credentials)
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "refused the login" in refused.stderr and str(credentials) in refused.stderr, refused.stderr
    assert credentials.is_file()  # unlike csDownload, a refused login keeps the user's file
    assert not (tmp_path / "downloads" / "cityscapes" / "gtFine_trainvaltest.zip").exists()
    missing = _geosem_download(tmp_path, server, tmp_path / "nowhere.json")
    assert missing.returncode == 1 and str(tmp_path / "nowhere.json") in missing.stderr, missing.stderr

    credentials.write_text(json.dumps({"username": "someone@example.org", "password": PASSWORD}))
    accepted = _geosem_download(tmp_path, server, credentials)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    dest = tmp_path / "downloads" / "cityscapes" / "gtFine_trainvaltest.zip"
    assert dest.read_bytes() == server.packages[1][1]
    receipt = json.loads((dest.parent / "gtFine_trainvaltest.zip.verified.json").read_text())
    assert receipt["checksum_source"] == "the Cityscapes site's md5 list"
    for result in (refused, missing, accepted):
        assert PASSWORD not in result.stdout + result.stderr
    assert _files_without_password(tmp_path, credentials) == []


# --- what the workflow plans -----------------------------------------------------------------------------


def _toy_registry(tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "registry.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "datasets": {
                    "toy": {
                        "base_url": "http://example.org/",
                        "archives": [
                            {"url": "labels.zip", "into": "labels", "provides": ["labels/"]},
                            {"url": "drive1.zip", "provides": ["d/drive1/"]},
                            {"url": "drive2.zip", "provides": ["d/drive2/"]},
                            {"url": "extra.zip", "provides": ["extra/"], "optional": True},
                        ],
                    }
                }
            }
        )
    )
    return load_registry(path)


def test_bring_your_own_tree_plans_nothing_and_a_partial_tree_only_what_is_missing(tmp_path: Path) -> None:
    registry = _toy_registry(tmp_path)
    raw = tmp_path / "raw"

    def reads(dataset: str) -> tuple[str, ...]:
        return ("labels/list.txt",)

    fresh = plan_downloads(registry, ["toy", "synth_like_unknown"], str(raw), reads)
    assert sorted(f for _, f in fresh.archives) == ["drive1.zip", "drive2.zip", "labels.zip"]
    assert [p.archive.file for p in fresh.anchors] == ["labels.zip"]
    assert fresh.anchors[0].covers == ("labels/list.txt",)
    # Part of the tree brought by hand: the drive that is there is not fetched again.
    (raw / "toy" / "d" / "drive1").mkdir(parents=True)
    partial = plan_downloads(registry, ["toy"], str(raw), reads)
    assert sorted(f for _, f in partial.archives) == ["drive2.zip", "labels.zip"]
    # Everything the converter reads is there: nothing is downloaded at all.
    (raw / "toy" / "labels").mkdir(parents=True)
    (raw / "toy" / "labels" / "list.txt").write_text("0\n")
    assert plan_downloads(registry, ["toy"], str(raw), reads).archives == {}
    # A tree elsewhere (downloads.paths): raw/<dataset> becomes a link to it, and it counts the same.
    mine = tmp_path / "my_copy"
    (mine / "labels").mkdir(parents=True)
    (mine / "labels" / "list.txt").write_text("0\n")
    other_raw = tmp_path / "raw2"
    link_dataset_path(str(other_raw), "toy", str(mine))
    assert (other_raw / "toy").resolve() == mine.resolve()
    assert plan_downloads(registry, ["toy"], str(other_raw), reads).archives == {}
    link_dataset_path(str(other_raw), "toy", str(mine))  # again: nothing to do
    with pytest.raises(ValueError, match="not a link"):
        link_dataset_path(str(raw), "toy", str(mine))


def test_the_repository_registry_covers_every_converter_input() -> None:
    """Every converter with a registry entry gets each input it declares from a non-optional archive,
    and every checksum is in the registry's format (load_registry checks it)."""
    from geosem.sources import converter_spec

    registry = load_registry(REPO / "config" / "datasets.yaml")
    assert set(registry) == {
        "kitti",
        "cityscapes",
        "nyuv2",
        "ade20k",
        "sunrgbd",
        "coco_stuff",
        "pascal_voc",
        "pascal_context",
        "diode",
    }
    plan = plan_downloads(registry, list(registry), "/nonexistent-raw", lambda d: converter_spec(d).reads)
    for name in registry:
        covered = {read for p in plan.of(name) for read in p.covers}
        assert covered == set(converter_spec(name).reads), name
    kitti = registry["kitti"].selected()
    assert sum(a.file.endswith("_sync.zip") for a in kitti) == 61
    assert sum(a.file.endswith("_calib.zip") for a in kitti) == 5
