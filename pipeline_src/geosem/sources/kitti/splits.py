"""KITTI's standard split lists (monodepth2's, shipped in ``splits/``), the seeded partition of the 200
labelled images, and the labelled scenes that meet pre-training (the KITTI-2015 overlap)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SPLIT_DIR = Path(__file__).with_name("splits")
TRAIN_LISTS = ("eigen_zhou", "eigen_full")
TEST_LIST = "eigen_test"


@dataclass
class SplitLists:
    """The frames of one pre-training list (train + val) and of the Eigen test list, per drive."""

    train_list: str
    train: dict[str, set[int]] = field(default_factory=dict)
    val: dict[str, set[int]] = field(default_factory=dict)
    test: dict[str, set[int]] = field(default_factory=dict)
    dates: dict[str, str] = field(default_factory=dict)  # drive -> recording date (the list's folder)
    sha256: dict[str, str] = field(default_factory=dict)  # list file name -> sha256, for the manifest

    @property
    def pretraining_drives(self) -> set[str]:
        return set(self.train) | set(self.val)


def read_split_list(path: Path, dates: dict[str, str] | None = None) -> dict[str, set[int]]:
    """Frames per drive of a monodepth2 list (``<date>/<drive> <frame> <l|r>`` per line).

    Both camera sides of a frame become the frame once: a shard sample holds image_02 and image_03.
    """
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} is missing")
    frames: dict[str, set[int]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        folder = parts[0].split("/")
        if len(parts) != 3 or len(folder) != 2 or parts[2] not in ("l", "r") or not parts[1].isdigit():
            raise ValueError(f"{path}:{number}: expected '<date>/<drive>_sync <frame> <l|r>', got {line!r}")
        date, drive = folder
        if not drive.startswith(f"{date}_drive_"):
            raise ValueError(f"{path}:{number}: drive {drive!r} is not a drive of date {date!r}")
        frames.setdefault(drive, set()).add(int(parts[1]))
        if dates is not None:
            dates[drive] = date
    return frames


def load_split_lists(train_list: str, split_dir: Path | None = None) -> SplitLists:
    """``<train_list>_{train,val}_files.txt`` and ``eigen_test_files.txt`` from ``split_dir`` (default:
    the lists shipped with the converter).

    A frame in both the train and the val list (monodepth2's eigen_zhou lists differ by camera side only
    for 3,950 frames) is a train frame: a sample sits in one split.
    """
    folder = SPLIT_DIR if split_dir is None else Path(split_dir)
    if split_dir is None and train_list not in TRAIN_LISTS:
        raise ValueError(f"unknown train_list {train_list!r}; shipped: {TRAIN_LISTS} (or give split_dir)")
    lists = SplitLists(train_list=train_list)
    paths = {
        "train": folder / f"{train_list}_train_files.txt",
        "val": folder / f"{train_list}_val_files.txt",
        "test": folder / f"{TEST_LIST}_files.txt",
    }
    for role, path in paths.items():
        if role == "val" and not path.is_file():
            continue  # a custom pre-training list may come without a validation list
        setattr(lists, role, read_split_list(path, lists.dates))
        lists.sha256[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    for drive, frames in lists.val.items():
        frames -= lists.train.get(drive, set())
    lists.val = {drive: frames for drive, frames in lists.val.items() if frames}
    shared = sorted(set(lists.test) & lists.pretraining_drives)
    if shared:
        # Drive-disjointness is what keeps a test frame from being a training frame's neighbour.
        raise ValueError(
            f"{paths['test']} and the {train_list} lists share drives {shared[:5]}: the Eigen test drives "
            "must stay out of pre-training"
        )
    return lists


def labelled_partition(indices: list[int], pool_size: int, seed: int) -> tuple[list[int], list[int]]:
    """(pool, test) of the labelled image indices: a seeded permutation, its first ``pool_size`` the
    few-shot pool, the rest the test set, both sorted.

    It depends on (indices, pool_size, seed) only, never on the few-shot size N: every N draws its
    subset from the same pool (``few_shot_subset``) and is tested on the same images.
    """
    if not 0 < pool_size < len(indices):
        raise ValueError(
            f"labelled_pool_size {pool_size} must leave a few-shot pool and a test set of the "
            f"{len(indices)} labelled images (1..{len(indices) - 1})"
        )
    order = np.random.default_rng(seed).permutation(len(indices))
    chosen = set(order[:pool_size].tolist())
    pool = sorted(index for k, index in enumerate(sorted(indices)) if k in chosen)
    test = sorted(set(indices) - set(pool))
    return pool, test


def pretraining_overlap(sources: dict[str, list[str]], pretraining: set[str]) -> dict[str, list[str]]:
    """Drives that are both a labelled image's source (``sources``: drive -> labelled sample ids, from
    the devkit mapping) and a pre-training drive: drive -> the labelled samples of its scene."""
    return {drive: sorted(ids) for drive, ids in sorted(sources.items()) if drive in pretraining}
