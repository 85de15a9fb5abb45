"""Where a study's init comes from, resolved while planning: the names (baseline, external checkpoint or
pre-training task), the weight files an init needs, and the dataset a pre-training trains on.

Everything here fails or reports at plan time, so that a machine lacking a weight file or a converter
learns it before any job starts: a missing prerequisite is :class:`Unavailable` (the row is listed as
such in its table), a contradiction in the config is an error.

A pre-training normally trains on ``data.dataset``. A task that declares a parameter ``dataset``
(``supervised_segmentation``: segmentation on another labelled dataset) trains on that dataset instead:
:func:`pretrain_dataset` checks it, and the planner plans its shard set and data section and writes its
``label_space`` and ``num_classes`` into the task section (:func:`dataset_keys`).

A pre-training normally trains at the study's pre-training resolution. A task class with a
``plan_resolution`` (``depth_cropped``: its crops must be smaller than the images in both axes) picks its
own from it and refuses, at plan time, a setting that cannot work (:func:`pretrain_resolution`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from geosem.snapshot import LOOP_KEYS, STEP_SCHEDULE_KEYS, InitSection
from geosem.studies.grid import BASELINE_INITS

# Datasets a pre-training may name that GeoSem cannot convert yet, with what is missing: a row naming one
# is reported unavailable (never replaced by another dataset). An entry is ignored once the dataset's
# converter is registered, so it needs no removal when the converter lands.
MISSING_DATASETS: dict[str, str] = {}  # none since COCO-Stuff's converter landed (issue 12)


class Unavailable(Exception):
    """An init whose prerequisite (a weight file, a dataset converter) is not on this machine."""


def pretrain_task_section(config: dict[str, Any], init: str) -> dict[str, Any]:
    """The resolved parameters of init ``init``: the entry ``pretrain.tasks.<init>``, whose ``task`` key
    picks the task module when it differs from the init's name (``depth_mono`` and ``depth_mono_rand``
    are one task started from ImageNet and from scratch), checked against the parameters that module
    declares, defaults filled in."""
    from geosem.tasks import resolve_parameters

    entry = copy.deepcopy(config["pretrain"]["tasks"][init])
    entry.pop("loop", None)  # the init's own loop settings: pretrain_loop_section
    task = entry.get("task") or init
    return {"name": task, "init": init, **resolve_parameters(task, entry, f"pretrain.tasks.{init}")}


def pretrain_loop_section(config: dict[str, Any], init: str) -> dict[str, Any]:
    """The pretrain section as init ``init`` trains with it: ``pretrain.tasks.<init>.loop`` over the shared
    loop settings (each task learns at its own rate: a from-scratch network under dense supervision takes
    a rate that stalls a pose network)."""
    own = config["pretrain"]["tasks"][init].get("loop") or {}
    known = [*LOOP_KEYS, *STEP_SCHEDULE_KEYS]
    unknown = sorted(set(own) - set(known))
    if unknown:
        raise KeyError(f"pretrain.tasks.{init}.loop: unknown key(s) {unknown}; known: {known}")
    return {**config["pretrain"], **own}


def check_init_names(config: dict[str, Any]) -> None:
    """Each init name means one thing. A name under both pretrain.tasks and pretrain.external would be
    a pipeline-trained model in one reading and someone else's checkpoint in the other (moco_v2 trained
    here vs MoCo v2's ImageNet weights), and the table could not say which row it shows."""
    tasks = set(config["pretrain"]["tasks"])
    external = set(config["pretrain"].get("external", {}))
    both = sorted(tasks & external)
    if both:
        raise ValueError(
            f"init name(s) {both} are both a pre-training task (pretrain.tasks) and an external checkpoint "
            "(pretrain.external): rename one of each, e.g. the external one <name>_imagenet"
        )
    reserved = sorted((tasks | external) & set(BASELINE_INITS))
    if reserved:
        raise ValueError(f"init name(s) {reserved} are baselines {BASELINE_INITS}; pick another name")


def imagenet_weights(config: dict[str, Any], encoder: str, where: str) -> str:
    """The local ImageNet weight file of ``encoder``; resolved while planning so that a machine without
    the weights stops here, naming what to fetch, and not hours into a run."""
    from geosem.models.encoders import resolve_imagenet_weights  # imports timm: only when needed

    try:
        return str(resolve_imagenet_weights(encoder, config["pretrain"].get("imagenet_weights", {})))
    except FileNotFoundError as error:
        raise Unavailable(f"{where}: {error}") from None


