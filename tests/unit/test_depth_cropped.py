"""depth_cropped hides the image row: its crops move in both axes, so it pre-trains on images larger than
the crop (``image_scale`` times the study's resolution), and the planner refuses, before any job, a crop
that could not move; the fine-tunes stay at the study's resolution."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.studies import plan_runs
from geosem.tasks import get_task

from tests.helpers import pretrain_task, run_snapshot, validated_config

CROP = 64  # the default crop, [64, 64]: the smallest the network takes


def _cropped(**overrides: Any) -> Any:
    """A depth_cropped task whose section is resolved as the planner resolves it."""
    return get_task("depth_cropped")({"task": pretrain_task("depth_cropped", **overrides)})


def _position_sample(height: int, width: int) -> dict[str, torch.Tensor]:
    """Image channel 0 holds each pixel's row, channel 1 its column, the depth its row: a crop tells where
    it was taken, and whether image and depth were cut at the same place."""
    rows = torch.arange(height, dtype=torch.float32)[:, None].expand(height, width)
    columns = torch.arange(width, dtype=torch.float32)[None, :].expand(height, width)
    return {"image": torch.stack([rows, columns, rows]), "depth": rows[None].clone()}


def test_the_crop_position_varies_vertically_and_horizontally() -> None:
    task = _cropped(hflip=False)  # no flip: column 0 of a crop is its left offset
    sample = _position_sample(96, 288)
    tops, lefts = set(), set()
    for seed in range(64):
        crop = task.transform(sample, np.random.default_rng(seed))
        assert crop["image"].shape == (3, CROP, CROP) and crop["depth"].shape == (1, CROP, CROP)
        assert torch.equal(crop["depth"][0], crop["image"][0])  # depth cut where the image was
        tops.add(int(crop["image"][0, 0, 0]))
        lefts.add(int(crop["image"][1, 0, 0]))
    # 33 possible rows and 225 columns: 64 draws land on several of each (the row no longer tells depth).
    assert len(tops) > 1 and len(lefts) > 1, (tops, lefts)
    assert min(tops) >= 0 and max(tops) <= 96 - CROP and max(lefts) <= 288 - CROP


def test_the_transform_refuses_a_crop_as_tall_or_as_wide_as_the_image() -> None:
    task = _cropped()
    for height, width in ((64, 192), (96, 64)):
        with pytest.raises(ValueError, match=rf"crop 64x64 is not smaller than the {height}x{width} images"):
            task.transform(_position_sample(height, width), np.random.default_rng(0))


def _offset(full: torch.Tensor, crop: torch.Tensor) -> tuple[int, int]:
    """Where ``crop`` was cut from ``full`` (C,H,W): the one (top, left) whose window equals it."""
    size = crop.shape[-2:]
    (found,) = [
        (top, left)
        for top in range(full.shape[-2] - size[0] + 1)
        for left in range(full.shape[-1] - size[1] + 1)
        if torch.equal(full[..., top : top + size[0], left : left + size[1]], crop)
    ]
    return found


def test_depth_cropped_trains_on_real_shards_taller_than_its_crop(tiny_tall_shards: Path) -> None:
    torch.set_num_threads(1)  # the CPUs are shared with training runs
    task_section = pretrain_task("depth_cropped", hflip=False)  # unflipped: each crop lies in its image
    run = run_snapshot(tiny_tall_shards, "pretrain", "depth_cropped-test", task=task_section, seed=0)
    task = get_task("depth_cropped")(run)
    shards = ShardSet(tiny_tall_shards)
    ids = shards.ids("train")
    whole = ShardDataset(shards, ids, task.fields, seed=0)
    cropped = ShardDataset(shards, ids, task.fields, transform=task.transform, seed=0)
    # The dataset's own seeded draws (sample, draw): real crops start on several rows and columns.
    offsets = {_offset(whole[i % 4]["image"], cropped[(i % 4, i)]["image"]) for i in range(16)}
    assert len({top for top, _ in offsets}) > 1 and len({left for _, left in offsets}) > 1, offsets
    items = [cropped[(i, i)] for i in range(2)]
    assert all(item["image"].shape[-2:] == (CROP, CROP) for item in items)
    torch.manual_seed(0)
    model = task.build_model()
    batch = {key: torch.stack([item[key] for item in items]) for key in items[0]}
    loss, _ = task.loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss)
    # Evaluated on whole images, at the shard set's resolution.
    assert task.evaluate(model, shards, shards.ids("test"))["depth_images_scored"] > 0


def _plan(tmp_path: Path, resolution: Any = None, **entry: Any) -> Any:
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    study = {"inits": ["random", "depth_cropped"], "seeds": [0]}
    if resolution is not None:
        study["resolutions"] = [{"pretrain": resolution}]
    (studies / "s.yaml").write_text(yaml.safe_dump(study))
    config = validated_config(studies=["s"])
    config["study_dir"] = str(studies)
    config["pretrain"]["tasks"]["depth_cropped"].update(entry)
    return plan_runs(config)


# The CPU config's 64x192 and the study resolutions a file may name: scale factors of it and fixed sizes.
@pytest.mark.parametrize("resolution", [None, 0.5, 1.5, [64, 96], [192, 640]])
def test_the_cpu_plan_pretrains_depth_cropped_on_images_larger_than_its_crop(
    tmp_path: Path, resolution: Any
) -> None:
    plan = _plan(tmp_path, resolution)
    (pre,) = (run for run in plan.pretrain.values() if run["task"]["name"] == "depth_cropped")
    crop_h, crop_w = pre["task"]["crop"]
    height, width = pre["data"]["height"], pre["data"]["width"]
    assert height > crop_h and width > crop_w, (height, width)
    # Its own shard set, planned (so built by the shards rule) at that size.
    spec = plan.shards[f"{pre['data']['dataset']}/{pre['data']['variant']}"]
    assert (spec["height"], spec["width"]) == (height, width)
    assert pre["data"]["shards"].endswith(f"/{pre['data']['variant']}")
    # The fine-tune starts from it but trains at the study's (data.*) resolution.
    (fine,) = (run for run in plan.finetune.values() if run["init"]["name"] == "depth_cropped")
    assert (fine["data"]["height"], fine["data"]["width"]) == (64, 192)
    assert (fine["init"]["height"], fine["init"]["width"]) == (height, width)
    assert f"-from{height}x{width}-" in fine["run_id"]
    assert fine["init"]["checkpoint"].endswith(f"pretrain/{pre['run_id']}/model.pt")


def test_the_default_cpu_plan_pretrains_depth_cropped_at_96x288(tmp_path: Path) -> None:
    (pre,) = (r for r in _plan(tmp_path).pretrain.values() if r["task"]["name"] == "depth_cropped")
    assert (pre["data"]["height"], pre["data"]["width"]) == (96, 288)
    assert pre["task"]["image_scale"] == 1.5


def test_a_crop_that_cannot_move_is_refused_at_plan_time_naming_init_crop_and_images(tmp_path: Path) -> None:
    # As tall as the 96x288 pre-training images.
    with pytest.raises(ValueError, match=r"pretrain\.tasks\.depth_cropped: crop 96x64 .* 96x288 images"):
        _plan(tmp_path, crop=[96, 64])
    # image_scale 1: the 64x192 images of the CPU config, as tall as the default crop.
    with pytest.raises(ValueError, match=r"pretrain\.tasks\.depth_cropped: crop 64x64 .* 64x192 images"):
        _plan(tmp_path, image_scale=1)
    # Wider than the images.
    with pytest.raises(ValueError, match=r"pretrain\.tasks\.depth_cropped: crop 64x320 .* 96x288 images"):
        _plan(tmp_path, crop=[64, 320])


def test_a_crop_the_network_cannot_take_is_refused_by_the_config_check(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"pretrain\.tasks\.depth_cropped\.crop\.0: 80 is not a multiple"):
        _plan(tmp_path, crop=[80, 64])
    with pytest.raises(ValueError, match=r"pretrain\.tasks\.depth_cropped\.image_scale: 0\.5 is less than"):
        _plan(tmp_path, image_scale=0.5)
