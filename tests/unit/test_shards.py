"""Shard round trip, verification against the manifest, and atomic writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from geosem.shards import ShardDataset, ShardSet, ShardVerificationError, ShardWriter, verify_shards


def _write(out: Path, samples: int = 7, fail_at: int | None = None) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    written = []
    with ShardWriter(
        out,
        dataset="unit",
        variant=out.name,
        source_version="test",
        converter_version="0",
        label_space="cityscapes19",
        parameters={"k": 1},
        samples_per_part=3,
    ) as writer:
        for i in range(samples):
            if i == fail_at:
                raise RuntimeError("converter failed half-way")
            arrays = {
                "image": rng.integers(0, 256, (8, 12, 3), dtype=np.uint8),
                "depth": rng.random((8, 12), dtype=np.float32) * 50,
                "label": rng.choice(np.array([0, 2, 13, 255], dtype=np.uint8), (8, 12)),
            }
            written.append(arrays)
            writer.add(
                arrays,
                {
                    "id": f"s-{i}",
                    "split": "test" if i >= 5 else "train",
                    "sequence": "s",
                    "frame": i,
                    "prev_id": f"s-{i - 1}" if i else None,
                    "next_id": f"s-{i + 1}" if i + 1 < samples else None,
                    "fx": 10.0,
                    "fy": 10.0,
                    "cx": 6.0,
                    "cy": 4.0,
                    "pose": np.eye(4),
                },
            )
    return written


def test_round_trip_returns_the_written_arrays(tmp_path: Path) -> None:
    out = tmp_path / "unit" / "8x12"
    written = _write(out)
    assert sorted(p.name for p in out.iterdir()) == [
        "index.parquet",
        "manifest.json",
        "part-00000.h5",
        "part-00001.h5",
        "part-00002.h5",
    ]
    assert verify_shards(out) == 7
    shards = ShardSet(out)
    assert shards.ids("test") == ["s-5", "s-6"]
    for i, arrays in enumerate(written):
        got = shards.read(f"s-{i}", ("image", "depth", "label"))
        for name, value in arrays.items():
            np.testing.assert_array_equal(got[name], value)
    row = shards.row("s-4")
    assert (row["part"], row["row"], row["prev_id"], row["next_id"]) == ("part-00001.h5", 1, "s-3", "s-5")
    # The class histogram counts labelled pixels per class and leaves 255 out.
    assert sum(row["class_pixels"]) == int((written[4]["label"] != 255).sum())
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"] == {"test": 2, "train": 5}
    assert manifest["classes"][13] == "car"


def test_dataset_returns_tensors_and_seeds_transforms_per_draw(tmp_path: Path) -> None:
    out = tmp_path / "unit" / "8x12"
    written = _write(out)

    def jitter(sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {**sample, "noise": torch.tensor(rng.random())}

    dataset = ShardDataset(out, ["s-0", "s-1"], ("image", "label"), transform=jitter, seed=5)
    sample = dataset[(1, 7)]
    assert sample["image"].shape == (3, 8, 12) and sample["image"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64
    np.testing.assert_allclose(sample["image"].permute(1, 2, 0).numpy() * 255, written[1]["image"], atol=1e-3)
    assert dataset[(1, 7)]["noise"] == sample["noise"]
    assert dataset[(1, 8)]["noise"] != sample["noise"]


def test_verify_detects_a_corrupted_part(tmp_path: Path) -> None:
    out = tmp_path / "unit" / "8x12"
    _write(out)
    part = out / "part-00001.h5"
    data = bytearray(part.read_bytes())
    data[-100] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(ShardVerificationError, match=r"part-00001\.h5: sha256"):
        verify_shards(out)


def test_verify_detects_missing_part_and_edited_index(tmp_path: Path) -> None:
    out = tmp_path / "unit" / "8x12"
    _write(out)
    (out / "part-00002.h5").unlink()
    with pytest.raises(ShardVerificationError, match=r"part-00002\.h5: missing"):
        verify_shards(out)
    other = tmp_path / "other" / "8x12"
    _write(other)
    (other / "index.parquet").write_bytes(b"not parquet")
    with pytest.raises(ShardVerificationError, match=r"index\.parquet: sha256"):
        verify_shards(other)


def test_failed_conversion_leaves_nothing_and_keeps_the_old_set(tmp_path: Path) -> None:
    out = tmp_path / "unit" / "8x12"
    _write(out, samples=4)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RuntimeError, match="half-way"):
        _write(out, samples=7, fail_at=5)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["8x12"]


def test_inconsistent_sample_is_refused_with_its_id(tmp_path: Path) -> None:
    writer = ShardWriter(
        tmp_path / "x",
        dataset="unit",
        variant="x",
        source_version="t",
        converter_version="0",
        label_space=None,
        parameters={},
    )
    writer.add({"image": np.zeros((4, 4, 3), np.uint8)}, {"id": "a", "split": "train"})
    with pytest.raises(ValueError, match="sample 'b'"):
        writer.add({"image": np.zeros((5, 4, 3), np.uint8)}, {"id": "b", "split": "train"})
    shutil.rmtree(writer.staging)


def test_writes_are_reproducible(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "8x12")
    _write(tmp_path / "b" / "8x12")
    for name in ("part-00000.h5", "index.parquet", "manifest.json"):
        assert (tmp_path / "a" / "8x12" / name).read_bytes() == (tmp_path / "b" / "8x12" / name).read_bytes()


def test_converter_output_is_verified_and_split_by_sequence(tiny_shards: Path) -> None:
    assert verify_shards(tiny_shards) == 16
    shards = ShardSet(tiny_shards)
    train_sequences = set(shards.index.loc[shards.index["split"] == "train", "sequence"])
    test_sequences = set(shards.index.loc[shards.index["split"] == "test", "sequence"])
    assert len(test_sequences) == 1 and not train_sequences & test_sequences
    sample = shards.read(shards.ids("test")[0], ("image", "depth", "label"))
    assert sample["image"].shape == (64, 96, 3)
    labels = set(np.unique(sample["label"]).tolist())
    assert labels <= set(range(19)) | {255}
