"""Expand a validated config and its study files into the run table.

A study file is a grid (inits x fine-tuning modes x encoders x train sizes x seeds). Each grid point is
one fine-tuning run; each pre-trained init it names is one pre-training run, shared by every fine-tune
(and every study) that uses it. Each run gets a snapshot, the fully resolved config that its trainer
reads and nothing else, and an id built from the grid axes only, so it is stable across edits of
unrelated parameters and readable in a directory listing:

    pretrain:  depth_supervised-resnet18-synth_driving-64x192-s0
    finetune:  seg-depth_supervised-all-resnet18-synth_driving-64x192-n16-s0

Because the snapshot holds exactly the parameters a run depends on, editing one fine-tuning parameter
changes exactly the fine-tuning snapshots, and the workflow reruns exactly those runs and what follows.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geosem.atomic import atomic_write_text
from geosem.labelspaces import num_classes
from geosem.sources.catalog import DATASETS

# Which label space each dataset's shards carry (geosem.sources.catalog lists the datasets).
DATASET_LABEL_SPACES = {name: spec.label_space for name, spec in DATASETS.items()}
# Inits that need no pre-training run: a random encoder, or timm's ImageNet weights (from a local file).
BASELINE_INITS = ("random", "imagenet")


@dataclass
class Plan:
    pretrain: dict[str, dict[str, Any]] = field(default_factory=dict)
    finetune: dict[str, dict[str, Any]] = field(default_factory=dict)
    studies: dict[str, list[str]] = field(default_factory=dict)
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per run, for printing (``geosem plan``)."""
        rows = []
        for run_id, snap in self.pretrain.items():
            rows.append(
                {"kind": "pretrain", "run_id": run_id, "task": snap["task"]["name"], "seed": snap["seed"]}
            )
        for run_id, snap in self.finetune.items():
            studies = ",".join(sorted(s for s, ids in self.studies.items() if run_id in ids))
            rows.append(
                {
                    "kind": "finetune",
                    "run_id": run_id,
                    "init": snap["init"]["name"],
                    "seed": snap["seed"],
                    "studies": studies,
                }
            )
        return rows


def variant_name(data: dict[str, Any]) -> str:
    """A variant is one preprocessing of a dataset; the resolution names it."""
    return f"{data['height']}x{data['width']}"


def load_study(study_dir: Path, name: str) -> dict[str, Any]:
    path = Path(study_dir) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"study {name!r} has no file {path}")
    study = yaml.safe_load(path.read_text()) or {}
    study.setdefault("name", name)
    if study["name"] != name:
        raise ValueError(f"{path}: name {study['name']!r} differs from its file name {name!r}")
    return study


