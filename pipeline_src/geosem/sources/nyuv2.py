"""Converter ``nyuv2``: NYU Depth V2 labelled set (docs/datasets.md section 3).

Reads, under one root:

* ``nyu_depth_v2_labeled.mat``: MATLAB v7.3 (HDF5) read with h5py, which shows MATLAB's axes reversed:
  ``images`` (N,3,W,H) uint8 -> (H,W,3); ``depths`` (N,W,H) float32 metres -> (H,W); ``labels`` (N,W,H)
  raw object ids (1-based into ``names``, 0 = unlabelled); ``scenes`` (cell of strings) when present.
* ``splits.mat`` (MATLAB level 5): ``trainNdxs`` / ``testNdxs``, 1-based indices into the N images
  (795 / 654 on the real set).
* ``classMapping40.mat`` (MATLAB level 5, from the nyuv2-meta-data repository): ``mapClass`` maps raw
  object id k to NYU-40 class ``mapClass[k - 1]``; id 0 stays void.

Writes ``image``, ``depth`` (0 = invalid) and ``label`` (nyu40 train ids: class k -> k - 1, void -> 255)
at the variant's size, with NYU's colour intrinsics (fx 518.8579, fy 519.4696, cx 325.5824,
cy 253.7362 at 640 x 480) scaled to it. The labelled frames are single images: no neighbours, no pose.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from geosem.geometry.camera import scale_intrinsics
from geosem.labelspaces import IGNORE_INDEX
from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import resize_image, resize_nearest, source_version
from geosem.sources.matfile import read_mat5, read_mat73_strings

CONVERTER_VERSION = "1"
LABEL_SPACE = "nyu40"
NYU_SIZE = (480, 640)
NYU_INTRINSICS = (518.8579, 519.4696, 325.5824, 253.7362)


def read_split(path: Path, count: int) -> dict[str, np.ndarray]:
    """0-based train and test indices from splits.mat, checked against the ``count`` images."""
    variables = read_mat5(path)
    out = {}
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        if key not in variables:
            raise KeyError(f"{path} has no variable {key!r} (found {sorted(variables)})")
        index = variables[key].reshape(-1).astype(np.int64)
        if index.size and (index.min() < 1 or index.max() > count):
            raise ValueError(f"{path}: {key} holds indices outside 1..{count} (they are 1-based)")
        out[split] = index - 1
    if np.intersect1d(out["train"], out["test"]).size:
        raise ValueError(f"{path}: trainNdxs and testNdxs overlap")
    return out


def read_class_mapping(path: Path) -> np.ndarray:
    """Lookup raw object id -> nyu40 train id (255 for void), from classMapping40.mat's mapClass."""
    variables = read_mat5(path)
    if "mapClass" not in variables:
        raise KeyError(f"{path} has no variable 'mapClass' (found {sorted(variables)})")
    map_class = variables["mapClass"].reshape(-1).astype(np.int64)
    if map_class.size and (map_class.min() < 1 or map_class.max() > 40):
        raise ValueError(f"{path}: mapClass values must lie in 1..40")
    table = np.full(map_class.size + 1, IGNORE_INDEX, dtype=np.uint8)
    table[1:] = (map_class - 1).astype(np.uint8)
    return table


@register_converter(
    "nyuv2",
    version=CONVERTER_VERSION,
    label_space=LABEL_SPACE,
    reads=("nyu_depth_v2_labeled.mat", "splits.mat", "classMapping40.mat"),
)
def convert_nyuv2(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "nyuv2",
    samples_per_part: int = 256,
    progress: bool = True,
) -> Path:
    """Convert the NYUv2 labelled set (real or the synthetic indoor world's) into ``out_dir``."""
    root = Path(raw_dir)
    mat_path = root / "nyu_depth_v2_labeled.mat"
    if not mat_path.is_file():
        raise FileNotFoundError(f"{mat_path} is missing")
    to_train = read_class_mapping(root / "classMapping40.mat")
    with h5py.File(mat_path, "r") as handle:
        for key in ("images", "depths", "labels"):
            if key not in handle:
                raise KeyError(f"{mat_path} has no dataset {key!r}")
        images, depths, labels = handle["images"], handle["depths"], handle["labels"]
        count = images.shape[0]
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"{mat_path}: images has shape {images.shape}, expected (N, 3, W, H)")
        if depths.shape != (count, *images.shape[2:]) or labels.shape != depths.shape:
            raise ValueError(
                f"{mat_path}: depths {depths.shape}, labels {labels.shape} must match images {images.shape}"
            )
        scenes = read_mat73_strings(handle, "scenes") if "scenes" in handle else ["nyu"] * count
        split_of = read_split(root / "splits.mat", count)
        # The images were taken (or rendered) with NYU's intrinsics at their own size; resizing composes.
        intrinsics = scale_intrinsics(NYU_INTRINSICS, NYU_SIZE, (height, width))
        with ShardWriter(
            out_dir,
            dataset=dataset,
            variant=Path(out_dir).name,
            source_version=source_version(root, "nyu_depth_v2_labeled"),
            converter_version=CONVERTER_VERSION,
            label_space=LABEL_SPACE,
            parameters={"height": height, "width": width},
            samples_per_part=samples_per_part,
        ) as writer:
            for split in ("train", "test"):
                for i in tqdm(
                    sorted(split_of[split].tolist()), desc=f"convert {dataset} {split}", disable=not progress
                ):
                    image = np.ascontiguousarray(images[i].transpose(2, 1, 0))  # (3,W,H) -> (H,W,3)
                    depth = np.ascontiguousarray(depths[i].T).astype(np.float32)
                    raw = np.ascontiguousarray(labels[i].T)
                    if raw.max(initial=0) >= to_train.size:
                        # Indexing the lookup table would fail with a bare IndexError naming nothing.
                        unknown = np.unique(raw[raw >= to_train.size]).tolist()[:10]
                        raise ValueError(
                            f"sample 'nyu-{i + 1:04d}': {mat_path} image {i + 1} holds raw label id(s) "
                            f"{unknown}, but mapClass of classMapping40.mat covers 1..{to_train.size - 1} "
                            f"(0 = unlabelled)"
                        )
                    depth[~np.isfinite(depth)] = 0.0
                    writer.add(
                        {
                            "image": resize_image(image, height, width),
                            "depth": resize_nearest(depth, height, width),
                            "label": resize_nearest(to_train[raw], height, width),
                        },
                        {
                            "id": f"nyu-{i + 1:04d}",
                            "split": split,
                            "sequence": scenes[i],
                            "frame": i + 1,
                            "fx": intrinsics[0],
                            "fy": intrinsics[1],
                            "cx": intrinsics[2],
                            "cy": intrinsics[3],
                        },
                    )
    return Path(out_dir)
