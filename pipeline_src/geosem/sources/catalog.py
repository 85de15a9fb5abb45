"""Which datasets GeoSem knows: converter, label space, and (for the embedded worlds) what renders them.

A dataset name names shard sets (``shards/<dataset>/<variant>``) and run ids; its converter reads a
real dataset layout. The synthetic datasets are written in those same layouts by the embedded worlds,
so their shards come through the real converters:

=============  ==========  ============  =====================================================
dataset        converter   label space   raw files (raw/<dataset>/)
=============  ==========  ============  =====================================================
synth_driving  kitti       cityscapes19  KITTI raw + annotated depth + semantics (driving world)
synth_indoor   nyuv2       nyu40         NYUv2 labelled .mat + splits (indoor world)
synth_ade      ade20k      ade150        ADEChallengeData2016 (street and room mix)
synth_sun      sunrgbd     sun37         SUN RGB-D mirror layout (cluttered rooms)
kitti          kitti       cityscapes19  a real KITTI tree, downloaded by hand (no rule yet)
nyuv2          nyuv2       nyu40         the real labelled .mat, splits.mat, classMapping40.mat
ade20k         ade20k      ade150        the real ADEChallengeData2016
sunrgbd        sunrgbd     sun37         the real mirror layout
=============  ==========  ============  =====================================================

The functions below translate the workflow config's ``world`` section into world configs and list the
files each world job writes, so the workflow can name them without logic of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetSpec:
    converter: str
    label_space: str
    world: str | None  # the embedded world that writes its raw files; None for real downloads


DATASETS: dict[str, DatasetSpec] = {
    "synth_driving": DatasetSpec("kitti", "cityscapes19", "driving"),
    "synth_indoor": DatasetSpec("nyuv2", "nyu40", "indoor"),
    "synth_ade": DatasetSpec("ade20k", "ade150", "ade"),
    "synth_sun": DatasetSpec("sunrgbd", "sun37", "sun"),
    "kitti": DatasetSpec("kitti", "cityscapes19", None),
    "nyuv2": DatasetSpec("nyuv2", "nyu40", None),
    "ade20k": DatasetSpec("ade20k", "ade150", None),
    "sunrgbd": DatasetSpec("sunrgbd", "sun37", None),
}
CALIB_FILES = ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt")
NYU_FILES = ("nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat", "geosem_world.json")


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASETS)}") from None


def world_config(world: dict[str, Any], kind: str) -> dict[str, Any]:
    """The keyword arguments of one world's config class from the workflow's ``world`` section."""
    return {"seed": world["seed"], **world[kind]}


def driving_drives(world: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(date, drive folder name, held out) of every drive of the driving world."""
    from geosem.sources.synthetic.driving import DrivingWorldConfig, drive_ids

    config = DrivingWorldConfig(**world_config(world, "driving"))
    return [(d.date, d.name, d.heldout) for d in drive_ids(config)]


def indoor_batches(world: dict[str, Any]) -> int:
    indoor = world["indoor"]
    return -(-indoor["rooms"] // indoor["rooms_per_batch"])


def raw_files(dataset: str, world: dict[str, Any], raw_root: str) -> list[str]:
    """What the world jobs of ``dataset`` write (the inputs of its conversion); for a real dataset, its
    raw folder, which must already exist."""
    spec = dataset_spec(dataset)
    root = f"{raw_root}/{dataset}"
    if spec.world is None:
        return [root]
    if spec.world == "driving":
        drives = driving_drives(world)
        dates = sorted({date for date, _, _ in drives})
        return [
            *(f"{root}/raw_data/{date}/{name}" for date, name, _ in drives),
            *(f"{root}/raw_data/{date}/{calib}" for date in dates for calib in CALIB_FILES),
            f"{root}/data_semantics",
            f"{root}/devkit/mapping/train_mapping.txt",
            f"{root}/geosem_world.json",
        ]
    if spec.world == "indoor":
        return [f"{root}/{name}" for name in NYU_FILES]
    if spec.world == "ade":
        return [f"{root}/ADEChallengeData2016", f"{root}/geosem_world.json"]
    return [
        f"{root}/SUNRGBD-test_images",
        f"{root}/SUNRGBD-train_images",
        f"{root}/sunrgbd_train_test_labels",
        f"{root}/geosem_world.json",
    ]


def converter_version(converter: str) -> str:
    """The ``CONVERTER_VERSION`` of a converter module (``kitti``, ``nyuv2``, ``ade20k``, ``sunrgbd``):
    part of every shard variant's name, so a new version converts into a new folder."""
    import importlib

    try:
        module = importlib.import_module(f"geosem.sources.{converter}")
    except ModuleNotFoundError:
        raise KeyError(f"unknown converter {converter!r}") from None
    return str(module.CONVERTER_VERSION)
