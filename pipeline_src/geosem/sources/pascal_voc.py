"""Converter ``pascal_voc``: Pascal VOC 2012 + SBD, the trainaug set (docs/datasets.md section 4.5).

Reads ``VOCdevkit/VOC2012/{JPEGImages, SegmentationClass, ImageSets/Segmentation/{train,val}.txt}`` and,
when present, SBD's ``benchmark_RELEASE/dataset/{cls/*.mat, img/*.jpg, train.txt, val.txt}``.

* Split ``train`` is trainaug: VOC train, SBD train and SBD val, less every VOC val image (10,582 images
  with the real releases). An image of VOC train keeps its VOC label (hand-drawn, with 255 borders); the
  others take SBD's ``GTcls.Segmentation`` (0..20, no borders). Without ``benchmark_RELEASE`` split
  ``train`` is VOC train alone (1,464 images), with a warning in the log.
* Split ``test`` is VOC val (1,449 images) with its VOC labels.

``SegmentationClass`` PNGs are palette images: the palette *index* is the class (0 background .. 20
tvmonitor, 255 border = ignore), never the RGB colour. Labels are ``voc21`` train ids unchanged; images are
resized to the variant (image: area/linear, label: nearest).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import (
    check_label_values,
    check_same_size,
    read_id_list,
    read_index_png,
    read_rgb,
    resize_image,
    resize_nearest,
    source_version,
)
from geosem.sources.matfile import load_mat

CONVERTER_VERSION = "1"
LABEL_SPACE = "voc21"
NUM_CLASSES = 21
VOC = "VOCdevkit/VOC2012"
SBD = "benchmark_RELEASE/dataset"

log = logging.getLogger(__name__)


def read_sbd_label(path: Path) -> np.ndarray:
    """``GTcls.Segmentation`` of an SBD ``cls/*.mat`` file (uint8 class ids 0..20)."""
    label = np.asarray(getattr(load_mat(path).get("GTcls"), "Segmentation", None))
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{path} holds no 2-D integer GTcls.Segmentation: not an SBD cls file")
    return label


def _plan(root: Path) -> tuple[list[tuple[str, str, str]], bool]:
    """(id, split, label source "voc" / "sbd") for every sample, and whether SBD was found."""
    voc_sets = root / VOC / "ImageSets" / "Segmentation"
    voc_train = read_id_list(voc_sets / "train.txt")
    voc_val = read_id_list(voc_sets / "val.txt")
    samples = [(i, "train", "voc") for i in voc_train]
    has_sbd = (root / SBD).is_dir()
    if has_sbd:
        # Set arithmetic as mmsegmentation's voc_aug: (SBD train | SBD val) - VOC train - VOC val are the
        # extra images, so VOC val never leaks into training and VOC train keeps its own labels.
        taken = set(voc_train) | set(voc_val)
        sbd_ids = read_id_list(root / SBD / "train.txt") + read_id_list(root / SBD / "val.txt")
        extra = sorted(set(sbd_ids) - taken)
        samples += [(i, "train", "sbd") for i in extra]
    else:
        log.warning(
            "pascal_voc: %s is missing, so split 'train' is VOC 2012 train alone (%d images), not "
            "trainaug (10,582 with SBD); extract SBD's benchmark.tgz there for the full set",
            root / SBD,
            len(voc_train),
        )
    samples += [(i, "test", "voc") for i in voc_val]
    return samples, has_sbd


@register_converter("pascal_voc", version=CONVERTER_VERSION, label_space=LABEL_SPACE, reads=(VOC,))
def convert_pascal_voc(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "pascal_voc",
    samples_per_part: int = 256,
    progress: bool = True,
) -> Path:
    root = Path(raw_dir)
    voc = root / VOC
    for folder in (voc, voc / "JPEGImages", voc / "SegmentationClass"):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing")
    samples, has_sbd = _plan(root)
    # SBD is optional (reads= names only what must exist), so the provenance says whether it was used.
    fallback = "VOCtrainval_11-May-2012+benchmark_RELEASE" if has_sbd else "VOCtrainval_11-May-2012"
    with ShardWriter(
        out_dir,
        dataset=dataset,
        variant=Path(out_dir).name,
        source_version=source_version(root, fallback),
        converter_version=CONVERTER_VERSION,
        label_space=LABEL_SPACE,
        parameters={"height": height, "width": width},
        samples_per_part=samples_per_part,
    ) as writer:
        for sample_id, split, source in tqdm(samples, desc=f"convert {dataset}", disable=not progress):
            if source == "voc":
                label_path = voc / "SegmentationClass" / f"{sample_id}.png"
                label = read_index_png(label_path)
                check_label_values(label, NUM_CLASSES - 1, label_path, sample=sample_id)
            else:
                label_path = root / SBD / "cls" / f"{sample_id}.mat"
                label = read_sbd_label(label_path)
                # SBD has no border value: a 255 here would be a foreign file, not a border.
                check_label_values(label, NUM_CLASSES - 1, label_path, allowed=(), sample=sample_id)
            # SBD's images are VOC 2011 images, also in VOC 2012's JPEGImages; SBD's own copy is the
            # fallback for a partial VOC tree.
            image_path = voc / "JPEGImages" / f"{sample_id}.jpg"
            if source == "sbd" and not image_path.is_file():
                image_path = root / SBD / "img" / f"{sample_id}.jpg"
            image = read_rgb(image_path)
            check_same_size(image, label, image_path, label_path)
            writer.add(
                {
                    "image": resize_image(image, height, width),
                    "label": resize_nearest(label.astype(np.uint8), height, width),
                },
                {"id": sample_id, "split": split, "sequence": source},
            )
    return Path(out_dir)
