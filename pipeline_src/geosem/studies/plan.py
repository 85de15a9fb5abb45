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
# Seed code vs paper (protocols.md 1.2-1.7): what `protocol: legacy` changes in a fine-tuning snapshot.
PROTOCOLS = ("paper", "legacy")


@dataclass
class Plan:
    pretrain: dict[str, dict[str, Any]] = field(default_factory=dict)
    finetune: dict[str, dict[str, Any]] = field(default_factory=dict)
    studies: dict[str, list[str]] = field(default_factory=dict)
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    # study -> rows that cannot run here, each {init, encoder, reason}: reported as unavailable in the
    # study's table instead of silently dropped (ImageNet weights or external checkpoints not on disk).
    unavailable: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    # study -> what its outputs look like: row labels, plots, Grad-CAM settings and runs.
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)

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


# The converter parameters a shard variant's name spells out when they differ from these defaults.
DEFAULT_SAMPLES_PER_PART = 256
DEFAULT_LABEL_INTERPOLATION = "nearest"


def variant_name(shard: dict[str, Any]) -> str:
    """The name of one preprocessing of a dataset: resolution, converter version, non-default parameters.

    ``64x192-v2`` is the KITTI converter's version 2 at 64x192; ``64x192-v2-bicubic`` its legacy label
    resize; ``64x192-v2-p16`` 16 samples per part. A new converter version or another parameter value
    therefore writes a new folder next to the old one and never overwrites a shard set (nor its DVC
    version) that earlier runs used.
    """
    name = f"{shard['height']}x{shard['width']}-v{shard['converter_version']}"
    if shard.get("label_interpolation", DEFAULT_LABEL_INTERPOLATION) != DEFAULT_LABEL_INTERPOLATION:
        name += f"-{shard['label_interpolation']}"
    if shard.get("samples_per_part", DEFAULT_SAMPLES_PER_PART) != DEFAULT_SAMPLES_PER_PART:
        name += f"-p{shard['samples_per_part']}"
    return name


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


