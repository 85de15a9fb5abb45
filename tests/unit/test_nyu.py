"""NYUv2: MAT-file reading (level 5 against files scipy wrote; v7.3 layout), the indoor world's labelled
.mat, and the NYU converter (reversed axes, 1-based splits, raw ids through classMapping40)."""

from __future__ import annotations

import base64
from pathlib import Path

import h5py
import numpy as np
import pytest
from geosem.labelspaces import IGNORE_INDEX, NYU40_CLASSES
from geosem.shards.reader import ShardSet
from geosem.sources import convert
from geosem.sources.matfile import MatFileError, read_mat5, read_mat73_strings, write_mat5
from geosem.worlds.indoor import IndoorWorldConfig, render_room
from geosem.worlds.nyu_writer import write_batch, write_nyu_files
from geosem.worlds.parts import NYU_RAW_NAMES, NYU_RAW_TO_40, PARTS

# Written by scipy 1.17.1 (scipy.io.savemat), so the reader is checked against an independent writer:
# trainNdxs [[3],[5],[8]], testNdxs [[1],[2]] (double), mapClass [[40,1,7,22,2,5]] (uint8) and a cell
# array className, compressed; and grid = arange(6).reshape(2,3) (int32, stored by scipy as uint8 data)
# with scale [[0.25]] (single), uncompressed.
SCIPY_COMPRESSED = (
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IFN1biBOb3YgMjIgMDE6MjI6MDIgMjAy"
    "NgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABSU0PAAAAOAAAAHic42NgYIgA"
    "YjYg5oDSIMAK5TMDMSMUcwJxSVFiZp5fSkUxVB1ITIIBBjgcILQIlFZwAADiowVuDwAAADEAAAB4nONjYGDwAGI2IOaA0iDA"
    "CuUzATEjFIP4JanFJX4pFcWcQLYAAwx8sIcyHACRswVpDwAAADEAAAB4nONjYGBwAGI2IOYAYk4GCGCF8hmhcoxQfm5igXNO"
    "YnExE1Rcg5FdjAmoGABiqAQMDwAAAE0AAAB4nONjYGDYAMRsQMwBxIwMEMCKxGeC0pxAnJyTWFzsl5ibClXHB8QGSPpZsOhn"
    "QTJXAMgrT8zJAemzIKCPFUUfhJ+Wk59fBKQBP3sJSQ=="
)
SCIPY_UNCOMPRESSED = (
    "TUFUTEFCIDUuMCBNQVQtZmlsZSBQbGF0Zm9ybTogcG9zaXgsIENyZWF0ZWQgb246IFN1biBOb3YgMjIgMDE6MjI6MDIgMjAy"
    "NgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABSU0OAAAASAAAAAYAAAAIAAAA"
    "DAAAAAAAAAAFAAAACAAAAAIAAAADAAAAAQAEAGdyaWQFAAAAGAAAAAAAAAADAAAAAQAAAAQAAAACAAAABQAAAA4AAAA4AAAA"
    "BgAAAAgAAAAHAAAAAAAAAAUAAAAIAAAAAQAAAAEAAAABAAAABQAAAHNjYWxlAAAABwAEAAAAgD4="
)


def test_level5_reader_reads_what_scipy_wrote(tmp_path: Path) -> None:
    compressed, plain = tmp_path / "c.mat", tmp_path / "u.mat"
    compressed.write_bytes(base64.b64decode(SCIPY_COMPRESSED))
    plain.write_bytes(base64.b64decode(SCIPY_UNCOMPRESSED))
    c = read_mat5(compressed)
    assert set(c) == {"trainNdxs", "testNdxs", "mapClass"}  # the cell array is skipped
    assert c["trainNdxs"].shape == (3, 1) and c["trainNdxs"].ravel().tolist() == [3.0, 5.0, 8.0]
    assert c["testNdxs"].ravel().tolist() == [1.0, 2.0] and c["mapClass"].dtype == np.uint8
    assert c["mapClass"].tolist() == [[40, 1, 7, 22, 2, 5]]
    u = read_mat5(plain)
    assert u["grid"].dtype == np.int32 and np.array_equal(
        u["grid"], np.arange(6).reshape(2, 3)
    )  # column-major
    assert u["scale"].dtype == np.float32 and u["scale"][0, 0] == 0.25


