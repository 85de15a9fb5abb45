"""The dataset registry, ``config/datasets.yaml``: per archive its URL, size, published checksum, what it
extracts to, and per dataset its licence and whether a login is needed (docs/downloads.md). Read and
checked here; where an archive is fetched from (publisher, mirror, replaced host) is decided here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import yaml

REGISTRY = Path("config/datasets.yaml")
CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha256")


# --- the registry ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Archive:
    dataset: str
    file: str  # the name under <downloads>/<dataset>/, unique within the dataset
    url: str
    provides: tuple[str, ...]  # paths under raw/<dataset>/ it extracts to; a trailing "/" is a folder
    into: str = ""  # folder under raw/<dataset>/ that the archive's own root lands in
    size: int | None = None  # bytes, where published exactly
    approx_size: str | None = None  # as published ("14 GB"), where no exact size is
    checksum: str | None = None  # "<md5|sha1|sha256>:<hex>" as published; None: the lock file's sha256
    optional: bool = False  # not fetched unless downloads.archives names it
    credentials: str | None = None  # "cityscapes": a login first (geosem.sources.cityscapes_login)
    package: str | None = None  # Cityscapes package name (csDownload's), looked up in the site's list
    package_id: int | None = None  # its id as published, used if the site's list lacks the name

    def provided_paths(self) -> list[str]:
        return [path.rstrip("/") for path in self.provides]


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    title: str
    licence: str
    homepage: str
    credentials: str | None
    archives: dict[str, Archive]

    def selected(self, names: list[str] | None = None) -> list[Archive]:
        """The archives to fetch: ``names`` (every one must exist), else every non-optional one."""
        if names is None:
            return [a for a in self.archives.values() if not a.optional]
        unknown = [n for n in names if n not in self.archives]
        if unknown:
            raise KeyError(
                f"dataset {self.name!r} has no archive(s) {unknown} in the registry; "
                f"known: {sorted(self.archives)}"
            )
        return [self.archives[n] for n in names]


_ARCHIVE_KEYS = {f for f in Archive.__dataclass_fields__ if f != "dataset"} | {"note", "checksum_source"}
_DATASET_KEYS = {"title", "licence", "homepage", "credentials", "base_url", "reference", "note", "archives"}


def _archive(dataset: str, values: dict[str, Any], base_url: str, credentials: str | None) -> Archive:
    where = f"dataset {dataset!r}, archive {values.get('file') or values.get('url')!r}"
    unknown = sorted(set(values) - _ARCHIVE_KEYS)
    if unknown:
        raise ValueError(f"registry: {where}: unknown key(s) {unknown}; known: {sorted(_ARCHIVE_KEYS)}")
    if not values.get("url") or not values.get("provides"):
        raise ValueError(f"registry: {where}: needs 'url' and 'provides'")
    url = urljoin(base_url, values["url"]) if base_url else values["url"]
    file = values.get("file") or values.get("package") or PurePosixPath(urlsplit(url).path).name
    checksum = values.get("checksum")
    if checksum is not None and (
        checksum.partition(":")[0] not in CHECKSUM_ALGORITHMS
        or not re.fullmatch(r"[0-9a-f]+", checksum.partition(":")[2])
    ):
        raise ValueError(f"registry: {where}: checksum {checksum!r} is not <md5|sha1|sha256>:<lowercase hex>")
    for path in values["provides"]:
        if path.startswith("/") or ".." in PurePosixPath(path).parts:
            raise ValueError(f"registry: {where}: provides {path!r} must stay inside raw/{dataset}/")
    return Archive(
        dataset=dataset,
        file=file,
        url=url,
        provides=tuple(values["provides"]),
        into=values.get("into", "") or "",
        size=values.get("size"),
        approx_size=values.get("approx_size"),
        checksum=checksum,
        optional=bool(values.get("optional", False)),
        credentials=values.get("credentials", credentials),
        package=values.get("package"),
        package_id=values.get("package_id"),
    )


def load_registry(path: Path = REGISTRY) -> dict[str, DatasetEntry]:
    """Read and check the registry; an unknown key or a malformed checksum is an error naming where."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    registry = {}
    for name, entry in (data.get("datasets") or {}).items():
        unknown = sorted(set(entry) - _DATASET_KEYS)
        if unknown:
            raise ValueError(f"registry {path}: dataset {name!r}: unknown key(s) {unknown}")
        credentials = entry.get("credentials")
        archives: dict[str, Archive] = {}
        for values in entry.get("archives") or []:
            archive = _archive(name, values, entry.get("base_url", ""), credentials)
            if archive.file in archives:
                raise ValueError(f"registry {path}: dataset {name!r} lists {archive.file!r} twice")
            archives[archive.file] = archive
        registry[name] = DatasetEntry(
            name,
            entry.get("title", name),
            entry.get("licence", ""),
            entry.get("homepage", ""),
            credentials,
            archives,
        )
    return registry


def registry_archive(registry: Mapping[str, DatasetEntry], dataset: str, file: str) -> Archive:
    if dataset not in registry:
        raise KeyError(f"no dataset {dataset!r} in the download registry; known: {sorted(registry)}")
    archives = registry[dataset].archives
    if file not in archives:
        raise KeyError(f"dataset {dataset!r} has no archive {file!r}; known: {sorted(archives)}")
    return archives[file]


# --- where an archive comes from ---------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` without a ``user:password@`` part: what may appear in logs, receipts and the lock file."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def replace_host(url: str, base: str) -> str:
    """``url`` with its scheme and host (``https://host``) replaced by ``base``, path and query kept."""
    parts = urlsplit(url)
    return base.rstrip("/") + urlunsplit(("", "", parts.path, parts.query, ""))


def site_of(url: str, base: str = "") -> str:
    """``scheme://host`` of ``url``, or ``base`` where one replaces it."""
    parts = urlsplit(url)
    return base.rstrip("/") if base else f"{parts.scheme}://{parts.netloc}"


def resolve_url(archive: Archive, mirror: str = "", base_urls: Mapping[str, str] | None = None) -> str:
    """The URL to fetch: a per-dataset base URL replaces the host of the registry's URL; else a mirror
    serves ``<mirror>/<dataset>/<file>`` (the layout of raw/downloads/); else the registry's URL."""
    base = (base_urls or {}).get(archive.dataset, "")
    if base:
        return replace_host(archive.url, base)
    if mirror:
        return f"{mirror.rstrip('/')}/{archive.dataset}/{archive.file}"
    return archive.url
