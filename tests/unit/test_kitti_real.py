"""Real KITTI through the ``kitti`` converter's ``eigen`` protocol, on a tiny tree fabricated in KITTI's
real layout: optional fields (frames without annotated depth), the Eigen test split's projected-velodyne
ground truth, the seeded labelled partition and the KITTI-2015 overlap report. Plus the shard contract's
optional fields themselves (``has_<field>`` flags, unallocated rows, errors naming the sample)."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
import pytest
from geosem.shards.reader import MissingFieldError, ShardDataset, ShardSet
from geosem.shards.verify import verify_shards
from geosem.shards.writer import ShardWriter
from geosem.sources import convert
from geosem.sources.kitti.files import read_date_calibration
from geosem.sources.kitti.splits import labelled_partition, load_split_lists
from geosem.train.jobs import few_shot_subset
from geosem.worlds import WORLD_MARKER

# The tree: full-resolution images of 24 x 48 (S_rect_02), a camera with f = 50 px.
H, W, FOCAL, CX, CY = 24, 48, 50.0, 24.0, 12.0
DATE_A, DATE_C = "2011_09_26", "2011_09_30"
DRIVE_A = f"{DATE_A}_drive_0001_sync"  # pre-training drive
DRIVE_B = f"{DATE_A}_drive_0002_sync"  # pre-training drive *and* source of two labelled images
DRIVE_C = f"{DATE_C}_drive_0016_sync"  # Eigen test drive
FRAMES = {DRIVE_A: 12, DRIVE_B: 12, DRIVE_C: 6}
HAND_FRAME = 2  # the test frame of DRIVE_C whose scan holds the points placed by hand below
# velodyne (x forward, y left, z up) -> camera 0: x_c = -y, y_c = -z, z_c = x - 0.3 (the scanner 0.3 m
# behind the camera, as in KITTI: monodepth2's depth is the scanner's x, 0.3 m more than the camera's z).
VELO_R = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], float)
VELO_T = np.array([0.0, 0.0, -0.3])
# R_rect_00 turns the image by 180 degrees about the optical axis, so a chain without it would put every
# point elsewhere: x_rect = -x_c, y_rect = -y_c.
R_RECT = np.diag([-1.0, -1.0, 1.0])
P2_TX, P3_TX = 3.0, -23.5  # P_rect_0x[0, 3]: camera 2 sits 0.06 m left of camera 0, camera 3 0.47 m right
LABELLED = 6
POOL = 4
# Hand points (velodyne x, y, z) and where monodepth2's rule puts them in the 24 x 48 image:
#   rect = (y, z, x - 0.3); u = (50 x_r + 24 z_r + 3) / z_r; v = (50 y_r + 12 z_r) / z_r;
#   pixel = (round(v) - 1, round(u) - 1); depth = velodyne x.
# (10.3, 1.0, 0.4): rect (1.0, 0.4, 10.0), u = 29.3, v = 14 -> row 13, col 28, depth 10.3
# (20.3, 2.0, 0.8): rect (2.0, 0.8, 20.0), u = 29.15, v = 14 -> the same pixel, farther: 10.3 wins
# (5.3, -0.5, -0.2): rect (-0.5, -0.2, 5.0), u = 19.6, v = 10 -> row 9, col 19, depth 5.3
# (-5, 0, 0): behind the scanner; (10.3, 10, 0): u = 79.3, outside the image
HAND_POINTS = [(10.3, 1.0, 0.4), (20.3, 2.0, 0.8), (5.3, -0.5, -0.2), (-5.0, 0.0, 0.0), (10.3, 10.0, 0.0)]
EXPECTED_FULL = {(13, 28): 10.3, (9, 19): 5.3}
# At 12 x 24 a full-resolution pixel (r, c) goes to the stored pixel holding its centre: (r + 0.5) / 2.
EXPECTED_HALF = {(6, 14): 10.3, (4, 9): 5.3}


def _numbers(values: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in np.asarray(values, float).ravel())


def _write_calibration(date_dir: Path) -> None:
    date_dir.mkdir(parents=True)
    p2 = np.array([[FOCAL, 0, CX, P2_TX], [0, FOCAL, CY, 0], [0, 0, 1, 0]])
    p3 = np.array([[FOCAL, 0, CX, P3_TX], [0, FOCAL, CY, 0], [0, 0, 1, 0]])
    (date_dir / "calib_cam_to_cam.txt").write_text(
        "calib_time: 09-Jan-2012 13:57:47\n"
        f"S_rect_02: {W} {H}\nR_rect_00: {_numbers(R_RECT)}\n"
        f"P_rect_02: {_numbers(p2)}\nP_rect_03: {_numbers(p3)}\n"
    )
    (date_dir / "calib_velo_to_cam.txt").write_text(f"R: {_numbers(VELO_R)}\nT: {_numbers(VELO_T)}\n")
    (date_dir / "calib_imu_to_velo.txt").write_text(f"R: {_numbers(np.eye(3))}\nT: {_numbers(np.zeros(3))}\n")


def _write_drive(root: Path, date: str, name: str, frames: int, rng: np.random.Generator) -> None:
    drive = root / date / name
    for folder in ("image_02/data", "image_03/data", "velodyne_points/data", "oxts/data"):
        (drive / folder).mkdir(parents=True)
    depth_dir = root / "data_depth_annotated" / "train" / name / "proj_depth" / "groundtruth" / "image_02"
    depth_dir.mkdir(parents=True)
    for frame in range(frames):
        stem = f"{frame:010d}"
        for camera in ("image_02", "image_03"):
            cv2.imwrite(
                str(drive / camera / "data" / f"{stem}.png"), rng.integers(0, 255, (H, W, 3), np.uint8)
            )
        if name == DRIVE_C and frame == HAND_FRAME:
            xyz = np.array(HAND_POINTS, float)
        else:
            xyz = np.stack([rng.uniform(2, 40, 300), rng.uniform(-8, 8, 300), rng.uniform(-2, 1, 300)], 1)
        scan = np.concatenate([xyz, np.ones((len(xyz), 1))], axis=1).astype(np.float32)
        scan.tofile(drive / "velodyne_points" / "data" / f"{stem}.bin")
        packet = [49.0, 8.4 + 1e-5 * frame, 110.0] + [0.0] * 27
        (drive / "oxts" / "data" / f"{stem}.txt").write_text(" ".join(str(v) for v in packet) + "\n")
        # KITTI's annotated depth accumulates 11 scans: none for a drive's first and last 5 frames. On the
        # test drive it is a constant 7 m, which the projected scan must replace.
        if 5 <= frame <= frames - 6 or name == DRIVE_C:
            metres = np.full((H, W), 7.0 if name == DRIVE_C else 4.0 + frame, np.float32)
            cv2.imwrite(str(depth_dir / f"{stem}.png"), np.round(metres * 256).astype(np.uint16))


def _write_lists(folder: Path) -> None:
    folder.mkdir()
    # Train: frames 1..9 of A and B (both sides for some, as monodepth2's lists have); val: frame 10 of A
    # and frame 5, which is a train frame already (the other side).
    train = [f"{DATE_A}/{d} {f} {'lr'[f % 2]}" for d in (DRIVE_A, DRIVE_B) for f in range(1, 10)]
    train += [f"{DATE_A}/{DRIVE_A} 3 r"]
    (folder / "tiny_train_files.txt").write_text("\n".join(train) + "\n")
    (folder / "tiny_val_files.txt").write_text(f"{DATE_A}/{DRIVE_A} 10 r\n{DATE_A}/{DRIVE_A} 5 l\n")
    test = [f"{DATE_C}/{DRIVE_C} {f:010d} l" for f in (1, HAND_FRAME, 4)]
    (folder / "eigen_test_files.txt").write_text("\n".join(test) + "\n")


def _write_semantics(root: Path, rng: np.random.Generator) -> None:
    training = root / "data_semantics" / "training"
    (training / "image_2").mkdir(parents=True)
    (training / "semantic").mkdir()
    ids = np.array([0, 7, 8, 11, 21, 23, 26], np.uint8)  # Cityscapes label ids (0 unlabelled)
    for index in range(LABELLED):
        cv2.imwrite(
            str(training / "image_2" / f"{index:06d}_10.png"), rng.integers(0, 255, (H, W, 3), np.uint8)
        )
        cv2.imwrite(str(training / "semantic" / f"{index:06d}_10.png"), rng.choice(ids, (H, W)))
    # Images 0 and 1 come from drive B (the overlap), 2 and 5 have no raw drive, 3 names a drive that is
    # not on disk, 4 is a frame of the test drive.
    mapping = [
        f"{DATE_A} {DRIVE_B} 0000000003",
        f"{DATE_A} {DRIVE_B} 0000000008",
        "",
        f"{DATE_A} {DATE_A}_drive_0099_sync 0000000004",
        f"{DATE_C} {DRIVE_C} 0000000003",
        "",
    ]
    (root / "devkit" / "mapping").mkdir(parents=True)
    (root / "devkit" / "mapping" / "train_mapping.txt").write_text("\n".join(mapping) + "\n")


@pytest.fixture(scope="module")
def real_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(KITTI root as its archives extract, without raw_data/; the tiny split lists)."""
    base = tmp_path_factory.mktemp("kitti_real")
    root, rng = base / "kitti", np.random.default_rng(0)
    _write_calibration(root / DATE_A)
    _write_calibration(root / DATE_C)
    for name, frames in FRAMES.items():
        _write_drive(root, DATE_C if name == DRIVE_C else DATE_A, name, frames, rng)
    _write_semantics(root, rng)
    _write_lists(base / "lists")
    return root, base / "lists"


