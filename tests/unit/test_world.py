"""Tests of the embedded synthetic driving world: determinism, ground-truth consistency, honesty, layout.

Configs are tiny so the whole file runs in a few seconds; the geometry and class checks use one
default-sized sequence, rendered once per module.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import pytest
from geosem.labelspaces import CITYSCAPES19_CLASSES, IGNORE_INDEX
from geosem.sources.synthetic import (
    DEPTH_SCALE,
    WORLD_VERSION,
    DrivingWorldConfig,
    SequenceRender,
    render_sequence,
    write_driving_world,
)

SKY = CITYSCAPES19_CLASSES.index("sky")
TINY = DrivingWorldConfig(sequences=2, frames=3, height=32, width=96)


@pytest.fixture(scope="module")
def default_sequence() -> SequenceRender:
    return render_sequence(DrivingWorldConfig(), 0)


def _arrays(render: SequenceRender) -> list[np.ndarray]:
    out = [render.images, render.depth, render.labels, render.poses, np.asarray(render.intrinsics)]
    return out + ([render.right_images] if render.right_images is not None else [])


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_is_deterministic_and_seed_dependent() -> None:
    a, b = render_sequence(TINY, 1), render_sequence(TINY, 1)
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    other_seed = render_sequence(DrivingWorldConfig(seed=1, sequences=2, frames=3, height=32, width=96), 1)
    assert other_seed.images.tobytes() != a.images.tobytes()
    other_sequence = render_sequence(TINY, 0)
    assert other_sequence.images.tobytes() != a.images.tobytes()


def test_written_files_are_byte_identical(tmp_path: Path) -> None:
    write_driving_world(TINY, tmp_path / "a", progress=False)
    write_driving_world(TINY, tmp_path / "b", progress=False)
    files_a, files_b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert files_a.keys() == files_b.keys() and files_a == files_b


def test_shapes_dtypes_and_ranges(default_sequence: SequenceRender) -> None:
    config = DrivingWorldConfig()
    r = default_sequence
    t, h, w = config.frames, config.height, config.width
    assert r.images.shape == (t, h, w, 3) and r.images.dtype == np.uint8
    assert r.depth.shape == (t, h, w) and r.depth.dtype == np.float32
    assert r.labels.shape == (t, h, w) and r.labels.dtype == np.uint8
    assert r.poses.shape == (t, 4, 4) and r.poses.dtype == np.float64
    assert r.right_images is None
    assert r.intrinsics == pytest.approx((0.58 * w, 1.92 * h, 0.5 * w, 0.5 * h))
    ids = set(np.unique(r.labels).tolist())
    assert ids <= set(range(len(CITYSCAPES19_CLASSES))) | {IGNORE_INDEX}
    sky = r.labels == SKY
    assert np.all(r.depth[sky] == 0) and np.all(r.depth[~sky] > 0)
    assert np.isfinite(r.depth).all() and r.depth.max() < 65535 / DEPTH_SCALE
    assert len(ids - {IGNORE_INDEX}) >= 5
    for name in ("road", "sidewalk", "building", "vegetation", "sky"):
        assert CITYSCAPES19_CLASSES.index(name) in ids, name
    # Poses: rigid, camera height constant (no pitch/roll), camera moves forward at the configured speed.
    rot = r.poses[:, :3, :3]
    assert np.allclose(rot @ rot.transpose(0, 2, 1), np.eye(3), atol=1e-9)
    assert np.allclose(r.poses[0], np.eye(4))
    assert np.allclose(r.poses[:, 1, 3], 0.0)
    steps = np.linalg.norm(np.diff(r.poses[:, :3, 3], axis=0), axis=1)
    assert np.allclose(steps, config.speed_mps / config.fps, rtol=1e-3)


def test_right_camera_is_offset_along_x() -> None:
    config = DrivingWorldConfig(sequences=1, frames=2, height=32, width=96, render_right=True)
    r = render_sequence(config, 0)
    assert r.right_images is not None and r.right_images.shape == r.images.shape
    assert r.right_images.tobytes() != r.images.tobytes()


def test_depth_and_poses_agree_between_frames(default_sequence: SequenceRender) -> None:
    """Back-project frame t with its depth and pose, project into frame t+1, compare with its depth."""
    r = default_sequence
    fx, fy, cx, cy = r.intrinsics
    _, h, w = r.depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    agree, total = 0, 0
    for t in range(0, r.depth.shape[0] - 1, 3):
        z = r.depth[t].astype(np.float64)
        valid = z > 0
        cam = np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], axis=-1)[valid]
        world = cam @ r.poses[t, :3, :3].T + r.poses[t, :3, 3]
        nxt = (world - r.poses[t + 1, :3, 3]) @ r.poses[t + 1, :3, :3]  # R^T (X - t), as row vectors
        in_front = nxt[:, 2] > 0.5
        nxt = nxt[in_front]
        u2 = np.rint(fx * nxt[:, 0] / nxt[:, 2] + cx).astype(int)
        v2 = np.rint(fy * nxt[:, 1] / nxt[:, 2] + cy).astype(int)
        inside = (u2 >= 0) & (u2 < w) & (v2 >= 0) & (v2 < h)
        seen = r.depth[t + 1][v2[inside], u2[inside]].astype(np.float64)
        expected = nxt[inside, 2]
        ok = seen > 0
        rel = np.abs(seen[ok] - expected[ok]) / expected[ok]
        agree += int((rel < 0.05).sum())
        total += rel.size
    # Occlusion boundaries, disocclusions and nearest-pixel rounding near the horizon account for the rest.
    assert total > 0 and agree / total > 0.85


def _nearest_mean_miou(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Fit class-mean RGB on train, label test pixels by the nearest mean, return mIoU over test classes."""
    classes = np.unique(train_y)
    means = np.stack([train_x[train_y == c].mean(axis=0) for c in classes])
    distance = ((test_x[:, None, :] - means[None, :, :]) ** 2).sum(axis=-1)
    pred = classes[distance.argmin(axis=1)]
    ious = [
        ((pred == c) & (test_y == c)).sum() / ((pred == c) | (test_y == c)).sum() for c in np.unique(test_y)
    ]
    return float(np.mean(ious))