def test_level5_round_trip_and_errors(tmp_path: Path) -> None:
    values = {"a": np.arange(12, dtype=np.float64).reshape(3, 4), "b": np.array([[7, 9]], dtype=np.uint16)}
    write_mat5(tmp_path / "x.mat", values)
    back = read_mat5(tmp_path / "x.mat")
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in values.items())
    (tmp_path / "bad.mat").write_bytes(b"not a mat file" * 20)
    with pytest.raises(MatFileError, match=r"bad\.mat"):
        read_mat5(tmp_path / "bad.mat")


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[IndoorWorldConfig, Path]:
    config = IndoorWorldConfig(seed=5, rooms=4, frames_per_room=2, height=24, width=32)
    base = tmp_path_factory.mktemp("nyu")
    batches = [write_batch(config, k, 2, base / f"batch_{k}.h5") for k in range(2)]
    write_nyu_files(config, batches, base / "synth_indoor")
    return config, base / "synth_indoor"


def test_labelled_mat_is_laid_out_like_nyu(nyu_root: tuple[IndoorWorldConfig, Path]) -> None:
    config, root = nyu_root
    path = root / "nyu_depth_v2_labeled.mat"
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
    with h5py.File(path, "r") as handle:
        # h5py sees MATLAB's H x W x 3 x N as N x 3 x W x H.
        assert handle["images"].shape == (8, 3, 32, 24) and handle["images"].dtype == np.uint8
        assert handle["depths"].shape == handle["labels"].shape == (8, 32, 24)
        assert handle["labels"].dtype == np.uint16 and handle["images"].attrs["MATLAB_class"] == b"uint8"
        assert read_mat73_strings(handle, "names") == list(NYU_RAW_NAMES)
        _, frames = render_room(config, 1)
        assert np.array_equal(handle["images"][2].transpose(2, 1, 0), frames[0].image)
        assert np.allclose(handle["depths"][2].T, frames[0].depth)
    splits = read_mat5(root / "splits.mat")
    indices = np.concatenate([splits["trainNdxs"].ravel(), splits["testNdxs"].ravel()])
    assert sorted(indices.tolist()) == list(range(1, 9))  # 1-based, every image once


def test_converter_maps_raw_ids_to_nyu40(nyu_root: tuple[IndoorWorldConfig, Path], tmp_path: Path) -> None:
    config, root = nyu_root
    out = convert(
        "nyuv2",
        root,
        tmp_path / "synth_indoor" / "24x32",
        height=24,
        width=32,
        dataset="synth_indoor",
        progress=False,
    )
    shards = ShardSet(out)
    splits = read_mat5(root / "splits.mat")
    assert shards.manifest.splits == {"train": splits["trainNdxs"].size, "test": splits["testNdxs"].size}
    assert shards.manifest.label_space == "nyu40" and len(shards.manifest.classes) == 40
    index = shards.index
    assert not set(index.loc[index.split == "train", "sequence"]) & set(
        index.loc[index.split == "test", "sequence"]
    )
    # Expected labels straight from the renderer's parts: part -> NYU raw name -> NYU-40 class -> train id.
    part_to_train = np.full(256, IGNORE_INDEX, np.uint8)
    for k, part in enumerate(PARTS):
        if part.nyu_raw is not None:
            part_to_train[k] = NYU40_CLASSES.index(NYU_RAW_TO_40[part.nyu_raw])
    _, frames = render_room(config, 0)
    sample = shards.read("nyu-0001", ("image", "depth", "label"))
    assert np.array_equal(sample["label"], part_to_train[frames[0].parts])
    assert sample["depth"].max() <= 10.0 and sample["depth"].min() > 0
    row = shards.row("nyu-0001")
    assert row["fx"] == pytest.approx(518.8579 * 32 / 640)


def test_splits_outside_the_images_are_named(
    nyu_root: tuple[IndoorWorldConfig, Path], tmp_path: Path
) -> None:
    _, root = nyu_root
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("nyu_depth_v2_labeled.mat", "classMapping40.mat"):
        (broken / name).symlink_to(root / name)
    write_mat5(broken / "splits.mat", {"trainNdxs": np.array([[0.0], [1.0]]), "testNdxs": np.array([[2.0]])})
    with pytest.raises(ValueError, match=r"splits\.mat.*1-based"):
        convert("nyuv2", broken, tmp_path / "out" / "24x32", height=24, width=32, progress=False)
