"""Converter ``diode``: DIODE RGB-D scans, indoors and outdoor (docs/datasets.md section 5).

Reads ``{train,val}/{indoors,outdoor}/scene_*/scan_*/<name>.png`` (RGB) with ``<name>_depth.npy``
(float32 metres, (H, W, 1)) and ``<name>_depth_mask.npy`` (1 where the depth is valid). ``train`` becomes
split ``train``, ``val`` split ``test`` (DIODE released no test set). ``scene_type`` picks ``indoors``,
``outdoor`` or ``all`` (DIODE's own spelling: ``indoors`` but ``outdoor``).

Writes ``image`` and ``depth`` (0 = no depth: masked, non-finite or non-positive pixels), depth resized
NEAREST so no valid value is ever averaged with an invalid one. Outdoor depth beyond ``max_depth``
(default 80 m, study B's cap) becomes 0 too rather than being clipped to the cap: a clipped value would
be a false 80 m surface that a depth loss trains towards, while 0 is what every depth loss and metric
already skips, as the evaluation's cap does. Indoor scans are not capped (their range is short anyway).
Intrinsics: DIODE's published ones (fx 886.81, fy 927.06, cx 512, cy 384 at 1024 x 768) scaled to the
variant. DIODE has no semantic labels: no ``label`` field, and no label space (see ``LABEL_SPACE``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from geosem.geometry.camera import scale_intrinsics
from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import read_rgb, resize_image, resize_nearest, source_version

CONVERTER_VERSION = "1"
# No labels, so no label space. The registry's field is a string (the catalog and `geosem datasets`
# format it as text, so None would break that table): "" is the least invasive "none", and the shard
# writer is given None, so the manifest says null and no label is ever checked against a space.
LABEL_SPACE = ""
SPLITS = (("train", "train"), ("val", "test"))  # (DIODE folder, shard split)
SCENE_TYPES = ("indoors", "outdoor")
MAX_DEPTH = 80.0
DIODE_SIZE = (768, 1024)  # (height, width) the intrinsics belong to
DIODE_INTRINSICS = (886.81, 927.06, 512.0, 384.0)


def _load_npy(path: Path, why: str) -> np.ndarray:
    """One ``.npy`` as a 2-D array; (H, W, 1) is squeezed, anything else is an error naming the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {why}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:  # truncated, or not a .npy at all
        raise ValueError(f"cannot read {path}: {error}") from error
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"{path} has shape {array.shape}: expected (H, W) or (H, W, 1)")
    return array


def read_scan(image_path: Path, scene_type: str, max_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, depth with 0 = no depth) of one DIODE scan at its own size."""
    stem = image_path.with_suffix("")
    depth_path = stem.with_name(f"{stem.name}_depth.npy")
    mask_path = stem.with_name(f"{stem.name}_depth_mask.npy")
    depth = _load_npy(depth_path, f"the depth of {image_path}").astype(np.float32)
    mask = _load_npy(mask_path, f"the depth mask of {image_path}")
    if mask.shape != depth.shape:
        raise ValueError(f"{mask_path} is {mask.shape} but {depth_path} is {depth.shape}")
    image = read_rgb(image_path)
    if image.shape[:2] != depth.shape:
        raise ValueError(f"{image_path} is {image.shape[:2]} but its depth {depth_path} is {depth.shape}")
    with np.errstate(invalid="ignore"):  # NaN compares False: invalid, as wanted
        valid = (mask > 0) & np.isfinite(depth) & (depth > 0)
        if scene_type == "outdoor":
            valid &= depth <= max_depth
    return image, np.where(valid, depth, np.float32(0.0)).astype(np.float32)


@register_converter("diode", version=CONVERTER_VERSION, label_space=LABEL_SPACE, reads=("train", "val"))
def convert_diode(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "diode",
    samples_per_part: int = 256,
    progress: bool = True,
    scene_type: str = "all",
    max_depth: float = MAX_DEPTH,
) -> Path:
    """Convert a DIODE tree into ``out_dir``; ``scene_type`` (indoors, outdoor, all) and ``max_depth``
    (metres, outdoor only) are recorded in the manifest's parameters."""
    if scene_type not in (*SCENE_TYPES, "all"):
        raise ValueError(f"unknown scene_type {scene_type!r}; known: {[*SCENE_TYPES, 'all']}")
    if not max_depth > 0:
        raise ValueError(f"max_depth must be > 0, got {max_depth}")
    types = SCENE_TYPES if scene_type == "all" else (scene_type,)
    root = Path(raw_dir)
    intrinsics = scale_intrinsics(DIODE_INTRINSICS, DIODE_SIZE, (height, width))
    with ShardWriter(
        out_dir,
        dataset=dataset,
        variant=Path(out_dir).name,
        source_version=source_version(root, "diode"),
        converter_version=CONVERTER_VERSION,
        label_space=LABEL_SPACE or None,
        parameters={"height": height, "width": width, "scene_type": scene_type, "max_depth": max_depth},
        samples_per_part=samples_per_part,
    ) as writer:
        for folder, split in SPLITS:
            for kind in types:
                base = root / folder / kind
                if not base.is_dir():
                    raise FileNotFoundError(f"{base} is missing (scene_type {scene_type!r})")
                images = sorted(base.glob("scene_*/scan_*/*.png"))
                if not images:
                    raise FileNotFoundError(f"no images in {base}/scene_*/scan_*/")
                for path in tqdm(images, desc=f"convert {dataset} {split} {kind}", disable=not progress):
                    image, depth = read_scan(path, kind, max_depth)
                    fx, fy, cx, cy = intrinsics
                    writer.add(
                        {
                            "image": resize_image(image, height, width),
                            "depth": resize_nearest(depth, height, width),
                        },
                        {
                            # The split folder in the id: DIODE's names do not promise train and val never
                            # share one.
                            "id": f"{folder}-{path.stem}",
                            "split": split,
                            "sequence": f"{kind}/{path.parent.parent.name}/{path.parent.name}",
                            "fx": fx,
                            "fy": fy,
                            "cx": cx,
                            "cy": cy,
                        },
                    )
    return Path(out_dir)
