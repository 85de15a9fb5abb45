"""Embedded synthetic worlds: procedurally generated data with exact ground truth, no download needed.

``driving`` renders a KITTI-like driving world and ``indoor`` NYU-like rooms on the shared ray caster
``raycast``; ``kitti_writer``, ``nyu_writer`` and ``aux_writer`` write them (and the ADE20K- and SUN
RGB-D-like auxiliary sets) in the real datasets' file layouts, so the real converters
(``geosem.sources.kitti`` and friends) read them. ``commands`` holds the world jobs' command line.

This module declares what each world's jobs write, so that the dataset catalog and the workflow's rules
derive their file lists from one place. It is imported while the workflow is parsed, so it stays light:
the world modules (numpy, cv2, h5py) load only when a function here needs them, and nothing here
imports torch.

=========  =============  =========  ==================================================================
world      dataset        converter  jobs (``geosem world-...``) and what they write under raw/<dataset>/
=========  =============  =========  ==================================================================
driving    synth_driving  kitti      ``driving-calib`` per date: raw_data/<date>/calib_*.txt
                                     (:data:`CALIB_FILES`); ``driving-drive`` per drive:
                                     raw_data/<date>/<drive>/ (:func:`drive_dir`); ``driving-semantics``:
                                     :data:`DRIVING_SEMANTICS_FILES`
indoor     synth_indoor   nyuv2      ``indoor-batch`` per batch of rooms: a temporary HDF5 file outside
                                     the dataset (:func:`indoor_batch_file`); ``indoor-files``:
                                     :data:`NYU_FILES`
ade        synth_ade      ade20k     ``ade``: :data:`ADE_FILES`
sun        synth_sun      sunrgbd    ``sun``: :data:`SUN_FILES`
=========  =============  =========  ==================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

WORLD_MARKER = "geosem_world.json"  # provenance marker, written by each world's last job

# Outputs of each job, relative to raw/<dataset>/ (folders are marked); the driving world's calibration
# files lie in each date's folder (:func:`calib_files`).
CALIB_FILES = ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt")
DRIVING_SEMANTICS_FILES = (
    "data_semantics",  # folder
    "devkit/mapping/train_mapping.txt",
    WORLD_MARKER,
)
NYU_FILES = ("nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat", WORLD_MARKER)
ADE_FILES = ("ADEChallengeData2016", WORLD_MARKER)  # the first is a folder
SUN_FILES = (
    "SUNRGBD-test_images",  # folder
    "SUNRGBD-train_images",  # folder
    "sunrgbd_train_test_labels",  # folder
    WORLD_MARKER,
)
# The indoor world's batches are temporary and lie beside the datasets, relative to the raw root: the
# workflow deletes them once the NYU files are written, and a conversion must not see them.
INDOOR_BATCHES_DIR = "synth_indoor_batches"
INDOOR_BATCH_FILE = "batch_{batch}.h5"  # str.format pattern, also a Snakemake wildcard pattern


def write_world_marker(
    root: Path, generator: str, version: str, digest: str, config: Any, layout: str
) -> None:
    """The provenance file a world's last job writes (converters copy it into every shard manifest):
    generator, version, config digest, the config itself (a dataclass) and the layout it was written in."""
    import json
    from dataclasses import asdict

    from geosem.atomic import atomic_write_text

    marker = {
        "generator": generator,
        "version": version,
        "digest": digest,
        "config": asdict(config),
        "layout": layout,
    }
    atomic_write_text(Path(root) / WORLD_MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")


def world_config(world_section: dict[str, Any], name: str) -> dict[str, Any]:
    """The keyword arguments of world ``name``'s config from the workflow config's ``world`` section
    (one seed for every world, plus one entry per world)."""
    return {"seed": world_section["seed"], **world_section[name]}


def driving_drives(world_section: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(date, drive folder name, held out) of every drive of the driving world."""
    from geosem.worlds.driving import DrivingWorldConfig, drive_ids

    config = DrivingWorldConfig(**world_config(world_section, "driving"))
    return [(d.date, d.name, d.heldout) for d in drive_ids(config)]


def indoor_batches(world_section: dict[str, Any]) -> int:
    """How many batches (one job each) the indoor world's rooms are rendered in."""
    indoor = world_section["indoor"]
    return -(-indoor["rooms"] // indoor["rooms_per_batch"])


def calib_files(date: str) -> list[str]:
    """What the calibration job of recording ``date`` writes, relative to raw/synth_driving/."""
    return [f"raw_data/{date}/{name}" for name in CALIB_FILES]


def drive_dir(date: str, drive: str) -> str:
    """The folder one drive job writes, relative to raw/synth_driving/."""
    return f"raw_data/{date}/{drive}"


def indoor_batch_file(batch: int) -> str:
    """The temporary file one indoor batch job writes, relative to the raw root (not the dataset)."""
    return f"{INDOOR_BATCHES_DIR}/{INDOOR_BATCH_FILE.format(batch=batch)}"


@dataclass(frozen=True)
class WorldSpec:
    """One embedded world: its name (its key in the workflow's ``world`` section), the dataset its raw
    files make up, the converter that reads them, and what its jobs write."""

    name: str
    dataset: str
    converter: str
    files: tuple[str, ...]  # what its jobs write besides per-drive / per-date files

    def raw_files(self, world_section: dict[str, Any]) -> list[str]:
        """Every path its jobs write (the inputs of its conversion), relative to raw/<dataset>/."""
        return list(self.files)

    def config(self, world_section: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of this world's config class (the ``--config`` of its jobs)."""
        return world_config(world_section, self.name)


@dataclass(frozen=True)
class _DrivingWorldSpec(WorldSpec):
    def raw_files(self, world_section: dict[str, Any]) -> list[str]:
        drives = driving_drives(world_section)
        dates = sorted({date for date, _, _ in drives})
        return [
            *(drive_dir(date, name) for date, name, _ in drives),
            *(path for date in dates for path in calib_files(date)),
            *self.files,
        ]


WORLDS: dict[str, WorldSpec] = {
    spec.dataset: spec
    for spec in (
        _DrivingWorldSpec("driving", "synth_driving", "kitti", DRIVING_SEMANTICS_FILES),
        WorldSpec("indoor", "synth_indoor", "nyuv2", NYU_FILES),
        WorldSpec("ade", "synth_ade", "ade20k", ADE_FILES),
        WorldSpec("sun", "synth_sun", "sunrgbd", SUN_FILES),
    )
}


def get_world(dataset: str) -> WorldSpec:
    """The world that writes ``dataset``'s raw files."""
    try:
        return WORLDS[dataset]
    except KeyError:
        raise KeyError(f"no embedded world writes dataset {dataset!r}; known: {sorted(WORLDS)}") from None


def __getattr__(name: str) -> Any:
    # Lazy, so importing the package does not load the world modules (and cv2) with it.
    if name == "DrivingWorldConfig":
        from geosem.worlds.driving import DrivingWorldConfig

        return DrivingWorldConfig
    if name == "write_driving_world":
        from geosem.worlds.kitti_writer import write_driving_world

        return write_driving_world
    raise AttributeError(name)
