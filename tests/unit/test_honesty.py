"""Measured honesty of the driving world, on shards made by the real KITTI converter.

* Colour must not give the class away (else pre-training could not matter): a nearest-class-mean
  classifier on RGB, fitted on the train split, scores a low mIoU on the held-out test split, while the
  same-sized classifier given true depth and height above the road scores far higher.
* Depth, poses, stereo and flow must agree (else self-supervision could not learn): warping frame t+1
  into t with true depth and pose reproduces frame t on static, unoccluded pixels; so does the stereo
  warp with the baseline; the flow ground truth equals those warps on static pixels and carries the
  objects' own motion on moving ones.

Every test prints what it measured (``pytest -s`` shows it); the numbers are quoted in README.md.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from geosem.geometry import flow_from_depth_pose, intrinsics_matrix, warp_with_depth, warp_with_flow
from geosem.labelspaces import IGNORE_INDEX
from geosem.shards.reader import ShardSet
from geosem.sources import convert
from geosem.worlds.driving import DrivingWorldConfig
from geosem.worlds.kitti_writer import write_driving_world

HEIGHT, WIDTH = 48, 160
WORLD = DrivingWorldConfig(
    seed=5, drives=6, heldout_drives=3, frames=4, semantics_frames=12, height=HEIGHT, width=WIDTH
)
FIELDS = ("image", "right", "depth", "label", "flow", "dynamic")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> ShardSet:
    base = tmp_path_factory.mktemp("honesty")
    raw = write_driving_world(WORLD, base / "synth_driving")
    # Stored at the rendered size, so that every field is exact (no resampling between them).
    return ShardSet(
        convert(
            "kitti", raw, base / "shards" / f"{HEIGHT}x{WIDTH}", height=HEIGHT, width=WIDTH, progress=False
        )
    )


def _miou(pred: np.ndarray, truth: np.ndarray) -> float:
    ious = [
        ((pred == c) & (truth == c)).sum() / ((pred == c) | (truth == c)).sum()
        for c in np.unique(truth)
        if c != IGNORE_INDEX
    ]
    return float(np.mean(ious))


def _pixels(shards: ShardSet, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per valid pixel: RGB, (log depth, height above the road) and the label."""
    rgb, geometry, labels = [], [], []
    for sample_id in shards.ids(split):
        row = shards.row(sample_id)
        a = shards.read(sample_id, ("image", "depth", "label"))
        depth = a["depth"].astype(np.float64)
        rows = np.arange(HEIGHT, dtype=np.float64)[:, None].repeat(WIDTH, axis=1)
        height = np.where(depth > 0, WORLD.camera_height_m - (rows - row["cy"]) / row["fy"] * depth, 50.0)
        keep = a["label"].reshape(-1) != IGNORE_INDEX
        rgb.append(a["image"].reshape(-1, 3).astype(np.float64)[keep])
        geometry.append(np.stack([np.log(np.maximum(depth, 0.5)), height], axis=-1).reshape(-1, 2)[keep])
        labels.append(a["label"].reshape(-1)[keep])
    return np.concatenate(rgb), np.concatenate(geometry), np.concatenate(labels)


def _nearest_mean(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray) -> np.ndarray:
    classes = np.unique(train_y)
    means = np.stack([train_x[train_y == c].mean(axis=0) for c in classes])
    return classes[((test_x[:, None, :] - means[None]) ** 2).sum(axis=-1).argmin(axis=1)]


def _histogram_bayes(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, bins: list[np.ndarray]
) -> np.ndarray:
    """The most frequent training class of each cell of a feature grid (prior class for empty cells)."""
    shape = [len(b) + 1 for b in bins]

    def cell(x: np.ndarray) -> np.ndarray:
        return np.ravel_multi_index([np.digitize(x[:, k], bins[k]) for k in range(len(bins))], shape)

    counts = np.zeros((int(np.prod(shape)), 256))
    np.add.at(counts, (cell(train_x), train_y), 1)
    table = counts.argmax(axis=1)
    table[counts.sum(axis=1) == 0] = np.bincount(train_y).argmax()
    return table[cell(test_x)]


