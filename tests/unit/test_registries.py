"""Adding a task or a converter is one new file: a module on a plugin path is seen by the planner, the
config validation, the command line and Snakemake, with no other edit."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from geosem import registry, sources, tasks
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.sources.catalog import dataset_spec
from geosem.studies import plan_runs

from tests.helpers import cli_env, make_workdir, validated_config

TASK_MODULE = '''
from typing import ClassVar

from geosem.tasks import register_task
from geosem.tasks.base import Param, param
from geosem.tasks.depth_supervised import DepthSupervised


@register_task("throwaway")
class Throwaway(DepthSupervised):
    """A task that exists only in this test."""

    parameters: ClassVar[dict[str, Param]] = {
        **DepthSupervised.parameters,
        "strength": param(0.5, "How hard to try.", type="number", minimum=0),
    }
'''
CONVERTER_MODULE = """
from pathlib import Path

import numpy as np
from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import read_rgb, resize_image


@register_converter("toyset", version="7", label_space="cityscapes19", reads=("images", "labels.txt"))
def convert_toyset(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "toyset",
    samples_per_part: int = 256,
) -> Path:
    # images/<id>.png, and labels.txt: one line "<id> <split> <train id of the whole image>" per image.
    lines = (Path(raw_dir) / "labels.txt").read_text().splitlines()
    parameters = {"height": height, "width": width}
    with ShardWriter(
        out_dir, dataset=dataset, variant=Path(out_dir).name, source_version="toy", converter_version="7",
        label_space="cityscapes19", parameters=parameters, samples_per_part=samples_per_part,
    ) as writer:
        for sample_id, split, train_id in (line.split() for line in lines if line):
            image = resize_image(read_rgb(Path(raw_dir) / "images" / f"{sample_id}.png"), height, width)
            label = np.full((height, width), int(train_id), dtype=np.uint8)
            writer.add({"image": image, "label": label}, {"id": sample_id, "split": split, "sequence": "toy"})
    return Path(out_dir)
"""


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A plugin folder with one task module and one converter module, removed again afterwards."""
    root = tmp_path / "plugins"
    (root / "tasks").mkdir(parents=True)
    (root / "sources").mkdir()
    (root / "tasks" / "throwaway_task.py").write_text(TASK_MODULE)
    (root / "sources" / "toyset.py").write_text(CONVERTER_MODULE)
    monkeypatch.setenv(registry.PLUGIN_PATH_VARIABLE, str(root))
    yield root
    for package, name, table, key in (
        (tasks, "throwaway_task", tasks._TASKS, "throwaway"),
        (sources, "toyset", sources._CONVERTERS, "toyset"),
    ):
        table.pop(key, None)
        sys.modules.pop(f"{package.__name__}.{name}", None)
        registry._discovered.discard(f"{package.__name__}.{name}")
        registry._scanned.clear()
        for folder in list(package.__path__):
            if folder.startswith(str(root)):
                package.__path__.remove(folder)


def _plugin_config(tmp_path: Path, **probe: Any) -> dict[str, Any]:
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    (studies / "probe.yaml").write_text(yaml.safe_dump({"inits": ["random", "probe"], "seeds": [0]}))
    config = validated_config(studies=["probe"], study_dir=str(studies))
    config["data"] = {**config["data"], "dataset": "toyset", "extra": []}
    config["pretrain"]["tasks"]["probe"] = {"task": "throwaway", **probe}
    return config


def test_the_planner_and_the_validation_see_a_new_task_and_converter(
    plugin_path: Path, tmp_path: Path
) -> None:
    assert "throwaway" in tasks.list_tasks() and "toyset" in sources.list_converters()
    assert dataset_spec("toyset").converter_version == "7"
    plan = plan_runs(_plugin_config(tmp_path))
    (pretrain,) = plan.pretrain.values()
    assert pretrain["run_id"] == "probe-resnet18-toyset-64x192-v7-s0"
    assert pretrain["task"]["name"] == "throwaway" and pretrain["task"]["strength"] == 0.5
    assert pretrain["task"]["max_depth"] == 100.0  # inherited declarations are filled in too
    assert list(plan.shards) == ["toyset/64x192-v7"]
    with pytest.raises(ValueError, match=r"pretrain.tasks.probe.strength: -1 is less than the minimum"):
        plan_runs(_plugin_config(tmp_path, strength=-1))


@pytest.mark.slow
def test_the_command_line_sees_a_new_task_and_converter(plugin_path: Path) -> None:
    env = cli_env({registry.PLUGIN_PATH_VARIABLE: str(plugin_path)})
    listed = subprocess.run(
        [sys.executable, "-m", "geosem.cli", "tasks"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert "throwaway (geosem.tasks.throwaway_task): A task that exists only in this test." in listed
    assert "    strength = 0.5: How hard to try." in listed
    datasets = subprocess.run(
        [sys.executable, "-m", "geosem.cli", "datasets"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert any(line.split()[:3] == ["toyset", "toyset", "7"] for line in datasets.splitlines()), datasets
    # ... and runs it: `geosem convert` writes a shard set that `geosem verify` accepts.
    raw = plugin_path.parent / "raw" / "toyset"
    (raw / "images").mkdir(parents=True)
    for index in range(3):
        cv2.imwrite(str(raw / "images" / f"toy{index}.png"), np.full((48, 64, 3), 40 * index, np.uint8))
    (raw / "labels.txt").write_text("toy0 train 0\ntoy1 train 13\ntoy2 test 13\n")
    out = plugin_path.parent / "shards" / "toyset" / "32x32-v7"
    convert = [sys.executable, "-m", "geosem.cli", "convert", "--converter", "toyset", "--dataset", "toyset"]
    convert += ["--raw", str(raw), "--out", str(out), "--height", "32", "--width", "32"]
    result = subprocess.run(convert, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "wrote 3 samples" in result.stdout
    shards = ShardSet(out)
    assert shards.ids("test") == ["toy2"] and shards.manifest.converter_version == "7"
    (sample,) = ShardDataset(shards, ["toy1"], ("image", "label"))
    assert tuple(sample["image"].shape) == (3, 32, 32) and bool((sample["label"] == 13).all())


@pytest.mark.slow
def test_snakemake_plans_a_new_task_on_a_new_dataset(plugin_path: Path, tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path)
    (workdir / "config" / "studies" / "probe.yaml").write_text("inits: [random, probe]\nseeds: [0]\n")
    (workdir / "config" / "probe.yaml").write_text(
        yaml.safe_dump(
            {
                "studies": ["probe"],
                "data": {"dataset": "toyset", "extra": []},
                "pretrain": {"tasks": {"probe": {"task": "throwaway", "strength": 2.0}}},
                "versioning": {"dvc": False},
            }
        )
    )
    (workdir / "raw" / "toyset" / "images").mkdir(parents=True)
    (workdir / "raw" / "toyset" / "labels.txt").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/probe.yaml"],
        cwd=workdir,
        env=cli_env({registry.PLUGIN_PATH_VARIABLE: str(plugin_path)}),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "shards/toyset/64x192-v7" in result.stdout
    assert "runs/pretrain/probe-resnet18-toyset-64x192-v7-s0/model.pt" in result.stdout