def run_digest(snapshot: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()


def write_run_snapshot(snapshot: dict[str, Any], path: Path) -> None:
    header = "# Resolved run snapshot written by the workflow: the only config this run's trainer reads.\n"
    atomic_write_text(Path(path), header + yaml.safe_dump(snapshot, sort_keys=True))


def read_run_snapshot(path: Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run snapshot {path} does not exist")
    snapshot = yaml.safe_load(path.read_text())
    if not isinstance(snapshot, dict) or "run_id" not in snapshot:
        raise ValueError(f"{path} is not a run snapshot (no run_id)")
    return snapshot


def _loop(section: dict[str, Any]) -> dict[str, Any]:
    keys = ("steps", "batch_size", "lr", "weight_decay", "lr_schedule", "eval_every", "checkpoint_every")
    return {key: section[key] for key in keys}


def _add(runs: dict[str, dict[str, Any]], snapshot: dict[str, Any], where: str) -> None:
    run_id = snapshot["run_id"]
    if run_id in runs and runs[run_id] != snapshot:
        raise ValueError(
            f"run id {run_id!r} ({where}) names two different configurations; make the grids agree"
        )
    runs[run_id] = snapshot


def _imagenet_weights(config: dict[str, Any], encoder: str, where: str) -> str:
    """The local ImageNet weight file of ``encoder``; resolved while planning so that a machine without
    the weights stops here, naming what to fetch, and not hours into a run."""
    from geosem.models.encoders import resolve_imagenet_weights  # imports timm: only when needed

    try:
        return str(resolve_imagenet_weights(encoder, config["pretrain"].get("imagenet_weights", {})))
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{where}: {error}") from None


def _pretrain_task(config: dict[str, Any], init: str, encoder: str) -> dict[str, Any]:
    """The task section of a pre-training snapshot. An init names an entry of ``pretrain.tasks``; the
    entry's ``task`` key picks the task module when it differs from the init's name (so that
    ``depth_mono`` and ``depth_mono_rand`` are one task started from ImageNet and from scratch)."""
    params = copy.deepcopy(config["pretrain"]["tasks"][init])
    task = {"name": params.pop("task", "") or init, **params}
    if task.get("encoder_init") == "imagenet":
        task["weights_file"] = _imagenet_weights(config, encoder, f"pretrain.tasks.{init}")
    return task


def plan_runs(config: dict[str, Any], study_dir: Path | None = None) -> Plan:
    """Expand every study listed in ``config['studies']`` (config already validated, defaults filled)."""
    study_dir = Path(study_dir or config["study_dir"])
    data_cfg = config["data"]
    dataset = data_cfg["dataset"]
    if dataset not in DATASET_LABEL_SPACES:
        raise KeyError(f"data.dataset: unknown dataset {dataset!r}; known: {sorted(DATASET_LABEL_SPACES)}")
    variant = variant_name(data_cfg)
    shards_dir = f"{config['shards_root']}/{dataset}/{variant}"
    label_space = DATASET_LABEL_SPACES[dataset]
    plan = Plan()
    # The study's shard set, then the extra ones the default pipeline builds (study B's inputs).
    for shard_cfg in [data_cfg, *data_cfg.get("extra", [])]:
        name = shard_cfg["dataset"]
        if name not in DATASETS:
            raise KeyError(f"data: unknown dataset {name!r}; known: {sorted(DATASETS)}")
        plan.shards[f"{name}/{variant_name(shard_cfg)}"] = {
            "dataset": name,
            "converter": DATASETS[name].converter,
            "variant": variant_name(shard_cfg),
            "height": shard_cfg["height"],
            "width": shard_cfg["width"],
            "samples_per_part": shard_cfg.get("samples_per_part", data_cfg["samples_per_part"]),
        }
    data = {
        "dataset": dataset,
        "variant": variant,
        "shards": shards_dir,
        "label_space": label_space,
        "num_classes": num_classes(label_space),
        "train_split": "train",
        "test_split": "test",
        "test_stride": config["evaluation"]["test_stride"],
    }
    evaluation = {
        "batch_size": config["evaluation"]["batch_size"],
        "max_depth": config["evaluation"]["max_depth"],
    }
    compute = {"num_workers": config["compute"]["num_workers"]}

    for study_name in config["studies"]:
        study = load_study(study_dir, study_name)
        ids: list[str] = []
        for encoder in study.get("encoders", [config["model"]["encoder"]]):
            model = {"encoder": encoder, "decoder_channels": list(config["model"]["decoder_channels"])}
            for init in study["inits"]:
                init_section: dict[str, Any] = {"name": init}
                if init not in BASELINE_INITS:
                    if init not in config["pretrain"]["tasks"]:
                        raise KeyError(
                            f"study {study_name!r}: init {init!r} is neither a baseline {BASELINE_INITS} "
                            f"nor a task under pretrain.tasks {sorted(config['pretrain']['tasks'])}"
                        )
                    seed = config["pretrain"]["seed"]
                    pre_id = f"{init}-{encoder}-{dataset}-{variant}-s{seed}"
                    pre_task = _pretrain_task(config, init, encoder)
                    pre_snapshot = {
                        "run_id": pre_id,
                        "kind": "pretrain",
                        "seed": seed,
                        "task": pre_task,
                        "model": model,
                        "data": data,
                        "loop": _loop(config["pretrain"]),
                        "evaluation": evaluation,
                        "compute": compute,
                    }
                    _add(plan.pretrain, pre_snapshot, f"study {study_name}")
                    init_section.update(
                        {
                            "task": pre_task["name"],
                            "run_id": pre_id,
                            "checkpoint": f"{config['runs_root']}/pretrain/{pre_id}/model.pt",
                            "run": {"model": model, "task": pre_snapshot["task"]},
                        }
                    )
                elif init == "imagenet":
                    init_section["weights_file"] = _imagenet_weights(config, encoder, f"study {study_name!r}")
                for mode in study.get("modes", ["all"]):
                    for train_size in study.get("train_sizes", [config["finetune"]["train_size"]]):
                        for seed in study["seeds"]:
                            run_id = f"seg-{init}-{mode}-{encoder}-{dataset}-{variant}-n{train_size}-s{seed}"
                            snapshot = {
                                "run_id": run_id,
                                "kind": "finetune",
                                "seed": seed,
                                "task": {
                                    "name": "segmentation",
                                    "mode": mode,
                                    "hflip": config["finetune"]["hflip"],
                                    "classifier_kernel": config["finetune"]["classifier_kernel"],
                                },
                                "init": init_section,
                                "model": model,
                                "data": {**data, "train_size": train_size},
                                "loop": _loop(config["finetune"]),
                                "evaluation": evaluation,
                                "compute": compute,
                            }
                            _add(plan.finetune, snapshot, f"study {study_name}")
                            ids.append(run_id)
        plan.studies[study_name] = ids
    return plan
