"""Expand a validated config and its study files into the run table.

A study file is a grid (inits x fine-tuning modes x encoders x train sizes x lrs x resolutions x seeds).
Each grid point is one fine-tuning run; each pre-trained init it names is one pre-training run, shared by
every fine-tune (and every study) that uses it. Each run gets a snapshot (``geosem.snapshot``), the fully
resolved config that its trainer reads and nothing else, and an id built from the grid axes only, so it
is stable across edits of unrelated parameters and readable in a directory listing:

    pretrain:  depth_supervised-resnet18-synth_driving-64x192-v3-s0
    finetune:  seg-depth_supervised-all-resnet18-synth_driving-64x192-v3-n16-s0

Because the snapshot holds exactly the parameters a run depends on, editing one fine-tuning parameter
changes exactly the fine-tuning snapshots, and the workflow reruns exactly those runs and what follows.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from geosem.labelspaces import num_classes
from geosem.snapshot import DataSection, InitSection, ShardVariant, Snapshot, loop_section
from geosem.studies.auxdepth import is_auxdepth_study, plan_auxdepth_study
from geosem.studies.grid import BASELINE_INITS, gradcam_runs, load_study, resolutions, train_size
from geosem.studies.inits import (
    Unavailable,
    check_init_names,
    check_task_entries,
    dataset_keys,
    imagenet_weights,
    pretrain_dataset,
    pretrain_loop_section,
    pretrain_resolution,
    pretrain_task_section,
    weights_init,
)
from geosem.studies.protocols import protocol_settings
from geosem.train.fast_path import FAST_PATH_DEFAULTS

if TYPE_CHECKING:
    import jsonschema


@dataclass
class Plan:
    pretrain: dict[str, Snapshot] = field(default_factory=dict)
    finetune: dict[str, Snapshot] = field(default_factory=dict)
    studies: dict[str, list[str]] = field(default_factory=dict)
    shards: dict[str, dict[str, Any]] = field(default_factory=dict)
    # study -> rows that cannot run here, each {init, encoder, reason}: reported as unavailable in the
    # study's table instead of silently dropped (ImageNet weights or external checkpoints not on disk).
    unavailable: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    # study -> what its outputs look like: row labels, plots, Grad-CAM settings and runs.
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Study B (geosem.studies.auxdepth): run id -> auxdepth snapshot; study -> its runs and table layout.
    auxdepth: dict[str, dict[str, Any]] = field(default_factory=dict)
    auxdepth_studies: dict[str, dict[str, Any]] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per run, for printing (``geosem plan``)."""
        rows: list[dict[str, Any]] = [
            {"kind": "pretrain", "run_id": run_id, "task": snap["task"]["name"], "seed": snap["seed"]}
            for run_id, snap in self.pretrain.items()
        ]
        for run_id, snap in self.finetune.items():
            studies = ",".join(sorted(s for s, ids in self.studies.items() if run_id in ids))
            init = snap["init"]["name"]  # type: ignore[typeddict-item]
            rows.append(
                {"kind": "finetune", "run_id": run_id, "init": init, "seed": snap["seed"], "studies": studies}
            )
        return rows


