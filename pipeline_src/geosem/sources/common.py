"""Helpers every converter shares: strict image reading, resizing by field kind, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from geosem.labelspaces import IGNORE_INDEX

# The label resizes a shard variant may name: geosem.snapshot owns variant names and their parameters.
from geosem.snapshot import LABEL_INTERPOLATIONS
from geosem.worlds import WORLD_MARKER  # a synthetic world's provenance file, if the raw folder has one


def read_image(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """Read an image with OpenCV; a missing or undecodable file is an error that names it.

    OpenCV returns None (and libpng prints a line) for a truncated or damaged PNG; that must stop the
    conversion, never become a missing field or a black frame.
    """
    array = cv2.imread(str(path), flags)
    if array is None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"image {path} is missing")
        raise ValueError(
            f"cannot decode image {path} ({Path(path).stat().st_size} bytes): the file is corrupt "
            "(truncated or damaged) or not an image; restore it from the dataset's archive"
        )
    return array


def read_rgb(path: Path) -> np.ndarray:
    return cv2.cvtColor(read_image(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: Path, label_path: Path) -> None:
    """A label must cover its image pixel for pixel; otherwise the error names both files."""
    if image.shape[:2] != label.shape:
        raise ValueError(f"{image_path} is {image.shape[:2]} but its label {label_path} is {label.shape}")


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    shrink = width < image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Categorical and sparse fields: NEAREST only (labels must not invent ids; invalid depth must stay 0
    instead of being blended into its neighbours)."""
    if array.shape[:2] == (height, width):
        return array
    return cv2.resize(array, (width, height), interpolation=cv2.INTER_NEAREST)


def resize_label_ids(
    ids: np.ndarray, to_train_id: np.ndarray, height: int, width: int, interpolation: str = "nearest"
) -> np.ndarray:
    """Map dataset label ids to train ids with the lookup table ``to_train_id`` and resize to the stored
    size.

    ``nearest`` (default): map, then NEAREST resize; no id is ever invented. ``bicubic`` reproduces
    study A's published code for the legacy protocol (docs/protocols.md 1.7): PIL ``Image.resize`` of the
    8-bit label-id image with BICUBIC (current Pillow's default filter for mode "L", which the seed code
    relied on), *then* the mapping. Interpolated boundary values become other, wrong classes or ignore,
    exactly as there. Never use it for anything but that comparison.
    """
    if interpolation == "nearest":
        return resize_nearest(to_train_id[ids], height, width)
    if interpolation != "bicubic":
        raise ValueError(f"unknown label interpolation {interpolation!r}; known: {LABEL_INTERPOLATIONS}")
    from PIL import Image  # only the legacy path needs Pillow

    if ids.ndim != 2 or ids.min() < 0 or ids.max() > 255:
        raise ValueError(f"bicubic label resizing needs one channel of 8-bit ids, got shape {ids.shape}")
    image = Image.fromarray(ids.astype(np.uint8))  # 2-D uint8 -> mode "L", as the seed code's convert("L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return to_train_id[np.asarray(image, dtype=np.uint8)]


def resize_flow(flow: np.ndarray, height: int, width: int) -> np.ndarray:
    """Flow (H,W,2) in pixels: sampled NEAREST (no averaging across motion boundaries), vectors scaled."""
    if flow.shape[:2] == (height, width):
        return flow
    sy, sx = height / flow.shape[0], width / flow.shape[1]
    out = cv2.resize(flow, (width, height), interpolation=cv2.INTER_NEAREST)
    return out * np.array([sx, sy], dtype=np.float32)


def source_version(raw_dir: Path, fallback: str) -> str:
    """``generator:version+digest`` of a GeoSem synthetic world (from its marker file), else ``fallback``
    (a real download)."""
    marker = Path(raw_dir) / WORLD_MARKER
    if not marker.is_file():
        return fallback
    info = json.loads(marker.read_text())
    return f"{info['generator']}:{info['version']}+{info['digest']}"


def check_label_values(
    label: np.ndarray,
    limit: int,
    path: Path,
    allowed: tuple[int, ...] = (IGNORE_INDEX,),
    sample: str | None = None,
) -> None:
    """Raise naming ``path`` (and ``sample``) when ``label`` holds ids above ``limit`` other than
    ``allowed`` (default: 255, ignore in every label space).

    Converters call it on the dataset's own ids, before their lookup table would quietly turn an unknown
    id into ignore; ``ShardWriter`` checks the train ids that result, for every converter.
    """
    bad = (label > limit) & ~np.isin(label, allowed)
    if bad.any():
        who = f"sample {sample!r}: " if sample else ""
        valid = ", ".join([f"0..{limit}", *map(str, allowed)])
        raise ValueError(
            f"{who}{path} holds label id(s) {np.unique(label[bad]).tolist()[:10]} that this dataset's "
            f"encoding does not have (valid: {valid})"
        )


def read_index_png(path: Path) -> np.ndarray:
    """The index plane of a palette ("P") or greyscale ("L") PNG as uint8 (H, W).

    OpenCV expands a palette PNG to its colours, so a VOC label read with cv2 would hold RGB triples;
    Pillow keeps the indices. An RGB label (e.g. a re-saved, colour-converted copy) is refused, since
    mapping colours back to classes is exactly the trap this reader exists to avoid.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label {path} is missing")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"cannot decode label {path}: {error}; restore it from the dataset's archive"
        ) from None
    if mode not in ("P", "L"):
        raise ValueError(
            f"{path} is a mode {mode!r} image: labels must be palette (P) or greyscale (L) PNGs whose "
            "pixel values are the class ids, not colours"
        )
    return np.ascontiguousarray(array, dtype=np.uint8)


def read_id_list(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} is missing")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