def test_colour_does_not_give_the_class_away_but_geometry_does(shards: ShardSet) -> None:
    train_rgb, train_geo, train_y = _pixels(shards, "train")
    test_rgb, test_geo, test_y = _pixels(shards, "test")
    colour_ncm = _miou(_nearest_mean(train_rgb, train_y, test_rgb), test_y)
    scale = train_geo.std(axis=0)
    geometry_ncm = _miou(_nearest_mean(train_geo / scale, train_y, test_geo / scale), test_y)
    rgb_bins = [np.linspace(0, 255, 17)[1:-1]] * 3
    geo_bins = [
        np.linspace(0.0, 5.0, 25),
        np.concatenate([np.linspace(-0.5, 3.0, 29), np.linspace(3.5, 40.0, 12)]),
    ]
    colour_cells = _miou(_histogram_bayes(train_rgb, train_y, test_rgb, rgb_bins), test_y)
    geometry_cells = _miou(_histogram_bayes(train_geo, train_y, test_geo, geo_bins), test_y)
    print(
        f"\ntest mIoU over {len(np.unique(test_y))} classes: nearest class mean RGB {colour_ncm:.3f}, "
        f"depth+height {geometry_ncm:.3f}; 16^3-cell RGB histogram {colour_cells:.3f}, "
        f"24x40-cell depth+height histogram {geometry_cells:.3f}"
    )
    assert colour_ncm < 0.30 and colour_cells < 0.30
    assert geometry_cells > max(2.5 * colour_cells, colour_cells + 0.15)
    assert geometry_ncm > 2.0 * colour_ncm


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0


def _pairs(shards: ShardSet) -> list[tuple[dict, dict, np.ndarray, torch.Tensor]]:
    out = []
    for sample_id in shards.ids("train"):
        row = shards.row(sample_id)
        if not isinstance(row["next_id"], str):
            continue
        nxt = shards.row(row["next_id"])
        k = torch.tensor(intrinsics_matrix(row["fx"], row["fy"], row["cx"], row["cy"]), dtype=torch.float32)[
            None
        ]
        rel = np.linalg.inv(np.asarray(nxt["pose"]).reshape(4, 4)) @ np.asarray(row["pose"]).reshape(4, 4)
        a, b = shards.read(sample_id, FIELDS), shards.read(row["next_id"], FIELDS)
        out.append((a, b, rel, k))
    return out


def _unoccluded(
    depth_src: torch.Tensor, depth_dst: torch.Tensor, src_from_dst: torch.Tensor, k: torch.Tensor
) -> torch.Tensor:
    """Destination pixels whose point is what the source camera sees (its depth there agrees)."""
    from kornia.geometry.depth import depth_to_3d_v2
    from kornia.geometry.linalg import transform_points

    seen, valid = warp_with_depth(depth_src, depth_dst, src_from_dst, k)
    z = transform_points(src_from_dst[:, None], depth_to_3d_v2(depth_dst[:, 0], k))[..., 2]
    return valid[:, 0] & (torch.abs(seen[:, 0] - z) < 0.02 * z)


def _visible_in_right(depth: np.ndarray, fx: float, baseline: float) -> np.ndarray:
    """Left pixels not hidden in the right view: splat every left pixel to its right-image column
    (disparity fx * baseline / depth) keeping the nearest, then keep the pixels that won."""
    rows, cols = np.nonzero(depth > 0)
    z = depth[rows, cols]
    target = np.rint(cols - fx * baseline / z).astype(int)
    inside = target >= 0
    nearest = np.full(depth.shape, np.inf)
    np.minimum.at(nearest, (rows[inside], target[inside]), z[inside])
    visible = np.zeros(depth.shape, bool)
    visible[rows[inside], cols[inside]] = z[inside] <= nearest[rows[inside], target[inside]] * 1.01
    return visible