class _Planner:
    """Builds one Plan; each method plans one kind of thing once and returns what its callers need."""

    def __init__(self, config: dict[str, Any], study_dir: Path) -> None:
        from geosem.sources.catalog import dataset_spec

        self.config, self.study_dir, self.plan = config, study_dir, Plan()
        self.data_cfg = config["data"]
        self.dataset = self.data_cfg["dataset"]
        self.label_space = dataset_spec(self.dataset).label_space  # the studies' (fine-tuning) label space
        self.evaluation = {key: config["evaluation"][key] for key in ("batch_size", "max_depth")}
        compute = config["compute"]
        # The fast path changes a run's numbers (bf16): in the snapshot, but only where set, so that
        # adding the keys changed no existing run.
        fast = {k: compute[k] for k, v in FAST_PATH_DEFAULTS.items() if compute.get(k, v) != v}
        self.compute = {"num_workers": compute["num_workers"], **fast}

    def shard_set(self, name: str, height: int, width: int, label_interpolation: str = "nearest") -> str:
        """Plan one shard set (once) and return its folder."""
        from geosem.sources.catalog import dataset_spec

        spec = dataset_spec(name)
        variant = ShardVariant(
            height, width, spec.converter_version, label_interpolation, self.data_cfg["samples_per_part"]
        )
        self.plan.shards[f"{name}/{variant.name}"] = {
            "dataset": name,
            "converter": spec.converter,
            "converter_version": spec.converter_version,
            "height": height,
            "width": width,
            "samples_per_part": variant.samples_per_part,
            "label_interpolation": label_interpolation,
            "variant": variant.name,
        }
        return f"{self.config['shards_root']}/{name}/{variant.name}"

    def data_section(self, shards: str, height: int, width: int, dataset: str | None = None) -> DataSection:
        """The data section of a run on ``shards``, a shard set of ``dataset`` (default data.dataset)."""
        from geosem.sources.catalog import dataset_spec

        label_space = self.label_space if dataset is None else dataset_spec(dataset).label_space
        return {
            "dataset": dataset or self.dataset,
            "variant": Path(shards).name,
            "shards": shards,
            "height": height,
            "width": width,
            "label_space": label_space,
            "num_classes": num_classes(label_space) if label_space else 0,  # depth-only sets (DIODE)
            "train_split": "train",
            "test_split": "test",
            "test_stride": self.config["evaluation"]["test_stride"],
        }

    def add(self, runs: dict[str, Snapshot], snapshot: Snapshot, where: str) -> None:
        run_id = snapshot["run_id"]
        if run_id in runs and runs[run_id] != snapshot:
            raise ValueError(
                f"run id {run_id!r} ({where}) names two different configurations; make the grids agree"
            )
        runs[run_id] = snapshot

    def pretrain_run(
        self, init: str, encoder: str, model: dict[str, Any], resolution: tuple[int, int], seed: int
    ) -> InitSection:
        """Plan the pre-training of ``init`` with ``seed`` (once) and return the init section of its
        fine-tunes."""
        tasks = self.config["pretrain"]["tasks"]
        if init not in tasks:
            raise KeyError(
                f"init {init!r} is neither a baseline {BASELINE_INITS}, an external checkpoint under "
                f"pretrain.external {sorted(self.config['pretrain'].get('external', {}))}, nor a task under "
                f"pretrain.tasks {sorted(tasks)}"
            )
        task = pretrain_task_section(self.config, init)
        # First: a crop that cannot move is a config error, not a row left unavailable by missing weights.
        resolution = pretrain_resolution(task, resolution, f"pretrain.tasks.{init}")
        # Checked before its shard set is planned: an unavailable row plans no data of its own.
        dataset = pretrain_dataset(task, self.dataset, f"pretrain.tasks.{init}")
        if task.get("encoder_init") == "imagenet":
            task["weights_file"] = imagenet_weights(self.config, encoder, f"pretrain.tasks.{init}")
        shards = self.shard_set(dataset, *resolution)
        variant = Path(shards).name
        pre_id = f"{init}-{encoder}-{dataset}-{variant}-s{seed}"
        data = self.data_section(shards, *resolution, dataset)
        task.update(dataset_keys(task, data["label_space"], data["num_classes"]))
        snapshot: Snapshot = {
            "run_id": pre_id,
            "kind": "pretrain",
            "seed": seed,
            "task": task,
            "model": model,
            "data": data,
            "loop": loop_section(pretrain_loop_section(self.config, init)),
            # Only pre-trainings score depth: the crop stays out of fine-tuning snapshots.
            "evaluation": {**self.evaluation, "depth_crop": self.config["evaluation"]["depth_crop"]},
            "compute": self.compute,
        }
        self.add(self.plan.pretrain, snapshot, f"init {init}")
        return {
            "name": init,
            "task": task["name"],
            "run_id": pre_id,
            "variant": variant,
            "height": resolution[0],
            "width": resolution[1],
            "checkpoint": f"{self.config['runs_root']}/pretrain/{pre_id}/model.pt",
            "run": {"model": model, "task": task},
        }

    def init_section(
        self, init: str, encoder: str, model: dict[str, Any], pre_res: tuple[int, int], seed: int
    ) -> InitSection:
        """Where a fine-tune of ``init`` starts; ``seed`` is the seed of its pre-training, if it has one."""
        if init == "random":
            return {"name": init}
        if init == "imagenet" or init in self.config["pretrain"].get("external", {}):
            return weights_init(self.config, init, encoder)
        return self.pretrain_run(init, encoder, model, pre_res, seed)

    def init_sections(
        self, study: dict[str, Any], init: str, encoder: str, model: dict[str, Any], pre_res: tuple[int, int]
    ) -> dict[int, InitSection]:
        """Fine-tuning seed -> its init section: one shared pre-training (seed ``pretrain.seed``), or with
        ``pretrain_seeds: paired`` one pre-training per fine-tuning seed, with that seed."""
        if study.get("pretrain_seeds", "shared") == "shared":
            shared = self.init_section(init, encoder, model, pre_res, self.config["pretrain"]["seed"])
            return dict.fromkeys(study["seeds"], shared)
        return {seed: self.init_section(init, encoder, model, pre_res, seed) for seed in study["seeds"]}

    def study(self, name: str) -> None:
        study = load_study(self.study_dir, name)
        protocol = study.get("protocol", self.config["protocol"])
        settings = protocol_settings(protocol, self.config["finetune"])
        ids: list[str] = []
        unavailable: list[dict[str, str]] = []
        for encoder in study.get("encoders", [self.config["model"]["encoder"]]):
            model = {"encoder": encoder, "decoder_channels": list(self.config["model"]["decoder_channels"])}
            for pre_res, fine_res in resolutions(study, self.data_cfg):
                fine_shards = self.shard_set(self.dataset, *fine_res, settings["label_interpolation"])
                for init in study["inits"]:
                    try:
                        inits = self.init_sections(study, init, encoder, model, pre_res)
                    except Unavailable as reason:
                        row = {"init": init, "encoder": encoder, "reason": str(reason)}
                        if row not in unavailable:
                            unavailable.append(row)
                        continue
                    data = self.data_section(fine_shards, *fine_res)
                    ids += self.finetunes(study, protocol, settings, inits, model, data)
        self.plan.studies[name] = list(dict.fromkeys(ids))
        self.plan.unavailable[name] = unavailable
        self.plan.figures[name] = {
            "labels": dict(study.get("labels", {})),
            "plots": list(study.get("plots", ["curves"])),
            "gradcam": gradcam_runs(study, [self.plan.finetune[i] for i in self.plan.studies[name]]),
        }
        if not ids:
            raise ValueError(
                f"study {name!r} has no run that can start here: "
                + "; ".join(row["reason"] for row in unavailable)
            )

    def finetunes(
        self,
        study: dict[str, Any],
        protocol: str,
        settings: dict[str, Any],
        inits: dict[int, InitSection],
        model: dict[str, Any],
        data: DataSection,
    ) -> list[str]:
        """Plan every mode x train size x lr x seed of one init and resolution; return their ids."""
        from geosem.tasks import resolve_parameters

        finetune = self.config["finetune"]
        lrs = study.get("lrs")
        first = next(iter(inits.values()))
        source = ""
        # Another resolution's pre-training. A pre-training on another dataset has another converter's
        # variant name: only its resolution tells.
        other_dataset = "run" in first and first["run"]["task"].get("dataset", self.dataset) != self.dataset
        if "variant" in first and (
            (first["height"], first["width"]) != (data["height"], data["width"])
            if other_dataset
            else first["variant"] != data["variant"]
        ):
            source = f"-from{first['height']}x{first['width']}"
        paired = study.get("pretrain_seeds", "shared") == "paired" and "run_id" in first
        ids = []
        for mode in study.get("modes", ["all"]):
            task_values = {
                "mode": mode,
                **{key: settings[key] for key in ("hflip", "freeze", "metric")},
                "classifier_kernel": finetune["classifier_kernel"],
            }
            task = {"name": "segmentation", **resolve_parameters("segmentation", task_values, "finetune")}
            for size in map(train_size, study.get("train_sizes", [finetune["train_size"]])):
                for lr in lrs or [finetune["lr"]]:
                    for seed in study["seeds"]:
                        run_id = (
                            f"seg-{first['name']}-{mode}-{model['encoder']}-{self.dataset}-{data['variant']}"
                            f"{source}-n{size or 'all'}"
                            + (f"-lr{lr:g}" if lrs else "")
                            + ("-legacy" if protocol == "legacy" else "")
                            + (f"-ps{seed}" if paired else "")
                            + f"-s{seed}"
                        )
                        snapshot: Snapshot = {
                            "run_id": run_id,
                            "kind": "finetune",
                            "seed": seed,
                            "protocol": protocol,
                            "task": task,
                            "init": inits[seed],
                            "model": model,
                            "data": {**data, "train_size": size, "split_rule": settings["split_rule"]},
                            "loop": {**loop_section(finetune), "lr": lr, "zero_grad": settings["zero_grad"]},
                            "evaluation": self.evaluation,
                            "compute": self.compute,
                        }
                        self.add(self.plan.finetune, snapshot, f"study {study['name']}")
                        ids.append(run_id)
        return ids


