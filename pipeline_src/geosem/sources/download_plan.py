"""Which archives a workflow run downloads and extracts (workflow/rules/download.smk reads this plan).

A dataset is fetched only where it is missing: when every path its converter reads is already under
``raw/<dataset>/`` (a tree brought by hand, or one extracted before), nothing of it is planned; an
archive whose provided paths all exist is skipped too, so a partial tree of one's own is completed, not
replaced. The archives that provide a missing converter input are the *anchors*: their extraction jobs
produce exactly the paths the conversion job asks for, and wait for every other planned archive of the
dataset, so a conversion never starts on half a tree (KITTI's converter names the labelled set, not the
61 drives it also reads).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from geosem.sources.archive_registry import Archive, DatasetEntry
from geosem.sources.extract import is_extracted


@dataclass(frozen=True)
class PlannedArchive:
    archive: Archive
    covers: tuple[str, ...] = ()  # converter inputs (relative to raw/<dataset>) its extraction produces

    @property
    def is_anchor(self) -> bool:
        return bool(self.covers)


@dataclass
class DownloadPlan:
    archives: dict[tuple[str, str], PlannedArchive] = field(default_factory=dict)

    def of(self, dataset: str) -> list[PlannedArchive]:
        return [planned for (name, _), planned in self.archives.items() if name == dataset]

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(name for name, _ in self.archives))

    @property
    def anchors(self) -> list[PlannedArchive]:
        return [planned for planned in self.archives.values() if planned.is_anchor]

    @property
    def plain(self) -> list[PlannedArchive]:
        return [planned for planned in self.archives.values() if not planned.is_anchor]


def is_folder(read: str, archive: Archive) -> bool:
    """Whether a converter input is a folder: as the registry declares it where it is a provided path
    (trailing "/"), else by its name (a suffix such as .txt or .mat means a file)."""
    for path in archive.provides:
        if path.rstrip("/") == read:
            return path.endswith("/")
    return PurePosixPath(read).suffix == ""


def _covering(read: str, archives: Sequence[Archive]) -> Archive | None:
    for archive in archives:
        for path in archive.provided_paths():
            if read == path or read.startswith(path + "/"):
                return archive
    return None


def link_dataset_path(raw_root: str, dataset: str, path: str) -> None:
    """Make ``raw/<dataset>`` a symbolic link to a configured tree (``downloads.paths``): converters read
    ``raw/<dataset>/``, so the link is what points them (and the downloads) at the tree elsewhere."""
    link, target = Path(raw_root) / dataset, Path(path).expanduser().resolve()
    if link.is_symlink() and link.resolve() == target:
        return
    if link.is_symlink() or link.exists():
        raise ValueError(
            f"downloads.paths.{dataset} names {target}, but {link} already exists and is not a link to it: "
            f"remove or move {link}, or drop the setting to use {link} itself"
        )
    target.mkdir(parents=True, exist_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)


def plan_downloads(
    registry: Mapping[str, DatasetEntry],
    datasets: Sequence[str],
    raw_root: str,
    reads: Callable[[str], Sequence[str]],
    selections: Mapping[str, list[str]] | None = None,
) -> DownloadPlan:
    """The archives to fetch for ``datasets`` (real datasets of the plan plus ``downloads.datasets``).

    ``reads(dataset)`` gives the paths its converter declares it reads; ``selections`` the archive files
    chosen per dataset (default: the registry's non-optional ones). A dataset missing from the registry
    is left alone (its conversion reports the missing files, as before there were downloads).
    """
    plan = DownloadPlan()
    for dataset in dict.fromkeys(datasets):
        if dataset not in registry:
            continue
        root = Path(raw_root) / dataset
        selected = registry[dataset].selected((selections or {}).get(dataset))
        missing_reads = [read for read in reads(dataset) if not (root / read).exists()]
        if not missing_reads and not (selections or {}).get(dataset):
            continue  # the whole tree is there: bring-your-own, or extracted by an earlier run
        covers: dict[str, list[str]] = {}
        for read in missing_reads:
            archive = _covering(read, selected)
            if archive is None:
                raise ValueError(
                    f"{root / read} is missing and no selected archive of {dataset!r} in the registry "
                    f"provides it: add the archive to downloads.archives.{dataset} (or put it there yourself)"
                )
            if is_extracted(root, archive.provides):
                raise ValueError(
                    f"{root / read} is missing although {archive.file} is extracted (all of "
                    f"{list(archive.provides)} exist): the registry's 'provides' does not match the converter"
                )
            covers.setdefault(archive.file, []).append(read)
        for archive in selected:
            if archive.file in covers or not is_extracted(root, archive.provides):
                plan.archives[(dataset, archive.file)] = PlannedArchive(
                    archive, tuple(covers.get(archive.file, ()))
                )
    return plan
