"""The training loop shared by pre-training and fine-tuning.

One loop, many tasks: a task supplies the loss of a batch and an evaluation; the loop owns optimiser,
schedule, step-indexed data order, periodic evaluation (the curves), checkpoints and exact resume.
``LoopSpec.zero_grad`` False (study A's legacy protocol) lets gradients accumulate over all steps.

Exact resume: the data order is a pure function of (seed, step) (``StepBatchSampler``), augmentation
draws are seeded per sample draw, and the checkpoint holds model, optimiser, scheduler, RNG states, step
and the curve rows so far, plus the accumulated gradients when ``zero_grad`` is off. A resumed run
therefore continues the very sequence of updates an uninterrupted run makes. A checkpoint written for a
different run snapshot is refused, never silently resumed.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from geosem.atomic import atomic_write_json, atomic_write_text
from geosem.train.checkpoint import (
    CHECKPOINT_NAME,
    atomic_torch_save,
    capture_gradients,
    load_checkpoint,
    remove_checkpoints,
    restore_gradients,
    save_checkpoint,
)
from geosem.train.distributed import Distributed
from geosem.train.fast_path import autocast, batch_channels_last, resolve_precision, to_channels_last
from geosem.train.seeding import capture_rng_state, restore_rng_state
from geosem.train.steplog import StepLog

log = logging.getLogger(__name__)

# Exit status of a job that stopped on a signal after saving its checkpoint (EX_TEMPFAIL): the scheduler
# or Snakemake's retry reruns it and it resumes.
EXIT_RESUMABLE = 75


@dataclass(frozen=True)
class LoopSpec:
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    lr_schedule: str  # "cosine", "constant" or "step"
    eval_every: int
    checkpoint_every: int
    seed: int
    num_workers: int = 0
    # lr_schedule "step": after lr_step_at x steps the rate is multiplied by lr_step_factor once.
    lr_step_at: float = 0.7
    lr_step_factor: float = 0.1
    # False reproduces study A's published code, which never calls ``optimizer.zero_grad()``: every step
    # adds its gradient to the sum of all earlier ones (docs/protocols.md 1.7). The accumulated ``.grad``
    # buffers are then training state and go into the checkpoint.
    zero_grad: bool = True
    # The fast path (geosem.train.fast_path): bf16 autocast ("fp32", "bf16" or "auto") and NHWC tensors.
    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any], seed: int) -> LoopSpec:
        fields = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "seed"}
        return cls(seed=seed, **fields)


class StepBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields the batches of steps ``start..steps-1``; batch ``s`` depends only on (seed, s).

    Each element is ``(sample_index, draw)`` where ``draw`` numbers the sample draw over the run, so the
    dataset can seed its augmentation per draw. Epochs are reshuffled with ``default_rng([seed, epoch])``.
    In a data-parallel job each rank iterates over its share of every global batch (``dist.shard``).
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        start: int,
        steps: int,
        dist: Distributed | None = None,
    ) -> None:
        if num_samples == 0:
            raise ValueError("cannot train on an empty dataset")
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.start = start
        self.steps = steps
        self.dist = dist or Distributed()
        self.dist.shard(list(range(batch_size)))  # fail now, not at the first step, on an uneven split

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def batch(self, step: int) -> list[tuple[int, int]]:
        first = step * self.batch_size
        items = []
        for draw in range(first, first + self.batch_size):
            epoch, position = divmod(draw, self.num_samples)
            items.append((int(self._order(epoch)[position]), draw))
        return items

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.steps):
            yield self.dist.shard(self.batch(step))

    def __len__(self) -> int:
        return max(self.steps - self.start, 0)


class StopRequested:
    """Turns SIGTERM / SIGUSR1 (SLURM's time-limit warning, preemption) into a checkpoint-and-exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequested:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signal = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}


def _make_scheduler(optimizer: torch.optim.Optimizer, spec: LoopSpec) -> torch.optim.lr_scheduler.LambdaLR:
    if spec.lr_schedule == "cosine":

        def factor(step: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(step, spec.steps) / spec.steps))
    elif spec.lr_schedule == "constant":

        def factor(step: int) -> float:
            return 1.0
    elif spec.lr_schedule == "step":
        # monodepth2 steps StepLR(15, 0.1) at the start of each epoch, so its rate falls after 14 of 20
        # epochs (docs/protocols.md 2): the drop comes after round(lr_step_at x steps) optimiser steps.
        drop = round(spec.lr_step_at * spec.steps)

        def factor(step: int) -> float:
            return 1.0 if step < drop else spec.lr_step_factor
    else:
        raise ValueError(f"unknown lr_schedule {spec.lr_schedule!r}; expected 'cosine', 'constant' or 'step'")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def curves_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


