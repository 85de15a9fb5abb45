"""Study B's job: read an auxdepth run snapshot, build its data streams and model, train, evaluate, write.

``geosem auxdepth --run runs/auxdepth/<run_id>/run.yaml`` calls ``run_auxdepth_job``. The model is a
frozen backbone (re-created from the snapshot, never trained, never saved: its digest is), the shared
DPT decoder, a depth head and one auxiliary head per auxiliary dataset (``<task>.<dataset>``); the
optimisation is ``geosem.train.alternating``'s.

Data streams, each a pure function of (seed, step), so a resumed run draws what an uninterrupted one
draws:

* depth: ``StepBatchSampler`` over the depth training ids (a ``fraction`` < 1 keeps the first k of one
  seeded permutation, so the subsets of one seed are nested across fractions), every sample augmented
  by ``augment_depth_sample`` with a generator seeded per sample draw;
* auxiliary: which dataset an auxiliary step reads is drawn per step, proportional to the datasets'
  sizes (as if the union, MIX6, were one dataset, "a dataset composed of these"), from a generator of
  the run seed alone; each dataset then has its own ``StepBatchSampler`` over its own steps. Auxiliary
  images are resized whole to the depth crop (``resize_aux_sample``).

Outputs in the run folder, atomically, as the other trainers': model.pt (decoder and heads, the head
layout, the backbone's section and digest), metrics.json (the final test scores of ``evaluate_depth``
and the run's settings), curves.csv and the dvclive step log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from geosem.auxtasks import AuxTask, create_aux_task
from geosem.auxtasks.depth import DepthObjective, augment_depth_sample, evaluate_depth, resize_aux_sample
from geosem.models.dinov2 import create_backbone
from geosem.models.dpt_head import AuxDepthModel, DenseHead, DepthHead, DPTHead
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.snapshot import AuxDepthSnapshot, read_auxdepth_snapshot, snapshot_digest
from geosem.train.alternating import AlternatingOptimizer, AlternatingSpec, AlternatingTrainer, Steps
from geosem.train.alternating import train_alternating as run_training
from geosem.train.loop import StepBatchSampler
from geosem.train.seeding import seed_everything

log = logging.getLogger(__name__)

DEFAULT_CHANNELS = 256  # DINOv2's DPTHead
# Tags that keep the run's random streams apart (one seed, several independent generators).
DEPTH_STREAM, AUX_STREAM, AUX_SCHEDULE, FRACTION_STREAM = 1, 2, 3, 4


def stream_seed(seed: int, *tags: int) -> int:
    """A 32-bit seed for one stream of a run, derived from the run seed and the stream's tags."""
    return int(np.random.SeedSequence([seed, *tags]).generate_state(1)[0])