def plan_runs(config: dict[str, Any], study_dir: Path | None = None) -> Plan:
    """Expand every study listed in ``config['studies']`` (config already validated, defaults filled)."""
    check_init_names(config)
    check_task_entries(config)
    planner = _Planner(config, Path(study_dir or config["study_dir"]))
    # The studies' shard set first, then the extra ones the default pipeline builds (study B's inputs).
    planner.shard_set(planner.dataset, planner.data_cfg["height"], planner.data_cfg["width"])
    for extra in planner.data_cfg.get("extra", []):
        planner.shard_set(extra["dataset"], extra["height"], extra["width"])
    for name in config["studies"]:
        study = load_study(planner.study_dir, name)
        if is_auxdepth_study(study):  # study B: its own planner, its own kind of run
            plan_auxdepth_study(planner, name, study)
        else:
            planner.study(name)
    return planner.plan


class StudyFileError(ValueError):
    """A study file that its schema rejects; the message names the file and the key path of each problem."""


def _key_path(parts: Iterable[str | int]) -> str:
    """``resolutions[0].pretrain``: the key path a user finds in the YAML file."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the whole file)"


def _study_problems(error: jsonschema.ValidationError) -> list[str]:
    """One line per problem of ``error``: an unknown key on a line of its own (jsonschema lists them all in
    one sentence, at the parent's path), with the closest known key when there is one."""
    where = list(error.absolute_path)
    if error.validator != "additionalProperties" or not isinstance(error.instance, dict):
        return [f"{_key_path(where)}: {error.message}"]
    known = sorted(error.schema.get("properties", {}))
    problems = []
    for key in sorted(set(error.instance) - set(known), key=str):
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.append(f"{_key_path([*where, key])}: unknown key ({hint}known here: {', '.join(known)})")
    return problems


def check_study_file(study_dir: Path | str, name: str, schema_path: Path | str) -> dict[str, Any]:
    """Study ``name`` of ``study_dir``, checked against the study schema at ``schema_path`` (passed in: the
    package does not know where the workflow lies); returned as loaded, defaults not filled in.

    The workflow calls it while Snakemake parses, so a typo (``fintune_steps: 10``) or a wrong type
    (``seeds: "three"``) stops the run before any job starts, with a ``StudyFileError`` that names the
    file and each key path: Snakemake's own ``validate`` names neither, only the schema and the instance.
    """
    import jsonschema  # only the workflow's parse needs it

    path = Path(study_dir) / f"{name}.yaml"
    if path.is_file():
        # load_study parses the file too; a syntax error or a list at the top would reach the user as a
        # YAML parser message about "<unicode string>" or an AttributeError, without the file's name.
        try:
            with path.open() as stream:  # a stream, so that the parser's message carries the file's name
                content = yaml.safe_load(stream)
        except yaml.YAMLError as error:
            raise StudyFileError(f"study file {path} is not valid YAML: {error}") from None
        if content is not None and not isinstance(content, dict):
            raise StudyFileError(
                f"study file {path}: holds a {type(content).__name__}, not a mapping of study keys"
            )
    study = load_study(Path(study_dir), name)
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(study), key=lambda error: [str(p) for p in error.absolute_path])
    problems = [problem for error in errors for problem in _study_problems(error)]
    if problems:
        lines = "\n".join(f"  {path}: {problem}" for problem in problems)
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise StudyFileError(f"study file {path}: {count} (schema {Path(schema_path).name}):\n{lines}")
    return study