def _convert(tree: tuple[Path, Path], out: Path, height: int = H, width: int = W, **extra: object) -> Path:
    root, lists = tree
    return convert(
        "kitti",
        root,
        out,
        height=height,
        width=width,
        samples_per_part=4,  # parts flush before depth (frame 5) and label (last) first appear
        progress=False,
        train_list="tiny",
        split_dir=lists,
        labelled_pool_size=POOL,
        **extra,
    )


@pytest.fixture(scope="module")
def real_shards(real_tree: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _convert(real_tree, tmp_path_factory.mktemp("shards") / "kitti" / f"{H}x{W}")


def _id(drive: str, frame: int) -> str:
    return f"{drive}-{frame:010d}"


def test_frames_without_annotated_depth_keep_image_and_neighbours(real_shards: Path) -> None:
    shards = ShardSet(real_shards)
    assert verify_shards(real_shards) == len(shards)  # every part holds every field, one row per sample
    assert shards.manifest.splits == {
        "train": 9,
        "val": 1,
        "pretrain_context": 2,
        "eigen_test": 3,
        "labelled_pool": POOL,
        "labelled_test": LABELLED - POOL,
    }
    assert set(shards.manifest.fields) == {"image", "right", "depth", "depth_lidar", "label"}
    index = shards.index.set_index("id")
    assert all(index[f"has_{name}"].dtype == bool for name in ("image", "depth", "label", "flow"))
    train = shards.ids("train")
    assert train == [_id(DRIVE_A, f) for f in range(1, 10)]
    # Annotated depth only for frames 5..N-6 (5 and 6 of 12); the others keep image, scan and links.
    assert shards.ids("train", having=["depth"]) == [_id(DRIVE_A, 5), _id(DRIVE_A, 6)]
    first = index.loc[_id(DRIVE_A, 1)]
    assert (
        not first["has_depth"] and first["has_image"] and first["has_depth_lidar"] and not first["has_label"]
    )
    assert (first["prev_id"], first["next_id"]) == (_id(DRIVE_A, 0), _id(DRIVE_A, 2))
    assert index.loc[_id(DRIVE_A, 9), "next_id"] == _id(DRIVE_A, 10)  # the val frame
    context = index.loc[_id(DRIVE_A, 0)]
    assert context["split"] == "pretrain_context"
    assert pd.isna(context["prev_id"]) and pd.isna(context["next_id"])  # no links of its own
    assert index.loc[_id(DRIVE_A, 10), "split"] == "val"  # frame 5 of the val list is a train frame
    assert np.all(shards.read(_id(DRIVE_A, 5), ["depth"])["depth"] == 9.0)
    # Every train frame makes a triplet; only two of them have depth to supervise with.
    assert len(ShardDataset(shards, train, ("image", "image_prev", "image_next"))) == 9
    supervised = ShardDataset(shards, train, ("image", "depth"), skip_missing=True)
    assert supervised.ids == [_id(DRIVE_A, 5), _id(DRIVE_A, 6)]
    assert len(ShardDataset(shards, train, ("image", "depth_next"), skip_missing=True)) == 2  # 4 and 5


def test_a_missing_field_is_an_error_naming_the_sample_and_is_never_stored(real_shards: Path) -> None:
    shards = ShardSet(real_shards)
    sample = _id(DRIVE_A, 1)
    with pytest.raises(MissingFieldError, match=rf"sample '{sample}' \(split 'train'\).* no field 'depth'"):
        shards.read(sample, ["image", "depth"])
    with pytest.raises(KeyError, match=rf"'{_id(DRIVE_A, 2)}'.*'label'.*has_label is false"):
        ShardDataset(shards, [_id(DRIVE_A, 2)], ("image", "label"))[0]
    with pytest.raises(MissingFieldError, match="holds no field 'flow' at all"):
        shards.read(sample, ["flow"])
    # The rows of samples lacking a field are unwritten chunks: no bytes on disk.
    row = shards.row(sample)
    with h5py.File(real_shards / row["part"], "r") as part:
        assert part["label"].id.get_storage_size() == 0
        assert part["image"].id.get_storage_size() == part["image"].size


def test_eigen_ground_truth_is_the_scan_projected_as_monodepth2_does(
    real_tree: tuple[Path, Path], real_shards: Path, tmp_path: Path
) -> None:
    sample = _id(DRIVE_C, HAND_FRAME)
    shards = ShardSet(real_shards)
    assert shards.row(sample)["split"] == "eigen_test"
    depth = shards.read(sample, ["depth"])["depth"]
    assert {pixel: float(depth[pixel]) for pixel in zip(*np.nonzero(depth), strict=True)} == pytest.approx(
        EXPECTED_FULL, abs=1e-5
    )
    half = ShardSet(_convert(real_tree, tmp_path / "half" / "12x24", height=12, width=24))
    depth = half.read(sample, ["depth"])["depth"]
    assert {pixel: float(depth[pixel]) for pixel in zip(*np.nonzero(depth), strict=True)} == pytest.approx(
        EXPECTED_HALF, abs=1e-5
    )
    # Every test frame's depth is the scan (never the annotated 7 m), and test frames stand alone.
    for test_id in shards.ids("eigen_test"):
        assert not np.any(shards.read(test_id, ["depth"])["depth"] == 7.0)
        assert pd.isna(shards.row(test_id)["prev_id"])
    calib = read_date_calibration(real_tree[0] / DATE_C)
    assert calib.baseline == pytest.approx((P2_TX - P3_TX) / FOCAL)


def test_labelled_partition_is_fixed_and_independent_of_n(
    real_tree: tuple[Path, Path], tmp_path: Path
) -> None:
    first = ShardSet(_convert(real_tree, tmp_path / "a" / f"{H}x{W}"))
    again = ShardSet(_convert(real_tree, tmp_path / "b" / f"{H}x{W}"))
    pool, test = first.ids("labelled_pool"), first.ids("labelled_test")
    assert (pool, test) == (again.ids("labelled_pool"), again.ids("labelled_test"))
    assert len(pool) == POOL and not set(pool) & set(test)
    assert first.manifest.parameters["labelled_pool_size"] == POOL
    assert first.manifest.parameters["labelled_seed"] == 0
    # Every few-shot size draws from the same pool; the test set is the same whatever N.
    for n in range(1, POOL + 1):
        for seed in (0, 1):
            assert set(few_shot_subset(pool, n, seed)) <= set(pool)
    # All labelled images carry image and label; those with a raw frame on disk also its scan.
    index = first.index.set_index("id")
    labelled = index[index["split"].isin(["labelled_pool", "labelled_test"])]
    assert labelled["has_label"].all() and labelled["has_image"].all()
    assert labelled["has_depth_lidar"].tolist() == [True, True, False, False, True, False]
    # The paper partition of the 200 real images (docs/datasets.md 1.6), pinned against numpy changes.
    real_pool, real_test = labelled_partition(list(range(200)), 128, 0)
    assert len(real_pool) == 128 and real_test[:10] == [3, 4, 7, 12, 14, 19, 21, 22, 24, 26]
    assert real_test[-5:] == [190, 193, 194, 197, 199] and len(real_test) == 72
    assert labelled_partition(list(range(200)), 128, 0) == (real_pool, real_test)
    with pytest.raises(ValueError, match="labelled_pool_size 6"):
        labelled_partition(list(range(6)), 6, 0)


def test_overlapping_labelled_drive_is_reported_and_left_out_of_pretraining(
    real_tree: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="geosem.sources.kitti.real"):
        shards = ShardSet(_convert(real_tree, tmp_path / "o" / f"{H}x{W}"))
    report = shards.manifest.parameters["pretraining_overlap"]
    assert report == {
        "drives": {DRIVE_B: ["semantics-000000_10", "semantics-000001_10"]},
        "excluded_list_frames": {DRIVE_B: 9},
    }
    assert any(
        DRIVE_B in record.getMessage() and "KITTI-2015" in record.getMessage() for record in caplog.records
    )
    index = shards.index
    pretraining = index[index["split"].isin(["train", "val", "pretrain_context"])]
    assert DRIVE_B not in set(pretraining["sequence"]) and set(pretraining["sequence"]) == {DRIVE_A}
    assert not any(sample.startswith(DRIVE_B) for sample in index["id"])
    # The labelled images of drive B still carry their raw frame's fields.
    assert index.set_index("id").loc["semantics-000000_10", "sequence"] == DRIVE_B
    assert shards.manifest.parameters["train_list"] == "tiny"
    assert set(shards.manifest.parameters["split_lists_sha256"]) == {
        "tiny_train_files.txt",
        "tiny_val_files.txt",
        "eigen_test_files.txt",
    }


def test_protocol_choice_and_list_checks(real_tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, lists = real_tree
    # A GeoSem world has its marker and is converted by the world protocol, which takes no eigen options.
    world = tmp_path / "world"
    world.mkdir()
    (world / WORLD_MARKER).write_text('{"generator": "driving", "version": "1", "digest": "0"}')
    with pytest.raises(ValueError, match=r"\['train_list'\] apply to protocol 'eigen'"):
        convert("kitti", world, tmp_path / "w" / "8x8", height=8, width=8, train_list="eigen_full")
    with pytest.raises(ValueError, match="video_frames applies to protocol 'world'"):
        _convert(real_tree, tmp_path / "v" / f"{H}x{W}", video_frames=3)
    # The shipped lists: monodepth2's sizes, Eigen test drives outside pre-training.
    zhou = load_split_lists("eigen_zhou")
    assert sum(len(f) for f in zhou.train.values()) == 21880 and len(zhou.train) == 32
    assert sum(len(f) for f in zhou.test.values()) == 697 and sum(len(f) for f in zhou.val.values()) == 237
    full = load_split_lists("eigen_full")
    assert sum(len(f) for f in full.train.values()) == 22600 and sum(len(f) for f in full.val.values()) == 888
    # The shipped lists name drives this tree lacks: the error names them and what to fetch.
    with pytest.raises(
        FileNotFoundError, match=r"drive\(s\) of the eigen_zhou / eigen_test lists are not on disk"
    ):
        convert(
            "kitti",
            root,
            tmp_path / "z" / f"{H}x{W}",
            height=H,
            width=W,
            progress=False,
            labelled_pool_size=4,
        )
    # A list naming a frame the drive does not have.
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in lists.iterdir():
        (bad / path.name).write_text(path.read_text())
    (bad / "tiny_val_files.txt").write_text(f"{DATE_A}/{DRIVE_A} 40 l\n")
    with pytest.raises(FileNotFoundError, match=rf"{DRIVE_A}: the tiny list names frame\(s\) \[40\]"):
        _convert((root, bad), tmp_path / "b" / f"{H}x{W}")
    assert not (tmp_path / "b" / f"{H}x{W}").exists()


def _writer(out: Path, **extra: object) -> ShardWriter:
    return ShardWriter(
        out,
        dataset="unit",
        variant=out.name,
        source_version="t",
        converter_version="0",
        label_space=None,
        parameters={},
        samples_per_part=2,
        **extra,
    )


def test_writer_optional_fields_need_a_declaration(tmp_path: Path) -> None:
    image, depth = np.zeros((2, 3, 3), np.uint8), np.ones((2, 3), np.float32)
    # Undeclared: every sample carries the first one's fields (all flags true), as before.
    with _writer(tmp_path / "strict") as writer:
        writer.add({"image": image, "depth": depth}, {"id": "a", "split": "train"})
        with pytest.raises(ValueError, match=r"sample 'b'.*lacks \['depth'\]"):
            writer.add({"image": image}, {"id": "b", "split": "train"})
        writer.add({"image": image, "depth": depth}, {"id": "c", "split": "train"})
    strict = ShardSet(tmp_path / "strict")
    assert strict.index["has_depth"].all() and strict.index["has_image"].all()
    # Declared: a field may first appear in a later part; absent rows read as an error.
    with _writer(
        tmp_path / "optional", fields={"image": (2, 3, 3), "depth": (2, 3), "label": (2, 3)}
    ) as writer:
        for k, arrays in enumerate([{"image": image}, {"image": image}, {"image": image, "depth": depth}]):
            writer.add(arrays, {"id": f"s{k}", "split": "train"})
        with pytest.raises(ValueError, match=r"sample 'x'.*field 'depth'"):
            writer.add({"image": image, "depth": depth[:1]}, {"id": "x", "split": "train"})
    optional = ShardSet(tmp_path / "optional")
    assert verify_shards(tmp_path / "optional") == 3
    assert set(optional.manifest.fields) == {"image", "depth"}  # no sample carried a label
    assert optional.ids(having=["depth"]) == ["s2"] and optional.index["has_depth"].tolist() == [
        False,
        False,
        True,
    ]
    assert np.array_equal(optional.read("s2", ["depth"])["depth"], depth)


def test_every_shipped_split_list_is_package_data() -> None:
    """A non-editable install (pip install ., a wheel) carries only the data files pyproject names: every
    file of the shipped split folder must match its package-data patterns, or the real-KITTI converter
    would find no split lists there."""
    import fnmatch
    import tomllib

    from geosem.sources.kitti.splits import SPLIT_DIR

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["geosem.sources.kitti"]
    shipped = sorted(p.relative_to(SPLIT_DIR.parent).as_posix() for p in SPLIT_DIR.iterdir())
    assert shipped, SPLIT_DIR
    missing = [name for name in shipped if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    assert not missing, f"not package data in pyproject.toml: {missing}"
