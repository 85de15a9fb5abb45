"""Named label spaces: class names in train-id order, and the ignore value shared by all of them."""

from __future__ import annotations

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

LABEL_SPACES: dict[str, tuple[str, ...]] = {
    "cityscapes19": CITYSCAPES19_CLASSES,
}


def class_names(label_space: str) -> tuple[str, ...]:
    """Class names of a named label space, in train-id order."""
    try:
        return LABEL_SPACES[label_space]
    except KeyError:
        raise KeyError(f"unknown label space {label_space!r}; known: {sorted(LABEL_SPACES)}") from None


def num_classes(label_space: str) -> int:
    return len(class_names(label_space))