def test_colour_does_not_reveal_class() -> None:
    config = DrivingWorldConfig(sequences=6, frames=3, height=48, width=144)
    renders = [render_sequence(config, i) for i in range(config.sequences)]
    x = [r.images.reshape(-1, 3).astype(np.float64) for r in renders]
    y = [r.labels.reshape(-1) for r in renders]
    train_x, train_y = np.concatenate(x[:3]), np.concatenate(y[:3])
    test_x, test_y = np.concatenate(x[3:]), np.concatenate(y[3:])
    miou = _nearest_mean_miou(train_x, train_y, test_x, test_y)
    # The same probe on a naive renderer that paints each class its own colour (plus noise) is near
    # perfect, which shows the probe itself works.
    rng = np.random.default_rng(0)
    class_colour = rng.uniform(0, 255, size=(256, 3))
    naive_train = class_colour[train_y] + rng.normal(0, 10, size=train_x.shape)
    naive_test = class_colour[test_y] + rng.normal(0, 10, size=test_x.shape)
    naive = _nearest_mean_miou(naive_train, train_y, naive_test, test_y)
    assert naive > 0.9
    assert miou < 0.35, f"nearest-class-mean RGB mIoU {miou:.3f}: colour is leaking the class"


def test_write_layout_round_trip(tmp_path: Path) -> None:
    config = DrivingWorldConfig(sequences=2, frames=3, height=32, width=96, render_right=True)
    out = tmp_path / "world"
    out.mkdir()
    (out / "stale.txt").write_text("old contents must disappear")
    write_driving_world(config, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["world"]  # no temp or old dir left behind
    assert not (out / "stale.txt").exists()
    world = json.loads((out / "world.json").read_text())
    assert world["generator"] == "geosem.synthetic.driving"
    assert world["version"] == WORLD_VERSION
    assert world["label_space"] == "cityscapes19"
    assert world["sequences"] == ["seq_000", "seq_001"]
    assert world["config"] == json.loads(json.dumps(asdict(config)))
    for index, name in enumerate(world["sequences"]):
        seq = out / name
        r = render_sequence(config, index)
        camera = json.loads((seq / "camera.json").read_text())
        assert (camera["height"], camera["width"]) == (32, 96)
        assert (camera["fx"], camera["fy"], camera["cx"], camera["cy"]) == pytest.approx(r.intrinsics)
        assert camera["baseline_m"] == pytest.approx(config.baseline_m)
        poses = np.loadtxt(seq / "poses.txt", ndmin=2)
        assert poses.shape == (3, 12)
        assert np.allclose(poses.reshape(3, 3, 4), r.poses[:, :3, :], atol=1e-8)
        for folder in ("image", "right", "depth", "label"):
            assert sorted(p.name for p in (seq / folder).iterdir()) == [
                "000000.png",
                "000001.png",
                "000002.png",
            ]
        for t in range(3):
            image = cv2.imread(str(seq / "image" / f"{t:06d}.png"), cv2.IMREAD_COLOR)
            assert np.array_equal(image[..., ::-1], r.images[t])
            right = cv2.imread(str(seq / "right" / f"{t:06d}.png"), cv2.IMREAD_COLOR)
            assert np.array_equal(right[..., ::-1], r.right_images[t])
            depth = cv2.imread(str(seq / "depth" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
            assert depth.dtype == np.uint16
            assert np.all(np.abs(depth / DEPTH_SCALE - r.depth[t]) <= 1.0 / DEPTH_SCALE)
            assert np.array_equal(depth == 0, r.depth[t] == 0)
            label = cv2.imread(str(seq / "label" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED)
            assert label.dtype == np.uint8 and np.array_equal(label, r.labels[t])
