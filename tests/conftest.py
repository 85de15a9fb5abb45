"""Fixtures made by code: a tiny synthetic world in KITTI's layout and its shard set, shared by the
unit tests. What tests share besides fixtures lives in tests/helpers.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from geosem.sources import convert
from geosem.worlds.aux_writer import AuxWorldConfig, write_ade
from geosem.worlds.kitti_writer import write_driving_world

from tests.helpers import TINY_WORLD


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``TINY_WORLD`` written in KITTI's raw layout."""
    out = tmp_path_factory.mktemp("raw") / "synth_driving"
    return write_driving_world(TINY_WORLD, out)


def _tiny_driving_shards(
    tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory, height: int, width: int
) -> Path:
    """The tiny driving world through the KITTI converter at ``height`` x ``width``, 5 samples per part."""
    out = tmp_path_factory.mktemp("shards") / "synth_driving" / f"{height}x{width}"
    return convert(
        "kitti",
        tiny_raw,
        out,
        height=height,
        width=width,
        dataset="synth_driving",
        samples_per_part=5,
        progress=False,
    )


@pytest.fixture(scope="session")
def tiny_shards(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 samples at 64x96 through the KITTI converter: train = the 8 frames of the training drives,
    test = the 4 labelled frames (one held-out drive), heldout_video = 2 frames of the held-out drive and
    heldout_context = their 2 neighbours; 5 samples per part (4 parts)."""
    return _tiny_driving_shards(tiny_raw, tmp_path_factory, 64, 96)


@pytest.fixture(scope="session")
def tiny_tall_shards(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world at 96x128 (upsampled from its 64x96 render): larger than depth_cropped's 64x64
    crop in both axes, which the 64x96 set is not (the task refuses a crop that cannot move)."""
    return _tiny_driving_shards(tiny_raw, tmp_path_factory, 96, 128)


@pytest.fixture(scope="session")
def tiny_ade_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ADE20K-like world, 12 images (9 train, 3 validation = test), at the tiny driving set's 64x96:
    the other labelled dataset a supervised-segmentation pre-training reads."""
    root = tmp_path_factory.mktemp("raw") / "synth_ade"
    write_ade(AuxWorldConfig(seed=5, images=12, test_share=0.25), root)
    out = tmp_path_factory.mktemp("shards") / "synth_ade" / "64x96"
    return convert("ade20k", root, out, height=64, width=96, dataset="synth_ade", progress=False)
