"""Named label spaces: class names in train-id order, the ignore value shared by all of them, and the
dataset encodings that converters map into train ids.

Label spaces (train id = position in the tuple, 255 = ignore):

* ``cityscapes19``: the 19 Cityscapes evaluation classes (KITTI semantics uses the same).
* ``nyu40``: the 40 NYUv2 classes of Gupta et al. (NYU class k in 1..40 is train id k - 1; 0 = void).
* ``ade150``: the 150 ADE20K SceneParsing classes (PNG value k in 1..150 is train id k - 1; 0 = other).
* ``sun37``: the 37 SUN RGB-D classes, equal to NYU-40 classes 1..37 (value k is train id k - 1).
* ``coco171``: the 80 thing + 91 stuff classes of COCO-Stuff 164k. Its PNG value is COCO category id - 1
  (0..181) with 11 thing ids never used; :func:`coco_stuff_to_train_id` closes the gaps (255 = unlabelled).
* ``voc21``: Pascal VOC's background + 20 object classes (palette index k is train id k, 255 = border).
* ``context59``: the 59 most frequent Pascal Context classes in alphabetical order; background and the
  other 400 of the 459 classes are ignored (:func:`context459_to_train_id`, mmsegmentation's convention).

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


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split("|"))


COCO171_CLASSES: tuple[str, ...] = _names(
    # The 80 things in COCO category-id order (ids 1..90 less the unused ones), then the 91 stuff classes
    # (ids 92..182, alphabetical).
    """person|bicycle|car|motorcycle|airplane|bus|train|truck|boat|traffic light|fire hydrant|stop sign|
    parking meter|bench|bird|cat|dog|horse|sheep|cow|elephant|bear|zebra|giraffe|backpack|umbrella|handbag|
    tie|suitcase|frisbee|skis|snowboard|sports ball|kite|baseball bat|baseball glove|skateboard|surfboard|
    tennis racket|bottle|wine glass|cup|fork|knife|spoon|bowl|banana|apple|sandwich|orange|broccoli|carrot|
    hot dog|pizza|donut|cake|chair|couch|potted plant|bed|dining table|toilet|tv|laptop|mouse|remote|
    keyboard|cell phone|microwave|oven|toaster|sink|refrigerator|book|clock|vase|scissors|teddy bear|
    hair drier|toothbrush|banner|blanket|branch|bridge|building-other|bush|cabinet|cage|cardboard|carpet|
    ceiling-other|ceiling-tile|cloth|clothes|clouds|counter|cupboard|curtain|desk-stuff|dirt|door-stuff|
    fence|floor-marble|floor-other|floor-stone|floor-tile|floor-wood|flower|fog|food-other|fruit|
    furniture-other|grass|gravel|ground-other|hill|house|leaves|light|mat|metal|mirror-stuff|moss|mountain|
    mud|napkin|net|paper|pavement|pillow|plant-other|plastic|platform|playingfield|railing|railroad|river|
    road|rock|roof|rug|salad|sand|sea|shelf|sky-other|skyscraper|snow|solid-other|stairs|stone|straw|
    structural-other|table|tent|textile-other|towel|tree|vegetable|wall-brick|wall-concrete|wall-other|
    wall-panel|wall-stone|wall-tile|wall-wood|water-other|waterdrops|window-blind|window-other|wood"""
)

# PNG values (COCO category id - 1) of the 11 thing categories COCO defined but never annotated: street
# sign, hat, shoe, eye glasses, plate, mirror, window, desk, door, blender, hair brush.
COCO_STUFF_UNUSED_VALUES: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
COCO_STUFF_MAX_VALUE = 181  # category 182 (wood) - 1

VOC21_CLASSES: tuple[str, ...] = _names(
    """background|aeroplane|bicycle|bird|boat|bottle|bus|car|cat|chair|cow|diningtable|dog|horse|
    motorbike|person|pottedplant|sheep|sofa|train|tvmonitor"""
)

CONTEXT59_CLASSES: tuple[str, ...] = _names(
    """aeroplane|bag|bed|bedclothes|bench|bicycle|bird|boat|book|bottle|building|bus|cabinet|car|cat|
    ceiling|chair|cloth|computer|cow|cup|curtain|dog|door|fence|floor|flower|food|grass|ground|horse|
    keyboard|light|motorbike|mountain|mouse|person|plate|platform|pottedplant|road|rock|sheep|shelves|
    sidewalk|sign|sky|snow|sofa|table|track|train|tree|truck|tvmonitor|wall|water|window|wood"""
)

# Ids of the 59 classes in the release's 459-class space (1-based lines of its labels.txt, which is
# alphabetical, so this order is also CONTEXT59_CLASSES' order); 0 in a LabelMap is unlabelled.
CONTEXT459_IDS_OF_59: tuple[int, ...] = (
    2, 9, 18, 19, 22, 23, 25, 31, 33, 34, 44, 45, 46, 59, 65, 68, 72, 80, 85, 98, 104, 105, 113, 115, 144,
    158, 159, 162, 187, 189, 207, 220, 232, 258, 259, 260, 284, 295, 296, 308, 324, 326, 347, 349, 354,
    355, 360, 366, 368, 397, 415, 416, 420, 424, 427, 440, 445, 454, 458,
)  # fmt: skip
CONTEXT459_MAX_ID = 459

LABEL_SPACES: dict[str, tuple[str, ...]] = {
    "cityscapes19": CITYSCAPES19_CLASSES,
    "nyu40": NYU40_CLASSES,
    "ade150": ADE150_CLASSES,
    "sun37": SUN37_CLASSES,
    "coco171": COCO171_CLASSES,
    "voc21": VOC21_CLASSES,
    "context59": CONTEXT59_CLASSES,
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


def coco_stuff_to_train_id() -> np.ndarray:
    """Lookup table (256,) uint8: COCO-Stuff PNG value -> coco171 train id. The used values 0..181 keep
    their order and close up over the 11 unused ones (as mmsegmentation's clsID_to_trID); the unused
    values, 182..254 and 255 (unlabelled) give 255."""
    table = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    used = [v for v in range(COCO_STUFF_MAX_VALUE + 1) if v not in COCO_STUFF_UNUSED_VALUES]
    table[used] = np.arange(len(used), dtype=np.uint8)
    return table


def context459_to_train_id() -> np.ndarray:
    """Lookup table (65536,) uint8: Pascal Context 459-class id -> context59 train id; unlabelled (0) and
    the 400 other classes give 255 (mmsegmentation's 60-class mapping followed by reduce_zero_label)."""
    table = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    table[list(CONTEXT459_IDS_OF_59)] = np.arange(len(CONTEXT459_IDS_OF_59), dtype=np.uint8)
    return table