TrainStep = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


class _Training:
    """One call of ``train``: the optimiser state, its checkpoint, and the steps this call takes."""

    def __init__(self, run_dir: Path, run_digest: str, model: nn.Module, spec: LoopSpec, dist: Distributed):
        self.run_dir, self.run_digest, self.model, self.spec, self.dist = (
            run_dir,
            run_digest,
            model,
            spec,
            dist,
        )
        self.checkpoint_path = run_dir / CHECKPOINT_NAME
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(trainable, lr=spec.lr, weight_decay=spec.weight_decay)
        self.scheduler = _make_scheduler(self.optimizer, spec)
        self.curves: list[dict[str, Any]] = []
        self.start = self.resume()
        self.step = self.start
        self.last_eval: dict[str, Any] | None = None
        self.precision, self.device = "fp32", torch.device("cpu")  # set by train() for its device

    def resume(self) -> int:
        """Load this run's checkpoint, if there is one; the step to start from."""
        state = load_checkpoint(self.run_dir)
        if state is None:
            return 0
        if state.get("run_digest") != self.run_digest:
            log.warning("ignoring %s: it was written for another run configuration", self.checkpoint_path)
            return 0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        if "gradients" in state:
            restore_gradients(self.model, state["gradients"])
        self.curves = state["curves"]
        print(f"resuming {self.run_dir} from step {state['step']}", file=sys.stderr)
        return int(state["step"])

    def save(self) -> None:
        save_checkpoint(
            {
                "run_digest": self.run_digest,
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": capture_rng_state(),
                "curves": self.curves,
                # Without zero_grad the next step adds to these sums: resuming without them would not
                # continue the same sequence of updates.
                **({} if self.spec.zero_grad else {"gradients": capture_gradients(self.model)}),
            },
            self.run_dir,
        )

    def take_step(
        self, net: nn.Module, loss_fn: TrainStep, batch: dict[str, torch.Tensor]
    ) -> tuple[float, dict]:
        """One optimiser step; the global batch's loss and the task's loss terms."""
        self.model.train()
        if self.spec.zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.precision, self.device):
            loss, logs = loss_fn(net, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.run_dir}: loss is {loss.item()} at step {self.step}")
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return self.dist.mean(float(loss.item())), logs

    def evaluate(self, evaluate_fn: Callable[[nn.Module], dict[str, Any]]) -> dict[str, Any]:
        """Rank 0 evaluates; every rank gets its scores."""
        return self.dist.broadcast(evaluate_fn(self.model) if self.dist.is_main else None)

    def record(self, loss_value: float, logs: dict[str, float], scores: dict[str, Any], step_log: StepLog):
        """One row of the curves, at an evaluation step."""
        row = {"step": self.step, "train_loss": loss_value, "lr": self.scheduler.get_last_lr()[0]}
        row.update({k: self.dist.mean(v) for k, v in logs.items()})
        row.update({k: v for k, v in scores.items() if isinstance(v, int | float)})
        self.curves.append(row)
        step_log.log(self.step, scores, prefix="test/")
        step_log.summary()
        log.info("step %d: %s", self.step, row)

    def finish(self, metrics: dict[str, Any]) -> None:
        if self.dist.is_main:
            atomic_torch_save(
                {"model": self.model.state_dict(), "run_digest": self.run_digest}, self.run_dir / "model.pt"
            )
            atomic_write_text(self.run_dir / "curves.csv", curves_csv(self.curves))
            atomic_write_json(self.run_dir / "metrics.json", metrics)
            remove_checkpoints(self.run_dir)
        self.dist.barrier()


def _stop_reason(signalled: int | None, stopping: bool) -> str:
    if signalled is not None:
        return f"signal {signalled}"
    return "signal on another rank" if stopping else "step limit of this call"