def _protocol_settings(protocol: str, finetune: dict[str, Any]) -> dict[str, Any]:
    """The snapshot values one protocol fixes. ``paper``: the paper's protocol, implemented correctly;
    ``legacy``: the published code's behaviour (README, "Protocol defaults")."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {PROTOCOLS}")
    if protocol == "paper":
        return {
            "zero_grad": True,
            "hflip": finetune["hflip"],
            "freeze": "full",
            "metric": "dataset",
            "split_rule": "heldout",
            "label_interpolation": "nearest",
        }
    return {
        "zero_grad": False,  # optimizer.zero_grad() is never called: gradients accumulate
        "hflip": False,  # no augmentation at all
        "freeze": "batchnorm",  # --freezeencoder only calls encoder.eval()
        "metric": "legacy",  # per-image mIoU over 8 classes, averaged over images
        "split_rule": "legacy",  # train = first N labelled images, test = the rest
        "label_interpolation": "bicubic",  # PIL's default filter for mode "L" on current Pillow
    }


def _train_size(value: int | str) -> int:
    """``all`` (or 0) is the whole train split."""
    return 0 if value in ("all", 0) else int(value)


def _resolutions(
    study: dict[str, Any], data_cfg: dict[str, Any]
) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """(pre-training, fine-tuning) resolution pairs; by default the config's one resolution for both.

    A pair's side is ``[height, width]``, or a scale factor of ``data.height`` x ``data.width`` rounded to
    multiples of 32 (so one study file serves the CPU preset's 64x192 and the paper's 192x640)."""
    default = (data_cfg["height"], data_cfg["width"])

    def size(value: Any) -> tuple[int, int]:
        if value is None:
            return default
        if isinstance(value, int | float):
            return tuple(max(64, 32 * round(side * value / 32)) for side in default)  # type: ignore[return-value]
        return (int(value[0]), int(value[1]))

    return [
        (size(entry.get("pretrain")), size(entry.get("finetune"))) for entry in study.get("resolutions", [{}])
    ]


class _Unavailable(Exception):
    """An init whose prerequisite (a weight file) is not on this machine."""


def _gradcam_runs(study: dict[str, Any], plan: Plan, ids: list[str]) -> dict[str, Any] | None:
    """The fine-tunes a study's Grad-CAM figure compares: one per init, all of one setting (the grid's
    first encoder, mode, train size, resolution and seed)."""
    if "gradcam" not in study:
        return None
    chosen: dict[str, str] = {}
    first = plan.finetune[ids[0]]
    for run_id in ids:
        run = plan.finetune[run_id]
        same_setting = (
            run["model"]["encoder"] == first["model"]["encoder"]
            and run["task"]["mode"] == first["task"]["mode"]
            and run["data"]["train_size"] == first["data"]["train_size"]
            and run["data"]["variant"] == first["data"]["variant"]
            and run["loop"]["lr"] == first["loop"]["lr"]
            and run["seed"] == first["seed"]
        )
        if same_setting:
            chosen.setdefault(run["init"]["name"], run_id)
    return {"images": study["gradcam"].get("images", 4), "runs": list(chosen.values())}


def plan_runs(config: dict[str, Any], study_dir: Path | None = None) -> Plan:
    """Expand every study listed in ``config['studies']`` (config already validated, defaults filled)."""
    from geosem.sources.catalog import converter_version

    study_dir = Path(study_dir or config["study_dir"])
    data_cfg = config["data"]
    dataset = data_cfg["dataset"]
    if dataset not in DATASET_LABEL_SPACES:
        raise KeyError(f"data.dataset: unknown dataset {dataset!r}; known: {sorted(DATASET_LABEL_SPACES)}")
    label_space = DATASET_LABEL_SPACES[dataset]
    plan = Plan()

    def shard_set(name: str, height: int, width: int, label_interpolation: str = "nearest") -> str:
        """Plan one shard set (once) and return its folder."""
        if name not in DATASETS:
            raise KeyError(f"data: unknown dataset {name!r}; known: {sorted(DATASETS)}")
        spec = {
            "dataset": name,
            "converter": DATASETS[name].converter,
            "converter_version": converter_version(DATASETS[name].converter),
            "height": height,
            "width": width,
            "samples_per_part": data_cfg["samples_per_part"],
            "label_interpolation": label_interpolation,
        }
        spec["variant"] = variant_name(spec)
        plan.shards[f"{name}/{spec['variant']}"] = spec
        return f"{config['shards_root']}/{name}/{spec['variant']}"

    # The study's shard set, then the extra ones the default pipeline builds (study B's inputs).
    shard_set(dataset, data_cfg["height"], data_cfg["width"])
    for extra in data_cfg.get("extra", []):
        shard_set(extra["dataset"], extra["height"], extra["width"])

    def data_section(shards: str) -> dict[str, Any]:
        return {
            "dataset": dataset,
            "variant": Path(shards).name,
            "shards": shards,
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

    def pretrain_run(
        init: str, encoder: str, model: dict[str, Any], resolution: tuple[int, int]
    ) -> dict[str, Any]:
        """Plan the pre-training of ``init`` (once) and return the init section of its fine-tunes."""
        if init not in config["pretrain"]["tasks"]:
            raise KeyError(
                f"init {init!r} is neither a baseline {BASELINE_INITS}, an external checkpoint under "
                f"pretrain.external {sorted(config['pretrain'].get('external', {}))}, nor a task under "
                f"pretrain.tasks {sorted(config['pretrain']['tasks'])}"
            )
        seed = config["pretrain"]["seed"]
        shards = shard_set(dataset, *resolution)
        variant = Path(shards).name
        pre_id = f"{init}-{encoder}-{dataset}-{variant}-s{seed}"
        try:
            pre_task = _pretrain_task(config, init, encoder)
        except FileNotFoundError as error:
            raise _Unavailable(str(error)) from None
        pre_snapshot = {
            "run_id": pre_id,
            "kind": "pretrain",
            "seed": seed,
            "task": pre_task,
            "model": model,
            "data": data_section(shards),
            "loop": _loop(config["pretrain"]),
            "evaluation": evaluation,
            "compute": compute,
        }
        _add(plan.pretrain, pre_snapshot, f"init {init}")
        return {
            "name": init,
            "task": pre_task["name"],
            "run_id": pre_id,
            "variant": variant,
            "checkpoint": f"{config['runs_root']}/pretrain/{pre_id}/model.pt",
            "run": {"model": model, "task": pre_snapshot["task"]},
        }

    def weights_init(init: str, encoder: str) -> dict[str, Any]:
        """An init that loads encoder weights from a file: ImageNet (timm) or an external checkpoint."""
        try:
            if init == "imagenet":
                return {"name": init, "weights_file": _imagenet_weights(config, encoder, "init imagenet")}
            entry = config["pretrain"]["external"][init]
            path = Path(entry.get("files", {}).get(encoder, "")).expanduser()
            if not entry.get("files", {}).get(encoder) or not path.is_file():
                raise FileNotFoundError(
                    f"pretrain.external.{init}.files.{encoder}: no {entry['description']} weights for "
                    f"{encoder} on this machine ({path if str(path) != '.' else 'not configured'}); "
                    "they are not downloadable here"
                )
            return {"name": init, "weights_file": str(path)}
        except FileNotFoundError as error:
            raise _Unavailable(str(error)) from None

    for study_name in config["studies"]:
        study = load_study(study_dir, study_name)
        protocol = study.get("protocol", config["protocol"])
        settings = _protocol_settings(protocol, config["finetune"])
        lrs = study.get("lrs")
        ids: list[str] = []
        unavailable: list[dict[str, str]] = []
        for encoder in study.get("encoders", [config["model"]["encoder"]]):
            model = {"encoder": encoder, "decoder_channels": list(config["model"]["decoder_channels"])}
            for pre_res, fine_res in _resolutions(study, data_cfg):
                fine_shards = shard_set(dataset, *fine_res, settings["label_interpolation"])
                fine_variant = Path(fine_shards).name
                for init in study["inits"]:
                    try:
                        if init == "random":
                            init_section: dict[str, Any] = {"name": init}
                        elif init == "imagenet" or init in config["pretrain"].get("external", {}):
                            init_section = weights_init(init, encoder)
                        else:
                            init_section = pretrain_run(init, encoder, model, pre_res)
                    except _Unavailable as reason:
                        row = {"init": init, "encoder": encoder, "reason": str(reason)}
                        if row not in unavailable:
                            unavailable.append(row)
                        continue
                    source = ""
                    if "variant" in init_section and init_section["variant"] != fine_variant:
                        source = f"-from{init_section['variant'].split('-')[0]}"
                    for mode in study.get("modes", ["all"]):
                        for size in study.get("train_sizes", [config["finetune"]["train_size"]]):
                            train_size = _train_size(size)
                            for lr in lrs or [config["finetune"]["lr"]]:
                                for seed in study["seeds"]:
                                    run_id = (
                                        f"seg-{init}-{mode}-{encoder}-{dataset}-{fine_variant}{source}"
                                        f"-n{train_size or 'all'}"
                                        + (f"-lr{lr:g}" if lrs else "")
                                        + ("-legacy" if protocol == "legacy" else "")
                                        + f"-s{seed}"
                                    )
                                    loop = {**_loop(config["finetune"]), "lr": lr}
                                    loop["zero_grad"] = settings["zero_grad"]
                                    snapshot = {
                                        "run_id": run_id,
                                        "kind": "finetune",
                                        "seed": seed,
                                        "protocol": protocol,
                                        "task": {
                                            "name": "segmentation",
                                            "mode": mode,
                                            "hflip": settings["hflip"],
                                            "freeze": settings["freeze"],
                                            "metric": settings["metric"],
                                            "classifier_kernel": config["finetune"]["classifier_kernel"],
                                        },
                                        "init": init_section,
                                        "model": model,
                                        "data": {
                                            **data_section(fine_shards),
                                            "train_size": train_size,
                                            "split_rule": settings["split_rule"],
                                        },
                                        "loop": loop,
                                        "evaluation": evaluation,
                                        "compute": compute,
                                    }
                                    _add(plan.finetune, snapshot, f"study {study_name}")
                                    ids.append(run_id)
        plan.studies[study_name] = list(dict.fromkeys(ids))
        plan.unavailable[study_name] = unavailable
        plan.figures[study_name] = {
            "labels": dict(study.get("labels", {})),
            "plots": list(study.get("plots", ["curves"])),
            "gradcam": _gradcam_runs(study, plan, plan.studies[study_name]),
        }
        if not ids:
            raise ValueError(
                f"study {study_name!r} has no run that can start here: "
                + "; ".join(row["reason"] for row in unavailable)
            )
    return plan
