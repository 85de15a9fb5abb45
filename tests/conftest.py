"""Fixtures made by code: a tiny synthetic world and its shard set, shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from geosem.sources import convert
from geosem.sources.synthetic import DrivingWorldConfig, write_driving_world

REPO = Path(__file__).resolve().parents[1]
TINY_WORLD = DrivingWorldConfig(seed=3, sequences=3, frames=4, height=64, width=96)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("raw") / "synth_driving"
    write_driving_world(TINY_WORLD, out, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_shards(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 sequences x 4 frames at 64x96; the last sequence is the test split; 5 samples per part."""
    out = tmp_path_factory.mktemp("shards") / "synth_driving" / "64x96"
    return convert(
        "synth_driving",
        tiny_raw,
        out,
        height=64,
        width=96,
        test_sequences=1,
        samples_per_part=5,
        progress=False,
    )
