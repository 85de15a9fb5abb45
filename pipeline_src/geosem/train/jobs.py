"""Entry points of the training jobs: read a run snapshot, build data, model and task, run the loop."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosem.shards.reader import ShardDataset, ShardSet
from geosem.snapshot import Snapshot, read_snapshot, snapshot_digest
from geosem.tasks import get_task
from geosem.train.distributed import Distributed
from geosem.train.fast_path import FAST_PATH_KEYS
from geosem.train.loop import LoopSpec, train
from geosem.train.seeding import seed_everything

log = logging.getLogger(__name__)


def few_shot_subset(pool: list[str], size: int, seed: int) -> list[str]:
    """A seeded subset of the training pool; ``size`` 0 or >= the pool means the whole pool.

    The subset depends only on (pool, size, seed), and the test split never enters the pool, so the
    test set stays fixed whatever N is (the seed code tested on "the 200 images minus the first N").
    """
    if size <= 0 or size >= len(pool):
        return list(pool)
    chosen = np.random.default_rng([seed, size]).choice(len(pool), size=size, replace=False)
    return [pool[i] for i in sorted(chosen)]


SPLIT_RULES = ("heldout", "legacy")


def legacy_split(labelled: list[str], size: int, run_id: str) -> tuple[list[str], list[str]]:
    """Study A's published split (legacy protocol): train on the first ``size`` images of the labelled
    set in index order, test on the rest, so the test set changes with N (docs/protocols.md 1.2)."""
    if size <= 0 or size >= len(labelled):
        what = " (all)" if size <= 0 else ""
        raise ValueError(
            f"run {run_id!r}: data.split_rule 'legacy' trains on the first train_size images of the "
            f"{len(labelled)} labelled ones and tests on the rest, so train_size {size}{what} leaves "
            "no test set; choose a train_size below the labelled set's size or split_rule 'heldout'"
        )
    return labelled[:size], labelled[size:]


def split_ids(shards: ShardSet, run: Snapshot) -> tuple[list[str], list[str]]:
    """(training ids, test ids) of a run under its ``data.split_rule``.

    ``heldout`` (default): pre-training uses the whole train split, fine-tuning a seeded few-shot subset
    of it (``few_shot_subset``); the test set is the held-out test split, the same for every N.
    ``legacy`` (fine-tuning only): ``legacy_split`` of the test split. ``test_stride`` thins the test ids
    under both rules. A task that names its ``evaluation_split`` (flow: ``heldout_video``) is evaluated
    on that split instead (``evaluation_split_ids``).
    """
    data, run_id = run["data"], run["run_id"]
    rule = data.get("split_rule", "heldout")
    if rule not in SPLIT_RULES:
        raise ValueError(f"run {run_id!r}: unknown data.split_rule {rule!r}; known: {SPLIT_RULES}")
    labelled = shards.ids(data["test_split"])
    if not labelled:
        raise ValueError(f"{shards.root}: split {data['test_split']!r} is empty")
    if run["kind"] == "pretrain":
        if rule != "heldout":
            raise ValueError(f"run {run_id!r}: data.split_rule {rule!r} applies to fine-tuning only")
        train_ids, test = shards.ids(data["train_split"]), labelled
    elif run["kind"] == "finetune":
        if rule == "legacy":
            train_ids, test = legacy_split(labelled, data["train_size"], run_id)
        else:
            train_ids = few_shot_subset(shards.ids(data["train_split"]), data["train_size"], run["seed"])
            test = labelled
    else:
        raise ValueError(f"run {run_id!r}: unknown run kind {run['kind']!r}")
    test = evaluation_split_ids(shards, run, test)
    return train_ids, test[:: data["test_stride"]]


def evaluation_split_ids(shards: ShardSet, run: Snapshot, default: list[str]) -> list[str]:
    """The ids of the split the run's task names (``Task.evaluation_split``), else ``default``.

    A shard set without that split is an error here, before any step: evaluating nothing would report
    no score (flow's "0 pairs" of KITTI's neighbour-less labelled frames) after a whole training.
    """
    split = get_task(run["task"]["name"]).evaluation_split
    if split is None:
        return default
    if run["data"].get("split_rule", "heldout") != "heldout":
        raise ValueError(
            f"run {run['run_id']!r}: task {run['task']['name']!r} is evaluated on split {split!r}, which "
            "the legacy split rule (a split of the labelled test set) cannot give"
        )
    ids = shards.ids(split)
    if not ids:
        raise ValueError(
            f"run {run['run_id']!r}: task {run['task']['name']!r} is evaluated on split {split!r}, but "
            f"shard set {shards.root} (converter {shards.manifest.converter_version}) holds only "
            f"{shards.manifest.splits}; convert it again with the current converter (kitti writes "
            "heldout_video from version 3 on)"
        )
    return ids


def test_ids(shards: ShardSet, run: Snapshot) -> list[str]:
    """The ids a run is evaluated on (see ``split_ids``)."""
    return split_ids(shards, run)[1]


def _configure_threads(threads: int) -> None:
    torch.set_num_threads(max(1, threads))


def run_job(
    run_path: Path,
    threads: int = 1,
    max_steps_this_call: int | None = None,
    dist: Distributed | None = None,
) -> dict[str, Any] | None:
    """Run the pre-training or fine-tuning described by ``run_path`` (a run.yaml) in its directory.

    ``dist``: this process's rank when the job trains data-parallel (every rank calls ``run_job``).
    """
    run_path = Path(run_path)
    run = read_snapshot(run_path)
    run_dir = run_path.parent
    dist = dist or Distributed()
    _configure_threads(threads)
    # The same seed on every rank: all ranks build the same initial weights.
    seed_everything(run["seed"])
    # Train on the GPU when the job sees one (SLURM sets CUDA_VISIBLE_DEVICES), one GPU per rank, else
    # on the CPU.
    device = dist.device()
    task = get_task(run["task"]["name"])(run, device)
    shards = ShardSet(Path(run["data"]["shards"]))
    shards.check_manifest()  # before any step: a damaged or swapped set fails here, naming the file
    train_ids, evaluation_ids = split_ids(shards, run)
    overlap = set(train_ids) & set(evaluation_ids)
    if overlap:
        raise ValueError(f"{run_path}: {len(overlap)} samples are in both the training and the test split")
    log.info(
        "%s: %d training samples, %d test samples, on %s (%d process(es))",
        run["run_id"],
        len(train_ids),
        len(evaluation_ids),
        device,
        dist.world_size,
    )

    model = task.build_model().to(device)
    dataset = ShardDataset(shards, train_ids, task.fields, transform=task.transform, seed=run["seed"])
    compute = {key: run["compute"][key] for key in ("num_workers", *FAST_PATH_KEYS) if key in run["compute"]}
    spec = LoopSpec.from_dict({**run["loop"], **compute}, seed=run["seed"])

    def describe(metrics: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": run["run_id"],
            "kind": run["kind"],
            "seed": run["seed"],
            "train_samples": len(train_ids),
            "test_samples": len(evaluation_ids),
            **metrics,
        }

    return train(
        run_dir=run_dir,
        run_digest=snapshot_digest(run),
        model=model,
        dataset=dataset,
        loss_fn=task.loss,
        evaluate_fn=lambda m: task.evaluate(m, shards, evaluation_ids),
        spec=spec,
        device=device,
        final_metrics=describe,
        max_steps_this_call=max_steps_this_call,
        dist=dist,
    )
