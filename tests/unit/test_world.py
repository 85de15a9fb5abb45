"""The synthetic worlds themselves: determinism, exact culling, classes, motion, lidar, indoor rooms.

Configs are small (a few frames at low resolution) so the file runs in seconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from geosem.labelspaces import CITYSCAPES_LABEL_IDS
from geosem.worlds import raycast as rc
from geosem.worlds.driving import DrivingWorldConfig, drive_ids
from geosem.worlds.driving_frames import DriveRenderer
from geosem.worlds.driving_view import cast_view
from geosem.worlds.indoor import IndoorWorldConfig, render_room
from geosem.worlds.kitti_writer import _CITYSCAPES_OF_PART, write_driving_world
from geosem.worlds.parts import PART_ID, PARTS

SMALL = DrivingWorldConfig(
    seed=2, drives=2, heldout_drives=1, frames=3, semantics_frames=2, height=40, width=128, lidar_beams=16
)


def _frame_arrays(renderer: DriveRenderer, t: int) -> list[np.ndarray]:
    f = renderer.frame(t)
    return [f.image, f.right, f.depth, f.right_depth, f.parts, f.instance, f.dynamic, f.flow, f.lidar, f.pose]


def test_frames_are_deterministic_and_depend_on_seed_and_drive() -> None:
    drive = drive_ids(SMALL)[0]
    a, b = _frame_arrays(DriveRenderer(SMALL, drive), 1), _frame_arrays(DriveRenderer(SMALL, drive), 1)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    other_seed = DrivingWorldConfig(**{**SMALL.__dict__, "seed": 3})
    assert DriveRenderer(other_seed, drive).frame(1).image.tobytes() != a[0].tobytes()
    assert DriveRenderer(SMALL, drive_ids(SMALL)[1]).frame(1).image.tobytes() != a[0].tobytes()


def test_written_kitti_trees_are_byte_identical(tmp_path: Path) -> None:
    config = DrivingWorldConfig(
        seed=4, drives=1, heldout_drives=1, frames=2, semantics_frames=1, height=24, width=80, lidar_beams=8
    )
    trees = []
    for name in ("a", "b"):
        root = write_driving_world(config, tmp_path / name)
        trees.append(
            {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        )
    assert trees[0].keys() == trees[1].keys() and trees[0] == trees[1]
    assert not [name for name in trees[0] if ".tmp-" in name]  # no staging folder left behind


def _full(m: int, rows: int, cols: int) -> rc.Rects:
    zeros = np.zeros(m, dtype=np.int64)
    return rc.Rects(np.arange(m), zeros, np.full(m, rows), zeros, np.full(m, cols), np.zeros(m))


@pytest.mark.parametrize("t", [0, 2])
def test_culling_is_exact_for_camera_and_lidar(t: int) -> None:
    """Casting every primitive against every ray gives exactly what the culled renderer gives."""
    for drive in drive_ids(SMALL):
        r = DriveRenderer(SMALL, drive)
        prims = r.scene.primitives_at(t / SMALL.fps)
        pose = r.pose(t)
        grid = rc.RayGrid.rotated(r.rays, pose[:3, :3])
        rects = rc.pinhole_rects(prims.corners(), pose[:3, 3], pose[:3, :3], r.rig.intrinsics, 40, 128)
        culled = cast_view(r.scene, prims, pose[:3, 3], grid, rects)
        brute = cast_view(r.scene, prims, pose[:3, 3], grid, _full(len(prims), 40, 128))
        assert np.array_equal(culled.code, brute.code) and np.array_equal(culled.t, brute.t)
        assert rects.prim.size < len(prims)  # culling did drop something

        world_velo = pose @ r.rig.cam2_from_velo()
        origin, rot = world_velo[:3, 3], world_velo[:3, :3]
        lgrid = rc.RayGrid.rotated(r.lidar_rays, rot)
        velo_world = np.linalg.inv(world_velo)
        corners = prims.corners() @ velo_world[:3, :3].T + velo_world[:3, 3]
        frames = rc.local_frames(prims, origin)
        tilt = math.acos(min(1.0, abs(float(-rot[1, 2]))))
        lrects = rc.spherical_rects(
            frames, origin[1] - prims.center[:, 1], corners, tilt, r.elevations, r.az_step, r.columns
        )
        lculled = cast_view(r.scene, prims, origin, lgrid, lrects, frames)
        lbrute = cast_view(r.scene, prims, origin, lgrid, _full(len(prims), *lgrid.shape), frames)
        assert np.array_equal(lculled.code, lbrute.code) and np.array_equal(lculled.t, lbrute.t)


@pytest.fixture(scope="module")
def drive_frames() -> list:
    """Two frames of each of four drives at 48x160."""
    config = DrivingWorldConfig(
        seed=7, drives=3, heldout_drives=1, frames=4, semantics_frames=2, height=48, width=160
    )
    frames = []
    for drive in drive_ids(config):
        r = DriveRenderer(config, drive)
        frames += [(r, r.frame(t)) for t in (0, 3)]
    return frames


def test_every_required_cityscapes_class_appears(drive_frames: list) -> None:
    seen = set()
    for _, f in drive_frames:
        seen |= set(np.unique(_CITYSCAPES_OF_PART[f.parts]).tolist())
    required = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic sign", "vegetation")
    required += ("terrain", "sky", "person", "car")
    for name in required:
        assert CITYSCAPES_LABEL_IDS[name][0] in seen, f"{name} never rendered"


def test_shapes_depth_and_rig(drive_frames: list) -> None:
    for r, f in drive_frames:
        assert f.image.shape == (48, 160, 3) and f.image.dtype == np.uint8
        assert f.right.shape == f.image.shape and f.right.tobytes() != f.image.tobytes()
        assert f.depth.dtype == np.float32 and f.flow.shape == (48, 160, 2)
        sky = f.parts == PART_ID["sky"]
        assert np.all(f.depth[sky] == 0) and np.all(f.depth[~sky] > 0)
        # KITTI's focal length scaled to the rendered width (721.5377 px at 1242).
        kitti_fx, kitti_width = {"a": (721.5377, 1242), "b": (718.856, 1241)}[r.drive.date_key]
        assert r.rig.fx == pytest.approx(kitti_fx * 160 / kitti_width)
        rot = f.pose[:3, :3]
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9) and abs(f.pose[1, 3]) < 1e-9


def test_moving_objects_have_their_own_flow(drive_frames: list) -> None:
    """Pixels of moving cars and people move differently from the static scene at their depth."""
    dynamic_pixels, differing = 0, 0
    for r, f in drive_frames:
        if not f.dynamic.any():
            continue
        fx, fy, cx, cy = r.rig.intrinsics
        v, u = np.mgrid[0:48, 0:160].astype(np.float64)
        z = f.depth.astype(np.float64)
        cam = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], axis=-1)
        nxt = r.pose(f.index + 1)
        rel = np.linalg.inv(nxt) @ f.pose
        moved = cam @ rel[:3, :3].T + rel[:3, 3]
        static_flow = np.stack(
            [fx * moved[..., 0] / moved[..., 2] + cx - u, fy * moved[..., 1] / moved[..., 2] + cy - v], -1
        )
        on = f.dynamic.astype(bool) & (z > 0)
        diff = np.linalg.norm(f.flow[on] - static_flow[on], axis=-1)
        dynamic_pixels += int(on.sum())
        differing += int((diff > 0.05).sum())
        still = ~f.dynamic.astype(bool) & (z > 0)
        assert np.nanmax(np.linalg.norm(f.flow[still] - static_flow[still], axis=-1)) < 1e-2
    assert dynamic_pixels > 20 and differing / dynamic_pixels > 0.9


def test_lidar_is_a_scanner_not_a_subsample(drive_frames: list) -> None:
    for r, f in drive_frames:
        pts = f.lidar
        assert pts.dtype == np.float32 and pts.shape[1] == 4
        rng_m = np.linalg.norm(pts[:, :3], axis=1)
        elevation = np.degrees(np.arcsin(pts[:, 2] / rng_m))
        beams = np.degrees(r.elevations)
        # Every return lies on one of the scanner's beams (range noise moves it along the beam only).
        nearest = np.abs(elevation[:, None] - beams[None, :]).min(axis=1)
        assert nearest.max() < 1e-3
        # Returns from the ground ahead lie about 1.73 m below the scanner (z up), with some dropouts.
        assert len(np.unique(np.round(elevation, 3))) <= r.config.lidar_beams
        possible = r.config.lidar_beams * r.columns
        assert 0.2 * possible < pts.shape[0] < possible
        ground = pts[(np.abs(pts[:, 1]) < 1.0) & (pts[:, 0] > 4) & (pts[:, 0] < 8)]
        if ground.size:
            assert np.median(ground[:, 2]) == pytest.approx(-1.73, abs=0.12)
        assert pts[:, 3].min() >= 0.0 and pts[:, 3].max() <= 1.0


def test_indoor_rooms_have_dense_capped_depth_and_nyu_parts() -> None:
    config = IndoorWorldConfig(seed=1, rooms=3, frames_per_room=3, height=36, width=48)
    parts_seen: set[int] = set()
    rolls = []
    for index in range(3):
        _, frames = render_room(config, index)
        for f in frames:
            assert f.image.shape == (36, 48, 3) and f.depth.shape == (36, 48)
            assert f.depth.min() > 0 and f.depth.max() <= 10.0  # closed room: dense; capped at 10 m
            parts_seen |= set(np.unique(f.parts).tolist())
            rolls.append(math.degrees(math.atan2(f.pose[1, 0], f.pose[1, 1])))
    names = {PARTS[p].name for p in parts_seen}
    assert {"room wall", "floor"} <= names and len(names) >= 6
    assert all(PARTS[p].nyu_raw is not None for p in parts_seen)
    assert np.std(rolls) > 0.5  # a handheld camera rolls (6-DoF), the car camera never does


def test_some_drives_are_static_scenes() -> None:
    """Static scenes (only the ego car moves) as well as drives with moving cars and people."""
    from geosem.worlds.driving_layout import build_scene

    config = DrivingWorldConfig(seed=0, drives=12, heldout_drives=4, frames=4, semantics_frames=4)
    scenes = [build_scene(config, d.index) for d in drive_ids(config)]
    static = [s for s in scenes if s.static]
    assert 0 < len(static) < len(scenes)
    assert all(not (s.objects.speed != 0).any() for s in static)
    assert all((s.objects.speed != 0).any() for s in scenes if not s.static)
