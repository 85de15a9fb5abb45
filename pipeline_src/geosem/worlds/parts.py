"""What a surface of the synthetic worlds *is* (a part), and how each dataset layout names it.

Renderers label pixels with part ids; the writers of each dataset layout translate parts into that
dataset's own encoding (Cityscapes label ids for KITTI, NYU raw label ids for NYUv2, ADE20K and SUN RGB-D
values), so every label space is exercised by its real converter. A part that a dataset does not name
is written as that dataset's void/unlabelled value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geosem.labelspaces import ADE150_CLASSES, CITYSCAPES_LABEL_IDS, NYU40_CLASSES, SUN37_CLASSES


@dataclass(frozen=True)
class Part:
    name: str
    cityscapes: str | None  # Cityscapes label name (KITTI semantics)
    nyu_raw: str | None  # NYU raw object name (the labelled .mat's label vocabulary)
    ade: str | None  # ADE20K class name
    sun: str | None  # SUN RGB-D class name


PARTS: tuple[Part, ...] = (
    # Driving world
    Part("road", "road", None, "road", None),
    Part("sidewalk", "sidewalk", None, "sidewalk", None),
    Part("building", "building", None, "building", None),
    Part("garden wall", "wall", None, "wall", None),
    Part("fence", "fence", None, "fence", None),
    Part("pole", "pole", None, "pole", None),
    Part("street light", "pole", None, "streetlight", None),
    Part("traffic sign", "traffic sign", None, "signboard", None),
    Part("tree", "vegetation", None, "tree", None),
    Part("hedge", "vegetation", None, "plant", None),
    Part("grass", "terrain", None, "grass", None),
    Part("sky", "sky", None, "sky", None),
    Part("person", "person", "person", "person", "person"),
    Part("car", "car", None, "car", None),
    # Indoor world
    Part("room wall", None, "wall", "wall", "wall"),
    Part("floor", None, "floor", "floor", "floor"),
    Part("ceiling", None, "ceiling", "ceiling", "ceiling"),
    Part("window", None, "window", "windowpane", "window"),
    Part("door", None, "door", "door", "door"),
    Part("picture", None, "picture", "painting", "picture"),
    Part("table", None, "table", "table", "table"),
    Part("coffee table", None, "coffee table", "coffee table", "table"),
    Part("desk", None, "desk", "desk", "desk"),
    Part("chair", None, "chair", "chair", "chair"),
    Part("sofa", None, "sofa", "sofa", "sofa"),
    Part("bed", None, "bed", "bed", "bed"),
    Part("pillow", None, "pillow", "pillow", "pillow"),
    Part("night stand", None, "night stand", "chest of drawers", "night_stand"),
    Part("bookshelf", None, "bookshelf", "bookcase", "bookshelf"),
    Part("shelves", None, "shelves", "shelf", "shelves"),
    Part("book", None, "book", "book", "books"),
    Part("cabinet", None, "cabinet", "cabinet", "cabinet"),
    Part("lamp", None, "lamp", "lamp", "lamp"),
    Part("box", None, "box", "box", "box"),
    Part("television", None, "television", "television receiver", "tv"),
    Part("floor mat", None, "floor mat", "rug", "floor_mat"),
    Part("curtain", None, "curtain", "curtain", "curtain"),
)
PART_ID: dict[str, int] = {part.name: index for index, part in enumerate(PARTS)}

# NYU raw object names (the labelled .mat's `names`, label value = 1-based position) and their NYU-40
# class (classMapping40.mat's mapClass). Sorted by name, as NYU's list is not in class order, so a
# converter that skips the mapping writes visibly wrong classes. Names no part uses are kept to make the
# vocabulary larger than the parts, like NYU's 894 names.
NYU_RAW_TO_40: dict[str, str] = dict(
    sorted(
        {
            "wall": "wall",
            "floor": "floor",
            "ceiling": "ceiling",
            "window": "window",
            "door": "door",
            "picture": "picture",
            "table": "table",
            "coffee table": "table",
            "desk": "desk",
            "chair": "chair",
            "sofa": "sofa",
            "bed": "bed",
            "pillow": "pillow",
            "night stand": "night stand",
            "bookshelf": "bookshelf",
            "shelves": "shelves",
            "book": "books",
            "cabinet": "cabinet",
            "lamp": "lamp",
            "box": "box",
            "television": "television",
            "floor mat": "floor mat",
            "curtain": "curtain",
            "person": "person",
            "mirror": "mirror",
            "towel": "towel",
            "bag": "bag",
            "plant": "otherprop",
            "radiator": "otherstructure",
            "stool": "otherfurniture",
        }.items()
    )
)
NYU_RAW_NAMES: tuple[str, ...] = tuple(NYU_RAW_TO_40)


def nyu_map_class() -> np.ndarray:
    """classMapping40's ``mapClass``: (len(NYU_RAW_NAMES),) uint8, raw id k (1-based) -> NYU-40 class."""
    return np.array([NYU40_CLASSES.index(NYU_RAW_TO_40[n]) + 1 for n in NYU_RAW_NAMES], dtype=np.uint8)


def part_table(dataset: str) -> np.ndarray:
    """Lookup (len(PARTS),) from part id to the dataset's stored label value.

    ``cityscapes``: Cityscapes label id (0 = unlabeled); ``nyu_raw``: 1-based NYU raw id (0 = unlabelled);
    ``ade``: ADE20K value (0 = other); ``sun``: SUN RGB-D value (0 = void).
    """
    out = np.zeros(len(PARTS), dtype=np.uint16)
    for index, part in enumerate(PARTS):
        name = getattr(part, dataset)
        if name is None:
            continue
        if dataset == "cityscapes":
            out[index] = CITYSCAPES_LABEL_IDS[name][0]
        elif dataset == "nyu_raw":
            out[index] = NYU_RAW_NAMES.index(name) + 1
        elif dataset == "ade":
            out[index] = ADE150_CLASSES.index(name) + 1
        elif dataset == "sun":
            out[index] = SUN37_CLASSES.index(name) + 1
        else:
            raise KeyError(f"unknown part encoding {dataset!r}")
    return out
