"""Named label spaces: class names in train-id order, the ignore value shared by all of them, and the
dataset encodings that converters map into train ids.

Label spaces (train id = position in the tuple, 255 = ignore):

* ``cityscapes19``: the 19 Cityscapes evaluation classes (KITTI semantics uses the same).
* ``nyu40``: the 40 NYUv2 classes of Gupta et al. (NYU class k in 1..40 is train id k - 1; 0 = void).
* ``ade150``: the 150 ADE20K SceneParsing classes (PNG value k in 1..150 is train id k - 1; 0 = other).
* ``sun37``: the 37 SUN RGB-D classes, equal to NYU-40 classes 1..37 (value k is train id k - 1).

KITTI semantics (and Cityscapes ``*_labelIds.png``) store Cityscapes *label ids* 0..33, not train ids;
:func:`cityscapes_id_to_train_id` is the lookup table from one to the other.
"""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255

CITYSCAPES19_CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "wall",
    "fence",
    "pole",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
)

# Cityscapes label ids (cityscapesScripts labels.py): name -> (label id, train id or None = ignored).
# "license plate" has id -1 and never appears in label images, so it is left out.
CITYSCAPES_LABEL_IDS: dict[str, tuple[int, int | None]] = {
    "unlabeled": (0, None),
    "ego vehicle": (1, None),
    "rectification border": (2, None),
    "out of roi": (3, None),
    "static": (4, None),
    "dynamic": (5, None),
    "ground": (6, None),
    "road": (7, 0),
    "sidewalk": (8, 1),
    "parking": (9, None),
    "rail track": (10, None),
    "building": (11, 2),
    "wall": (12, 3),
    "fence": (13, 4),
    "guard rail": (14, None),
    "bridge": (15, None),
    "tunnel": (16, None),
    "pole": (17, 5),
    "polegroup": (18, None),
    "traffic light": (19, 6),
    "traffic sign": (20, 7),
    "vegetation": (21, 8),
    "terrain": (22, 9),
    "sky": (23, 10),
    "person": (24, 11),
    "rider": (25, 12),
    "car": (26, 13),
    "truck": (27, 14),
    "bus": (28, 15),
    "caravan": (29, None),
    "trailer": (30, None),
    "train": (31, 16),
    "motorcycle": (32, 17),
    "bicycle": (33, 18),
}

# Cityscapes colours of the label ids GeoSem writes (semantic_rgb images of KITTI semantics).
CITYSCAPES_COLOURS: dict[int, tuple[int, int, int]] = {
    0: (0, 0, 0),
    7: (128, 64, 128),
    8: (244, 35, 232),
    11: (70, 70, 70),
    12: (102, 102, 156),
    13: (190, 153, 153),
    17: (153, 153, 153),
    19: (250, 170, 30),
    20: (220, 220, 0),
    21: (107, 142, 35),
    22: (152, 251, 152),
    23: (70, 130, 180),
    24: (220, 20, 60),
    25: (255, 0, 0),
    26: (0, 0, 142),
    27: (0, 0, 70),
    28: (0, 60, 100),
    31: (0, 80, 100),
    32: (0, 0, 230),
    33: (119, 11, 32),
}

NYU40_CLASSES: tuple[str, ...] = (
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor mat",
    "clothes",
    "ceiling",
    "books",
    "refridgerator",
    "television",
    "paper",
    "towel",
    "shower curtain",
    "box",
    "whiteboard",
    "person",
    "night stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
    "otherstructure",
    "otherfurniture",
    "otherprop",
)

SUN37_CLASSES: tuple[str, ...] = (
    "wall",
    "floor",
    "cabinet",
    "bed",
    "chair",
    "sofa",
    "table",
    "door",
    "window",
    "bookshelf",
    "picture",
    "counter",
    "blinds",
    "desk",
    "shelves",
    "curtain",
    "dresser",
    "pillow",
    "mirror",
    "floor_mat",
    "clothes",
    "ceiling",
    "books",
    "fridge",
    "tv",
    "paper",
    "towel",
    "shower_curtain",
    "box",
    "whiteboard",
    "person",
    "night_stand",
    "toilet",
    "sink",
    "lamp",
    "bathtub",
    "bag",
)

ADE150_CLASSES: tuple[str, ...] = tuple(
    """wall|building|sky|floor|tree|ceiling|road|bed|windowpane|grass|cabinet|sidewalk|person|earth|door|
    table|mountain|plant|curtain|chair|car|water|painting|sofa|shelf|house|sea|mirror|rug|field|armchair|
    seat|fence|desk|rock|wardrobe|lamp|bathtub|railing|cushion|base|box|column|signboard|chest of drawers|
    counter|sand|sink|skyscraper|fireplace|refrigerator|grandstand|path|stairs|runway|case|pool table|
    pillow|screen door|stairway|river|bridge|bookcase|blind|coffee table|toilet|flower|book|hill|bench|
    countertop|stove|palm|kitchen island|computer|swivel chair|boat|bar|arcade machine|hovel|bus|towel|
    light|truck|tower|chandelier|awning|streetlight|booth|television receiver|airplane|dirt track|apparel|
    pole|land|bannister|escalator|ottoman|bottle|buffet|poster|stage|van|ship|fountain|conveyer belt|
    canopy|washer|plaything|swimming pool|stool|barrel|basket|waterfall|tent|bag|minibike|cradle|oven|
    ball|food|step|tank|trade name|microwave|pot|animal|bicycle|lake|dishwasher|screen|blanket|sculpture|
    hood|sconce|vase|traffic light|tray|ashcan|fan|pier|crt screen|plate|monitor|bulletin board|shower|
    radiator|glass|clock|flag""".replace("\n", "")
    .replace("    ", "")
    .split("|")
)

LABEL_SPACES: dict[str, tuple[str, ...]] = {
    "cityscapes19": CITYSCAPES19_CLASSES,
    "nyu40": NYU40_CLASSES,
    "ade150": ADE150_CLASSES,
    "sun37": SUN37_CLASSES,
}


def class_names(label_space: str) -> tuple[str, ...]:
    """Class names of a named label space, in train-id order."""
    try:
        return LABEL_SPACES[label_space]
    except KeyError:
        raise KeyError(f"unknown label space {label_space!r}; known: {sorted(LABEL_SPACES)}") from None


def num_classes(label_space: str) -> int:
    return len(class_names(label_space))


def cityscapes_id_to_train_id() -> np.ndarray:
    """Lookup table (256,) uint8: Cityscapes label id -> cityscapes19 train id, everything else 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_LABEL_IDS.values():
        if train_id is not None:
            table[label_id] = train_id
    return table


def one_based_to_train_id(num: int) -> np.ndarray:
    """Lookup table (65536,) uint8 for encodings where 0 is void and k in 1..num is class k - 1
    (NYU-40 after mapping, ADE20K with reduce_zero_label, SUN RGB-D 37)."""
    table = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    table[1 : num + 1] = np.arange(num, dtype=np.uint8)
    return table