def test_temporal_and_stereo_warps_reproduce_the_frame(shards: ShardSet) -> None:
    temporal, temporal_still, stereo, stereo_still, pixels = [], [], [], [], 0
    for a, b, rel, k in _pairs(shards):
        depth = torch.from_numpy(a["depth"])[None, None]
        static = torch.from_numpy(a["dynamic"] == 0)[None]
        src_from_dst = torch.tensor(rel, dtype=torch.float32)[None]
        warped, _ = warp_with_depth(_tensor(b["image"]), depth, src_from_dst, k)
        mask = _unoccluded(torch.from_numpy(b["depth"])[None, None], depth, src_from_dst, k) & static
        error = (warped - _tensor(a["image"])).abs().mean(1)
        still = (_tensor(b["image"]) - _tensor(a["image"])).abs().mean(1)
        temporal.append(error[mask])
        temporal_still.append(still[mask])
        pixels += int(mask.sum())
        right_from_left = torch.eye(4)[None]
        right_from_left[0, 0, 3] = -float(shards.row(shards.ids("train")[0])["baseline"])
        warped, inside = warp_with_depth(_tensor(a["right"]), depth, right_from_left, k)
        visible = torch.from_numpy(
            _visible_in_right(a["depth"], float(k[0, 0, 0]), -float(right_from_left[0, 0, 3]))
        )
        mask = inside[:, 0] & visible[None]
        stereo.append((warped - _tensor(a["image"])).abs().mean(1)[mask])
        stereo_still.append((_tensor(a["right"]) - _tensor(a["image"])).abs().mean(1)[mask])
    t_err, t_still = torch.cat(temporal).mean().item(), torch.cat(temporal_still).mean().item()
    s_err, s_still = torch.cat(stereo).mean().item(), torch.cat(stereo_still).mean().item()
    print(
        f"\nphotometric error (mean |I| in [0,1]): frame t+1 warped into t with true depth and pose "
        f"{t_err:.4f} vs {t_still:.4f} unwarped on {pixels} static unoccluded pixels; "
        f"right image warped with the baseline {s_err:.4f} vs {s_still:.4f} unwarped on unoccluded pixels"
    )
    assert t_err < 0.04 and t_err < 0.4 * t_still
    assert s_err < 0.03 and s_err < 0.4 * s_still


def test_flow_agrees_with_the_warps_and_moves_objects(shards: ShardSet) -> None:
    epe_static, dynamic_gt, dynamic_static_flow, flow_warp, n_dynamic = [], [], [], [], 0
    for a, b, rel, k in _pairs(shards):
        depth = torch.from_numpy(a["depth"])[None, None]
        src_from_dst = torch.tensor(rel, dtype=torch.float32)[None]
        truth = torch.from_numpy(a["flow"]).permute(2, 0, 1)[None]
        rigid = flow_from_depth_pose(depth, src_from_dst, k)
        static = torch.from_numpy((a["dynamic"] == 0) & (a["depth"] > 0))
        epe_static.append((truth - rigid).norm(dim=1)[0][static])
        warped, inside = warp_with_flow(_tensor(b["image"]), torch.nan_to_num(truth, nan=-1e4))
        mask = inside[:, 0] & _unoccluded(torch.from_numpy(b["depth"])[None, None], depth, src_from_dst, k)
        flow_warp.append(
            (warped - _tensor(a["image"])).abs().mean(1)[mask & torch.from_numpy(a["dynamic"] == 0)]
        )
        moving = torch.from_numpy(a["dynamic"] == 1)[None] & inside[:, 0]
        if moving.any():
            with_objects = (warped - _tensor(a["image"])).abs().mean(1)[moving]
            rigid_warp, _ = warp_with_flow(_tensor(b["image"]), rigid)
            without = (rigid_warp - _tensor(a["image"])).abs().mean(1)[moving]
            dynamic_gt.append(with_objects)
            dynamic_static_flow.append(without)
            n_dynamic += int(moving.sum())
    epe = torch.cat(epe_static)
    warp_error = torch.cat(flow_warp).mean().item()
    gt_dyn, rigid_dyn = torch.cat(dynamic_gt).median().item(), torch.cat(dynamic_static_flow).median().item()
    p99 = torch.quantile(epe, 0.99).item()
    print(
        f"\nflow vs depth+pose flow on static pixels: mean {epe.mean().item():.5f} px, 99th percentile "
        f"{p99:.4f} px, max {epe.max().item():.4f} px; t+1 warped by the flow: {warp_error:.4f}; "
        f"on {n_dynamic} moving-object pixels (median): "
        f"{gt_dyn:.4f} with the flow ground truth vs {rigid_dyn:.4f} with the static-scene flow"
    )
    # Both sides are quantised as KITTI stores them: flow to 1/64 px, depth to 1/256 m (which moves the
    # depth+pose flow of near pixels by up to ~0.1 px); a wrong pose or intrinsic is pixels off.
    assert epe.mean().item() < 0.01 and p99 < 0.05 and epe.max().item() < 0.3
    assert warp_error < 0.04
    assert n_dynamic > 50 and gt_dyn < 0.6 * rigid_dyn