def weights_init(config: dict[str, Any], init: str, encoder: str) -> InitSection:
    """An init that loads encoder weights from a file: ImageNet (timm) or an external checkpoint."""
    if init == "imagenet":
        return {"name": init, "weights_file": imagenet_weights(config, encoder, "init imagenet")}
    entry = config["pretrain"]["external"][init]
    configured = entry.get("files", {}).get(encoder)
    path = Path(configured or "").expanduser()
    if not configured or not path.is_file():
        raise Unavailable(
            f"pretrain.external.{init}.files.{encoder}: no {entry['description']} weights for "
            f"{encoder} on this machine ({path if configured else 'not configured'}); "
            "they are not downloadable here"
        )
    return {"name": init, "weights_file": str(path)}


def pretrain_dataset(task: dict[str, Any], main_dataset: str, where: str) -> str:
    """The dataset the pre-training ``task`` (a resolved task section) trains on: its ``dataset``
    parameter, else ``main_dataset`` (the studies' ``data.dataset``).

    Unavailable: a dataset GeoSem cannot convert yet (:data:`MISSING_DATASETS`), or an embedded world
    while the studies run on a real dataset, where it would stand in for the real pre-training data."""
    from geosem.sources.catalog import datasets

    dataset = task.get("dataset") or main_dataset
    if dataset == main_dataset:
        return dataset
    known = datasets()
    if dataset not in known:
        if dataset in MISSING_DATASETS:
            raise Unavailable(
                f"{where}.dataset: {dataset} needs {MISSING_DATASETS[dataset]}: not in GeoSem yet"
            )
        raise KeyError(f"{where}.dataset: unknown dataset {dataset!r}; known: {sorted(known)}")
    if known[dataset].world is not None and known[main_dataset].world is None:
        from geosem.tasks import get_task

        paper = getattr(get_task(task["name"]), "paper_dataset", None)
        hint = f" Its real counterpart here is `dataset: {paper}`." if paper else ""
        if paper in MISSING_DATASETS and paper not in known:
            hint = f" Its real counterpart, {paper}, needs {MISSING_DATASETS[paper]}: not in GeoSem yet."
        raise Unavailable(
            f"{where}.dataset: {dataset} is an embedded synthetic world but the studies run on the real "
            f"dataset {main_dataset}; pre-training on it would be a stand-in.{hint}"
        )
    return dataset


def check_task_entries(config: dict[str, Any]) -> None:
    """Every entry of pretrain.tasks, used by a study or not, against its task module's parameters, and
    its ``dataset`` (if any) against the datasets that exist or are known to be missing: a typo stops
    the run here."""
    from geosem.sources.catalog import datasets

    known = datasets()
    for init in config["pretrain"]["tasks"]:
        pretrain_loop_section(config, init)
        dataset = pretrain_task_section(config, init).get("dataset")
        if dataset and dataset not in known and dataset not in MISSING_DATASETS:
            raise KeyError(
                f"pretrain.tasks.{init}.dataset: unknown dataset {dataset!r}; known: {sorted(known)}"
            )


def dataset_keys(task: dict[str, Any], label_space: str, classes: int) -> dict[str, Any]:
    """What a task training on its own ``dataset`` carries in its task section besides its parameters:
    a fine-tune rebuilds the pre-training's model from the task and model sections alone (no data
    section), and that model's classifier has as many outputs as the pre-training dataset has classes."""
    return {"label_space": label_space, "num_classes": classes} if task.get("dataset") else {}


def pretrain_resolution(task: dict[str, Any], resolution: tuple[int, int], where: str) -> tuple[int, int]:
    """The (height, width) the pre-training ``task`` (a resolved task section) trains on: the study's
    pre-training ``resolution``, or what the task class's ``plan_resolution`` makes of it (its own shard
    set, planned like any other; the fine-tunes keep the study's resolution, the encoder being
    resolution-agnostic)."""
    from geosem.tasks import get_task

    plan_resolution = getattr(get_task(task["name"]), "plan_resolution", None)
    if plan_resolution is None:
        return resolution
    height, width = plan_resolution(task, resolution, where)
    return height, width