def fraction_subset(pool: list[str], fraction: float, seed: int) -> list[str]:
    """The first round(fraction x n) ids (at least one) of one seeded permutation of ``pool``, in pool
    order: for one seed a smaller fraction's subset lies inside every larger one's (Fig. 4)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"depth.fraction must lie in (0, 1], got {fraction}")
    keep = max(1, round(fraction * len(pool)))
    order = np.random.default_rng(stream_seed(seed, FRACTION_STREAM)).permutation(len(pool))
    return [pool[i] for i in sorted(order[:keep])]


def aux_schedule(sizes: list[int], steps: int, seed: int) -> np.ndarray:
    """The auxiliary dataset of every step: drawn proportionally to ``sizes``, one uniform draw per step
    (so the first k entries do not depend on ``steps``)."""
    cumulative = np.cumsum(np.asarray(sizes, dtype=np.float64)) / sum(sizes)
    draws = np.random.default_rng(stream_seed(seed, AUX_SCHEDULE)).random(steps)
    return np.minimum(np.searchsorted(cumulative, draws, side="right"), len(sizes) - 1)


def _loader(dataset: ShardDataset, sampler: StepBatchSampler, workers: int, seed: int) -> DataLoader:
    # Its own generator: a DataLoader draws a base seed when it starts iterating, and drawing it from the
    # global generator would shift later global draws in a resumed run only (geosem.train.loop).
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset, batch_sampler=sampler, num_workers=workers, collate_fn=default_collate, generator=generator
    )


def _to(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device, non_blocking=True) for key, value in batch.items()}


@dataclass
class AuxSource:
    """One auxiliary dataset: its head, shard set and training ids."""

    head: str
    shards: ShardSet
    ids: list[str]
    num_classes: int


class AuxDepthJob:
    """One auxdepth run: its snapshot checked, its data, model, optimiser and step functions."""

    def __init__(self, run: AuxDepthSnapshot, where: str, device: torch.device) -> None:
        self.run, self.where, self.device = run, where, device
        self.seed, self.loop, self.depth = run["seed"], run["loop"], run["depth"]
        self.workers = int(run.get("compute", {}).get("num_workers", 0))
        self.spec = self._spec()
        self.task: AuxTask | None = self._task()
        self.shards = ShardSet(Path(self.depth["shards"]))
        self.shards.check_manifest()  # before any step: a damaged or swapped set fails here
        pool = self.shards.ids(self.depth["train_split"], having=("depth",))
        if not pool:
            raise ValueError(
                f"{where}: {self.shards.root} has no depth sample in {self.depth['train_split']!r}"
            )
        self.train_ids = fraction_subset(pool, float(self.depth["fraction"]), self.seed)
        self.test_ids = self.shards.ids(self.depth["test_split"], having=("depth",))
        if not self.test_ids or set(self.test_ids) & set(self.train_ids):
            raise ValueError(f"{where}: the depth test split is empty or overlaps the training ids")
        self.sources = self._sources()
        self.model = self._model().to(device)
        self.objective = DepthObjective(
            min_depth=float(self.depth["min_depth"]),
            max_depth=float(self.depth["max_depth"]),
            gradient_loss=self.loop["gradient_loss"],
            gradient_weight=float(self.loop["gradient_weight"]),
        )

    def _spec(self) -> AlternatingSpec:
        aux, loop = self.run["aux"], self.loop
        if aux["task"] == "none" and (float(aux["alpha"]) != 1.0 or aux["beta"] is not None):
            raise ValueError(
                f"{self.where}: aux.task none has no auxiliary step, so aux.alpha must be 1 and aux.beta "
                "null (loop.gamma scales the baseline's rates)"
            )
        keys = ("lr", "head_lr", "gamma", "weight_decay", "grad_clip")
        rates = {key: None if loop[key] is None else float(loop[key]) for key in keys}
        return AlternatingSpec(
            steps=int(loop["steps"]),
            alpha=float(aux["alpha"]),
            beta=None if aux["beta"] is None else float(aux["beta"]),
            warmup_steps=int(loop["warmup_steps"]),
            eval_every=int(loop["eval_every"]),
            checkpoint_every=int(loop["checkpoint_every"]),
            **rates,  # type: ignore[arg-type]
        )

    def _task(self) -> AuxTask | None:
        aux = self.run["aux"]
        if aux["task"] == "none":
            return None
        if not aux["datasets"]:
            raise ValueError(f"{self.where}: aux.task {aux['task']!r} names no aux.datasets")
        try:
            return create_aux_task(aux["task"])
        except KeyError as error:  # the registry's message lists the known tasks
            raise KeyError(f"{self.where}: aux.task: {error.args[0]}; or none (the baseline)") from None

    def _sources(self) -> list[AuxSource]:
        if self.task is None:
            return []
        sources, fields = [], ("label",) if self.task.needs_labels else ()
        for entry in self.run["aux"]["datasets"]:
            shards = ShardSet(Path(entry["shards"]))
            shards.check_manifest()
            ids = shards.ids(entry["split"], having=fields)
            if not ids:
                raise ValueError(
                    f"{self.where}: auxiliary set {shards.root} has no sample in {entry['split']!r}"
                )
            head = f"{self.task.name}.{entry['dataset']}"
            if any(source.head == head for source in sources):
                raise ValueError(f"{self.where}: auxiliary dataset {entry['dataset']!r} is listed twice")
            sources.append(AuxSource(head, shards, ids, int(entry["num_classes"])))
        return sources

    def _model(self) -> AuxDepthModel:
        section = self.run["backbone"]
        weights = Path(section["weights"]) if section["weights"] else None
        backbone = create_backbone(section["name"], weights, section["layout"], **section["kwargs"])
        channels = int(self.run.get("decoder", {}).get("channels", DEFAULT_CHANNELS))
        # Decoder and depth head first: the auxiliary heads draw their initial weights after them, so
        # with alpha = 1 the depth model starts (and stays) the baseline's.
        decoder = DPTHead(backbone.embed_dim, channels)
        depth_head = DepthHead(channels, float(self.depth["min_depth"]), float(self.depth["max_depth"]))
        heads = {
            source.head: DenseHead(channels, self.task.out_channels(source.num_classes))
            for source in self.sources
            if self.task is not None
        }
        return AuxDepthModel(backbone, decoder, depth_head, heads)

    def optimizer(self) -> AlternatingOptimizer:
        model = self.model
        aux = [p for source in self.sources for p in model.head_parameters(source.head)]
        return AlternatingOptimizer(
            self.spec,
            model.decoder_parameters(),
            model.head_parameters("depth"),
            aux if self.sources else None,
        )

    # --- data streams --------------------------------------------------------------------------------

    def depth_stream(self, start: int) -> Iterator[dict[str, torch.Tensor]]:
        crop = tuple(int(side) for side in self.depth["crop"])
        transform = functools.partial(_augment, recipe=self.depth["augment"], crop=crop)
        seed = stream_seed(self.seed, DEPTH_STREAM)
        dataset = ShardDataset(
            self.shards, self.train_ids, ("image", "depth"), transform=transform, seed=seed
        )
        batch_size = int(self.loop["batch_size"])
        sampler = StepBatchSampler(len(dataset), batch_size, seed, start, self.spec.steps)
        for batch in _loader(dataset, sampler, self.workers, seed):
            yield _to(batch, self.device)

    def aux_stream(self, start: int) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
        assert self.task is not None
        crop = tuple(int(side) for side in self.depth["crop"])
        schedule = aux_schedule([len(s.ids) for s in self.sources], self.spec.steps, self.seed)
        loaders = []
        for k, source in enumerate(self.sources):
            seed = stream_seed(self.seed, AUX_STREAM, k)
            transform = functools.partial(_resize, size=crop)
            dataset = ShardDataset(
                source.shards, source.ids, self.task.fields, transform=transform, seed=seed
            )
            # This dataset's own steps: how many earlier global steps chose it.
            first, last = int((schedule[:start] == k).sum()), int((schedule == k).sum())
            sampler = StepBatchSampler(len(dataset), int(self.loop["aux_batch_size"]), seed, first, last)
            loaders.append(iter(_loader(dataset, sampler, self.workers, seed)))
        for step in range(start, self.spec.steps):
            k = int(schedule[step])
            yield self.sources[k].head, _to(next(loaders[k]), self.device)

    # --- losses and evaluation -----------------------------------------------------------------------

    def depth_loss(self, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective.loss(self.model(batch["image"], head="depth"), batch, step)

    def aux_loss(
        self, head: str, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert self.task is not None
        return self.task.loss(self.model(batch["image"], head=head), batch)

    def evaluate(self) -> dict[str, Any]:
        return evaluate_depth(
            lambda image: self.model(image, head="depth"),
            self.shards,
            self.test_ids,
            crop=self.depth["eval_crop"],
            min_depth=float(self.depth["min_depth"]),
            max_depth=float(self.depth["eval_max_depth"]),
            flip_tta=bool(self.depth["flip_tta"]),
            batch_size=int(self.loop["batch_size"]),
            device=self.device,
        )

    def steps(self) -> Steps:
        return Steps(
            depth_stream=self.depth_stream,
            depth_loss=self.depth_loss,
            evaluate=self.evaluate,
            aux_stream=self.aux_stream if self.sources else None,
            aux_loss=self.aux_loss if self.sources else None,
            guard={"backbone_digest": self.model.backbone.frozen_digest()},
        )

    def trainer(self, run_dir: Path, steps: Steps | None = None) -> AlternatingTrainer:
        """The resumable trainer of this run in ``run_dir`` (``steps``: this job's own by default)."""
        model = self.model
        trained = {"decoder": model.decoder, "depth_head": model.depth_head, "aux_heads": model.aux_heads}
        return AlternatingTrainer(
            run_dir, snapshot_digest(self.run), model, trained, self.optimizer(), steps or self.steps()
        )

    # --- outputs -------------------------------------------------------------------------------------

    def describe(self, metrics: dict[str, Any]) -> dict[str, Any]:
        """metrics.json: the final scores and what produced them."""
        run, spec = self.run, self.spec
        return {
            "run_id": run["run_id"],
            "kind": run["kind"],
            "seed": self.seed,
            "depth_dataset": self.depth["dataset"],
            "fraction": float(self.depth["fraction"]),
            "train_samples": len(self.train_ids),
            "test_samples": len(self.test_ids),
            "aux_task": run["aux"]["task"],
            "aux_datasets": [entry["dataset"] for entry in run["aux"]["datasets"]] if self.sources else [],
            "aux_samples": {source.head: len(source.ids) for source in self.sources},
            "alpha": spec.alpha,
            "beta": spec.beta,
            "gamma": spec.gamma,
            "backbone": run["backbone"]["name"],
            "backbone_digest": self.model.backbone.frozen_digest(),
            **metrics,
        }

    def model_extra(self) -> dict[str, Any]:
        """What model.pt holds besides the weights: enough to rebuild the model around them."""
        return {
            "backbone": {**self.run["backbone"], "digest": self.model.backbone.frozen_digest()},
            "decoder_channels": int(self.run.get("decoder", {}).get("channels", DEFAULT_CHANNELS)),
            "depth_range": [float(self.depth["min_depth"]), float(self.depth["max_depth"])],
            "heads": {s.head: self.task.out_channels(s.num_classes) for s in self.sources if self.task},
        }


def _augment(
    sample: dict[str, torch.Tensor], rng: np.random.Generator, recipe: str, crop: tuple[int, int]
) -> dict[str, torch.Tensor]:
    return augment_depth_sample(sample, rng, recipe, crop)


def _resize(
    sample: dict[str, torch.Tensor], rng: np.random.Generator, size: tuple[int, int]
) -> dict[str, torch.Tensor]:
    return resize_aux_sample(sample, size, rng)


def run_auxdepth_job(
    run_path: Path, threads: int = 1, max_steps_this_call: int | None = None
) -> dict[str, Any] | None:
    """Run the auxdepth job ``run_path`` (a run.yaml) in its folder, resuming from its checkpoint; the
    final metrics, or None when a signal (or ``max_steps_this_call``) stopped it after a checkpoint."""
    run_path = Path(run_path)
    run = read_auxdepth_snapshot(run_path)
    torch.set_num_threads(max(1, threads))
    seed_everything(run["seed"])  # the decoder's and heads' initial weights
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    job = AuxDepthJob(run, str(run_path), device)
    log.info(
        "%s: %d depth training samples, %d test samples, auxiliary %s, on %s",
        run["run_id"],
        len(job.train_ids),
        len(job.test_ids),
        {s.head: len(s.ids) for s in job.sources} or "none",
        device,
    )
    trainer = job.trainer(run_path.parent)
    return run_training(trainer, job.describe, job.model_extra(), max_steps_this_call=max_steps_this_call)