def train(
    *,
    run_dir: Path,
    run_digest: str,
    model: nn.Module,
    dataset: Dataset,
    loss_fn: TrainStep,
    evaluate_fn: Callable[[nn.Module], dict[str, Any]],
    spec: LoopSpec,
    device: torch.device | str = "cpu",
    final_metrics: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    max_steps_this_call: int | None = None,
    dist: Distributed | None = None,
) -> dict[str, Any] | None:
    """Train to ``spec.steps``, resuming from ``run_dir/checkpoint.pt`` when one exists.

    Writes ``model.pt``, ``metrics.json`` and ``curves.csv`` into ``run_dir`` at the end and removes the
    checkpoint. Returns the final metrics, or None when a stop signal (or ``max_steps_this_call``, used by
    tests to interrupt a run cleanly) ended this call early after saving a checkpoint.

    ``dist``: this process's rank in a data-parallel job (``geosem.train.distributed``); every rank calls
    ``train`` with the same arguments, rank 0 alone writes files.
    """
    dist = dist or Distributed()
    if spec.channels_last:
        to_channels_last(model)  # before the checkpoint loads: loading keeps each tensor's layout
    run = _Training(Path(run_dir), run_digest, model, spec, dist)
    run.device = torch.device(device)
    run.precision = resolve_precision(spec.precision, run.device)
    # Every step's scalars (dvclive), for every task; rows a killed attempt wrote after `start` are cut.
    step_log = StepLog(run.run_dir, run.start, enabled=dist.is_main)
    sampler = StepBatchSampler(len(dataset), spec.batch_size, spec.seed, run.start, spec.steps, dist)
    # Its own generator: a DataLoader draws its base seed whenever it starts iterating, and drawing it from
    # torch's global generator would shift every later global draw (dropout masks) in a resumed run only.
    generator = torch.Generator().manual_seed(spec.seed)
    loader = DataLoader(
        dataset, batch_sampler=sampler, num_workers=spec.num_workers, collate_fn=_collate, generator=generator
    )
    # After the checkpoint is loaded: DDP broadcasts rank 0's weights when it wraps the model.
    net = dist.wrap(model, torch.device(device))
    stop_after = (
        spec.steps if max_steps_this_call is None else min(spec.steps, run.start + max_steps_this_call)
    )
    started = time.perf_counter()
    progress = tqdm(
        total=spec.steps,
        initial=run.start,
        desc=run.run_dir.name,
        file=sys.stderr,
        mininterval=2.0,
        disable=not dist.is_main,
    )
    with StopRequested() as stop, progress:
        for batch in loader:
            batch = {key: value.to(device, non_blocking=True) for key, value in batch.items()}
            if spec.channels_last:
                batch = batch_channels_last(batch)
            loss_value, logs = run.take_step(net, loss_fn, batch)
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            lr = run.scheduler.get_last_lr()[0]
            step_log.log(run.step, {"loss": loss_value, "lr": lr, **logs}, prefix="train/")
            if run.step % spec.eval_every == 0 or run.step == spec.steps:
                run.last_eval = run.evaluate(evaluate_fn)
                run.record(loss_value, logs, run.last_eval, step_log)
            # Every rank must stop after the same step, whichever rank the signal reached.
            stopping = dist.any(stop.signal is not None)
            ending = stopping or run.step >= stop_after
            if run.step < spec.steps and (run.step % spec.checkpoint_every == 0 or ending):
                if dist.is_main:
                    run.save()
                dist.barrier()
            if run.step < spec.steps and ending:
                if dist.is_main:
                    reason = _stop_reason(stop.signal, stopping)
                    print(
                        f"{run.run_dir}: stopped at step {run.step} ({reason}); checkpoint saved",
                        file=sys.stderr,
                    )
                step_log.close()
                return None

    # The last step is always evaluated for the curves; reuse it unless the run resumed at its very end.
    metrics = dict(run.last_eval if run.last_eval is not None else run.evaluate(evaluate_fn))
    metrics["steps"] = spec.steps
    log.info(
        "%s: %d steps in %.1f s this call", run.run_dir, run.step - run.start, time.perf_counter() - started
    )
    if final_metrics is not None:
        metrics = final_metrics(metrics)
    step_log.close()
    run.finish(metrics)
    return metrics
