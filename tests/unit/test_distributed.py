"""Data-parallel training with torch.distributed on gloo, two CPU processes.

What a multi-GPU job relies on, checked without GPUs: each rank trains on its half of the global batch,
gradients and logged losses are reduced so two processes take the steps one process takes, evaluation
runs once and every rank gets its metrics, and a signal to one rank stops all of them at the same step
with a checkpoint that a two-process rerun resumes exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from geosem.train.distributed import Distributed, free_port
from geosem.train.loop import LoopSpec, StepBatchSampler, train
from torch import nn
from torch.utils.data import Dataset

from tests.helpers import run_snapshot, start_job, write_run

# Only light imports at module level: the toy test's worker processes import this module again.

EXIT_RESUMABLE = 75


def test_each_rank_takes_its_share_of_the_same_global_batch() -> None:
    single = list(StepBatchSampler(10, 4, seed=3, start=0, steps=5))
    ranks = [
        list(StepBatchSampler(10, 4, seed=3, start=0, steps=5, dist=Distributed(rank=r, world_size=2)))
        for r in range(2)
    ]
    for step, batch in enumerate(single):
        halves = [ranks[0][step], ranks[1][step]]
        assert len(halves[0]) == len(halves[1]) == 2
        # Same (sample, draw) pairs, so the same augmentation, split without overlap.
        assert sorted(halves[0] + halves[1]) == sorted(batch)
    with pytest.raises(ValueError, match="multiple of the number of GPUs"):
        StepBatchSampler(10, 3, seed=3, start=0, steps=5, dist=Distributed(rank=0, world_size=2))


class ToyRegression(Dataset):
    """y = x . w_true + noise; keys are (index, draw) as the loop's sampler yields them."""

    def __init__(self, size: int = 24) -> None:
        rng = np.random.default_rng(0)
        self.x = torch.tensor(rng.normal(size=(size, 4)), dtype=torch.float32)
        w_true = torch.tensor([1.0, -2.0, 0.5, 3.0])
        self.y = self.x @ w_true + 0.1 * torch.tensor(rng.normal(size=size), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, _ = key
        return {"x": self.x[index], "y": self.y[index : index + 1]}


def _toy_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    error = model(batch["x"]) - batch["y"]
    return (error**2).mean(), {"abs_error": float(error.detach().abs().mean())}


def _toy_run(rank: int, world_size: int, port: int, run_dir: str) -> None:
    """One rank of a toy regression trained by the real loop (module level: spawn pickles it by name)."""
    env = {
        "RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    dist = Distributed.from_env(env)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)  # no BatchNorm: two processes must then match one exactly, up to rounding
    dataset = ToyRegression()

    def evaluate(m: nn.Module) -> dict[str, Any]:
        with torch.no_grad():
            return {"mse": float(((m(dataset.x)[:, 0] - dataset.y) ** 2).mean())}

    spec = LoopSpec(
        steps=6,
        batch_size=4,
        lr=0.05,
        weight_decay=0.0,
        lr_schedule="cosine",
        eval_every=3,
        checkpoint_every=100,
        seed=7,
    )
    train(
        run_dir=Path(run_dir),
        run_digest="toy",
        model=model,
        dataset=dataset,
        loss_fn=_toy_loss,
        evaluate_fn=evaluate,
        spec=spec,
        dist=dist,
    )
    dist.close()


@pytest.mark.slow  # torch.multiprocessing spawns two interpreters
def test_two_gloo_processes_take_the_steps_of_one(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    _toy_run(0, 1, 0, str(one))
    mp.spawn(_toy_run, args=(2, free_port(), str(two)), nprocs=2, join=True)

    a = torch.load(one / "model.pt", weights_only=True)["model"]
    b = torch.load(two / "model.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    curves_one, curves_two = pd.read_csv(one / "curves.csv"), pd.read_csv(two / "curves.csv")
    assert list(curves_two["step"]) == [3, 6]
    for column in ("train_loss", "abs_error", "mse"):
        np.testing.assert_allclose(curves_two[column], curves_one[column], rtol=1e-5)
    # The model learned something, so the comparison above is not between two untrained models.
    assert curves_one["mse"].iloc[-1] < curves_one["mse"].iloc[0]


def _job(run: Path) -> subprocess.Popen[str]:
    return start_job("finetune", run, "--procs", "2", threads=2)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


@pytest.mark.slow  # `geosem finetune --procs 2` processes
def test_two_process_job_stops_together_and_resumes_exactly(tiny_shards: Path, tmp_path: Path) -> None:
    from geosem.shards.reader import ShardSet
    from geosem.snapshot import read_snapshot
    from geosem.tasks import get_task
    from geosem.train import jobs

    snapshot = run_snapshot(tiny_shards, "finetune", "seg", 6, loop={"eval_every": 3})

    whole = write_run(tmp_path / "whole", snapshot)
    job = _job(whole)
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-4000:]
    metrics = json.loads((whole.parent / "metrics.json").read_text())
    assert json.loads(out)["test_miou"] == metrics["test_miou"]  # rank 0 alone prints the result
    assert list(pd.read_csv(whole.parent / "curves.csv")["step"]) == [3, 6]

    # The metrics are those of the saved weights over the whole test split, evaluated once.
    run = read_snapshot(whole)
    task = get_task("segmentation")(run)
    model = task.build_model()
    model.load_state_dict(torch.load(whole.parent / "model.pt", weights_only=True)["model"])
    shards = ShardSet(Path(run["data"]["shards"]))
    again = task.evaluate(model, shards, jobs.test_ids(shards, run))
    assert again["test_miou"] == metrics["test_miou"]
    assert again["test_pixel_accuracy"] == metrics["test_pixel_accuracy"]

    # SIGUSR1 to rank 1 only: rank 0 learns of it through the per-step reduction, both stop after the
    # same step, rank 0 writes the checkpoint, the launcher exits 75.
    split = write_run(tmp_path / "split", snapshot)
    job = _job(split)
    deadline = time.monotonic() + 300
    while not (split.parent / "checkpoint.pt").exists():
        assert job.poll() is None, job.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    workers = _children(job.pid)
    assert len(workers) == 2, workers
    rank1 = next(
        pid for pid in workers if "RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0")
    )
    os.kill(rank1, signal.SIGUSR1)
    _, err = job.communicate(timeout=300)
    assert job.returncode == EXIT_RESUMABLE, err[-4000:]
    assert "(signal on another rank); checkpoint saved" in err, err[-4000:]
    step = torch.load(split.parent / "checkpoint.pt", weights_only=False)["step"]
    assert 0 < step < 6 and not (split.parent / "metrics.json").exists()

    job = _job(split)
    _, err = job.communicate(timeout=600)
    assert job.returncode == 0, err[-4000:]
    assert f"resuming {split.parent} from step {step}" in err
    assert json.loads((split.parent / "metrics.json").read_text()) == metrics
    assert (split.parent / "curves.csv").read_text() == (whole.parent / "curves.csv").read_text()
