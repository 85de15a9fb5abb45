"""Which datasets GeoSem knows, derived from the registries: nothing here lists a dataset by hand.

A dataset name names shard sets (``shards/<dataset>/<variant>``) and run ids. Every converter module
(``geosem.sources``) brings the real dataset of its name (``kitti``, ``nyuv2``, ...: files under
``raw/<name>/``, placed there by hand or by a download); every embedded world (``geosem.worlds``) brings
a synthetic dataset (``synth_driving``, ...) written in a real dataset's layout and read by that
dataset's converter. ``geosem datasets`` prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    converter: str
    converter_version: str
    label_space: str
    world: str | None  # the embedded world that writes its raw files; None for a real dataset


def datasets() -> dict[str, DatasetSpec]:
    from geosem.sources import converter_spec, list_converters
    from geosem.worlds import WORLDS

    specs = {}
    for name in list_converters():
        converter = converter_spec(name)
        specs[name] = DatasetSpec(name, name, converter.version, converter.label_space, None)
    for dataset, world in WORLDS.items():
        converter = converter_spec(world.converter)
        specs[dataset] = DatasetSpec(
            dataset, converter.name, converter.version, converter.label_space, world.name
        )
    return specs


def dataset_spec(name: str) -> DatasetSpec:
    known = datasets()
    try:
        return known[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(known)}") from None


def raw_files(dataset: str, world_section: dict[str, Any], raw_root: str) -> list[str]:
    """What the conversion of ``dataset`` reads: every file its world jobs write, or for a real dataset
    the paths its converter declares it reads (which must already exist)."""
    from geosem.sources import converter_spec
    from geosem.worlds import get_world

    spec = dataset_spec(dataset)
    root = f"{raw_root}/{dataset}"
    if spec.world is None:
        return [f"{root}/{path}" for path in converter_spec(spec.converter).reads]
    return [f"{root}/{path}" for path in get_world(dataset).raw_files(world_section)]
