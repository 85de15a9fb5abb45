"""The KITTI layout the driving world writes, and the KITTI converter that reads it (and would read the
real dataset): calibration, OXTS poses, velodyne projection, annotated depth, semantics and splits."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from geosem.labelspaces import IGNORE_INDEX, cityscapes_id_to_train_id
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.sources import convert
from geosem.sources.kitti import _DriveReader
from geosem.sources.kitti.files import (
    find_drives,
    read_calib_file,
    read_date_calibration,
    read_flow_png,
    read_mapping,
    read_velodyne,
)
from geosem.worlds.driving import drive_ids
from geosem.worlds.driving_frames import DriveRenderer
from geosem.worlds.kitti_writer import encode_flow, semantics_selection

from tests.helpers import TINY_WORLD


def test_calibration_gives_kitti_intrinsics_and_baselines(tiny_raw: Path) -> None:
    for drive in drive_ids(TINY_WORLD):
        calib = read_date_calibration(tiny_raw / "raw_data" / drive.date)
        rig = DriveRenderer(TINY_WORLD, drive).rig
        assert calib.intrinsics == pytest.approx(rig.intrinsics, abs=1e-9)
        assert calib.size == (64, 96)
        assert calib.baseline == pytest.approx({"a": 0.5327, "b": 0.5372}[drive.date_key], abs=1e-6)
    raw = read_calib_file(tiny_raw / "raw_data" / "2011_09_26" / "calib_cam_to_cam.txt")
    assert raw["calib_time"] == "09-Jan-2012 13:57:47"
    assert not np.allclose(raw["R_rect_00"].reshape(3, 3), np.eye(3))  # a real rectification to undo


def test_oxts_packets_give_back_the_world_poses(tiny_shards: Path) -> None:
    shards = ShardSet(tiny_shards)
    for drive in drive_ids(TINY_WORLD):
        renderer = DriveRenderer(TINY_WORLD, drive)
        rows = shards.index[shards.index["sequence"] == drive.name]
        assert len(rows) > 0
        for row in rows.itertuples():
            pose = np.asarray(row.pose).reshape(4, 4)
            assert np.abs(pose - renderer.pose(int(row.frame))).max() < 1e-6


def _median_error(root: Path, drive_name: str, cam_from_velo: np.ndarray | None = None) -> float:
    """Median relative difference between projected lidar returns and the dense depth at their pixels."""
    drive = find_drives(root)[drive_name]
    calib = read_date_calibration(drive.path.parent)
    if cam_from_velo is not None:
        calib = type(calib)(calib.p2, calib.p3, calib.size, cam_from_velo, calib.cam2_from_imu)
    reader = _DriveReader(root, drive, calib, 64, 96)
    errors = []
    for frame in reader.frames:
        fields = reader.fields(frame)
        both = (fields["depth"] > 0) & (fields["depth_lidar"] > 0)
        errors.append(np.abs(fields["depth_lidar"][both] - fields["depth"][both]) / fields["depth"][both])
    return float(np.median(np.concatenate(errors)))


def test_velodyne_projection_lands_on_the_dense_depth(tiny_raw: Path) -> None:
    """At the rendered size the projected scan matches the dense depth to a median of under 1 % (a return
    lands anywhere inside a pixel while the dense depth is the pixel centre's, which on the ground at
    10 m spans +-2.5 % at 64 rows; and the scanner sees past edges the camera does not); skipping
    R_rect_00 in the chain doubles that, so the test would catch a wrong calibration."""
    drive = drive_ids(TINY_WORLD)[0]
    good = _median_error(tiny_raw, drive.name)
    calib = read_date_calibration(tiny_raw / "raw_data" / drive.date)
    velo = read_calib_file(tiny_raw / "raw_data" / drive.date / "calib_velo_to_cam.txt")
    no_rect = np.eye(4)
    no_rect[:3, :3] = velo["R"].reshape(3, 3)
    no_rect[:3, 3] = velo["T"] + np.linalg.solve(calib.p2[:, :3], calib.p2[:, 3])
    bad = _median_error(tiny_raw, drive.name, no_rect)
    print(f"lidar vs dense depth, median relative difference: {good:.4f} with R_rect_00, {bad:.4f} without")
    assert good < 0.01 and bad > 1.8 * good


def test_splits_hold_out_the_labelled_drives(tiny_raw: Path, tiny_shards: Path) -> None:
    shards = ShardSet(tiny_shards)
    index = shards.index
    # The held-out video: frames 1 and 2 of the 4-frame held-out drive (the ones with both neighbours)
    # and their neighbours 0 and 3 as context.
    assert shards.manifest.splits == {"test": 4, "train": 8, "heldout_video": 2, "heldout_context": 2}
    assert shards.manifest.converter_version == "3" and shards.manifest.parameters["video_frames"] == 100
    assert shards.manifest.label_space == "cityscapes19"
    mapping = read_mapping(tiny_raw)
    heldout = {entry[1] for entry in mapping if entry is not None}
    test_sequences = set(index.loc[index["split"] == "test", "sequence"])
    train_sequences = set(index.loc[index["split"] == "train", "sequence"])
    assert test_sequences == heldout and not train_sequences & heldout
    # Each labelled image is the raw frame its mapping line names (same pixels), and its label agrees.
    for (drive, t), entry in zip(semantics_selection(TINY_WORLD), mapping, strict=True):
        assert entry == (drive.date, drive.name, t)
    video_sequences = set(index.loc[index["split"].isin(["heldout_video", "heldout_context"]), "sequence"])
    assert video_sequences == heldout
    sample_id = shards.ids("test")[0]
    row = shards.row(sample_id)
    raw = cv2.imread(
        str(
            tiny_raw
            / "raw_data"
            / "2011_10_03"
            / row["sequence"]
            / "image_02"
            / "data"
            / f"{row['frame']:010d}.png"
        )
    )
    arrays = shards.read(sample_id, ("image", "label", "right", "depth", "depth_lidar", "flow", "dynamic"))
    assert np.array_equal(arrays["image"], raw[..., ::-1])
    assert set(np.unique(arrays["label"]).tolist()) <= set(range(19)) | {IGNORE_INDEX}
    # Train frames are chained through prev_id / next_id within their drive; test frames stand alone.
    train = index[index["split"] == "train"]
    assert (
        train["next_id"].notna().sum() == 8 - 2
        and index.loc[index["split"] == "test", "prev_id"].isna().all()
    )


def test_heldout_video_pairs_come_from_the_heldout_drives_with_their_neighbours(
    tiny_raw: Path, tiny_shards: Path
) -> None:
    """Every heldout_video frame is a raw frame of a held-out drive, never of a training drive, linked to
    the frames before and after it in that drive (stored, with depth and pose), so a pair task reads
    them; its context frames are unlinked, so nothing takes them for a pair."""
    shards = ShardSet(tiny_shards)
    index = shards.index
    heldout = {entry[1] for entry in read_mapping(tiny_raw) if entry is not None}
    video = index[index["split"] == "heldout_video"]
    assert list(video["frame"]) == [1, 2] and set(video["sequence"]) == heldout
    assert not set(video["id"]) & set(shards.ids("train"))
    assert not set(index.loc[index["split"] == "train", "sequence"]) & heldout
    context = index[index["split"] == "heldout_context"]
    assert context["prev_id"].isna().all() and context["next_id"].isna().all()
    for row in video.itertuples():
        for column, step in (("prev_id", -1), ("next_id", 1)):
            neighbour = shards.row(getattr(row, column))
            assert neighbour["sequence"] == row.sequence and neighbour["frame"] == row.frame + step
            assert neighbour["split"] in ("heldout_video", "heldout_context")
    dataset = ShardDataset(
        shards, shards.ids("heldout_video"), ("image", "image_prev", "image_next", "depth", "pose_to_prev")
    )
    assert len(dataset) == 2
    first = video.iloc[0]
    raw = cv2.imread(
        str(tiny_raw / "raw_data" / "2011_10_03" / first["sequence"] / "image_02" / "data" / "0000000000.png")
    )
    sample = dataset[0]
    assert np.array_equal(
        (sample["image_prev"] * 255).round().byte().permute(1, 2, 0).numpy(), raw[..., ::-1]
    )
    assert (sample["depth"] > 0).any()
    renderer = DriveRenderer(TINY_WORLD, next(d for d in drive_ids(TINY_WORLD) if d.heldout))
    expected = np.linalg.inv(renderer.pose(0)) @ renderer.pose(1)
    assert np.abs(sample["pose_to_prev"].numpy() - expected).max() < 1e-5


def test_the_heldout_video_size_is_a_parameter(tiny_raw: Path, tiny_shards: Path, tmp_path: Path) -> None:
    """``video_frames`` bounds the pairs (spread over the drive's inner frames); 0 writes no video and
    leaves train and test exactly as with it."""
    one = ShardSet(
        convert(
            "kitti", tiny_raw, tmp_path / "one" / "64x96", height=64, width=96, video_frames=1, progress=False
        )
    )
    assert one.manifest.splits["heldout_video"] == 1 and one.manifest.splits["heldout_context"] == 2
    none = ShardSet(
        convert(
            "kitti",
            tiny_raw,
            tmp_path / "none" / "64x96",
            height=64,
            width=96,
            video_frames=0,
            progress=False,
        )
    )
    assert none.manifest.splits == {"test": 4, "train": 8}
    full = ShardSet(tiny_shards)
    for split in ("train", "test"):
        assert none.ids(split) == full.ids(split)
        for sample_id in none.ids(split):
            assert np.array_equal(
                none.read(sample_id, ["image"])["image"], full.read(sample_id, ["image"])["image"]
            )
    with pytest.raises(ValueError, match="video_frames"):
        convert(
            "kitti",
            tiny_raw,
            tmp_path / "bad" / "64x96",
            height=64,
            width=96,
            video_frames=-1,
            progress=False,
        )


def _copy(tiny_raw: Path, tmp_path: Path) -> Path:
    root = tmp_path / "kitti"
    shutil.copytree(tiny_raw, root)
    return root


def test_annotated_depth_in_the_benchmark_layout_is_found(
    tiny_raw: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    """KITTI depth as downloaded (data_depth_annotated/train/<drive>/proj_depth/...) works as well as
    monodepth2's merged layout."""
    root = _copy(tiny_raw, tmp_path)
    for drive in find_drives(root).values():
        target = root / "data_depth_annotated" / "train" / drive.name
        target.mkdir(parents=True)
        shutil.move(str(drive.path / "proj_depth"), str(target / "proj_depth"))
    out = convert(
        "kitti",
        root,
        tmp_path / "shards" / "64x96",
        height=64,
        width=96,
        dataset="synth_driving",
        progress=False,
    )
    moved, original = ShardSet(out), ShardSet(tiny_shards)
    for sample_id in original.ids():
        assert np.array_equal(
            moved.read(sample_id, ["depth"])["depth"], original.read(sample_id, ["depth"])["depth"]
        )


def test_a_frame_without_ground_truth_is_named(tiny_raw: Path, tmp_path: Path) -> None:
    root = _copy(tiny_raw, tmp_path)
    drive = drive_ids(TINY_WORLD)[0]
    (
        root
        / "raw_data"
        / drive.date
        / drive.name
        / "proj_depth"
        / "groundtruth"
        / "image_02"
        / "0000000002.png"
    ).unlink()
    with pytest.raises(ValueError, match=f"{drive.name}-0000000002"):
        convert("kitti", root, tmp_path / "out" / "64x96", height=64, width=96, progress=False)
    assert not (tmp_path / "out" / "64x96").exists()  # nothing half written


def test_bad_files_are_named(tiny_raw: Path, tmp_path: Path) -> None:
    root = _copy(tiny_raw, tmp_path)
    drive = drive_ids(TINY_WORLD)[0]
    calib = root / "raw_data" / drive.date / "calib_cam_to_cam.txt"
    calib.write_text(
        "\n".join(line for line in calib.read_text().splitlines() if not line.startswith("P_rect_03"))
    )
    with pytest.raises(KeyError, match="P_rect_03"):
        read_date_calibration(calib.parent)
    scan = root / "raw_data" / drive.date / drive.name / "velodyne_points" / "data" / "0000000000.bin"
    scan.write_bytes(scan.read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"0000000000\.bin"):
        read_velodyne(scan)
    label = root / "data_semantics" / "training" / "semantic" / "000000_10.png"
    cv2.imwrite(str(label), np.full((64, 96), 40, np.uint8))
    # Repair the calibration and the scan: the conversion must now stop at the label file.
    shutil.copy(tiny_raw / "raw_data" / drive.date / "calib_cam_to_cam.txt", calib)
    shutil.copy(tiny_raw / scan.relative_to(root), scan)
    with pytest.raises(ValueError, match=r"000000_10\.png"):
        convert("kitti", root, tmp_path / "out" / "64x96", height=64, width=96, progress=False)


def test_flow_png_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    flow = rng.uniform(-100, 100, size=(6, 7, 2)).astype(np.float32)
    flow[2, 3] = np.nan
    path = tmp_path / "flow.png"
    cv2.imwrite(str(path), encode_flow(flow))
    back = read_flow_png(path)
    assert np.isnan(back[2, 3]).all() and np.isfinite(np.delete(back.reshape(-1, 2), 2 * 7 + 3, axis=0)).all()
    ok = np.isfinite(flow)
    assert np.abs(back[ok] - flow[ok]).max() <= 1 / 128 + 1e-6


def test_cityscapes_label_ids_become_train_ids() -> None:
    table = cityscapes_id_to_train_id()
    assert table[7] == 0 and table[8] == 1 and table[24] == 11 and table[26] == 13 and table[33] == 18
    assert table[0] == table[6] == table[9] == table[34] == IGNORE_INDEX
