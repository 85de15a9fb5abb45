"""Converter ``cityscapes``: Cityscapes fine annotations, stereo, disparity depth and video neighbours
(docs/datasets.md section 2, the converter in 2.6).

Reads, under one root, ``<type>/{train,val}/<city>/<city>_<seq>_<frame>_<type>.<ext>``:

* ``leftImg8bit`` (``image``) and ``gtFine`` ``*_gtFine_labelIds.png`` (label ids 0..33 -> the 19
  ``cityscapes19`` train ids, every other id 255): both required.
* ``rightImg8bit`` (``right``), when that folder is present.
* ``disparity`` (uint16, d = (p - 1) / 256 for p > 0) -> ``depth`` = baseline * fx / d, 0 where p = 0
  (invalid) and where p = 1 (zero disparity: no finite depth), with ``camera`` ``*_camera.json``
  (``intrinsic.{fx,fy,u0,v0}``, ``extrinsic.baseline``), when that folder is present. The camera also
  gives the index's intrinsics (scaled to the variant's size) and baseline; without it they stay empty.
* ``leftImg8bit_sequence``, when present: each labelled frame's ``prev_id``/``next_id`` are frames
  -1/+1 of its snippet. A shard set keeps one set of fields for every sample, so these neighbours are
  stored with the labelled frames' fields, in their own split ``<split>_context`` that no task draws
  samples from (as kitti's ``heldout_context``): their ``right`` from ``rightImg8bit_sequence`` (required
  when ``right`` is stored), their ``depth`` from ``disparity_sequence`` if present, else 0 (no depth),
  their ``label`` 255 everywhere (never labelled). Neighbours of their own they have none.

``train`` becomes split ``train``, ``val`` split ``test``; ``test`` (no public labels) is left out.
``bottom_crop`` cuts that fraction of the height from the bottom of every field before resizing (the
ego car's bonnet: monodepth2-style recipes cut 0.25; round(bottom_crop x H) rows go). Cutting rows at
the bottom keeps the pixel origin, so fx, fy, cx, cy stay and are then scaled from the cropped size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from geosem.geometry.camera import scale_intrinsics
from geosem.labelspaces import IGNORE_INDEX, cityscapes_id_to_train_id
from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import (
    check_label_values,
    read_image,
    read_rgb,
    resize_image,
    resize_nearest,
    source_version,
)

CONVERTER_VERSION = "1"
LABEL_SPACE = "cityscapes19"
SPLITS = (("train", "train"), ("val", "test"))  # (Cityscapes folder, shard split)
CONTEXT_SUFFIX = "_context"
_ID_TO_TRAIN = cityscapes_id_to_train_id()
_CAMERA_KEYS = (("intrinsic", "fx"), ("intrinsic", "fy"), ("intrinsic", "u0"), ("intrinsic", "v0"))


@dataclass(frozen=True)
class _Frame:
    """One frame of a snippet: where its files are and its sample id (the file stem)."""

    folder: str  # train / val
    city: str
    sequence: str  # six digits
    frame: int

    @property
    def id(self) -> str:
        return f"{self.city}_{self.sequence}_{self.frame:06d}"

    def path(self, root: Path, kind: str, suffix: str) -> Path:
        return root / kind / self.folder / self.city / f"{self.id}_{suffix}"

    def shifted(self, step: int) -> _Frame:
        return _Frame(self.folder, self.city, self.sequence, self.frame + step)


@dataclass(frozen=True)
class Camera:
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx (u0), cy (v0) at the stored PNGs' size
    baseline: float  # metres


def parse_frame(path: Path, folder: str) -> _Frame:
    """The frame a ``<city>_<seq>_<frame>_leftImg8bit.png`` names (city names may hold hyphens)."""
    stem = path.name.removesuffix("_leftImg8bit.png")
    parts = stem.rsplit("_", 2)
    if len(parts) != 3 or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"{path}: expected <city>_<sequence>_<frame>_leftImg8bit.png")
    return _Frame(folder, parts[0], parts[1], int(parts[2]))


def read_camera(path: Path) -> Camera:
    """fx, fy, u0, v0 and the baseline of one ``*_camera.json``; a missing or bad one names the file."""
    _need(path, "camera/ is present, so every labelled frame needs its camera file (intrinsics, baseline)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"camera file {path} is not valid JSON: {error}") from error
    values = []
    for section, key in (*_CAMERA_KEYS, ("extrinsic", "baseline")):
        value = (data.get(section) or {}).get(key) if isinstance(data, dict) else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise KeyError(f"camera file {path} has no number {section}.{key}")
        if key in ("fx", "fy", "baseline") and value <= 0:
            raise ValueError(f"camera file {path}: {section}.{key} = {value} must be > 0")
        values.append(float(value))
    return Camera((values[0], values[1], values[2], values[3]), values[4])


def disparity_to_depth(path: Path, camera: Camera) -> np.ndarray:
    """Depth in metres (float32) of a Cityscapes disparity PNG; 0 where it has no disparity."""
    raw = read_image(path)
    if raw.ndim != 2 or raw.dtype != np.uint16:
        raise ValueError(f"{path} is {raw.dtype} {raw.shape}: disparity PNGs are one uint16 channel")
    disparity = (raw.astype(np.float64) - 1.0) / 256.0  # the offset of 1 first (datasets.md trap 5)
    depth = np.zeros(raw.shape, np.float32)
    valid = disparity > 0  # p = 0 is invalid; p = 1 means d = 0, which has no finite depth
    depth[valid] = (camera.baseline * camera.intrinsics[0] / disparity[valid]).astype(np.float32)
    return depth


def _need(path: Path, why: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {why}")
    return path


class _Reader:
    """Which optional folders the tree has, and the fields of one frame at the stored size."""

    def __init__(self, root: Path, height: int, width: int, bottom_crop: float) -> None:
        self.root, self.height, self.width, self.bottom_crop = root, height, width, bottom_crop
        present = {kind: (root / kind).is_dir() for kind in _OPTIONAL}
        self.right, self.depth = present["rightImg8bit"], present["disparity"]
        self.camera_dir, self.sequence = present["camera"], present["leftImg8bit_sequence"]
        self.depth_sequence = present["disparity_sequence"]
        if self.depth and not self.camera_dir:
            raise FileNotFoundError(
                f"{root / 'camera'} is missing: depth from disparity/ needs fx and baseline"
            )
        if self.sequence and self.right and not present["rightImg8bit_sequence"]:
            raise FileNotFoundError(
                f"{root / 'rightImg8bit_sequence'} is missing: the frames store `right` (rightImg8bit/), so "
                "their sequence neighbours need theirs; add it, or move rightImg8bit/ (or "
                "leftImg8bit_sequence/) out of the tree"
            )
        self._cameras: dict[str, Camera] = {}

    def camera(self, keyframe: _Frame) -> Camera | None:
        """The labelled frame's camera; its snippet's neighbours were taken by the same rig."""
        if not self.camera_dir:
            return None
        if keyframe.id not in self._cameras:
            self._cameras[keyframe.id] = read_camera(keyframe.path(self.root, "camera", "camera.json"))
        return self._cameras[keyframe.id]

    def sample(self, frame: _Frame, keyframe: _Frame, context: bool) -> tuple[dict[str, np.ndarray], dict]:
        """Arrays and index columns of ``frame``; ``context``: a sequence neighbour (no label)."""
        root, seq = self.root, "_sequence" if context else ""
        image_path = frame.path(root, f"leftImg8bit{seq}", "leftImg8bit.png")
        why = f"the sequence neighbour of {keyframe.id}" if context else "a labelled frame's image"
        fields = {"image": read_rgb(_need(image_path, why))}
        size = fields["image"].shape[:2]
        paths = {"image": image_path}
        if self.right:
            paths["right"] = frame.path(root, f"rightImg8bit{seq}", "rightImg8bit.png")
            fields["right"] = read_rgb(_need(paths["right"], f"the right image of {image_path}"))
        camera = self.camera(keyframe)
        if self.depth:
            assert camera is not None  # __init__ refuses disparity without camera
            if context and not self.depth_sequence:
                fields["depth"] = np.zeros(size, np.float32)  # the schema's "no depth"
            else:
                paths["depth"] = frame.path(root, f"disparity{seq}", "disparity.png")
                _need(paths["depth"], f"the disparity of {image_path} (disparity{seq}/ is present)")
                fields["depth"] = disparity_to_depth(paths["depth"], camera)
        if context:
            fields["label"] = np.full(size, IGNORE_INDEX, np.uint8)  # never labelled: ignore everywhere
        else:
            paths["label"] = frame.path(root, "gtFine", "gtFine_labelIds.png")
            ids = read_image(_need(paths["label"], f"the label of {image_path}"))
            if ids.ndim != 2:
                raise ValueError(f"{paths['label']} has shape {ids.shape}: label ids are one channel")
            check_label_values(ids, 33, paths["label"], sample=frame.id)
            fields["label"] = _ID_TO_TRAIN[ids]
        for name, array in fields.items():
            if array.shape[:2] != size:
                raise ValueError(f"{paths[name]} is {array.shape[:2]} but {image_path} is {size}")
        keep = size[0] - round(self.bottom_crop * size[0])
        if keep < 1:
            raise ValueError(f"bottom_crop {self.bottom_crop} leaves no row of {image_path} ({size[0]} rows)")
        h, w = self.height, self.width
        arrays = {
            name: (resize_image if name in ("image", "right") else resize_nearest)(array[:keep], h, w)
            for name, array in fields.items()
        }
        meta: dict[str, Any] = {
            "id": frame.id,
            "sequence": f"{frame.city}_{frame.sequence}",
            "frame": frame.frame,
        }
        if camera is not None:
            fx, fy, cx, cy = scale_intrinsics(camera.intrinsics, (keep, size[1]), (h, w))
            meta.update(fx=fx, fy=fy, cx=cx, cy=cy, baseline=camera.baseline)
        return arrays, meta


# Folders read only when present; they are not in `reads`, which lists what must exist (Snakemake inputs).
_OPTIONAL = (
    "rightImg8bit",
    "disparity",
    "camera",
    "leftImg8bit_sequence",
    "rightImg8bit_sequence",
    "disparity_sequence",
)


@register_converter(
    "cityscapes", version=CONVERTER_VERSION, label_space=LABEL_SPACE, reads=("leftImg8bit", "gtFine")
)
def convert_cityscapes(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "cityscapes",
    samples_per_part: int = 256,
    progress: bool = True,
    bottom_crop: float = 0.0,
) -> Path:
    """Convert a Cityscapes tree into ``out_dir``; ``bottom_crop``: fraction of the height cut from the
    bottom of every field before resizing (0 = none), recorded in the manifest's parameters."""
    if not 0.0 <= bottom_crop < 1.0:
        raise ValueError(f"bottom_crop must lie in [0, 1), got {bottom_crop}")
    root = Path(raw_dir)
    for required in ("leftImg8bit", "gtFine"):
        if not (root / required).is_dir():
            raise FileNotFoundError(f"{root / required} is missing")
    reader = _Reader(root, height, width, bottom_crop)
    with ShardWriter(
        out_dir,
        dataset=dataset,
        variant=Path(out_dir).name,
        source_version=source_version(root, "cityscapes"),
        converter_version=CONVERTER_VERSION,
        label_space=LABEL_SPACE,
        parameters={"height": height, "width": width, "bottom_crop": bottom_crop},
        samples_per_part=samples_per_part,
    ) as writer:
        for folder, split in SPLITS:
            base = root / "leftImg8bit" / folder
            if not base.is_dir():
                raise FileNotFoundError(f"{base} is missing")
            keyframes = [parse_frame(p, folder) for p in sorted(base.glob("*/*_leftImg8bit.png"))]
            if not keyframes:
                raise FileNotFoundError(f"no images in {base}/<city>/")
            labelled = {frame.id for frame in keyframes}
            context: dict[str, tuple[_Frame, _Frame]] = {}  # neighbour id -> (neighbour, its keyframe)
            for key in tqdm(keyframes, desc=f"convert {dataset} {split}", disable=not progress):
                arrays, meta = reader.sample(key, key, context=False)
                meta["split"] = split
                if reader.sequence:
                    for column, step in (("prev_id", -1), ("next_id", 1)):
                        neighbour = key.shifted(step)
                        meta[column] = neighbour.id
                        if neighbour.id not in labelled:  # a labelled neighbour is linked, not copied
                            context.setdefault(neighbour.id, (neighbour, key))
                writer.add(arrays, meta)
            for neighbour_id in sorted(context):
                neighbour, key = context[neighbour_id]
                arrays, meta = reader.sample(neighbour, key, context=True)
                writer.add(arrays, {**meta, "split": split + CONTEXT_SUFFIX})
    return Path(out_dir)
